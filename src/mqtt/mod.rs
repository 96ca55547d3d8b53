//! MQTT: the connection to the broker, Home Assistant discovery and the queue that keeps
//! events while the broker is away.
//!
//! This module owns the `[mqtt]` settings ([`MqttConfig`], secrets redacted when printed
//! or logged), the topic layout ([`Topics`]) and the handle the daemon holds
//! ([`MqttHandle`]). `discovery` builds the Home Assistant config payloads, `queue` keeps
//! undelivered events in order (bounded, optionally spooled to the state directory) and
//! `link` is the client task: reconnects with backoff, republishes discovery and states
//! after every ConnAck and on Home Assistant's birth message, and delivers queued events
//! in order, one at a time, removing each only when the broker acknowledges it (QoS 1
//! PUBACK). `announced` records the device announced, so that one announced before under
//! other topics is cleared from Home Assistant.
//!
//! INTERFACE (used by the daemon): `MqttHandle::spawn` starts the client task;
//! `MqttHandle::send` hands it an [`Update`] without ever blocking;
//! `MqttHandle::shutdown` publishes `offline` and flushes, bounded in time;
//! `MqttHandle::hand_over` does the same and returns a [`Handover`] (the undelivered
//! events) from which, with the current [`States`] the daemon keeps, `MqttHandle::resume`
//! starts the task for new settings after a reload.

mod announced;
mod discovery;
mod link;
mod queue;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::{ModelVersion, Update};

pub use discovery::discovery_messages;
pub use link::{incoming, remove_device, Ignored, IncomingAction, LinkStatus, Removed, States};

/// The environment variable holding the MQTT password when neither `[mqtt] password` nor
/// `password_file` is set (e.g. `Environment=`/`EnvironmentFile=` in a systemd drop-in).
pub const PASSWORD_ENV: &str = "BABYCRYD_MQTT_PASSWORD";

/// Where Home Assistant publishes its birth message (`online`). Its own setting, apart
/// from the discovery prefix, whose change leaves it here.
pub const HA_STATUS_TOPIC: &str = "homeassistant/status";

/// Name of the spool file inside the state directory.
pub const SPOOL_FILE: &str = "mqtt-spool.jsonl";

/// Errors of the MQTT stage that are worth a clear message.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.password_file {path}: cannot read: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "mqtt.password_file {path}: readable by everyone (mode {mode:o}); run `chmod o-rwx {path}`"
    )]
    PasswordFileWorldReadable { path: PathBuf, mode: u32 },
    #[error("mqtt TLS: {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("mqtt: {0}")]
    Broker(String),
}

/// A string that is never printed: `check-config` and `Debug` show `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

/// `[mqtt]`. Every key is documented, with its default and range, in
/// `config/babycryd.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Empty: `babycryd-<node_id>`.
    pub client_id: String,
    pub username: String,
    pub password: Secret,
    /// A file holding the password (first line); must not be world-readable.
    pub password_file: String,
    pub keepalive_seconds: u16,
    /// Empty: `babycry/<node_id>`.
    pub base_topic: String,
    pub discovery_prefix: String,
    /// Empty: the host name, with characters outside `[a-zA-Z0-9_-]` replaced by `_`.
    pub node_id: String,
    pub device_name: String,
    pub tls: bool,
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
    /// Undelivered events kept in memory; the oldest is dropped (and counted) beyond it.
    pub queue_size: usize,
    /// Keep undelivered events in `<state_dir>/mqtt-spool.jsonl` across restarts.
    pub spool: bool,
    /// The resolved state directory (from `[daemon] state_dir`); set by the daemon
    /// through [`MqttConfig::with_state_dir`], not read from the file.
    #[serde(skip)]
    pub state_dir: Option<PathBuf>,
    /// What the files it names held when the daemon read these settings
    /// ([`MqttConfig::for_daemon`]): the link reads them once, when it starts, so settings
    /// whose files changed (a rotated password, a renewed certificate) differ and a reload
    /// starts a new link with them.
    #[serde(skip)]
    pub files_digest: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "localhost".into(),
            port: 1883,
            client_id: String::new(),
            username: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            keepalive_seconds: 30,
            base_topic: String::new(),
            discovery_prefix: "homeassistant".into(),
            node_id: String::new(),
            device_name: "Baby monitor".into(),
            tls: false,
            ca_file: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            queue_size: 1000,
            spool: true,
            state_dir: None,
            files_digest: 0,
        }
    }
}

