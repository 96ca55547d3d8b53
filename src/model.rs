//! Models: an ONNX file plus its sidecar (`docs/model-contract.md`), run by tract on the CPU.
//!
//! This module owns the model contract: parsing and checking the sidecar, checking the
//! ONNX input and output shapes against it (naming every disagreement), fixing the input
//! shape before tract optimises the graph, building the input tensor from the front end's
//! features (optional bilinear resize and channel repetition, so the old project's
//! 224x224 image format needs only a sidecar), and turning the output into calibrated
//! probabilities. A [`Model`] is loaded once per process and then reused for every window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::ModelError;
use crate::features::{FeatureRecipe, FrontEnd, MelMatrix};

/// What a model decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Cry versus not cry, on short windows.
    Detector,
    /// Why the baby cries, on 7 s windows.
    Reason,
}

/// What the ONNX output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
    Probabilities,
}

/// `[audio]` of a sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSpec {
    pub sample_rate: u32,
    pub window_seconds: f64,
}

/// `[input]` of a sidecar: how the feature matrix becomes the input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub shape: Vec<usize>,
    #[serde(default)]
    pub resize: Option<[usize; 2]>,
    #[serde(default = "one")]
    pub channels: usize,
}

fn one() -> usize {
    1
}
fn unit_temperature() -> f64 {
    1.0
}

/// The most feature values one window may give (16 MB of f32): far above any model that
/// fits the edge budget, far below what a mistyped recipe would allocate.
const MAX_FEATURE_VALUES: usize = 1 << 22;

/// A model sidecar (`models/<name>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub name: String,
    pub version: String,
    pub kind: ModelKind,
    pub labels: Vec<String>,
    pub output: OutputKind,
    #[serde(default = "unit_temperature")]
    pub temperature: f64,
    pub threshold: f32,
    #[serde(default)]
    pub positive_label: Option<String>,
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
    pub audio: AudioSpec,
    pub features: FeatureRecipe,
    pub input: InputSpec,
}

