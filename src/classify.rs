//! The offline pipeline behind `babycryd classify`: a recording in, a verdict out.
//!
//! It owns composing the stages for whole files: decode, downmix, resample to each
//! model's rate, cut into model windows (one padded window for short files, every
//! window at a configurable hop for long ones), run the cry detector and the cry-reason
//! model, apply thresholds, and build the JSON answer in the shape the replaced Python
//! service gave (`label`, `probability`, `top_k`, `all_probs`) plus `decision` and
//! `cry_probability`. Failures are per file: one bad recording never stops the others.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::decision::{confirmation_score, reason_decision};
use crate::decode::decode_file;
use crate::error::{DecodeError, ModelError, ResampleError};
use crate::model::{Model, Prediction};
use crate::resample::resample_all;

/// The reason reported when the detector says the recording is not crying.
pub const NO_CRY: &str = "no_cry";

/// One label and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub label: String,
    pub probability: f32,
}

/// The verdict on one window (or, as a summary, on a whole file).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The most likely reason, whatever the thresholds say.
    pub label: String,
    pub probability: f32,
    pub top_k: Vec<Ranked>,
    pub all_probs: BTreeMap<String, f32>,
    /// `<label>`, `uncertain` below the threshold, or `no_cry` when the detector says so.
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cry_probability: Option<f32>,
}

/// One window of a long file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowVerdict {
    pub start_s: f64,
    pub end_s: f64,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The answer for one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileVerdict {
    pub file: String,
    pub duration_s: f64,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Every window, when the file is longer than one model window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowVerdict>,
}

/// Why one file could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{file}: {source}")]
    Resample { file: String, source: ResampleError },
    #[error("{file}: {source}")]
    Model { file: String, source: ModelError },
}

/// Options of the offline pipeline.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    pub top_k: usize,
    /// Seconds between reason windows of a long file; None = one window length.
    pub hop_seconds: Option<f64>,
    /// Per-class reason thresholds overriding the sidecar's.
    pub thresholds: BTreeMap<String, f32>,
    /// Detector threshold overriding the sidecar's.
    pub detector_threshold: Option<f32>,
    pub detector_hop_seconds: f64,
    pub confirm_k: usize,
    pub confirm_n: usize,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        let d = crate::decision::DetectorConfig::default();
        Self {
            top_k: 3,
            hop_seconds: None,
            thresholds: BTreeMap::new(),
            detector_threshold: d.threshold,
            detector_hop_seconds: d.hop_seconds,
            confirm_k: d.confirm_k,
            confirm_n: d.confirm_n,
        }
    }
}

/// The loaded models and options, reused across files.
#[derive(Debug)]
pub struct Classifier {
    pub reason: Model,
    pub detector: Option<Model>,
    pub options: ClassifyOptions,
}

impl Classifier {
    pub fn new(reason: Model, detector: Option<Model>, options: ClassifyOptions) -> Self {
        Self {
            reason,
            detector,
            options,
        }
    }

    /// Decodes and classifies one file.
    pub fn classify_file(&mut self, path: &Path) -> Result<FileVerdict, ClassifyError> {
        let audio = decode_file(path)?;
        let file = path.display().to_string();
        self.classify_samples(&file, &audio.samples, audio.sample_rate)
    }