/// The longest configured `node_id`: it begins the client id and every unique id.
const MAX_NODE_ID_CHARS: usize = 64;

/// Home Assistant ids allow only these characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The longest `base_topic` or `discovery_prefix`, bytes: the topics made from it (a
/// discovery config's adds about 60) stay far inside MQTT's 65535, which a last will over
/// it broke: the broker closed every connection as a protocol error, retried for ever.
const MAX_TOPIC_PREFIX_BYTES: usize = 256;

/// The longest `device_name`, bytes: it goes into every discovery payload, and one over
/// the link's packet limit could never be announced (a connection lost at each try).
const MAX_DEVICE_NAME_BYTES: usize = 256;

/// Why `t` cannot begin babycryd's topics, if it cannot.
fn topic_prefix_problem(t: &str) -> Option<String> {
    if t.is_empty() {
        return Some("must not be empty".into());
    }
    if t.contains(['+', '#']) {
        return Some("no wildcards ('+', '#')".into());
    }
    if t.starts_with('/') || t.ends_with('/') {
        return Some("no leading or trailing '/'".into());
    }
    // MQTT keeps topics beginning with '$' for the broker ($SYS): Mosquitto refuses a
    // client's publish there but still acknowledges it, so every event would be lost.
    if t.starts_with('$') {
        return Some("must not begin with '$' (the broker's own topics)".into());
    }
    // Home Assistant refuses a discovery config or state topic with a control character
    // or a non-character in it: the entities would never appear.
    if t.chars().any(|c| {
        c.is_control()
            || (0xFDD0..=0xFDEF).contains(&u32::from(c))
            || u32::from(c) & 0xFFFE == 0xFFFE
    }) {
        return Some("no control characters or Unicode non-characters".into());
    }
    if t.len() > MAX_TOPIC_PREFIX_BYTES {
        return Some(format!(
            "{} bytes: at most {MAX_TOPIC_PREFIX_BYTES}",
            t.len()
        ));
    }
    None
}