impl Sidecar {
    /// Parses and checks a sidecar; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::Sidecar {
            path: path.to_owned(),
            reason,
        };
        let sidecar: Sidecar =
            toml::from_str(text).map_err(|e| invalid(one_line(&e.to_string())))?;
        sidecar.check().map_err(invalid)?;
        Ok(sidecar)
    }

    /// Reads and parses the sidecar at `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::SidecarIo {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Samples in one model window.
    pub fn window_samples(&self) -> usize {
        (self.audio.window_seconds * f64::from(self.audio.sample_rate)).round() as usize
    }

    /// The shape `[n_mels, frames]` the front end produces for one window.
    pub fn feature_shape(&self) -> [usize; 2] {
        [
            self.features.n_mels,
            self.features.n_frames(self.window_samples()),
        ]
    }

    /// Index of the label that means "crying" for a detector.
    pub fn positive_index(&self) -> Option<usize> {
        let wanted = self.positive_label.as_deref()?;
        self.labels.iter().position(|l| l == wanted)
    }

    /// The decision threshold of `label`: the per-class override, else the model's.
    pub fn threshold_for(&self, label: &str) -> f32 {
        self.thresholds
            .get(label)
            .copied()
            .unwrap_or(self.threshold)
    }

    fn check(&self) -> Result<(), String> {
        if self.labels.len() < 2 {
            return Err(format!(
                "labels: need at least 2, found {}",
                self.labels.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.labels {
            if l.is_empty() || !seen.insert(l) {
                return Err(format!("labels: {l:?} is empty or repeated"));
            }
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature = {} must be positive",
                self.temperature
            ));
        }
        let in_unit = |v: f32| (0.0..=1.0).contains(&v);
        if !in_unit(self.threshold) {
            return Err(format!(
                "threshold = {} must be within 0..=1",
                self.threshold
            ));
        }
        for (label, &t) in &self.thresholds {
            if !self.labels.contains(label) {
                return Err(format!("thresholds: {label:?} is not one of the labels"));
            }
            if !in_unit(t) {
                return Err(format!("thresholds.{label} = {t} must be within 0..=1"));
            }
        }
        match (self.kind, &self.positive_label) {
            (ModelKind::Detector, None) => return Err("a detector needs positive_label".into()),
            (ModelKind::Detector, Some(p)) if !self.labels.contains(p) => {
                return Err(format!("positive_label {p:?} is not one of the labels"))
            }
            _ => {}
        }
        if !(8000..=192_000).contains(&self.audio.sample_rate) {
            return Err(format!(
                "audio.sample_rate = {} is outside 8000..=192000",
                self.audio.sample_rate
            ));
        }
        if !(self.audio.window_seconds > 0.0 && self.audio.window_seconds <= 60.0) {
            return Err(format!(
                "audio.window_seconds = {} is outside (0, 60]",
                self.audio.window_seconds
            ));
        }
        self.features
            .validate(self.audio.sample_rate)
            .map_err(|e| e.0)?;
        // A window shorter than one hop steps nowhere (a zero-sample window never ends a
        // file), and the front end holds a whole window's features: both bounded here.
        let [n_mels, frames] = self.feature_shape();
        if self.window_samples() < self.features.hop_length {
            return Err(format!(
                "audio.window_seconds = {} is shorter than one hop ({} samples)",
                self.audio.window_seconds, self.features.hop_length
            ));
        }
        if n_mels * frames > MAX_FEATURE_VALUES {
            return Err(format!(
                "one window gives {n_mels} x {frames} feature values, more than {MAX_FEATURE_VALUES}"
            ));
        }
        let shape = &self.input.shape;
        if shape.len() != 4 || shape[0] != 1 {
            return Err(format!(
                "input.shape = {shape:?} must be [1, channels, height, width]"
            ));
        }
        if shape[1] != self.input.channels {
            return Err(format!(
                "input.shape[1] = {} but input.channels = {}",
                shape[1], self.input.channels
            ));
        }
        let expected = self.input.resize.unwrap_or_else(|| self.feature_shape());
        if shape[2..] != expected {
            return Err(format!(
                "input.shape = {shape:?} but the features give [{}, {}]{}",
                expected[0],
                expected[1],
                if self.input.resize.is_some() {
                    " after resize"
                } else {
                    " (n_mels, frames)"
                }
            ));
        }
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Probabilities for one window, in the order of the sidecar's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub probabilities: Vec<f32>,
}

impl Prediction {
    /// The mean of `predictions` over `classes` labels, class by class: the verdict of an
    /// episode or of a long file from its windows (all zero for none).
    pub fn mean(predictions: &[Prediction], classes: usize) -> Prediction {
        let n = predictions.len().max(1) as f32;
        Prediction {
            probabilities: (0..classes)
                .map(|i| predictions.iter().map(|p| p.probabilities[i]).sum::<f32>() / n)
                .collect(),
        }
    }

    /// Index and probability of the most likely label.
    pub fn top(&self) -> (usize, f32) {
        self.probabilities
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0))
    }

    /// The probabilities keyed by label (`labels` in the sidecar's order).
    pub fn by_label(&self, labels: &[String]) -> BTreeMap<String, f32> {
        labels
            .iter()
            .cloned()
            .zip(self.probabilities.iter().copied())
            .collect()
    }

    /// Label indices sorted by falling probability.
    pub fn ranked(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.probabilities.len()).collect();
        idx.sort_by(|&a, &b| self.probabilities[b].total_cmp(&self.probabilities[a]));
        idx
    }
}

/// A loaded, optimised model with its front end, ready to run windows.
pub struct Model {
    sidecar: Sidecar,
    onnx_path: PathBuf,
    front_end: FrontEnd,
    plan: Arc<TypedRunnableModel>,
    /// Reused between windows: spawning a state per run costs an allocation per node.
    state: TypedSimpleState,
    features: MelMatrix,
    window: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.onnx_path)
            .field("sidecar", &self.sidecar)
            .finish()
    }
}

/// The sidecar path of an ONNX file: same stem, `.toml`.
pub fn sidecar_path(onnx_path: &Path) -> PathBuf {
    onnx_path.with_extension("toml")
}

