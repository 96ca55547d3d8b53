//! Decisions: thresholds and `uncertain`, k-of-n confirmation of crying, and the
//! `[detector]` and `[episode]` settings. The rules live here so the offline `classify`
//! and the live [`crate::monitor`] apply the same ones; the monitor owns the episodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::UNCERTAIN;
use crate::model::{Prediction, Sidecar};

/// The reason decision for one window: the top label when its probability reaches the
/// label's threshold (config first, then the sidecar's) and that threshold is below 1,
/// else `uncertain`.
pub fn reason_decision(
    pred: &Prediction,
    sidecar: &Sidecar,
    thresholds: &BTreeMap<String, f32>,
) -> (String, f32) {
    let (idx, p) = pred.top();
    let label = &sidecar.labels[idx];
    let threshold = thresholds
        .get(label)
        .copied()
        .unwrap_or_else(|| sidecar.threshold_for(label));
    // 1.0 means "never shown" (the shipped sidecar abstains so): a softmax rounded to f32
    // reaches 1.0 itself when one logit leads by about 17.
    if threshold < 1.0 && p >= threshold {
        (label.clone(), p)
    } else {
        (UNCERTAIN.to_string(), p)
    }
}

/// The k-of-n confirmation as one score: the highest, over every span of `n` consecutive
/// detector windows, of the `k`-th largest cry probability in the span. Crying is
/// confirmed exactly when this score reaches the detector threshold, so the offline
/// `classify` and the live daemon apply the same rule. Fewer than `n` windows form one span.
pub fn confirmation_score(probabilities: &[f32], k: usize, n: usize) -> f32 {
    if probabilities.is_empty() || k == 0 {
        return 0.0;
    }
    let n = n.min(probabilities.len()).max(1);
    let k = k.min(n);
    let mut span = Vec::with_capacity(n);
    probabilities
        .windows(n)
        .map(|w| {
            span.clear();
            span.extend_from_slice(w);
            span.sort_by(|a, b| b.total_cmp(a));
            span[k - 1]
        })
        .fold(0.0, f32::max)
}

/// `[detector]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Cry probability at or above which a detector window says "cry"; absent = the sidecar's.
    pub threshold: Option<f32>,
    /// Seconds between detector windows.
    pub hop_seconds: f64,
    /// Crying is confirmed when `confirm_k` of the last `confirm_n` detector windows say cry.
    pub confirm_k: usize,
    pub confirm_n: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            hop_seconds: 0.5,
            confirm_k: 3,
            confirm_n: 4,
        }
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = self.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(format!("threshold = {t} is outside 0..=1"));
            }
        }
        if !(0.05..=5.0).contains(&self.hop_seconds) {
            return Err(format!(
                "hop_seconds = {} is outside 0.05..=5",
                self.hop_seconds
            ));
        }
        if !(1..=32).contains(&self.confirm_n) || !(1..=self.confirm_n).contains(&self.confirm_k) {
            return Err(format!(
                "confirm_k = {} and confirm_n = {} need 1 <= confirm_k <= confirm_n <= 32",
                self.confirm_k, self.confirm_n
            ));
        }
        Ok(())
    }
}

/// `[episode]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodeConfig {
    /// Seconds without crying that end an episode.
    pub quiet_seconds: f64,
    /// Seconds after an episode ends during which crying starts no new episode.
    pub cooldown_seconds: f64,
    /// Overlap of consecutive reason windows (7 s) inside an episode, 0..=0.9.
    pub reason_overlap: f64,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            quiet_seconds: 10.0,
            cooldown_seconds: 60.0,
            reason_overlap: 0.5,
        }
    }
}

impl EpisodeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=600.0).contains(&self.quiet_seconds) {
            return Err(format!(
                "quiet_seconds = {} is outside 1..=600",
                self.quiet_seconds
            ));
        }
        if !(0.0..=3600.0).contains(&self.cooldown_seconds) {
            return Err(format!(
                "cooldown_seconds = {} is outside 0..=3600",
                self.cooldown_seconds
            ));
        }
        if !(0.0..=0.9).contains(&self.reason_overlap) {
            return Err(format!(
                "reason_overlap = {} is outside 0..=0.9",
                self.reason_overlap
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_needs_k_of_n() {
        // Two isolated spikes never make 3 of 4.
        let spikes = [0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1];
        assert!(confirmation_score(&spikes, 3, 4) < 0.5);
        let run = [0.1, 0.9, 0.8, 0.2, 0.7, 0.1];
        assert!((confirmation_score(&run, 3, 4) - 0.7).abs() < 1e-6);
        assert_eq!(confirmation_score(&[], 3, 4), 0.0);
        // Shorter than n: one span.
        assert!((confirmation_score(&[0.6, 0.9], 3, 4) - 0.6).abs() < 1e-6);
    }

    #[test]
    fn a_threshold_of_one_never_shows_the_label_even_at_probability_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cry-reason.toml");
        let sidecar = Sidecar::load(&path).unwrap();
        let hungry = sidecar.labels.iter().position(|l| l == "hungry").unwrap();
        let mut probabilities = vec![0.0; sidecar.labels.len()];
        probabilities[hungry] = 1.0;
        let certain = Prediction { probabilities };
        assert_eq!(
            sidecar.threshold_for("hungry"),
            1.0,
            "the shipped sidecar abstains"
        );
        let none = BTreeMap::new();
        assert_eq!(
            reason_decision(&certain, &sidecar, &none),
            (UNCERTAIN.to_string(), 1.0)
        );
        let lowered = BTreeMap::from([("hungry".to_string(), 0.5)]);
        assert_eq!(
            reason_decision(&certain, &sidecar, &lowered),
            ("hungry".to_string(), 1.0)
        );
    }
}