/// The state directory: `[daemon] state_dir`, else `$STATE_DIRECTORY` (systemd; the first
/// of several), else `/var/lib/babycryd`.
pub fn resolve_state_dir(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|d| {
            let first = d.to_string_lossy().split(':').next()?.to_owned();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/babycryd"))
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err("host must not be empty".into());
        }
        if self.port == 0 {
            return Err("port = 0 must be within 1..=65535".into());
        }
        if !(5..=3600).contains(&self.keepalive_seconds) {
            return Err(format!(
                "keepalive_seconds = {} must be within 5..=3600",
                self.keepalive_seconds
            ));
        }
        // An episode end is two messages (its record on `event` and the event entity's
        // on `episode`), queued together: with one place the second would drop the first.
        if !(2..=100_000).contains(&self.queue_size) {
            return Err(format!(
                "queue_size = {} must be within 2..=100000",
                self.queue_size
            ));
        }
        if !self.node_id.is_empty() && !valid_id(&self.node_id) {
            return Err(format!(
                "node_id = {:?} may only contain a-z, A-Z, 0-9, _ and -",
                self.node_id
            ));
        }
        if self.node_id.len() > MAX_NODE_ID_CHARS {
            return Err(format!(
                "node_id is {} characters long: at most {MAX_NODE_ID_CHARS}",
                self.node_id.len()
            ));
        }
        if !self.client_id.is_empty() && self.client_id.len() > 64 {
            return Err("client_id must be at most 64 bytes (UTF-8)".into());
        }
        if !self.base_topic.is_empty() {
            if let Some(problem) = topic_prefix_problem(&self.base_topic) {
                return Err(format!("base_topic = {:?}: {problem}", self.base_topic));
            }
        }
        if let Some(problem) = topic_prefix_problem(&self.discovery_prefix) {
            return Err(format!(
                "discovery_prefix = {:?}: {problem}",
                self.discovery_prefix
            ));
        }
        // babycryd's retained `online` there would be read as Home Assistant's birth (a
        // rediscovery every second or two, by every integration that listens), and its
        // last will would say Home Assistant is offline.
        if self.topics().status == HA_STATUS_TOPIC {
            return Err(format!(
                "base_topic = {:?} would put babycryd's status on Home Assistant's own ({HA_STATUS_TOPIC})",
                self.base_topic
            ));
        }
        if self.host.contains("://") {
            return Err(format!(
                "host = {:?}: a host name or address, not a URL (set port, and tls = true for mqtts)",
                self.host
            ));
        }
        if let Some((name, port)) = self.host.rsplit_once(':') {
            if !name.contains(':') && port.parse::<u16>().is_ok() {
                return Err(format!(
                    "host = {:?}: the port goes in port = {port}, not in host",
                    self.host
                ));
            }
        }
        if self.device_name.trim().is_empty() {
            return Err("device_name must not be empty".into());
        }
        if self.device_name.len() > MAX_DEVICE_NAME_BYTES {
            return Err(format!(
                "device_name is {} bytes long: at most {MAX_DEVICE_NAME_BYTES}",
                self.device_name.len()
            ));
        }
        if !self.password.0.is_empty() && !self.password_file.is_empty() {
            return Err("password and password_file: set one, not both".into());
        }
        if (!self.password.0.is_empty() || !self.password_file.is_empty())
            && self.username.is_empty()
        {
            return Err("password needs username to be set".into());
        }
        if self.tls && self.ca_file.is_empty() {
            return Err("ca_file must name the broker's CA certificate when tls = true".into());
        }
        if self.client_cert.is_empty() != self.client_key.is_empty() {
            return Err("client_cert and client_key go together".into());
        }
        if !self.tls && (!self.ca_file.is_empty() || !self.client_cert.is_empty()) {
            return Err("ca_file and client_cert need tls = true".into());
        }
        if self.enabled {
            self.password().map_err(in_section)?;
            if self.tls {
                link::tls_config(self).map_err(in_section)?;
            }
        }
        Ok(())
    }

    /// What the daemon passes to [`MqttHandle::spawn`]: `[mqtt]` with the state directory
    /// resolved from `[daemon] state_dir` (see [`resolve_state_dir`]).
    pub fn for_daemon(config: &crate::config::Config) -> Self {
        let mut mqtt = config
            .mqtt
            .clone()
            .with_state_dir(resolve_state_dir(&config.daemon.state_dir));
        mqtt.files_digest = mqtt.read_files_digest();
        mqtt
    }

    /// A digest of what the files it names hold now (password file, CA, client
    /// certificate and key).
    fn read_files_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        for path in [
            &self.password_file,
            &self.ca_file,
            &self.client_cert,
            &self.client_key,
        ] {
            if !path.is_empty() {
                std::fs::read(path).ok().hash(&mut digest);
            }
        }
        digest.finish()
    }

    /// A copy that spools to `dir` (when `spool` is on).
    pub fn with_state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }

    /// The spool file, when spooling is on and a state directory is known.
    pub fn spool_path(&self) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .filter(|_| self.spool)
            .map(|d| d.join(SPOOL_FILE))
    }

    /// The node id: configured, else the sanitised host name.
    pub fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let id: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if id.is_empty() {
            "babycryd".into()
        } else {
            id
        }
    }

    pub fn client_id(&self) -> String {
        if self.client_id.is_empty() {
            format!("babycryd-{}", self.node_id())
        } else {
            self.client_id.clone()
        }
    }

    pub fn topics(&self) -> Topics {
        let node = self.node_id();
        let base = if self.base_topic.is_empty() {
            format!("babycry/{node}")
        } else {
            self.base_topic.clone()
        };
        Topics::new(&base, &self.discovery_prefix, &node)
    }

    /// The password: inline, else the first line of `password_file` (refused when the
    /// file is readable by everyone), else `$BABYCRYD_MQTT_PASSWORD` when set and not empty.
    /// Where the password comes from, in [`Self::password`]'s order. Without a username
    /// there is none: MQTT sends a password only with a username (an inline one or a
    /// password_file is then refused by [`Self::validate`]).
    fn password_from(&self) -> PasswordFrom<'_> {
        if !self.password.0.is_empty() {
            PasswordFrom::Config(&self.password.0)
        } else if !self.password_file.is_empty() {
            PasswordFrom::File(&self.password_file)
        } else {
            match std::env::var(PASSWORD_ENV) {
                Ok(p) if p.is_empty() => PasswordFrom::Nowhere,
                Ok(_) if self.username.is_empty() => PasswordFrom::EnvWithoutUsername,
                Ok(p) => PasswordFrom::Env(p),
                Err(_) => PasswordFrom::Nowhere,
            }
        }
    }

    /// A warning for a `$BABYCRYD_MQTT_PASSWORD` that is set but cannot be used: without
    /// a username the connection is anonymous, which a broker that allows it accepts, so
    /// nothing else would say that the password was never sent.
    pub fn unused_password_warning(&self) -> Option<String> {
        matches!(self.password_from(), PasswordFrom::EnvWithoutUsername).then(|| {
            format!(
                "${PASSWORD_ENV} is set but [mqtt] username is empty: connecting without \
                 credentials (set username to use the password)"
            )
        })
    }

    /// Where [`Self::password`] takes the password from, for `check-config`.
    pub fn password_source(&self) -> String {
        match self.password_from() {
            PasswordFrom::Config(_) => "password (in the config)".into(),
            PasswordFrom::File(path) => format!("password_file {path}"),
            PasswordFrom::Env(_) => format!("${PASSWORD_ENV}"),
            PasswordFrom::EnvWithoutUsername => {
                format!("none (${PASSWORD_ENV} is set but ignored: no username)")
            }
            PasswordFrom::Nowhere => "none".into(),
        }
    }

    pub fn password(&self) -> Result<Option<String>, MqttError> {
        match self.password_from() {
            PasswordFrom::Config(p) => Ok(Some(p.to_owned())),
            PasswordFrom::File(path) => read_password_file(Path::new(path)).map(Some),
            PasswordFrom::Env(p) => Ok(Some(p)),
            PasswordFrom::EnvWithoutUsername | PasswordFrom::Nowhere => Ok(None),
        }
    }
}

