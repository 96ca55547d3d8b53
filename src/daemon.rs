//! The live service behind `babycryd run`: the stages wired together, reloads, shutdown
//! and the systemd notifications.
//!
//! It owns the task layout: the capture thread ([`crate::source::spawn_capture`]) feeds
//! a bounded channel; the analysis task runs the [`CryMonitor`] on each chunk and sends
//! [`Update`]s over a second bounded channel to the output task, which writes the JSON
//! lines and hands updates to MQTT without ever waiting on the network. [`run`] takes
//! every input (settings, source, outputs, a control channel for reload and shutdown)
//! so tests drive the real thing; the CLI turns SIGHUP/SIGTERM/SIGINT into [`Control`].
//! sd_notify: READY=1 once the models are loaded and the first audio frames arrive (a
//! missing or silent-from-the-start microphone keeps the service "activating" with a
//! STATUS= saying so, never failed),
//! WATCHDOG=1 only while audio frames arrive (so systemd restarts a daemon whose
//! microphone vanished or whose audio path hung), STATUS= one line of state.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::error::{ConfigError, ModelError};
use crate::events::{Diagnostics, Event, EventKind, RunSummary, Update};
use crate::model::Model;
use crate::monitor::{CryMonitor, MonitorError, MonitorSettings};
use crate::mqtt::{DeviceInfo, Handover, MqttConfig, MqttHandle, States};
use crate::source::{
    spawn_capture, AudioSource, AudioState, CaptureOptions, RetryPolicy, SourceError, SourceEvent,
};

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Directory for the MQTT spool; empty = `$STATE_DIRECTORY`, else /var/lib/babycryd.
    pub state_dir: String,
    /// Seconds of audio between two diagnostics updates.
    pub diagnostics_seconds: f64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: String::new(),
            diagnostics_seconds: 60.0,
        }
    }
}

impl DaemonConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=3600.0).contains(&self.diagnostics_seconds) {
            return Err(format!(
                "diagnostics_seconds = {} is outside 1..=3600",
                self.diagnostics_seconds
            ));
        }
        Ok(())
    }
}

/// Where the JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    Stdout,
    File(PathBuf),
    None,
}

/// How a run reports and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonOptions {
    pub events: EventSink,
    /// false (`--no-mqtt`) keeps MQTT off whatever the config says.
    pub mqtt: bool,
    /// Reopening a lost source; None = from `[audio]`.
    pub retry: Option<RetryPolicy>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            events: EventSink::Stdout,
            mqtt: true,
            retry: None,
        }
    }
}

/// What the outside world asks of a running daemon.
#[derive(Debug)]
pub enum Control {
    /// A configuration reloaded (SIGHUP): used when valid, logged and ignored otherwise.
    Reload(Box<Result<Settings, ConfigError>>),
    /// Finish the current window, flush, stop (SIGTERM, SIGINT).
    Shutdown,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The source failed in a way reopening cannot mend (a bad recording, a sample rate
    /// that cannot be converted).
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path}: cannot write events: {source}")]
    Events {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Event records the run could not write (its other outputs, MQTT, may have had them).
    /// The first write error is in the message, not the cause chain: a broken pipe there
    /// would read as a closed stdout ([`crate::cli::is_closed_stdout`]), which ends a run
    /// with 0, and records lost to a FIFO whose reader left must not.
    #[error("{target}: {count} event record(s) could not be written: {first_error}")]
    EventsLost {
        target: String,
        count: u64,
        first_error: std::io::Error,
    },
    #[error("cannot start the capture thread: {0}")]
    Thread(std::io::Error),
}

fn sd_notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

fn status_line(state: &AudioState, monitor: &CryMonitor) -> String {
    let crying = monitor.episode().map_or("quiet".to_string(), |e| {
        format!("crying (episode {})", e.number)
    });
    let floor = monitor
        .noise_floor_dbfs()
        .map_or("not yet heard".into(), |f| format!("{f:.0} dBFS"));
    format!(
        "audio {}{}; {crying}; noise floor {floor}",
        state.name(),
        if state.detail().is_empty() {
            String::new()
        } else {
            format!(" ({})", state.detail())
        },
    )
}

/// What the output task is told.
enum OutputMessage {
    Update(Update),
    Mqtt(MqttConfig),
    /// SIGHUP: open the events file again (logrotate moved it).
    ReopenEvents,
}

/// The JSON lines' destination. A write that fails (disk full, a reader gone) is logged
/// once and tried again with the next event, so the output comes back by itself; a
/// file is opened again at its path on SIGHUP, as logrotate expects. The records that
/// could not be written are counted: the run then ends with an error instead of 0.
struct EventsOut {
    /// The file, opened again on SIGHUP; None for stdout and for no output.
    path: Option<PathBuf>,
    writer: Option<Box<dyn Write + Send>>,
    failing: bool,
    /// Records not written, and the first error.
    unwritten: u64,
    first_error: Option<std::io::Error>,
}

impl EventsOut {
    fn open(sink: &EventSink) -> Result<Self, DaemonError> {
        let (path, writer): (_, Option<Box<dyn Write + Send>>) = match sink {
            EventSink::Stdout => (None, Some(Box::new(std::io::stdout()))),
            EventSink::File(path) => (Some(path.clone()), Some(Box::new(Self::open_file(path)?))),
            EventSink::None => (None, None),
        };
        Ok(Self {
            path,
            writer,
            failing: false,
            unwritten: 0,
            first_error: None,
        })
    }