impl Model {
    /// Loads `path` (an `.onnx` file) and its sidecar next to it.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let sidecar_file = sidecar_path(path);
        let sidecar = Sidecar::load(&sidecar_file)?;
        Self::load_with_sidecar(path, sidecar, &sidecar_file)
    }

    /// Loads `path` with an already parsed sidecar (`sidecar_file` names it in errors).
    pub fn load_with_sidecar(
        path: &Path,
        sidecar: Sidecar,
        sidecar_file: &Path,
    ) -> Result<Self, ModelError> {
        let onnx_err = |e: anyhow::Error| ModelError::Onnx {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::Onnx {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let model = tract_onnx::onnx()
            .model_for_read(&mut file)
            .map_err(onnx_err)?;

        let expected_in: Vec<usize> = sidecar.input.shape.clone();
        let mut mismatches = Vec::new();
        if model.inputs.len() != 1 {
            mismatches.push(format!(
                "the model has {} inputs, the contract needs 1",
                model.inputs.len()
            ));
        }
        if model.outputs.is_empty() {
            mismatches.push("the model has no output".into());
        }
        if let Ok(fact) = model.input_fact(0) {
            let declared: Vec<Option<usize>> = fact
                .shape
                .dims()
                .map(|d| {
                    d.concretize()
                        .and_then(|t| t.as_i64())
                        .and_then(|v| usize::try_from(v).ok())
                })
                .collect();
            if let Some(rank) = fact
                .shape
                .rank()
                .concretize()
                .and_then(|r| usize::try_from(r).ok())
            {
                if rank != expected_in.len() {
                    mismatches.push(format!(
                        "input rank is {rank}, sidecar input.shape {expected_in:?} has rank {}",
                        expected_in.len()
                    ));
                }
            }
            for (axis, (d, e)) in declared.iter().zip(&expected_in).enumerate() {
                if let Some(d) = d {
                    if d != e {
                        mismatches.push(format!(
                            "input axis {axis} is {d} in the ONNX file, {e} in input.shape"
                        ));
                    }
                }
            }
        }
        if !mismatches.is_empty() {
            return Err(ModelError::Mismatch {
                path: path.to_owned(),
                sidecar: sidecar_file.to_owned(),
                mismatches,
            });
        }
        // Fix the input shape before optimising: tract then plans every kernel for it.
        let typed = model
            .with_input_fact(0, f32::fact(&expected_in).into())
            .and_then(|m| m.into_optimized())
            .map_err(onnx_err)?;
        let out_shape: Option<Vec<usize>> = typed
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.to_vec()));
        let volume: Option<usize> = out_shape.as_ref().map(|s| s.iter().product());
        if volume != Some(sidecar.labels.len()) {
            return Err(ModelError::Mismatch {
                path: path.to_owned(),
                sidecar: sidecar_file.to_owned(),
                mismatches: vec![format!(
                    "the output has shape {:?}, the sidecar lists {} labels",
                    out_shape.unwrap_or_default(),
                    sidecar.labels.len()
                )],
            });
        }
        let plan = typed.into_runnable().map_err(onnx_err)?;
        let state = plan.spawn().map_err(onnx_err)?;
        let front_end = FrontEnd::new(
            &sidecar.features,
            sidecar.audio.sample_rate,
            sidecar.window_samples(),
        )?;
        Ok(Self {
            window: vec![0.0; sidecar.window_samples()],
            sidecar,
            onnx_path: path.to_owned(),
            front_end,
            plan,
            state,
            features: MelMatrix {
                n_mels: 0,
                n_frames: 0,
                data: Vec::new(),
            },
        })
    }

    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }
    pub fn path(&self) -> &Path {
        &self.onnx_path
    }
    pub fn labels(&self) -> &[String] {
        &self.sidecar.labels
    }
    pub fn window_samples(&self) -> usize {
        self.sidecar.window_samples()
    }

    /// The optimised tract plan (for inspection; [`Model::predict`] runs it).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// Runs one window. `samples` at the model's rate; shorter input is zero-padded at
    /// the end and longer input is cut, as the contract says.
    pub fn predict(&mut self, samples: &[f32]) -> Result<Prediction, ModelError> {
        let n = samples.len().min(self.window.len());
        self.window[..n].copy_from_slice(&samples[..n]);
        self.window[n..].fill(0.0);
        self.front_end
            .features_into(&self.window, &mut self.features);
        let features = std::mem::replace(
            &mut self.features,
            MelMatrix {
                n_mels: 0,
                n_frames: 0,
                data: Vec::new(),
            },
        );
        let result = self.predict_features(&features);
        self.features = features;
        result
    }

    /// Runs the network alone on features the front end already computed (the shape
    /// `[n_mels, frames]` of [`Sidecar::feature_shape`]).
    pub fn predict_features(&mut self, features: &MelMatrix) -> Result<Prediction, ModelError> {
        let input = build_input(features, &self.sidecar.input);
        let tensor = Tensor::from_shape(&self.sidecar.input.shape, &input)
            .map_err(|e| self.inference_err(e))?;
        let outputs = self
            .state
            .run(tvec!(tensor.into()))
            .map_err(|e| self.inference_err(e))?;
        let raw = outputs[0]
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(|e| self.inference_err(e))?;
        Ok(Prediction {
            probabilities: to_probabilities(&raw, self.sidecar.output, self.sidecar.temperature),
        })
    }

    fn inference_err(&self, e: anyhow::Error) -> ModelError {
        ModelError::Inference {
            name: self.sidecar.name.clone(),
            reason: format!("{e:#}"),
        }
    }
}

