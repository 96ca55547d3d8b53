//! Log-mel front end: turns a window of 8 kHz samples into the feature matrix a model
//! was trained on.
//!
//! It owns the exact arithmetic of `librosa.feature.melspectrogram` followed by
//! `librosa.power_to_db` and a per-window normalisation, for any recipe a model sidecar
//! can state ([`FeatureRecipe`]). Training computes its features with librosa from the
//! same sidecar, so the two agree by construction; the golden fixtures under
//! `tests/fixtures/frontend/` (written by `training/make_fixtures.py`) hold them to it.
//! Everything is computed in `f64`: the dB scale looks 80 dB below the loudest bin, where
//! single-precision FFT noise would already show.
//!
//! A [`FrontEnd`] is built once per model (window, mel filterbank and FFT plan are
//! precomputed) and reused for every window without allocating.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use serde::{Deserialize, Serialize};

use crate::error::RecipeError;

/// The analysis window applied to each STFT frame (periodic, as `scipy.signal.get_window`
/// with `fftbins=True`, which librosa uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Hann,
    Hamming,
}

/// How the signal is padded at both ends when frames are centred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros: librosa's default since 0.10.
    Constant,
    /// Mirror without repeating the edge sample (`numpy.pad(mode="reflect")`).
    Reflect,
}

/// Area normalisation of the mel filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelNorm {
    Slaney,
    None,
}

/// Per-window normalisation after the dB step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    None,
    /// `(x - min) / (max - min)`; all zeros when the window is constant.
    Minmax,
    /// `(x - mean) / std`; all zeros when the window is constant.
    Standard,
}

/// The reference of `power_to_db`: the window's maximum, or a fixed value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DbRef {
    Named(DbRefName),
    Value(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbRefName {
    Max,
}

fn default_db_ref() -> DbRef {
    DbRef::Named(DbRefName::Max)
}
fn default_amin() -> f64 {
    1e-10
}
fn default_true() -> bool {
    true
}

/// The `[features]` table of a model sidecar: everything librosa needs to reproduce the
/// features. Field names are librosa's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureRecipe {
    pub n_fft: usize,
    #[serde(default)]
    pub win_length: Option<usize>,
    pub hop_length: usize,
    pub n_mels: usize,
    #[serde(default)]
    pub fmin: f64,
    #[serde(default)]
    pub fmax: Option<f64>,
    pub window: WindowKind,
    #[serde(default = "default_true")]
    pub center: bool,
    pub pad_mode: PadMode,
    pub power: f64,
    pub mel_norm: MelNorm,
    #[serde(default)]
    pub htk: bool,
    #[serde(default = "default_true")]
    pub db: bool,
    #[serde(default = "default_db_ref")]
    pub db_ref: DbRef,
    #[serde(default = "default_amin")]
    pub amin: f64,
    #[serde(default)]
    pub top_db: Option<f64>,
    pub normalize: Normalize,
}

impl FeatureRecipe {
    /// Checks the recipe against the sample rate it will run at.
    pub fn validate(&self, sample_rate: u32) -> Result<(), RecipeError> {
        let nyquist = f64::from(sample_rate) / 2.0;
        let fmax = self.fmax.unwrap_or(nyquist);
        let win = self.win_length.unwrap_or(self.n_fft);
        let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(RecipeError(what)) };
        // Even: librosa centres with n_fft / 2 on each side, so an odd n_fft gives it one
        // frame fewer than this front end would count (and read past the padding).
        check(
            (16..=1 << 16).contains(&self.n_fft) && self.n_fft.is_multiple_of(2),
            format!("n_fft = {} must be even and within 16..=65536", self.n_fft),
        )?;
        // At least 2: scipy's one-sample window is [1], the periodic formula's is [0].
        check(
            win >= 2 && win <= self.n_fft,
            format!(
                "win_length = {win} must be between 2 and n_fft = {}",
                self.n_fft
            ),
        )?;
        check(self.hop_length >= 1, "hop_length must be at least 1".into())?;
        check(
            (1..=512).contains(&self.n_mels),
            format!("n_mels = {} is outside 1..=512", self.n_mels),
        )?;
        check(
            self.fmin >= 0.0 && self.fmin < fmax && fmax <= nyquist,
            format!(
                "need 0 <= fmin ({}) < fmax ({fmax}) <= sample_rate / 2 ({nyquist})",
                self.fmin
            ),
        )?;
        check(
            self.power > 0.0 && self.power.is_finite(),
            format!("power = {} must be positive", self.power),
        )?;
        check(
            self.amin > 0.0,
            format!("amin = {} must be positive", self.amin),
        )?;
        if let DbRef::Value(v) = self.db_ref {
            check(v > 0.0, format!("db_ref = {v} must be positive"))?;
        }
        if let Some(t) = self.top_db {
            check(t >= 0.0, format!("top_db = {t} must not be negative"))?;
        }
        Ok(())
    }

    /// Number of STFT frames librosa produces for `n_samples` samples.
    pub fn n_frames(&self, n_samples: usize) -> usize {
        if self.center {
            1 + n_samples / self.hop_length
        } else if n_samples >= self.n_fft {
            1 + (n_samples - self.n_fft) / self.hop_length
        } else {
            0
        }
    }
}

