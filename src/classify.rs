//! The offline pipeline behind `babycryd classify`: a recording in, a verdict out.
//!
//! It owns composing the stages for whole files: decode, downmix, resample to each
//! model's rate, cut into model windows (one padded window for short files, every
//! window at a configurable hop for long ones), run the cry detector and the cry-reason
//! model, apply thresholds, and build the JSON answer in the shape the replaced Python
//! service gave (`label`, `probability`, `top_k`, `all_probs`) plus `decision` and
//! `cry_probability`. Failures are per file: one bad recording never stops the others.
//! A file is classified as it is decoded (`FileWindows`), so its length costs no memory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::decision::{confirmation_score, reason_decision};
use crate::decode::AudioStream;
use crate::error::{DecodeError, ModelError, ResampleError};
use crate::model::{Model, Prediction};
use crate::resample::StreamResampler;

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

    /// Decodes and classifies one file, packet by packet: the audio is resampled to the
    /// models' rates as it is decoded and each window is classified once its audio is
    /// there, so a night-long recording takes the memory of a window, not of the night.
    pub fn classify_file(&mut self, path: &Path) -> Result<FileVerdict, ClassifyError> {
        let mut stream = AudioStream::open(path)?;
        let file = path.display().to_string();
        let mut windows = FileWindows::new(self, &file, stream.sample_rate())?;
        let mut block = Vec::new();
        while stream.next_into(&mut block)? {
            windows.push(self, &block)?;
            block.clear();
        }
        windows.finish(self)
    }

    /// Classifies mono samples at `rate`; `file` names them in the answer and errors.
    pub fn classify_samples(
        &mut self,
        file: &str,
        samples: &[f32],
        rate: u32,
    ) -> Result<FileVerdict, ClassifyError> {
        let mut windows = FileWindows::new(self, file, rate)?;
        windows.push(self, samples)?;
        windows.finish(self)
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

/// Audio at one model's rate, from the absolute sample `offset` on: what the windows
/// still to come need, the rest dropped.
#[derive(Debug, Default)]
struct Held {
    samples: Vec<f32>,
    offset: usize,
}

impl Held {
    /// Samples received so far, dropped ones included.
    fn total(&self) -> usize {
        self.offset + self.samples.len()
    }

    fn slice(&self, from: usize, to: usize) -> &[f32] {
        &self.samples[from - self.offset..to - self.offset]
    }

    fn drop_before(&mut self, at: usize) {
        let n = at.saturating_sub(self.offset).min(self.samples.len());
        self.samples.drain(..n);
        self.offset += n;
    }
}

/// One recording on its way through the models: blocks at the file's rate in, resampled
/// to the reason model's rate (and the detector's, where it differs), every reason
/// window classified as soon as its audio is held. Windows: one (padded) for a short
/// recording; otherwise every full window at the hop, plus the tail when it holds at
/// least half a window.
struct FileWindows {
    file: String,
    rate: u32,
    source_samples: u64,
    reason_rate: u32,
    window: usize,
    hop: usize,
    /// Detector rate / reason rate.
    detector_scale: f64,
    to_reason: StreamResampler,
    reason_audio: Held,
    /// Only when the detector's rate differs from the reason model's.
    to_detector: Option<(StreamResampler, Held)>,
    /// The next full window's start (reason-rate samples).
    next_start: usize,
    windows: Vec<WindowVerdict>,
    /// Each window's reason prediction and cry probability (with a detector).
    preds: Vec<Prediction>,
    cries: Vec<Option<f32>>,
}

impl FileWindows {
    fn new(c: &Classifier, file: &str, rate: u32) -> Result<Self, ClassifyError> {
        let resample_err = |source| ClassifyError::Resample {
            file: file.to_owned(),
            source,
        };
        let reason_rate = c.reason.sidecar().audio.sample_rate;
        let window = c.reason.window_samples();
        let hop = c
            .options
            .hop_seconds
            .map(|h| ((h * f64::from(reason_rate)).round() as usize).max(1))
            .unwrap_or(window);
        let detector_rate = c
            .detector
            .as_ref()
            .map_or(reason_rate, |d| d.sidecar().audio.sample_rate);
        let to_detector = if detector_rate == reason_rate {
            None
        } else {
            Some((
                StreamResampler::new(rate, detector_rate).map_err(resample_err)?,
                Held::default(),
            ))
        };
        Ok(Self {
            file: file.to_owned(),
            rate,
            source_samples: 0,
            reason_rate,
            window,
            hop,
            detector_scale: f64::from(detector_rate) / f64::from(reason_rate),
            to_reason: StreamResampler::new(rate, reason_rate).map_err(resample_err)?,
            reason_audio: Held::default(),
            to_detector,
            next_start: 0,
            windows: Vec::new(),
            preds: Vec::new(),
            cries: Vec::new(),
        })
    }

    fn resample_err(&self, source: ResampleError) -> ClassifyError {
        ClassifyError::Resample {
            file: self.file.clone(),
            source,
        }
    }

    /// The detector's audio: its own when its rate differs, the reason model's otherwise.
    fn detector_audio(&self) -> &Held {
        self.to_detector
            .as_ref()
            .map_or(&self.reason_audio, |(_, held)| held)
    }

    /// The detector-rate sample that reason-rate sample `at` falls on.
    fn detector_sample(&self, at: usize) -> usize {
        (at as f64 * self.detector_scale) as usize
    }

    /// Takes the next block of mono samples at the file's rate and classifies every full
    /// window it completes.
    fn push(&mut self, c: &mut Classifier, block: &[f32]) -> Result<(), ClassifyError> {
        self.source_samples += block.len() as u64;
        let pushed = self.to_reason.push(block, &mut self.reason_audio.samples);
        pushed.map_err(|e| self.resample_err(e))?;
        if let Some((resampler, held)) = &mut self.to_detector {
            let pushed = resampler.push(block, &mut held.samples);
            pushed.map_err(|e| self.resample_err(e))?;
        }
        self.classify_full_windows(c)
    }

    fn classify_full_windows(&mut self, c: &mut Classifier) -> Result<(), ClassifyError> {
        loop {
            let end = self.next_start + self.window;
            let held = self.reason_audio.total() >= end
                && self.detector_audio().total() >= self.detector_sample(end);
            if !held {
                return Ok(());
            }
            self.classify_window(c, self.next_start, end)?;
            self.next_start += self.hop;
            let (reason_from, detector_from) =
                (self.next_start, self.detector_sample(self.next_start));
            self.reason_audio.drop_before(reason_from);
            if let Some((_, held)) = &mut self.to_detector {
                held.drop_before(detector_from);
            }
        }
    }

    fn classify_window(
        &mut self,
        c: &mut Classifier,
        start: usize,
        end: usize,
    ) -> Result<(), ClassifyError> {
        let model_err = |source| ClassifyError::Model {
            file: self.file.clone(),
            source,
        };
        let pred = c
            .reason
            .predict(self.reason_audio.slice(start, end))
            .map_err(model_err)?;
        let cry = match c.detector {
            Some(_) => {
                let audio = self.detector_audio();
                let from = self.detector_sample(start);
                let to = self.detector_sample(end).min(audio.total());
                Some(
                    c.cry_probability(audio.slice(from, to))
                        .map_err(model_err)?,
                )
            }
            None => None,
        };
        let rate = f64::from(self.reason_rate);
        self.windows.push(WindowVerdict {
            start_s: start as f64 / rate,
            end_s: end as f64 / rate,
            verdict: c.verdict(&pred, cry),
        });
        self.preds.push(pred);
        self.cries.push(cry);
        Ok(())
    }

    /// Ends the recording: the audio the resamplers still hold, the tail window (or the
    /// one padded window of a short recording), and the verdict.
    fn finish(mut self, c: &mut Classifier) -> Result<FileVerdict, ClassifyError> {
        let flushed = self.to_reason.finish(&mut self.reason_audio.samples);
        flushed.map_err(|e| self.resample_err(e))?;
        if let Some((resampler, held)) = &mut self.to_detector {
            let flushed = resampler.finish(&mut held.samples);
            flushed.map_err(|e| self.resample_err(e))?;
        }
        self.classify_full_windows(c)?;
        let len = self.reason_audio.total();
        let tail = if self.windows.is_empty() {
            // A recording shorter than a window: one window, padded by the model.
            Some(0)
        } else {
            // The last full window stopped short of the end: the next one, when at
            // least half a window of audio is left for it.
            let last = self.next_start - self.hop;
            (last + self.window < len && len.saturating_sub(self.next_start) >= self.window / 2)
                .then_some(self.next_start)
        };
        if let Some(start) = tail {
            self.classify_window(c, start, len)?;
        }

        let verdict = if self.windows.len() == 1 {
            self.windows.pop().expect("one window").verdict
        } else {
            // Summary: mean probabilities over the windows, and the file counts as crying
            // when any window does.
            let mean = Prediction::mean(&self.preds, c.reason.labels().len());
            let cry = self.cries.iter().copied().flatten().reduce(f32::max);
            c.verdict(&mean, cry)
        };
        Ok(FileVerdict {
            file: self.file,
            duration_s: self.source_samples as f64 / f64::from(self.rate),
            verdict,
            windows: self.windows,
        })
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
