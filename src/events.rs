//! The records the daemon emits: one JSON line per classified window, per episode start
//! and end, and per state change. The same records go to stdout or `--events PATH` and to
//! MQTT, so everything observable over MQTT is testable without a broker.
//!
//! Every record has a unique `id` and the wall-clock `timestamp` of the moment it was
//! made (RFC 3339, UTC); a record queued while the broker is away keeps both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The reason reported when the classifier is below its threshold.
pub const UNCERTAIN: &str = "uncertain";

/// Name and version of a model, carried in events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
}

/// The reason decision for one 7 s window of crying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult {
    /// Seconds since the stream started, of the window's first sample.
    pub start_s: f64,
    pub end_s: f64,
    /// The top label, or `uncertain` when below its threshold.
    pub reason: String,
    /// Probability of the top label (0..1).
    pub confidence: f32,
    pub probabilities: BTreeMap<String, f32>,
    /// Cry-detector probability for the window, when a detector is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cry_probability: Option<f32>,
    /// Milliseconds from the window's last sample being available to the result.
    pub latency_ms: f64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A cry episode was confirmed (k of n detector windows said cry).
    EpisodeStart { episode: u64, start_s: f64 },
    /// One classified window inside an episode.
    Window {
        episode: u64,
        index: u32,
        #[serde(flatten)]
        result: WindowResult,
    },
    /// The episode ended after the configured quiet time.
    EpisodeEnd {
        episode: u64,
        start_s: f64,
        end_s: f64,
        duration_s: f64,
        /// The reason over the whole episode (mean probabilities), or `uncertain`.
        dominant_reason: String,
        confidence: f32,
        probabilities: BTreeMap<String, f32>,
        windows: u32,
    },
    /// The audio source changed state: `connecting`, `running`, `lost`, `stalled`, `ended`.
    AudioState { state: String, detail: String },
    /// The last record of a run: what the daemon heard and how often the models ran.
    Summary(RunSummary),
}

/// Counters over a whole run, reported in the last record and the last log line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Seconds of audio analysed (at the models' rate).
    pub audio_seconds: f64,
    pub gate_openings: u64,
    /// Seconds the gate was open (pre-roll included).
    pub gate_open_seconds: f64,
    /// Cry-detector windows run (each one is a front end and an inference).
    pub detector_inferences: u64,
    /// Cry-reason windows run.
    pub reason_inferences: u64,
    pub episodes: u64,
    /// Confirmations of crying that started no episode because of the cooldown: one per
    /// detector hop that confirms (k of the last n windows say cry), so with the default
    /// settings up to two for each second of crying held back, not one per bout.
    pub suppressed_by_cooldown: u64,
    /// Capture overruns counted by the source.
    pub xruns: u64,
}

/// One record as emitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub timestamp: String,
    #[serde(flatten)]
    pub kind: EventKind,
    pub models: Vec<ModelVersion>,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Drawn once per process. With the time and the sequence it keeps ids unique across
/// restarts where time and process id repeat themselves: a Pi without a real-time clock
/// boots at the time it last saved, and systemd starts the daemon at the same point of
/// every boot, often with the same pid.
static RUN: std::sync::LazyLock<u32> = std::sync::LazyLock::new(rand::random);

impl Event {
    /// Stamps a new event with a unique id and the current time.
    pub fn new(kind: EventKind, models: Vec<ModelVersion>) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        // Unique across restarts (time and run) and within a run (sequence).
        let id = format!("{:x}-{:08x}-{seq}", now.as_secs(), *RUN);
        Self {
            id,
            timestamp: rfc3339(now),
            kind,
            models,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }
}

/// Formats a duration since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(
            rfc3339(std::time::Duration::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(std::time::Duration::from_millis(1_795_996_800_123)),
            "2026-11-30T00:00:00.123Z"
        );
    }

    #[test]
    fn ids_are_unique_and_records_are_tagged() {
        let a = Event::new(
            EventKind::EpisodeStart {
                episode: 1,
                start_s: 2.0,
            },
            vec![],
        );
        let b = Event::new(
            EventKind::EpisodeStart {
                episode: 1,
                start_s: 2.0,
            },
            vec![],
        );
        assert_ne!(a.id, b.id);
        // Time, this run's token (the same for both), sequence.
        let parts = |id: &str| id.split('-').map(str::to_owned).collect::<Vec<_>>();
        let (pa, pb) = (parts(&a.id), parts(&b.id));
        assert_eq!((pa.len(), pa[1].len()), (3, 8), "{}", a.id);
        assert_eq!(pa[1], pb[1]);
        // Later (other tests make events at the same time).
        assert!(pb[2].parse::<u64>().unwrap() > pa[2].parse::<u64>().unwrap());
        let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(v["type"], "episode_start");
        assert_eq!(v["episode"], 1);
    }
}

/// Health figures the daemon reports (MQTT diagnostics, logs, `STATUS=`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// The gate's current noise floor, dBFS; null until it has heard the room. (A
    /// placeholder value, -120 at every start, would be a dip in Home Assistant's history
    /// and statistics; null renders "None", which it shows as unknown.)
    pub noise_floor_dbfs: Option<f32>,
    /// `running`, `connecting`, `lost`, `stalled` or `ended`.
    pub audio_state: String,
    /// Milliseconds the last inference took (detector + reason, front ends included);
    /// null until the first.
    pub last_inference_ms: Option<f64>,
    /// Gate openings over the last hour.
    pub gate_openings_per_hour: f64,
}

/// What the daemon tells its outputs (stdout/`--events` JSON lines and MQTT). Sending one
/// never blocks the audio path.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A record for `<base>/event` and the JSON lines.
    Event(Event),
    /// Crying started (true) or the episode ended (false): `<base>/crying`.
    Crying(bool),
    /// The latest reason (or `uncertain`) and its confidence 0..1: `<base>/reason`, `<base>/confidence`.
    Reason { reason: String, confidence: f32 },
    /// Periodic health figures.
    Diagnostics(Diagnostics),
}