    fn open_file(path: &Path) -> Result<std::fs::File, DaemonError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| DaemonError::Events {
                path: path.to_owned(),
                source,
            })
    }

    fn write(&mut self, event: &Event) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        // One write of the whole line; after a failed one, which may have left part of
        // its line (a disk that filled mid-write), a newline first, so the next record
        // starts a line of its own instead of being glued to the torn one.
        let mut line = String::from(if self.failing { "\n" } else { "" });
        line.push_str(&event.to_json());
        line.push('\n');
        match w.write_all(line.as_bytes()).and_then(|()| w.flush()) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("events are written again");
            }
            Ok(()) => {}
            // The reader of stdout went away (`babycryd run --demo | head`): what it
            // wanted it had, and no record can reach it any more; not an error to log.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && self.path.is_none() => {
                tracing::debug!("stdout closed by its reader: no more event records there");
                self.writer = None;
            }
            Err(e) => {
                self.unwritten += 1;
                if !self.failing {
                    self.failing = true;
                    tracing::error!("cannot write an event (trying again with the next one): {e}");
                }
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// What was lost, once the output is over.
    fn lost(self) -> Option<DaemonError> {
        let source = self.first_error?;
        Some(DaemonError::EventsLost {
            target: self
                .path
                .map_or("stdout".into(), |p| p.display().to_string()),
            count: self.unwritten,
            first_error: source,
        })
    }

    fn reopen(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        match Self::open_file(path) {
            Ok(file) => self.writer = Some(Box::new(file)),
            Err(e) => tracing::error!("{e}; still writing to the file opened before"),
        }
    }
}

/// Writes JSON lines and forwards to MQTT; ends when the channel closes, with the
/// records it could not write.
async fn output_task(
    mut rx: mpsc::Receiver<OutputMessage>,
    mut events: EventsOut,
    mqtt_allowed: bool,
    mqtt_config: MqttConfig,
    device: DeviceInfo,
) -> Option<DaemonError> {
    // Also with `enabled = false`: that task keeps undelivered events handed over for a
    // reload that turns MQTT on again.
    let spawn = |config: &MqttConfig, states: &States, handover| {
        mqtt_allowed.then(|| MqttHandle::resume(config, device.clone(), states.clone(), handover))
    };
    // The states the monitor sent, kept here rather than asked back from the link a
    // reload replaces: a link that does not answer in time still leaves `crying` ON.
    let mut states = States::default();
    let mut current = mqtt_config.clone();
    let mut mqtt = spawn(&current, &states, Handover::default());
    while let Some(message) = rx.recv().await {
        match message {
            OutputMessage::ReopenEvents => events.reopen(),
            OutputMessage::Update(update) => {
                if let Update::Event(event) = &update {
                    events.write(event);
                }
                states.note(&update);
                if let Some((handle, _)) = &mqtt {
                    handle.send(update);
                }
            }
            OutputMessage::Mqtt(config) => {
                if config != current {
                    // (Under --no-mqtt the new settings are kept, for nothing: no word.)
                    if mqtt_allowed {
                        tracing::info!(enabled = config.enabled, host = %config.host, "MQTT settings or credentials changed");
                    }
                    // The new task goes on from the states (`crying` ON in the middle
                    // of an episode) and the old one's undelivered events.
                    let mut handover = Handover::default();
                    if let Some((handle, task)) = mqtt.take() {
                        handover = handle.hand_over(Duration::from_secs(2)).await;
                        task.abort();
                    }
                    current = config;
                    mqtt = spawn(&current, &states, handover);
                }
            }
        }
    }
    if let Some((handle, task)) = mqtt {
        handle.shutdown(Duration::from_secs(2)).await;
        task.abort();
    }
    events.lost()
}

