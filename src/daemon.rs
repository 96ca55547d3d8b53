//! Daemon wiring: the tasks of `babycryd run`, their channels, signals and systemd
//! notifications.

use serde::{Deserialize, Serialize};

/// `[daemon]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Directory for the MQTT spool; empty = `$STATE_DIRECTORY`, else /var/lib/babycryd.
    pub state_dir: String,
}

impl DaemonConfig {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
