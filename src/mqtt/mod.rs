//! MQTT: the connection to the broker, Home Assistant discovery and the queue that keeps
//! events while the broker is away.
//!
//! INTERFACE (implemented by the MQTT work, used by the daemon): `MqttHandle::spawn`
//! starts the client task; `MqttHandle::send` hands it an [`Update`] without ever
//! blocking; `MqttHandle::shutdown` publishes `offline` and flushes, bounded in time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::{ModelVersion, Update};

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "localhost".into(),
            port: 1883,
        }
    }
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err("host must not be empty".into());
        }
        Ok(())
    }
}

/// What discovery needs to describe the device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// The reason labels (the enum sensor's options are these plus `uncertain`).
    pub labels: Vec<String>,
    pub models: Vec<ModelVersion>,
    pub sw_version: String,
}

/// The handle the daemon holds; cheap to clone.
#[derive(Debug, Clone)]
pub struct MqttHandle {
    tx: tokio::sync::mpsc::UnboundedSender<Update>,
}

impl MqttHandle {
    /// Starts the MQTT task on the current tokio runtime. Never fails for an unreachable
    /// broker: the task retries in the background.
    pub fn spawn(config: &MqttConfig, device: DeviceInfo) -> (Self, tokio::task::JoinHandle<()>) {
        // Placeholder until the MQTT client lands: drains updates so the daemon can be wired.
        let _ = (config, device);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        (Self { tx }, task)
    }

    /// Hands an update to the MQTT task; never blocks.
    pub fn send(&self, update: Update) {
        let _ = self.tx.send(update);
    }

    /// Publishes `offline`, flushes what is queued, and stops, within `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = timeout;
    }
}
