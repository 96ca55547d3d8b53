//! Audio sources: where samples come from (live capture, a file replayed, raw PCM on
//! stdin) and the `[audio]` config section.

use serde::{Deserialize, Serialize};

/// `[audio]`: the capture device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Input device name or ALSA id (see `babycryd devices`); empty = the default device.
    pub device: String,
    /// Seconds without audio (or with only digital silence) before the source is reported stalled.
    pub stall_seconds: f64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            device: String::new(),
            stall_seconds: 10.0,
        }
    }
}

impl AudioConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=3600.0).contains(&self.stall_seconds) {
            return Err(format!(
                "stall_seconds = {} is outside 1..=3600",
                self.stall_seconds
            ));
        }
        Ok(())
    }
}