/// Runs the daemon until the source ends or [`Control::Shutdown`]; returns the counters,
/// or the error of a source that failed for good (after the summary, as at the end).
pub async fn run(
    settings: Settings,
    source: Box<dyn AudioSource>,
    options: DaemonOptions,
    mut control: mpsc::Receiver<Control>,
) -> Result<RunSummary, DaemonError> {
    let reason = Model::load(&settings.reason_model)?;
    let detector = settings
        .detector_model
        .as_deref()
        .map(Model::load)
        .transpose()?;
    let mut monitor = CryMonitor::new(
        reason,
        detector,
        MonitorSettings::from_config(&settings.config),
    )?;
    let device = DeviceInfo {
        labels: monitor.reason_labels().to_vec(),
        models: monitor.models().to_vec(),
        sw_version: env!("CARGO_PKG_VERSION").to_string(),
    };

    let events = EventsOut::open(&options.events)?;
    let (out_tx, out_rx) = mpsc::channel(1024);
    let output = tokio::spawn(output_task(
        out_rx,
        events,
        options.mqtt,
        MqttConfig::for_daemon(&settings.config),
        device,
    ));

    let (audio_tx, mut audio_rx) = mpsc::channel(64);
    let stop = Arc::new(AtomicBool::new(false));
    let capture = CaptureOptions {
        target_rate: monitor.sample_rate(),
        stall_seconds: settings.config.audio.stall_seconds,
        retry: options
            .retry
            .unwrap_or_else(|| RetryPolicy::from_config(&settings.config.audio)),
    };
    spawn_capture(source, capture, audio_tx, stop.clone()).map_err(DaemonError::Thread)?;

    let mut settings = settings;
    let mut state = AudioState::Connecting;
    let mut ready = false;
    // The episode the last STATUS= line named.
    let mut status_episode = None;
    let mut last_watchdog: Option<Instant> = None;
    let mut xruns = 0;
    let mut updates = Vec::new();
    let mut next_diagnostics = settings.config.daemon.diagnostics_seconds;
    let mut control_open = true;
    let mut failure = None;
    let mut source_failure = None;
    loop {
        let event = tokio::select! {
            ev = audio_rx.recv() => ev,
            ctl = control.recv(), if control_open => {
                match ctl {
                    None => control_open = false,
                    Some(Control::Shutdown) => {
                        tracing::info!("shutting down");
                        sd_notify(&[sd_notify::NotifyState::Stopping]);
                        break;
                    }
                    Some(Control::Reload(new)) => {
                        // Whatever the new config says: logrotate's SIGHUP.
                        let _ = out_tx.send(OutputMessage::ReopenEvents).await;
                        match *new {
                            Ok(new) => {
                                let (new, waiting) = reloaded(&settings, new, monitor.reason_labels());
                                for warning in waiting {
                                    tracing::warn!("{warning}");
                                }
                                monitor.apply(MonitorSettings::from_config(&new.config));
                                let _ = out_tx.send(OutputMessage::Mqtt(MqttConfig::for_daemon(&new.config))).await;
                                // A shorter interval counts from now, not from the old tick.
                                next_diagnostics = next_diagnostics.min(
                                    monitor.summary().audio_seconds + new.config.daemon.diagnostics_seconds,
                                );
                                settings = new;
                                tracing::info!("configuration reloaded");
                            }
                            Err(e) => tracing::error!("configuration not reloaded, keeping the old one: {e}"),
                        }
                    }
                }
                continue;
            }
        };
        let Some(event) = event else {
            // The capture thread always ends with `End`, even when it panics: a channel
            // closed without it is a thread that died, not an input that ended.
            source_failure = Some(SourceError::CaptureFailed {
                device: "capture".into(),
                reason: "the capture thread ended without a word".into(),
            });
            break;
        };
        let alive = match event {
            SourceEvent::Audio(samples) => {
                // READY=1 once the microphone delivers, not when it opens: a device that
                // opens and never sends a frame keeps the unit "activating", as a
                // missing one does, instead of a READY followed by watchdog restarts.
                if !ready {
                    ready = true;
                    let status = status_line(&state, &monitor);
                    sd_notify(&[
                        sd_notify::NotifyState::Ready,
                        sd_notify::NotifyState::Status(&status),
                    ]);
                }
                if let Err(e) = monitor.push(&samples, &mut |u| updates.push(u)) {
                    failure = Some(e);
                    break;
                }
                let summary = monitor.summary();
                let tick = summary.audio_seconds >= next_diagnostics;
                if tick {
                    next_diagnostics += settings.config.daemon.diagnostics_seconds;
                    updates.push(Update::Diagnostics(diagnostics(&monitor, &state)));
                }
                // `systemctl status` follows the episodes and, at each diagnostics tick,
                // the noise floor.
                let episode = monitor.episode().map(|e| e.number);
                if ready && (tick || episode != status_episode) {
                    status_episode = episode;
                    let status = status_line(&state, &monitor);
                    sd_notify(&[sd_notify::NotifyState::Status(&status)]);
                }
                // Frames arrived (digital silence included: that is reported as a
                // stall, but a restart would not bring sound to a muted microphone).
                ready
            }
            SourceEvent::State(new) => {
                state = new;
                if state.is_gap() {
                    if let Err(e) = monitor.interrupt(&mut |u| updates.push(u)) {
                        failure = Some(e);
                        break;
                    }
                }
                updates.push(Update::Event(Event::new(
                    EventKind::AudioState {
                        state: state.name().into(),
                        detail: state.detail().into(),
                    },
                    monitor.models().to_vec(),
                )));
                updates.push(Update::Diagnostics(diagnostics(&monitor, &state)));
                let status = status_line(&state, &monitor);
                sd_notify(&[sd_notify::NotifyState::Status(&status)]);
                false
            }
            // Alive but without audio (retrying a lost device, or an idle source): the
            // watchdog is for audio, so systemd sees a capture that stopped.
            SourceEvent::Heartbeat => false,
            SourceEvent::Xruns(n) => {
                xruns = n;
                false
            }
            SourceEvent::End { xruns: n, error } => {
                xruns = n;
                source_failure = error;
                break;
            }
        };
        if alive && last_watchdog.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            last_watchdog = Some(Instant::now());
            sd_notify(&[sd_notify::NotifyState::Watchdog]);
        }
        for u in updates.drain(..) {
            let _ = out_tx.send(OutputMessage::Update(u)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    // A shutdown flushes what is pending: the audio the capture thread queued before it
    // saw the stop is analysed too (at most the channel's 64 blocks, then it is empty).
    while let (None, Ok(event)) = (&failure, audio_rx.try_recv()) {
        if let SourceEvent::Audio(samples) = event {
            if let Err(e) = monitor.push(&samples, &mut |u| updates.push(u)) {
                failure = Some(e);
            }
        }
    }
    let finished = monitor.finish(&mut |u| updates.push(u));
    let mut summary = monitor.summary();
    summary.xruns = xruns;
    updates.push(Update::Event(Event::new(
        EventKind::Summary(summary.clone()),
        monitor.models().to_vec(),
    )));
    for u in updates.drain(..) {
        let _ = out_tx.send(OutputMessage::Update(u)).await;
    }
    drop(out_tx);
    let lost = match tokio::time::timeout(Duration::from_secs(4), output).await {
        Ok(Ok(lost)) => lost,
        Ok(Err(e)) => {
            tracing::warn!("the output task failed: {e}");
            None
        }
        Err(_) => {
            tracing::warn!("outputs did not finish in time");
            None
        }
    };
    tracing::info!(
        audio_seconds = format!("{:.1}", summary.audio_seconds),
        gate_openings = summary.gate_openings,
        gate_open_seconds = format!("{:.1}", summary.gate_open_seconds),
        detector_inferences = summary.detector_inferences,
        reason_inferences = summary.reason_inferences,
        episodes = summary.episodes,
        xruns = summary.xruns,
        "stopped"
    );
    if let Some(e) = failure {
        return Err(e.into());
    }
    if let Some(e) = source_failure {
        return Err(e.into());
    }
    finished?;
    if let Some(e) = lost {
        return Err(e);
    }
    Ok(summary)
}

/// The settings a reload gives: `new`, except for what only a restart applies (the
/// models, `[audio]`, `[logging]`), which stays as running; and a warning for each such
/// difference. Kept, not replaced, so the next reload compares with what runs, and warns
/// again while the change still waits for a restart. `reason_labels` are the running
/// reason model's: the new thresholds were checked against the new model's labels.
fn reloaded(
    running: &Settings,
    mut new: Settings,
    reason_labels: &[String],
) -> (Settings, Vec<String>) {
    let mut waiting = Vec::new();
    if new.reason_model != running.reason_model || new.detector_model != running.detector_model {
        waiting.push("model changes take effect after a restart".to_string());
        for label in new
            .config
            .thresholds
            .keys()
            .filter(|l| !reason_labels.contains(l))
        {
            waiting.push(format!(
                "thresholds.{label}: the running reason model has no such label; it applies after the restart that loads the new model"
            ));
        }
    }
    if new.config.audio != running.config.audio {
        waiting.push("[audio] changes take effect after a restart".into());
    }
    if new.config.logging != running.config.logging {
        waiting.push("[logging] changes take effect after a restart".into());
    }
    new.reason_model.clone_from(&running.reason_model);
    new.detector_model.clone_from(&running.detector_model);
    new.config.models.clone_from(&running.config.models);
    new.config.audio.clone_from(&running.config.audio);
    new.config.logging.clone_from(&running.config.logging);
    (new, waiting)
}

fn diagnostics(monitor: &CryMonitor, state: &AudioState) -> Diagnostics {
    Diagnostics {
        noise_floor_dbfs: monitor.noise_floor_dbfs().map(|f| f as f32),
        audio_state: state.name().into(),
        last_inference_ms: monitor.last_inference_ms(),
        gate_openings_per_hour: monitor.gate_openings_last_hour() as f64,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A reload that changes the reason model and sets a threshold for one of the new
    /// model's labels keeps the running model, so that threshold does nothing until the
    /// restart: it is said, not left silent (the config check only knew the new model).
    #[test]
    fn a_threshold_for_a_label_only_the_new_model_has_waits_for_the_restart_with_a_warning() {
        let running = Settings {
            config: crate::config::Config::default(),
            source: None,
            detector_model: None,
            reason_model: PathBuf::from("models/cry-reason.onnx"),
        };
        let labels = ["hungry".to_string(), "tired".to_string()];
        let mut new = running.clone();
        new.reason_model = PathBuf::from("models/other-reason.onnx");
        new.config.thresholds.insert("colic".into(), 0.3);
        new.config.thresholds.insert("hungry".into(), 0.4);
        let (applied, waiting) = reloaded(&running, new, &labels);
        assert_eq!(applied.reason_model, running.reason_model);
        assert_eq!(applied.config.thresholds.get("hungry"), Some(&0.4));
        assert_eq!(waiting.len(), 2, "{waiting:?}");
        assert_eq!(waiting[0], "model changes take effect after a restart");
        assert!(waiting[1].starts_with("thresholds.colic: "), "{waiting:?}");

        // The same thresholds with the model unchanged were checked against it already.
        let mut same = running.clone();
        same.config.thresholds.insert("hungry".into(), 0.4);
        assert!(reloaded(&running, same, &labels).1.is_empty());
    }

    /// A destination that takes `accept` more bytes, then fails once, then takes all.
    struct FillsUp {
        written: Arc<Mutex<Vec<u8>>>,
        accept: usize,
        failed: bool,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.failed || buf.len() <= self.accept {
                self.accept = self.accept.saturating_sub(buf.len());
                self.written.lock().unwrap().extend_from_slice(buf);
                return Ok(buf.len());
            }
            if self.accept > 0 {
                let n = self.accept;
                self.accept = 0;
                self.written.lock().unwrap().extend_from_slice(&buf[..n]);
                return Ok(n);
            }
            self.failed = true;
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            ))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write that fails part-way (the disk filled) leaves a torn line; the records
    /// after it still each make a line of JSON. Before, the next record was appended to
    /// the torn one and lost with it.
    #[test]
    fn a_record_after_a_torn_write_starts_a_line_of_its_own() {
        let event = |episode| {
            Event::new(
                EventKind::EpisodeStart {
                    episode,
                    start_s: 1.0,
                },
                vec![],
            )
        };
        let first = event(1).to_json().len() + 1;
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut out = EventsOut {
            path: None,
            writer: Some(Box::new(FillsUp {
                written: written.clone(),
                accept: first + 20,
                failed: false,
            })),
            failing: false,
            unwritten: 0,
            first_error: None,
        };
        for n in 1..=4 {
            out.write(&event(n));
        }
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let episodes: Vec<u64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["episode"].as_u64().unwrap())
            .collect();
        assert_eq!(episodes, [1, 3, 4], "{text}");
        assert!(!out.failing);
        // The torn record is counted as lost, for the run's exit.
        let lost = out.lost().expect("one record lost").to_string();
        assert!(
            lost.starts_with("stdout: 1 event record(s) could not be written"),
            "{lost}"
        );
    }
}