/// The password's place: inline, a file, the environment, or none.
enum PasswordFrom<'a> {
    Config(&'a str),
    File(&'a str),
    Env(String),
    /// `$BABYCRYD_MQTT_PASSWORD` is set, but there is no username to send it with.
    EnvWithoutUsername,
    Nowhere,
}

/// An [`MqttError`] as a reason inside `[mqtt]` (the caller prefixes `mqtt.`).
fn in_section(e: MqttError) -> String {
    match e {
        MqttError::Tls { path, reason } => format!("tls: {}: {reason}", path.display()),
        other => {
            let text = other.to_string();
            text.strip_prefix("mqtt.").unwrap_or(&text).to_owned()
        }
    }
}

fn read_password_file(path: &Path) -> Result<String, MqttError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| MqttError::PasswordFile {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(MqttError::PasswordFileWorldReadable {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Every topic the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub node_id: String,
    pub discovery_prefix: String,
    pub base: String,
    /// `online`/`offline`, retained; the last will.
    pub status: String,
    /// `ON`/`OFF`, retained.
    pub crying: String,
    /// The latest reason or `uncertain`, retained.
    pub reason: String,
    /// Percent, retained.
    pub confidence: String,
    /// One JSON record per classified window and per episode end, QoS 1, not retained.
    pub event: String,
    /// The event entity's topic: `{"event_type": <dominant reason>, ...}` once per
    /// episode, not retained.
    pub episode: String,
    /// Health figures as JSON, retained.
    pub diagnostics: String,
    /// Home Assistant's birth/last-will topic ([`HA_STATUS_TOPIC`]).
    pub ha_status: String,
}

impl Topics {
    pub fn new(base: &str, discovery_prefix: &str, node_id: &str) -> Self {
        let t = |s: &str| format!("{base}/{s}");
        Self {
            node_id: node_id.into(),
            discovery_prefix: discovery_prefix.into(),
            base: base.into(),
            status: t("status"),
            crying: t("crying"),
            reason: t("reason"),
            confidence: t("confidence"),
            event: t("event"),
            episode: t("episode"),
            diagnostics: t("diagnostics"),
            ha_status: HA_STATUS_TOPIC.into(),
        }
    }

    /// The topic for a queued message, stored by suffix so a spool survives a renamed base.
    pub fn under_base(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.base)
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

enum Msg {
    Update(Update),
    Shutdown(Duration, tokio::sync::oneshot::Sender<Handover>),
}

/// What a stopping MQTT task hands to the one that replaces it (a reload that changed
/// `[mqtt]`): the events not yet delivered, in order. Empty ([`Default`]) at start-up,
/// and when the task does not answer in time.
#[derive(Debug, Default)]
pub struct Handover {
    /// None: nothing handed over, the spool (if any) is read as at start-up.
    outbox: Option<queue::Carried>,
}

/// The handle the daemon holds; cheap to clone.
#[derive(Debug, Clone)]
pub struct MqttHandle {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    status: tokio::sync::watch::Receiver<LinkStatus>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Update(u) => write!(f, "Update({u:?})"),
            Msg::Shutdown(t, _) => write!(f, "Shutdown({t:?})"),
        }
    }
}

impl MqttHandle {
    /// Starts the MQTT task on the current tokio runtime. Never fails for an unreachable
    /// broker: the task retries in the background. With `enabled = false` the task sends
    /// nothing (see [`MqttHandle::resume`]).
    pub fn spawn(config: &MqttConfig, device: DeviceInfo) -> (Self, tokio::task::JoinHandle<()>) {
        Self::resume(config, device, States::default(), Handover::default())
    }

    /// [`MqttHandle::spawn`] for the settings of a reload: `states` (kept by the caller
    /// from the updates it sent, so that a task that did not answer loses none of them)
    /// are published on the first connect, and the events the task it replaces handed
    /// over ([`MqttHandle::hand_over`]) go first. With `enabled = false` the task keeps
    /// the handover (not the events it is sent) for a later reload.
    pub fn resume(
        config: &MqttConfig,
        device: DeviceInfo,
        states: States,
        handover: Handover,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (status_tx, status) = tokio::sync::watch::channel(LinkStatus::default());
        let task = if config.enabled {
            tokio::spawn(link::run(
                config.clone(),
                device,
                rx,
                status_tx,
                states,
                handover,
            ))
        } else {
            tokio::spawn(link::idle(rx, status_tx, handover))
        };
        (Self { tx, status }, task)
    }

    /// Hands an update to the MQTT task; never blocks.
    pub fn send(&self, update: Update) {
        let _ = self.tx.send(Msg::Update(update));
    }

    /// The connection as the task sees it now.
    pub fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    /// Publishes `offline`, flushes what is queued (to the broker, else to the spool), and
    /// stops, within `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        self.hand_over(timeout).await;
    }

    /// [`MqttHandle::shutdown`], returning what the task for new settings needs besides
    /// the states ([`MqttHandle::resume`]): what is still undelivered. Empty when the
    /// task is gone or does not answer in time; the new one then reads the spool.
    pub async fn hand_over(self, timeout: Duration) -> Handover {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Shutdown(timeout, done_tx)).is_err() {
            return Handover::default();
        }
        // The task bounds itself by `timeout`; a little slack for writing the spool.
        match tokio::time::timeout(timeout + Duration::from_secs(2), done_rx).await {
            Ok(Ok(handover)) => handover,
            _ => Handover::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MqttConfig {
        crate::config::Config::parse_str(&format!("[mqtt]\n{text}"), Path::new("c.toml"))
            .unwrap()
            .mqtt
    }

    #[test]
    fn the_password_is_never_printed() {
        let c = parse("username = \"u\"\npassword = \"hunter2\"\n");
        assert_eq!(c.password.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let printed = toml::to_string(&c).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("password = \"<redacted>\""), "{printed}");
    }

    #[test]
    fn ranges_and_combinations_are_checked() {
        let bad = [
            ("keepalive_seconds = 2", "keepalive_seconds"),
            ("queue_size = 0", "queue_size"),
            ("queue_size = 1", "queue_size"),
            ("node_id = \"baby room\"", "node_id"),
            ("base_topic = \"a/#\"", "base_topic"),
            ("discovery_prefix = \"\"", "discovery_prefix"),
            ("password = \"x\"", "username"),
            ("tls = true", "ca_file"),
            (
                "tls = true\nca_file = \"ca\"\nclient_cert = \"c\"",
                "client_key",
            ),
            ("port = 0", "port"),
            // Topics Home Assistant or the broker would not take, and one whose status
            // is Home Assistant's own.
            ("base_topic = \"homeassistant\"", "Home Assistant's own"),
            ("base_topic = \"$SYS/baby\"", "'$'"),
            ("discovery_prefix = \"$share\"", "'$'"),
            ("base_topic = \"baby\\troom\"", "control characters"),
            (
                "discovery_prefix = \"home\\u0085assistant\"",
                "control characters",
            ),
            ("base_topic = \"baby\\uFFFF\"", "non-characters"),
            ("host = \"mqtt://broker\"", "not a URL"),
            ("host = \"broker:1883\"", "port = 1883"),
        ];
        for (text, key) in bad {
            let e = parse(text).validate().unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        let long = format!(
            "base_topic = \"{}\"",
            "a".repeat(MAX_TOPIC_PREFIX_BYTES + 1)
        );
        let e = parse(&long).validate().unwrap_err();
        assert!(e.contains("at most 256"), "{e}");
        let long = format!("node_id = \"{}\"", "n".repeat(MAX_NODE_ID_CHARS + 1));
        let e = parse(&long).validate().unwrap_err();
        assert!(e.contains("node_id is 65 characters long"), "{e}");
        let long = format!("device_name = \"{}\"", "ü".repeat(129));
        let e = parse(&long).validate().unwrap_err();
        assert!(
            e.contains("device_name is 258 bytes long: at most 256"),
            "{e}"
        );
        let longest = format!("device_name = \"{}\"", "ü".repeat(128));
        assert_eq!(parse(&longest).validate(), Ok(()));
        assert_eq!(MqttConfig::default().validate(), Ok(()));
        // An IPv6 address is a host, not a host and a port; a topic below Home
        // Assistant's prefix is allowed, only its status topic is not.
        for good in [
            "host = \"fe80::1\"",
            "host = \"::1\"",
            "base_topic = \"homeassistant/baby\"",
            "base_topic = \"kinderzimmer/überwachung\"",
        ] {
            assert_eq!(parse(good).validate(), Ok(()), "{good}");
        }
    }

    #[test]
    fn a_world_readable_password_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = parse(&format!(
            "username = \"u\"\npassword_file = \"{}\"",
            path.display()
        ));
        let e = c.validate().unwrap_err();
        let want = format!(
            "password_file {}: readable by everyone (mode 644)",
            path.display()
        );
        assert!(e.starts_with(&want), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.password().unwrap().as_deref(), Some("s3cret"));
    }

    #[test]
    fn topics_follow_the_node_id() {
        let c = parse("node_id = \"nursery\"");
        let t = c.topics();
        assert_eq!(t.status, "babycry/nursery/status");
        assert_eq!(t.ha_status, "homeassistant/status");
        assert_eq!(c.client_id(), "babycryd-nursery");
        let c = parse("node_id = \"n\"\nbase_topic = \"home/baby\"");
        assert_eq!(c.topics().event, "home/baby/event");
        // A custom discovery prefix moves the configs, not Home Assistant's birth topic.
        let c = parse("discovery_prefix = \"ha\"");
        assert_eq!(c.topics().ha_status, "homeassistant/status");
        assert!(valid_id(&MqttConfig::default().node_id()));
    }

    #[test]
    fn the_state_dir_falls_back_to_var_lib() {
        assert_eq!(resolve_state_dir("/srv/x"), PathBuf::from("/srv/x"));
        let c = MqttConfig::default().with_state_dir("/srv/x".into());
        assert_eq!(
            c.spool_path(),
            Some(PathBuf::from("/srv/x/mqtt-spool.jsonl"))
        );
        let off = MqttConfig { spool: false, ..c };
        assert_eq!(off.spool_path(), None);
        let mut config = crate::config::Config::default();
        config.daemon.state_dir = "/srv/y".into();
        assert_eq!(
            MqttConfig::for_daemon(&config).spool_path(),
            Some(PathBuf::from("/srv/y/mqtt-spool.jsonl"))
        );
    }
}