    /// Classifies mono samples at `rate`; `file` names them in the answer and errors.
    pub fn classify_samples(
        &mut self,
        file: &str,
        samples: &[f32],
        rate: u32,
    ) -> Result<FileVerdict, ClassifyError> {
        let resample_err = |source| ClassifyError::Resample {
            file: file.to_owned(),
            source,
        };
        let model_err = |source| ClassifyError::Model {
            file: file.to_owned(),
            source,
        };
        let duration_s = samples.len() as f64 / f64::from(rate);

        let reason_rate = self.reason.sidecar().audio.sample_rate;
        let audio = resample_all(samples, rate, reason_rate).map_err(resample_err)?;
        let detector_audio = match &self.detector {
            Some(d) if d.sidecar().audio.sample_rate != reason_rate => Some(
                resample_all(samples, rate, d.sidecar().audio.sample_rate).map_err(resample_err)?,
            ),
            _ => None,
        };

        let window = self.reason.window_samples();
        let hop = self
            .options
            .hop_seconds
            .map(|h| ((h * f64::from(reason_rate)).round() as usize).max(1))
            .unwrap_or(window);
        // One window for a short file; otherwise every full window at `hop`, plus the
        // tail when it holds at least half a window.
        let mut starts = vec![0usize];
        while starts.last().copied().unwrap_or(0) + window < audio.len() {
            let next = starts.last().copied().unwrap_or(0) + hop;
            // A hop longer than the window can step past the end.
            if audio.len().saturating_sub(next) < window / 2 {
                break;
            }
            starts.push(next);
        }

        let mut windows = Vec::with_capacity(starts.len());
        let mut preds = Vec::with_capacity(starts.len());
        for &start in &starts {
            let end = (start + window).min(audio.len());
            let pred = self.reason.predict(&audio[start..end]).map_err(model_err)?;
            let cry = match &self.detector {
                Some(_) => {
                    let det_audio = detector_audio.as_deref().unwrap_or(&audio);
                    let scale = self.detector.as_ref().map_or(1.0, |d| {
                        f64::from(d.sidecar().audio.sample_rate) / f64::from(reason_rate)
                    });
                    let (ds, de) = (
                        (start as f64 * scale) as usize,
                        ((end as f64 * scale) as usize).min(det_audio.len()),
                    );
                    Some(
                        self.cry_probability(&det_audio[ds..de])
                            .map_err(model_err)?,
                    )
                }
                None => None,
            };
            let verdict = self.verdict(&pred, cry);
            preds.push((pred, cry));
            windows.push(WindowVerdict {
                start_s: start as f64 / f64::from(reason_rate),
                end_s: end as f64 / f64::from(reason_rate),
                verdict,
            });
        }

        let verdict = if windows.len() == 1 {
            windows.pop().expect("one window").verdict
        } else {
            // Summary: mean probabilities over the windows, and the file counts as crying
            // when any window does.
            let n = preds.len() as f32;
            let labels = self.reason.labels().len();
            let mean: Vec<f32> = (0..labels)
                .map(|i| preds.iter().map(|(p, _)| p.probabilities[i]).sum::<f32>() / n)
                .collect();
            let cry = preds.iter().filter_map(|(_, c)| *c).reduce(f32::max);
            self.verdict(
                &Prediction {
                    probabilities: mean,
                },
                cry,
            )
        };
        Ok(FileVerdict {
            file: file.to_owned(),
            duration_s,
            verdict,
            windows,
        })
    }

    /// The detector's confirmation score over a stretch of audio at the detector's rate.
    fn cry_probability(&mut self, audio: &[f32]) -> Result<f32, ModelError> {
        let detector = self.detector.as_mut().expect("called with a detector");
        let rate = f64::from(detector.sidecar().audio.sample_rate);
        let window = detector.window_samples();
        let hop = ((self.options.detector_hop_seconds * rate).round() as usize).max(1);
        let positive = detector
            .sidecar()
            .positive_index()
            .expect("validated sidecar");
        let mut probs = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + window).min(audio.len());
            probs.push(detector.predict(&audio[start..end])?.probabilities[positive]);
            start += hop;
            // A hop longer than the window can step past the end.
            if end >= audio.len() || start >= audio.len() {
                break;
            }
        }
        Ok(confirmation_score(
            &probs,
            self.options.confirm_k,
            self.options.confirm_n,
        ))
    }

    fn verdict(&self, pred: &Prediction, cry_probability: Option<f32>) -> Verdict {
        let labels = self.reason.labels();
        let ranked = pred.ranked();
        let (top, p) = pred.top();
        let (mut decision, _) =
            reason_decision(pred, self.reason.sidecar(), &self.options.thresholds);
        if let (Some(cry), Some(det)) = (cry_probability, &self.detector) {
            let threshold = self
                .options
                .detector_threshold
                .unwrap_or(det.sidecar().threshold);
            if cry < threshold {
                decision = NO_CRY.to_string();
            }
        }
        Verdict {
            label: labels[top].clone(),
            probability: p,
            top_k: ranked
                .iter()
                .take(self.options.top_k)
                .map(|&i| Ranked {
                    label: labels[i].clone(),
                    probability: pred.probabilities[i],
                })
                .collect(),
            all_probs: pred.by_label(labels),
            decision,
            cry_probability,
        }
    }
}

/// A human-readable table of verdicts, for a terminal.
pub fn format_table(verdicts: &[FileVerdict]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<40} {:>7} {:<12} {:>6} {:>6}  {}\n",
        "FILE", "SECONDS", "DECISION", "P", "CRY", "TOP"
    ));
    for v in verdicts {
        let name = Path::new(&v.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if name.chars().count() > 40 {
            format!("{}…", name.chars().take(39).collect::<String>())
        } else {
            name
        };
        let top: Vec<String> = v
            .verdict
            .top_k
            .iter()
            .map(|r| format!("{} {:.0}%", r.label, r.probability * 100.0))
            .collect();
        out.push_str(&format!(
            "{:<40} {:>7.1} {:<12} {:>5.0}% {:>6}  {}\n",
            name,
            v.duration_s,
            v.verdict.decision,
            v.verdict.probability * 100.0,
            v.verdict
                .cry_probability
                .map(|c| format!("{:.0}%", c * 100.0))
                .unwrap_or_else(|| "-".into()),
            top.join(", ")
        ));
    }
    out
}