/// Softmax with temperature for logits; probabilities are passed through (clamped and
/// renormalised so a sloppy exporter cannot produce a sum above one).
pub fn to_probabilities(raw: &[f32], kind: OutputKind, temperature: f64) -> Vec<f32> {
    match kind {
        OutputKind::Logits => {
            // A misbehaving model's NaN or infinite logit must not make every probability
            // NaN (printed as null): NaN counts as -inf, +inf as the largest finite value.
            let scaled: Vec<f64> = raw
                .iter()
                .map(|&x| match f64::from(x) / temperature {
                    v if v.is_nan() => f64::NEG_INFINITY,
                    v => v.min(f64::MAX),
                })
                .collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                return vec![1.0 / raw.len() as f32; raw.len()];
            }
            let exps: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|&e| (e / sum) as f32).collect()
        }
        OutputKind::Probabilities => {
            let clamped: Vec<f32> = raw
                .iter()
                .map(|&p| {
                    if p.is_finite() {
                        p.clamp(0.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            let sum: f32 = clamped.iter().sum();
            if sum > 0.0 {
                clamped.iter().map(|&p| p / sum).collect()
            } else {
                vec![1.0 / raw.len() as f32; raw.len()]
            }
        }
    }
}

/// Builds the flat input tensor (`[1, channels, height, width]`) from a feature matrix.
pub fn build_input(features: &MelMatrix, spec: &InputSpec) -> Vec<f32> {
    let plane = match spec.resize {
        Some([h, w]) => resize_bilinear(&features.data, features.n_mels, features.n_frames, h, w),
        None => features.data.clone(),
    };
    let mut out = Vec::with_capacity(plane.len() * spec.channels);
    for _ in 0..spec.channels {
        out.extend_from_slice(&plane);
    }
    out
}

/// Bilinear resize of a row-major `[in_h, in_w]` image, exactly as
/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`.
pub fn resize_bilinear(
    src: &[f32],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let axis = |in_n: usize, out_n: usize| -> Vec<(usize, usize, f32)> {
        let scale = in_n as f32 / out_n as f32;
        (0..out_n)
            .map(|i| {
                let s = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(in_n - 1);
                let i1 = if i0 < in_n - 1 { i0 + 1 } else { i0 };
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let rows = axis(in_h, out_h);
    let cols = axis(in_w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, ly) in &rows {
        for &(x0, x1, lx) in &cols {
            let at = |y: usize, x: usize| src[y * in_w + x];
            let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
            let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_can_move_to_another_thread() {
        fn is_send<T: Send>() {}
        is_send::<Model>();
    }

    #[test]
    fn softmax_with_temperature_flattens() {
        let p1 = to_probabilities(&[2.0, 0.0], OutputKind::Logits, 1.0);
        let p2 = to_probabilities(&[2.0, 0.0], OutputKind::Logits, 2.0);
        assert!((p1[0] - 1.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
        assert!((p2[0] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert!((p1.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn non_finite_logits_give_finite_probabilities() {
        let p = |raw: &[f32]| to_probabilities(raw, OutputKind::Logits, 1.0);
        assert_eq!(p(&[f32::INFINITY, 0.0]), [1.0, 0.0]);
        assert_eq!(p(&[f32::NAN, 0.0]), [0.0, 1.0]);
        assert_eq!(p(&[f32::NAN, f32::NEG_INFINITY]), [0.5, 0.5]);
    }

    /// A sidecar whose window is shorter than one hop (here below one sample: `classify`
    /// stepped by 0 samples for ever) or whose features would not fit in memory is
    /// refused with the reason.
    #[test]
    fn windows_shorter_than_a_hop_and_oversized_features_are_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cry-detector.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped = Sidecar::parse(&text, &path).unwrap();
        let mut tiny = shipped.clone();
        tiny.audio.window_seconds = 1e-5;
        tiny.input.resize = Some(tiny.feature_shape());
        let e = tiny.check().unwrap_err();
        assert!(e.contains("shorter than one hop"), "{e}");
        let mut huge = shipped.clone();
        huge.features.hop_length = 1;
        huge.features.n_mels = 512;
        huge.audio.window_seconds = 60.0;
        huge.input.resize = Some([1, 1]);
        huge.input.shape = vec![1, 1, 1, 1];
        let e = huge.check().unwrap_err();
        assert!(e.contains("feature values, more than"), "{e}");
    }

    #[test]
    fn bilinear_matches_torch_on_a_small_case() {
        // torch.nn.functional.interpolate(torch.arange(6.).reshape(1,1,2,3), size=(3,4),
        //   mode="bilinear", align_corners=False)
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let got = resize_bilinear(&src, 2, 3, 3, 4);
        let want = [
            0.0, 0.625, 1.375, 2.0, //
            1.5, 2.125, 2.875, 3.5, //
            3.0, 3.625, 4.375, 5.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?}");
        }
    }
}