/// A feature matrix, row-major `[n_mels, n_frames]` (mel on rows, time on columns).
#[derive(Debug, Clone, PartialEq)]
pub struct MelMatrix {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

impl MelMatrix {
    pub fn get(&self, mel: usize, frame: usize) -> f32 {
        self.data[mel * self.n_frames + frame]
    }
}

/// One triangular mel filter, stored sparsely: weights for FFT bins `start..start+len`.
#[derive(Debug, Clone)]
struct MelFilter {
    start: usize,
    weights: Vec<f64>,
}

/// A prepared front end for one recipe and one window length.
pub struct FrontEnd {
    recipe: FeatureRecipe,
    n_samples: usize,
    n_frames: usize,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    fft: Arc<dyn RealToComplex<f64>>,
    // Scratch, reused between calls.
    padded: Vec<f64>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    fft_scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
    mel: Vec<f64>,
}

impl std::fmt::Debug for FrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontEnd")
            .field("recipe", &self.recipe)
            .field("n_samples", &self.n_samples)
            .field("n_frames", &self.n_frames)
            .finish()
    }
}

impl FrontEnd {
    /// Prepares the front end for windows of exactly `n_samples` samples at `sample_rate`.
    pub fn new(
        recipe: &FeatureRecipe,
        sample_rate: u32,
        n_samples: usize,
    ) -> Result<Self, RecipeError> {
        recipe.validate(sample_rate)?;
        let n_frames = recipe.n_frames(n_samples);
        if n_frames == 0 {
            return Err(RecipeError(format!(
                "a window of {n_samples} samples is shorter than n_fft = {} without centring",
                recipe.n_fft
            )));
        }
        if recipe.center && recipe.pad_mode == PadMode::Reflect && n_samples <= recipe.n_fft / 2 {
            return Err(RecipeError(format!(
                "reflect padding needs more than n_fft / 2 = {} samples, the window has {n_samples}",
                recipe.n_fft / 2
            )));
        }
        let n_fft = recipe.n_fft;
        let window = analysis_window(recipe.window, recipe.win_length.unwrap_or(n_fft), n_fft);
        let filters = mel_filterbank(recipe, sample_rate);
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n_fft);
        let pad = if recipe.center { n_fft / 2 } else { 0 };
        Ok(Self {
            recipe: recipe.clone(),
            n_samples,
            n_frames,
            window,
            filters,
            padded: vec![0.0; n_samples + 2 * pad],
            frame: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            fft_scratch: fft.make_scratch_vec(),
            fft,
            power: vec![0.0; n_fft / 2 + 1],
            mel: vec![0.0; recipe.n_mels * n_frames],
        })
    }

    pub fn recipe(&self) -> &FeatureRecipe {
        &self.recipe
    }
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }
    pub fn n_frames(&self) -> usize {
        self.n_frames
    }
    pub fn n_mels(&self) -> usize {
        self.recipe.n_mels
    }

    /// Computes the features of `samples` (exactly `n_samples` long; pad or cut first)
    /// into `out`: the mel matrix after the dB step, before normalisation (or the
    /// power/magnitude mel when the recipe has `db = false`).
    pub fn mel_db_into(&mut self, samples: &[f32], out: &mut MelMatrix) {
        self.compute_mel_db(samples);
        self.copy_out(out);
    }

    /// Computes the normalised features (what the model's input is built from) into `out`.
    pub fn features_into(&mut self, samples: &[f32], out: &mut MelMatrix) {
        self.compute_mel_db(samples);
        normalize(&mut self.mel, self.recipe.normalize);
        self.copy_out(out);
    }

    fn copy_out(&self, out: &mut MelMatrix) {
        out.n_mels = self.recipe.n_mels;
        out.n_frames = self.n_frames;
        out.data.clear();
        out.data.extend(self.mel.iter().map(|&v| v as f32));
    }

    /// The mel matrix after the dB step (or the power mel), in `self.mel`.
    fn compute_mel_db(&mut self, samples: &[f32]) {
        assert_eq!(samples.len(), self.n_samples, "front end window length");
        self.fill_padded(samples);
        let n_fft = self.recipe.n_fft;
        let hop = self.recipe.hop_length;
        let n_frames = self.n_frames;
        for t in 0..n_frames {
            let src = &self.padded[t * hop..t * hop + n_fft];
            for ((dst, &x), &w) in self.frame.iter_mut().zip(src).zip(&self.window) {
                *dst = x * w;
            }
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.fft_scratch)
                .expect("FFT buffers are sized by the plan");
            let power = self.recipe.power;
            for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
                let mag2 = c.re * c.re + c.im * c.im;
                *p = if power == 2.0 {
                    mag2
                } else if power == 1.0 {
                    mag2.sqrt()
                } else {
                    mag2.sqrt().powf(power)
                };
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &self.power[filter.start..filter.start + filter.weights.len()];
                let v: f64 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                self.mel[m * n_frames + t] = v;
            }
        }
        if self.recipe.db {
            power_to_db(
                &mut self.mel,
                self.recipe.db_ref,
                self.recipe.amin,
                self.recipe.top_db,
            );
        }
    }

    /// Allocating convenience around [`FrontEnd::features_into`].
    pub fn features(&mut self, samples: &[f32]) -> MelMatrix {
        let mut out = MelMatrix {
            n_mels: 0,
            n_frames: 0,
            data: Vec::new(),
        };
        self.features_into(samples, &mut out);
        out
    }

    fn fill_padded(&mut self, samples: &[f32]) {
        let pad = (self.padded.len() - samples.len()) / 2;
        for (dst, &s) in self.padded[pad..pad + samples.len()]
            .iter_mut()
            .zip(samples)
        {
            *dst = f64::from(s);
        }
        if pad == 0 {
            return;
        }
        let n = samples.len();
        match self.recipe.pad_mode {
            PadMode::Constant => {
                self.padded[..pad].fill(0.0);
                self.padded[pad + n..].fill(0.0);
            }
            PadMode::Reflect => {
                for i in 0..pad {
                    // numpy "reflect": x[-1 - i] mirrors x[i + 1].
                    self.padded[pad - 1 - i] = f64::from(samples[reflect_index(i as isize + 1, n)]);
                    self.padded[pad + n + i] =
                        f64::from(samples[reflect_index(n as isize - 2 - i as isize, n)]);
                }
            }
        }
    }
}

