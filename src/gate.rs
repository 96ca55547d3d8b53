//! The energy gate: keeps the CPU idle in a quiet room, opening only when the level rises
//! above an adaptive noise floor.

use serde::{Deserialize, Serialize};

/// `[gate]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Opening margin above the noise floor, dB.
    pub margin_db: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self { margin_db: 10.0 }
    }
}

impl GateConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=60.0).contains(&self.margin_db) {
            return Err(format!("margin_db = {} is outside 0..=60", self.margin_db));
        }
        Ok(())
    }
}