/// Index into a signal of length `n` mirrored at both ends without repeating the edge.
fn reflect_index(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut k = i.rem_euclid(period);
    if k >= n as isize {
        k = period - k;
    }
    k as usize
}

/// The periodic window of `win_length`, zero-padded and centred to `n_fft` (librosa's
/// `util.pad_center`).
fn analysis_window(kind: WindowKind, win_length: usize, n_fft: usize) -> Vec<f64> {
    let n = win_length as f64;
    let (a0, a1) = match kind {
        WindowKind::Hann => (0.5, 0.5),
        WindowKind::Hamming => (0.54, 0.46),
    };
    let mut window = vec![0.0; n_fft];
    let lpad = (n_fft - win_length) / 2;
    for i in 0..win_length {
        window[lpad + i] = a0 - a1 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
    }
    window
}

fn hz_to_mel(hz: f64, htk: bool) -> f64 {
    if htk {
        return 2595.0 * (1.0 + hz / 700.0).log10();
    }
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64, htk: bool) -> f64 {
    if htk {
        return 700.0 * (10f64.powf(mel / 2595.0) - 1.0);
    }
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// `librosa.filters.mel`, stored sparsely.
fn mel_filterbank(recipe: &FeatureRecipe, sample_rate: u32) -> Vec<MelFilter> {
    let sr = f64::from(sample_rate);
    let n_bins = recipe.n_fft / 2 + 1;
    let fmax = recipe.fmax.unwrap_or(sr / 2.0);
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|k| k as f64 * sr / recipe.n_fft as f64)
        .collect();
    // n_mels + 2 points evenly spaced on the mel scale (numpy.linspace).
    let (mel_lo, mel_hi) = (
        hz_to_mel(recipe.fmin, recipe.htk),
        hz_to_mel(fmax, recipe.htk),
    );
    let n_points = recipe.n_mels + 2;
    let mel_f: Vec<f64> = (0..n_points)
        .map(|i| {
            let m = if i == n_points - 1 {
                mel_hi
            } else {
                mel_lo + (mel_hi - mel_lo) * i as f64 / (n_points - 1) as f64
            };
            mel_to_hz(m, recipe.htk)
        })
        .collect();
    (0..recipe.n_mels)
        .map(|i| {
            let fdiff_lo = mel_f[i + 1] - mel_f[i];
            let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
            let enorm = match recipe.mel_norm {
                MelNorm::Slaney => 2.0 / (mel_f[i + 2] - mel_f[i]),
                MelNorm::None => 1.0,
            };
            let weights: Vec<f64> = fft_freqs
                .iter()
                .map(|&f| {
                    let lower = -(mel_f[i] - f) / fdiff_lo;
                    let upper = (mel_f[i + 2] - f) / fdiff_hi;
                    lower.min(upper).max(0.0) * enorm
                })
                .collect();
            let start = weights.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = weights
                .iter()
                .rposition(|&w| w != 0.0)
                .map_or(start, |e| e + 1);
            MelFilter {
                start,
                weights: weights[start..end].to_vec(),
            }
        })
        .collect()
}

/// `librosa.power_to_db` in place.
fn power_to_db(values: &mut [f64], db_ref: DbRef, amin: f64, top_db: Option<f64>) {
    let reference = match db_ref {
        DbRef::Named(DbRefName::Max) => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        DbRef::Value(v) => v,
    };
    // 10 * log10(x) as ln(x) * (10 / ln 10): glibc's ln is about 2.5x faster than its
    // log10 and the two differ in the last bit only (a 7 s window takes 7040 of them).
    const DB_PER_NEPER: f64 = 10.0 / std::f64::consts::LN_10;
    let ref_db = DB_PER_NEPER * amin.max(reference).ln();
    let mut peak = f64::NEG_INFINITY;
    for v in values.iter_mut() {
        *v = DB_PER_NEPER * amin.max(*v).ln() - ref_db;
        peak = peak.max(*v);
    }
    if let Some(top_db) = top_db {
        let floor = peak - top_db;
        for v in values.iter_mut() {
            *v = v.max(floor);
        }
    }
}

/// Per-window normalisation in place; constant windows become all zeros.
fn normalize(values: &mut [f64], how: Normalize) {
    match how {
        Normalize::None => {}
        Normalize::Minmax => {
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let range = hi - lo;
            for v in values.iter_mut() {
                *v = if range > 0.0 { (*v - lo) / range } else { 0.0 };
            }
        }
        Normalize::Standard => {
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
            for v in values.iter_mut() {
                *v = if std > 0.0 { (*v - mean) / std } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> FeatureRecipe {
        FeatureRecipe {
            n_fft: 256,
            win_length: None,
            hop_length: 128,
            n_mels: 40,
            fmin: 0.0,
            fmax: None,
            window: WindowKind::Hann,
            center: true,
            pad_mode: PadMode::Constant,
            power: 2.0,
            mel_norm: MelNorm::Slaney,
            htk: false,
            db: true,
            db_ref: default_db_ref(),
            amin: 1e-10,
            top_db: Some(80.0),
            normalize: Normalize::Minmax,
        }
    }

    #[test]
    fn slaney_mel_scale_round_trips_and_matches_librosa_points() {
        // librosa.hz_to_mel(1000) == 15, hz_to_mel(4000) == 15 + ln(4)/(ln(6.4)/27)
        assert!((hz_to_mel(1000.0, false) - 15.0).abs() < 1e-12);
        assert!(
            (hz_to_mel(4000.0, false) - (15.0 + 4f64.ln() / (6.4f64.ln() / 27.0))).abs() < 1e-9
        );
        for hz in [0.0, 60.0, 999.0, 1000.0, 2500.0, 4000.0] {
            assert!((mel_to_hz(hz_to_mel(hz, false), false) - hz).abs() < 1e-9);
            assert!((mel_to_hz(hz_to_mel(hz, true), true) - hz).abs() < 1e-9);
        }
    }

    #[test]
    fn frame_count_follows_librosa() {
        let r = recipe();
        assert_eq!(r.n_frames(8000), 63);
        assert_eq!(r.n_frames(56000), 438);
        let mut r2 = r.clone();
        r2.center = false;
        assert_eq!(r2.n_frames(8000), 1 + (8000 - 256) / 128);
    }

    #[test]
    fn silence_gives_zeros_not_nan() {
        let mut fe = FrontEnd::new(&recipe(), 8000, 8000).unwrap();
        let m = fe.features(&vec![0.0; 8000]);
        assert_eq!(m.data.len(), 40 * 63);
        assert!(m.data.iter().all(|&v| v == 0.0));
        let mut std = recipe();
        std.normalize = Normalize::Standard;
        let mut fe = FrontEnd::new(&std, 8000, 8000).unwrap();
        assert!(fe
            .features(&vec![0.25; 8000])
            .data
            .iter()
            .all(|v| v.is_finite()));
    }

    #[test]
    fn a_tone_lights_up_the_mel_band_that_holds_it() {
        let mut fe = FrontEnd::new(&recipe(), 8000, 8000).unwrap();
        let tone: Vec<f32> = (0..8000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin())
            .collect();
        let m = fe.features(&tone);
        let mid = m.n_frames / 2;
        let loudest = (0..m.n_mels)
            .max_by(|&a, &b| m.get(a, mid).total_cmp(&m.get(b, mid)))
            .unwrap();
        let centre_hz = {
            let lo = hz_to_mel(0.0, false);
            let hi = hz_to_mel(4000.0, false);
            mel_to_hz(lo + (hi - lo) * (loudest + 1) as f64 / 41.0, false)
        };
        assert!(
            (centre_hz - 1000.0).abs() < 120.0,
            "loudest band centred at {centre_hz} Hz"
        );
        assert!((m.get(loudest, mid) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn reflect_index_mirrors_like_numpy() {
        // numpy.pad([0,1,2,3], 3, mode="reflect") == [3,2,1,0,1,2,3,2,1,0]
        let got: Vec<usize> = (-3..7).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn bad_recipes_are_refused_with_the_reason() {
        let refusal = |edit: fn(&mut FeatureRecipe)| {
            let mut r = recipe();
            edit(&mut r);
            FrontEnd::new(&r, 8000, 8000).unwrap_err().to_string()
        };
        assert!(refusal(|r| r.fmax = Some(5000.0)).contains("fmax"));
        assert!(refusal(|r| r.win_length = Some(512)).contains("win_length"));
        let odd = refusal(|r| {
            r.n_fft = 255;
            r.win_length = None;
        });
        assert!(odd.contains("n_fft = 255 must be even"), "{odd}");
        let one = refusal(|r| r.win_length = Some(1));
        assert!(one.contains("win_length = 1 must be between 2"), "{one}");
    }
}
