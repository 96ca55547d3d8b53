//! The client task: one rumqttc event loop polled in its own task (the driver), with
//! exponential backoff and jitter between failed attempts (1 s to 60 s; a connection that
//! ends within 30 s of its ConnAck does not reset it), and the link task that owns
//! everything else: the outbox, the current states, discovery and shutdown.
//!
//! The link task never awaits a publish: it uses `try_publish`, and learns what the broker
//! has taken from the driver's events. Every publish is tagged in submission order; rumqttc
//! reports each one as `Outgoing::Publish(pkid)` in that same order, so a PUBACK's packet
//! id maps back to its outbox entry, which is only then removed. The session is clean,
//! so after a reconnect rumqttc forgets unacknowledged packets and the link task resends
//! them from its outbox, in order, after discovery, the current states and `online`.
//!
//! While running, queued events go out one at a time, each only when nothing else the
//! link published is awaiting its PUBACK. Mosquitto, like most brokers, leaves Nagle's
//! algorithm on: a PUBACK sent while the broker's previous packet on the connection is
//! still unacknowledged at the TCP level waits for the client's delayed ACK (up to 40 ms).
//! Measured on loopback with events 6 ms apart and 64 in flight, the last event's PUBACK
//! waited for the next publish every time, so a broker killed right after an event had
//! already forwarded it to subscribers but never acknowledged it, and the resend doubled
//! it. Sent alone, an event's PUBLISH carries the TCP ACK of everything the broker sent
//! before, so its PUBACK leaves at once (about 0.13 ms round trip on loopback).
//!
//! A PUBACK that reaches the daemon counts even when the connection ends with it: rumqttc
//! reads packets in batches, and one read together with the end of the connection (a
//! broker killed right after acknowledging) stays in its state until after the next
//! ConnAck, so the driver hands such events over before it reports the failure.
//!
//! Delivery is therefore exactly once unless the broker dies between forwarding an event
//! and sending its PUBACK: that event is sent again (QoS 1 cannot tell), so consumers that
//! must never double-count dedupe by the event's unique `id`. The same holds for a daemon
//! killed while a backlog is being delivered: the spool records deliveries once a second
//! then (and at once when the last event is acknowledged), and the next start resends
//! what it had not yet recorded. QoS 2 would not close that
//! window: Mosquitto forwards a QoS 2 message on PUBREL and, killed, forgets it, so a lost
//! PUBCOMP leaves the same doubt, and answering it with a PUBREL only (no resend) would
//! lose the event instead of doubling it.
//!
//! On a connection, before discovery, the link clears what a device announced before
//! under other topics (another node id, base topic or discovery prefix) left retained,
//! until the broker has acknowledged it once (see [`super::announced`]).
//!
//! When shutting down, the outbox is flushed as fast as the channel takes it instead,
//! and `offline` follows its last event (Home Assistant drops an event that reaches an
//! unavailable entity). When a reload replaces the link (new `[mqtt]` settings), the old
//! one flushes what it can in the time it is given, publishes `offline` once all is
//! submitted (else its last will says it when it is dropped) and hands its undelivered
//! events, in order, to the new one, which delivers them before any newer ones; the new
//! one starts from the current states the daemon kept ([`States`]) and announces them on
//! its first ConnAck.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::announced::Retirement;
use super::discovery::{discovery_messages, episode_payload, retained_topics, state_topics};
use super::queue::{Outbox, EPISODE_TOPIC, EVENT_TOPIC};
use super::{DeviceInfo, Handover, MqttConfig, MqttError, Msg, Topics, HA_STATUS_TOPIC};
use crate::events::{Diagnostics, EventKind, Update};

/// The largest MQTT packet sent or taken, bytes (a discovery config is a few KiB).
const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Requests rumqttc's channel holds; when closing, the link task keeps at most half of
/// it filled with events.
const CHANNEL: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection must stay up this long before the backoff starts again from its first
/// step. Resetting at the ConnAck would retry a broker that accepts and drops at once (two
/// monitors with the same client id taking over each other's session) every second
/// forever, each time with discovery.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Home Assistant's birth message triggers rediscovery after a random delay in this range
/// (milliseconds), so a restarted HA is not flooded by every device at once.
const REDISCOVERY_DELAY_MS: std::ops::Range<u64> = 500..2500;

/// The connection as the link task sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub connected: bool,
    /// Successful connections (ConnAcks) since start.
    pub connections: u64,
    /// Failed connection attempts and lost connections since start.
    pub failures: u64,
    /// The last error, as logged.
    pub last_error: Option<String>,
    /// Events waiting for the broker.
    pub queued: usize,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Times discovery was published.
    pub discoveries: u64,
}

/// What `<base>/event` carries: one record per classified window and one per episode end.
/// Episode starts are `crying` = ON, audio states are diagnostics, and the run summary is
/// for the JSON lines only.
fn on_event_topic(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Window { .. } | EventKind::EpisodeEnd { .. }
    )
}

/// The delay before retry number `failures` (1-based): a random point in the upper half
/// of a ceiling that doubles from 2 s and stops at 60 s, so 1..2 s, 2..4 s, 4..8 s, ...
/// 30..60 s. Every delay is jittered, the first one too: clients that lost the same
/// broker, or two that take over each other's session, do not retry in step.
pub(crate) fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_MIN
        .saturating_mul(2u32 << failures.saturating_sub(1).min(6))
        .min(BACKOFF_MAX);
    ceiling
        .mul_f64(rand::rng().random_range(0.5..=1.0))
        .clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// The size of the message over [`MAX_PACKET_BYTES`] that ended the connection, if one
/// did.
fn oversize_message(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(bytes),
        )) => Some(*bytes),
        _ => None,
    }
}

/// A readable cause for a failed connection.
fn describe(e: &ConnectionError, cfg: &MqttConfig) -> String {
    let at = format!("{}:{}", cfg.host, cfg.port);
    if let Some(bytes) = oversize_message(e) {
        // The only messages that come in are on Home Assistant's status topic; a retained
        // one over the limit comes back at every connection, and only clearing it helps.
        return format!(
            "broker {at} sent a message of {bytes} bytes on {HA_STATUS_TOPIC}, over the \
             {MAX_PACKET_BYTES} bytes babycryd takes: if it is retained it comes back at every \
             connection; clear it with `mosquitto_pub -r -n -t {HA_STATUS_TOPIC}`"
        );
    }
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => format!(
            "broker {at} refused the credentials (username {:?}): wrong password, or not allowed by the broker's ACL; check [mqtt] username, password, password_file or $BABYCRYD_MQTT_PASSWORD",
            cfg.username
        ),
        ConnectionError::ConnectionRefused(code) => format!("broker {at} refused the connection: {code:?}"),
        ConnectionError::Io(io) => format!("cannot reach broker {at}: {io}"),
        ConnectionError::Tls(tls) => {
            let reason = tls.to_string();
            format!(
                "TLS with broker {at} failed: {reason}{}",
                certificate_hint(&reason, "the broker's certificate")
            )
        }
        other => format!("connection to broker {at} failed: {other}"),
    }
}

/// What a rustls refusal of `whose` certificate means, for the certificates people make
/// with openssl (`man mosquitto-tls`); empty for other reasons. rustls (webpki) takes
/// X.509 v3 only, which `openssl x509 -req` makes only with extensions. (A host missing
/// from the subjectAltName it explains itself.)
fn certificate_hint(reason: &str, whose: &str) -> String {
    if reason.contains("UnsupportedCertVersion") {
        format!(
            "; {whose} is an X.509 v1 certificate (`openssl x509 -req` without `-extfile` \
             makes those) and rustls takes v3 only: sign it again with `-extfile` naming \
             its extensions (for a broker, subjectAltName = DNS:<host> or IP:<address>)"
        )
    } else {
        String::new()
    }
}

/// The rustls client configuration (ring provider) for `ca_file` and the optional client
/// certificate.
pub(crate) fn tls_config(cfg: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |path: &str, reason: String| MqttError::Tls {
        path: path.into(),
        reason,
    };
    let certs = |path: &str| -> Result<Vec<CertificateDer<'static>>, MqttError> {
        let list = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(path, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(path, e.to_string()))?;
        if list.is_empty() {
            return Err(err(path, "no PEM certificate in the file".into()));
        }
        Ok(list)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&cfg.ca_file)? {
        roots.add(c).map_err(|e| err(&cfg.ca_file, e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(&cfg.ca_file, e.to_string()))?
    .with_root_certificates(roots);
    let config = if cfg.client_cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let key = PrivateKeyDer::from_pem_file(&cfg.client_key)
            .map_err(|e| err(&cfg.client_key, e.to_string()))?;
        builder
            .with_client_auth_cert(certs(&cfg.client_cert)?, key)
            .map_err(|e| {
                let reason = e.to_string();
                let hint = certificate_hint(&reason, "the client certificate");
                err(&cfg.client_cert, format!("refused: {reason}{hint}"))
            })?
    };
    Ok(Arc::new(config))
}

/// The connection options for `client_id`: keepalive, credentials and TLS from `cfg`,
/// and no last will (see [`options`]).
fn base_options(cfg: &MqttConfig, client_id: String) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keepalive_seconds.into()))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if !cfg.username.is_empty() {
        o.set_credentials(cfg.username.clone(), cfg.password()?.unwrap_or_default());
    }
    if cfg.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_config(cfg)?,
        )));
    }
    Ok(o)
}

/// The daemon's options: [`base_options`] with the retained last will `offline` on
/// `<base>/status`, so a daemon that dies without saying goodbye shows as unavailable.
fn options(cfg: &MqttConfig, topics: &Topics) -> Result<MqttOptions, MqttError> {
    let mut o = base_options(cfg, cfg.client_id())?;
    o.set_last_will(LastWill::new(
        &topics.status,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// What the link does with an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingAction {
    /// Home Assistant came online: resend discovery and the states after a random delay.
    Rediscover,
    /// Nothing changes.
    Ignore(Ignored),
}

/// Why an incoming message changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not `homeassistant/status`, the one topic the daemon subscribes to.
    OtherTopic,
    /// The retained `online` the broker hands out at every subscribe: discovery was just
    /// sent on connect.
    RetainedOnline,
    /// Home Assistant went away; nothing to send until it is back.
    Offline,
    /// Neither `online` nor `offline` (surrounding whitespace aside): invalid UTF-8,
    /// junk, or a huge payload.
    UnexpectedPayload,
}

/// The daemon's whole reaction to incoming MQTT messages. It subscribes to one topic,
/// Home Assistant's status ([`super::HA_STATUS_TOPIC`]), and accepts no commands: only a
/// non-retained `online` there does anything (rediscovery); every other topic or payload
/// is ignored. Pure, so it is fuzzed (`tests/fuzz.rs`).
pub fn incoming(topics: &Topics, topic: &str, payload: &[u8], retained: bool) -> IncomingAction {
    if topic != topics.ha_status {
        return IncomingAction::Ignore(Ignored::OtherTopic);
    }
    match payload.trim_ascii() {
        b"online" if retained => IncomingAction::Ignore(Ignored::RetainedOnline),
        b"online" => IncomingAction::Rediscover,
        b"offline" => IncomingAction::Ignore(Ignored::Offline),
        _ => IncomingAction::Ignore(Ignored::UnexpectedPayload),
    }
}

/// What the driver tells the link task.
enum Net {
    Event(Event),
    /// The connection failed or was lost; the driver retries after `retry_in`, and not
    /// before the link task has dropped `heard` (see [`drive`]).
    Down {
        error: String,
        /// The broker sent a message over [`MAX_PACKET_BYTES`] (on Home Assistant's
        /// status, the one topic subscribed to).
        oversize: bool,
        retry_in: Duration,
        heard: oneshot::Sender<()>,
    },
}

/// Connections in a row lost to a message over the size limit after which the daemon
/// stops subscribing to Home Assistant's status: a retained one comes back at every
/// subscribe, and would cost a reconnect at every backoff for as long as it stays. (A
/// single one, not retained, costs one reconnect.)
const OVERSIZE_LOSSES_TO_STOP_LISTENING: u32 = 2;

/// Polls the event loop forever, sleeping with backoff after each failure; the backoff
/// starts again from 1..2 s only after a connection that stayed up (see [`STABLE_AFTER`]).
async fn drive(mut eventloop: EventLoop, cfg: MqttConfig, tx: mpsc::UnboundedSender<Net>) {
    // Failures since the last connection that stayed up for STABLE_AFTER.
    let mut failures = 0u32;
    let mut connected_at = None;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if matches!(event, Event::Incoming(Incoming::ConnAck(_))) {
                    connected_at = Some(Instant::now());
                }
                if tx.send(Net::Event(event)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // Events rumqttc read just before the error (see the module docs) belong
                // to the connection that ended; after the next ConnAck the link task would
                // already have resent what they acknowledge.
                for event in eventloop.state.events.drain(..) {
                    if tx.send(Net::Event(event)).is_err() {
                        return;
                    }
                }
                if connected_at
                    .take()
                    .is_some_and(|at| at.elapsed() >= STABLE_AFTER)
                {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let retry_in = backoff(failures);
                let error = describe(&e, &cfg);
                let oversize = oversize_message(&e).is_some();
                let (heard, link_heard) = oneshot::channel();
                let down = Net::Down {
                    error,
                    oversize,
                    retry_in,
                    heard,
                };
                if tx.send(down).is_err() {
                    return;
                }
                tokio::time::sleep(retry_in).await;
                // Requests the link task submitted before it heard of the failure must
                // not reach the next connection: it resends from its outbox, and their
                // Outgoing events would be matched to the next connection's tags. So
                // the channel is cleared only once the link task has stopped submitting
                // (a link task held up longer than the backoff, by a slow fsync of the
                // spool say, would otherwise submit into the next connection).
                let _ = link_heard.await;
                eventloop.clean();
            }
        }
    }
}

/// What a submitted publish was, to match its `Outgoing::Publish(pkid)` and PUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// `online` and the discovery configs, once per connect or rediscovery (QoS 1).
    Announce,
    /// A current state: crying, reason, confidence, diagnostics (QoS 0, see [`Tag::qos`]).
    Reading,
    Queued(u64),
    Offline,
    /// An empty retained payload clearing the device announced before (see
    /// [`super::announced`]).
    Retire,
}

impl Tag {
    /// Current states go at QoS 0: they are retained, superseded by the next value and
    /// republished after every connect, so a PUBACK would add nothing but a packet from
    /// the broker that Nagle may hold, delaying the next event by up to 40 ms.
    fn qos(self) -> QoS {
        match self {
            Tag::Reading => QoS::AtMostOnce,
            Tag::Announce | Tag::Queued(_) | Tag::Offline | Tag::Retire => QoS::AtLeastOnce,
        }
    }
}

/// The latest states (`crying`, reason and confidence, diagnostics), which the monitor
/// sends only when they change: the link republishes them after every connect, and the
/// daemon keeps its own copy to start the link of a reload from, whether or not the link
/// it replaces answers (see [`super::MqttHandle::resume`]).
#[derive(Debug, Default, Clone)]
pub struct States {
    crying: bool,
    reason: Option<(String, f32)>,
    diagnostics: Option<Diagnostics>,
}

impl States {
    /// Keeps a state update (the one place that does, for the link and the daemon); an
    /// event is not a state and is left out.
    pub fn note(&mut self, update: &Update) {
        match update {
            Update::Event(_) => {}
            Update::Crying(on) => self.crying = *on,
            Update::Reason { reason, confidence } => {
                self.reason = Some((reason.clone(), *confidence));
            }
            Update::Diagnostics(d) => self.diagnostics = Some(d.clone()),
        }
    }
}

struct Closing {
    deadline: Instant,
    done: oneshot::Sender<Handover>,
    /// `offline` submitted on this connection: after the last queued event, so that
    /// Home Assistant gets every event before its entities turn unavailable.
    offline_sent: bool,
    offline_acked: bool,
    disconnect_requested: bool,
    disconnected: bool,
}

struct Link {
    cfg: MqttConfig,
    topics: Topics,
    device: DeviceInfo,
    client: AsyncClient,
    outbox: Outbox,
    current: States,
    retirement: Retirement,
    connected: bool,
    /// Tags of publishes submitted on this connection, not yet seen as Outgoing::Publish.
    submitted: VecDeque<Tag>,
    /// Packet id -> tag, until the PUBACK.
    inflight: HashMap<u16, Tag>,
    /// Queued messages submitted and not yet acknowledged.
    queued_in_flight: usize,
    /// Whether the last diagnostics published said events were queued.
    backlog_reported: bool,
    /// Next outbox sequence number to submit.
    next_seq: u64,
    rediscover_at: Option<Instant>,
    /// Connections lost in a row, each soon after its ConnAck, to a message over the size
    /// limit (see [`OVERSIZE_LOSSES_TO_STOP_LISTENING`]).
    oversize_losses: u32,
    /// When the connection now up was accepted.
    connected_at: Option<Instant>,
    closing: Option<Closing>,
    status: LinkStatus,
    status_tx: watch::Sender<LinkStatus>,
}

/// The link task: see the module docs. It starts from what the link it replaces handed
/// over (nothing at start-up) and, asked to stop, hands over what it has in turn.
pub(crate) async fn run(
    cfg: MqttConfig,
    device: DeviceInfo,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    status_tx: watch::Sender<LinkStatus>,
    states: States,
    handover: Handover,
) {
    let topics = cfg.topics();
    let (net_tx, mut net_rx) = mpsc::unbounded_channel();
    let (client, driver) = match options(&cfg, &topics) {
        Ok(o) => {
            let (client, mut eventloop) = AsyncClient::new(o, CHANNEL);
            // No Nagle on this side either: the broker never answers a QoS 0 state, so its
            // segment is acknowledged only by the broker's delayed ACK, and Nagle would hold
            // the next event's PUBLISH behind it for up to 40 ms.
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
            let driver = tokio::spawn(drive(eventloop, cfg.clone(), net_tx.clone()));
            (client, Some(driver))
        }
        Err(e) => {
            // Keep queueing (and spooling) events; nothing will connect.
            tracing::error!("mqtt disabled until restart: {e}");
            let (client, _unused) = AsyncClient::new(MqttOptions::new("unused", "localhost", 1), 1);
            (client, None)
        }
    };
    let outbox = Outbox::resume(cfg.queue_size, cfg.spool_path(), handover.outbox);
    let retirement = Retirement::new(cfg.state_dir.as_deref(), &topics);
    let mut link = Link {
        retirement,
        topics,
        device,
        client,
        outbox,
        // A reload in the middle of a cry: `crying` stays ON on the new connection (the
        // monitor says so once per episode).
        current: states,
        connected: false,
        submitted: VecDeque::new(),
        inflight: HashMap::new(),
        queued_in_flight: 0,
        backlog_reported: false,
        next_seq: 0,
        rediscover_at: None,
        oversize_losses: 0,
        connected_at: None,
        closing: None,
        status: LinkStatus::default(),
        status_tx,
        cfg,
    };
    link.report();
    tracing::info!(
        broker = %format!("{}:{}", link.cfg.host, link.cfg.port),
        base = %link.topics.base,
        "mqtt starting"
    );
    let mut spool_tick = tokio::time::interval(Duration::from_secs(1));
    spool_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let rediscover = link.rediscover_at;
        let deadline = link.closing.as_ref().map(|c| c.deadline);
        tokio::select! {
            msg = rx.recv(), if link.closing.is_none() => match msg {
                Some(Msg::Update(u)) => link.update(u),
                Some(Msg::Shutdown(timeout, done)) => link.begin_shutdown(timeout, done),
                // Every handle dropped without a shutdown: keep what is undelivered.
                None => break,
            },
            net = net_rx.recv() => match net {
                Some(Net::Event(e)) => link.on_event(e),
                Some(Net::Down { error, oversize, retry_in, heard }) => {
                    link.on_down(error, oversize, retry_in);
                    // Not connected any more: nothing is submitted until the next ConnAck.
                    drop(heard);
                }
                None => break,
            },
            _ = sleep_until_opt(rediscover) => {
                link.rediscover_at = None;
                if link.connected && link.closing.is_none() {
                    tracing::info!("home assistant came online: resending discovery and states");
                    link.announce();
                }
            },
            _ = sleep_until_opt(deadline) => {
                tracing::warn!(queued = link.outbox.len(), "mqtt shutdown timed out; undelivered events stay in the spool");
                break;
            },
            _ = spool_tick.tick() => link.outbox.save_if_dirty(),
        }
        if link.finished() {
            break;
        }
    }
    link.outbox.save_if_dirty();
    if let Some(driver) = driver {
        driver.abort();
    }
    link.connected = false;
    link.report();
    if let Some(c) = link.closing.take() {
        let _ = c.done.send(Handover {
            outbox: Some(link.outbox.carry()),
        });
    }
    drop(net_tx);
}

/// The task of a handle with `enabled = false`: it sends nothing and keeps no events,
/// only what the link before it handed over, for a link that a later reload turns on.
pub(crate) async fn idle(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    status_tx: watch::Sender<LinkStatus>,
    handover: Handover,
) {
    if let Some(carried) = &handover.outbox {
        status_tx.send_replace(LinkStatus {
            queued: carried.len(),
            dropped: carried.dropped(),
            ..LinkStatus::default()
        });
    }
    while let Some(msg) = rx.recv().await {
        if let Msg::Shutdown(_, done) = msg {
            let _ = done.send(handover);
            return;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Link {
    fn report(&mut self) {
        self.status.connected = self.connected;
        self.status.queued = self.outbox.len();
        self.status.dropped = self.outbox.dropped;
        self.status_tx.send_replace(self.status.clone());
    }

    fn publish(&mut self, topic: &str, retain: bool, payload: String, tag: Tag) -> bool {
        match self.client.try_publish(topic, tag.qos(), retain, payload) {
            Ok(()) => {
                self.submitted.push_back(tag);
                true
            }
            Err(e) => {
                tracing::warn!(topic, "mqtt publish not submitted: {e}");
                false
            }
        }
    }

    fn update(&mut self, update: Update) {
        match update {
            Update::Event(event) => {
                if on_event_topic(&event.kind) {
                    self.outbox.push(EVENT_TOPIC.into(), event.to_json());
                }
                if let Some(payload) = episode_payload(&event) {
                    self.outbox.push(EPISODE_TOPIC.into(), payload);
                }
                // Write ahead: events are rare (one per 7 s window while crying), so each
                // is on disk before it is on the wire, and a SIGKILL between the publish
                // and its PUBACK cannot lose it (the next start resends it; consumers
                // dedupe by `id`). Deliveries are saved by the spool tick.
                self.outbox.save_if_dirty();
                if self.connected {
                    self.pump();
                }
            }
            state => {
                // The Event arm is above: what is left is Diagnostics.
                let publish: fn(&mut Self) = match state {
                    Update::Crying(_) => Self::publish_crying,
                    Update::Reason { .. } => Self::publish_reason,
                    _ => Self::publish_diagnostics,
                };
                self.current.note(&state);
                publish(self);
            }
        }
        self.report();
    }

    fn publish_crying(&mut self) {
        if self.connected {
            let payload = if self.current.crying { "ON" } else { "OFF" };
            let topic = self.topics.crying.clone();
            self.publish(&topic, true, payload.into(), Tag::Reading);
        }
    }

    fn publish_reason(&mut self) {
        if let (true, Some((reason, confidence))) = (self.connected, self.current.reason.clone()) {
            let (rt, ct) = (self.topics.reason.clone(), self.topics.confidence.clone());
            self.publish(&rt, true, reason, Tag::Reading);
            self.publish(
                &ct,
                true,
                format!("{:.1}", confidence * 100.0),
                Tag::Reading,
            );
        }
    }

    fn publish_diagnostics(&mut self) {
        if let (true, Some(d)) = (self.connected, self.current.diagnostics.clone()) {
            let mut v = serde_json::to_value(&d).expect("diagnostics serialise");
            v["events_queued"] = self.outbox.len().into();
            v["events_dropped"] = self.outbox.dropped.into();
            let topic = self.topics.diagnostics.clone();
            if self.publish(&topic, true, v.to_string(), Tag::Reading) {
                self.backlog_reported = self.outbox.len() > 0;
            }
        }
    }

    /// Discovery, the current states, then `online`.
    fn announce(&mut self) {
        for (topic, payload) in
            discovery_messages(&self.topics, &self.cfg.device_name, &self.device)
        {
            self.publish(&topic, true, payload, Tag::Announce);
        }
        self.status.discoveries += 1;
        self.publish_crying();
        self.publish_reason();
        self.publish_diagnostics();
        // `online` last: after a crash the broker still holds the `crying` ON retained
        // then, and announced first, Home Assistant saw the sensor go from unavailable
        // to ON for a moment before the OFF, which an automation on "to: on" takes for
        // a cry (a false alarm after every power cut).
        let status = self.topics.status.clone();
        self.publish(&status, true, "online".into(), Tag::Announce);
    }

    /// Submits queued messages in order: while running, the next one only when nothing
    /// is in flight (see the module docs); when closing, up to half the channel at once.
    fn pump(&mut self) {
        let window = if self.closing.is_some() {
            CHANNEL / 2
        } else if self.submitted.is_empty() && self.inflight.is_empty() {
            1
        } else {
            return;
        };
        while self.connected && self.queued_in_flight < window {
            let Some(q) = self.outbox.next_from(self.next_seq) else {
                break;
            };
            let (seq, topic, payload) =
                (q.seq, self.topics.under_base(&q.topic), q.payload.clone());
            if !self.publish(&topic, false, payload, Tag::Queued(seq)) {
                break;
            }
            self.next_seq = seq + 1;
            self.queued_in_flight += 1;
        }
        self.offline_after_the_last_event();
    }

    /// Closing: submits `offline` once every queued event has been submitted (a backlog
    /// larger than the window goes out as PUBACKs come back). One that never gets that
    /// far is said by the last will when the connection is dropped at the deadline.
    fn offline_after_the_last_event(&mut self) {
        let due = self.closing.as_ref().is_some_and(|c| !c.offline_sent);
        if !due || !self.connected || self.outbox.next_from(self.next_seq).is_some() {
            return;
        }
        let status = self.topics.status.clone();
        let sent = self.publish(&status, true, "offline".into(), Tag::Offline);
        if let Some(c) = self.closing.as_mut() {
            c.offline_sent = sent;
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                self.connected = true;
                self.connected_at = Some(Instant::now());
                self.submitted.clear();
                self.inflight.clear();
                self.queued_in_flight = 0;
                self.next_seq = 0;
                self.status.connections += 1;
                tracing::info!(
                    broker = %format!("{}:{}", self.cfg.host, self.cfg.port),
                    queued = self.outbox.len(),
                    "mqtt connected"
                );
                // A clean session forgets subscriptions: subscribe on every ConnAck.
                if self.oversize_losses < OVERSIZE_LOSSES_TO_STOP_LISTENING {
                    if let Err(e) = self
                        .client
                        .try_subscribe(self.topics.ha_status.clone(), QoS::AtLeastOnce)
                    {
                        tracing::warn!("cannot subscribe to {}: {e}", self.topics.ha_status);
                    }
                }
                // A new connection: `offline` goes again, after the events.
                if let Some(c) = self.closing.as_mut() {
                    c.offline_sent = false;
                }
                self.retire_the_old_device();
                self.announce();
                self.pump();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(tag) = self.submitted.pop_front() {
                    if pkid != 0 {
                        self.inflight.insert(pkid, tag);
                    }
                }
                // A QoS 0 state written out may have been all that held the next event.
                self.pump();
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                match self.inflight.remove(&ack.pkid) {
                    Some(Tag::Queued(seq)) => {
                        self.outbox.remove(seq);
                        self.queued_in_flight = self.queued_in_flight.saturating_sub(1);
                        // Everything delivered (the usual case: one event, acknowledged):
                        // the spool says so at once, not at the next tick, so a daemon
                        // killed within that second does not send it again at its next
                        // start (during a backlog the tick keeps the writes to one a
                        // second); and a backlog announced at the ConnAck is reported
                        // delivered now, not at the next diagnostics tick (none comes
                        // while the microphone is lost).
                        if self.outbox.len() == 0 {
                            self.outbox.save_if_dirty();
                            if self.backlog_reported {
                                self.publish_diagnostics();
                            }
                        }
                    }
                    Some(Tag::Offline) => {
                        if let Some(c) = self.closing.as_mut() {
                            c.offline_acked = true;
                        }
                    }
                    Some(Tag::Retire) => self.retirement.acknowledged(),
                    Some(Tag::Announce | Tag::Reading) | None => {}
                }
                // Any PUBACK may be the last one outstanding: the next event can go.
                self.pump();
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                if let Some(c) = self.closing.as_mut() {
                    c.disconnected = true;
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                self.on_message(&p.topic, &p.payload, p.retain)
            }
            Event::Incoming(Incoming::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                tracing::warn!(
                    "the broker refused the subscription to {}",
                    self.topics.ha_status
                );
            }
            _ => {}
        }
        self.report();
    }

    /// Clears, before discovery, what a device announced before under other topics left
    /// retained (none after the first connection that had it acknowledged).
    fn retire_the_old_device(&mut self) {
        let owed = self.retirement.owed().to_vec();
        let submitted = owed
            .iter()
            .take_while(|topic| self.publish(topic, true, String::new(), Tag::Retire))
            .count();
        self.retirement.submitted(submitted);
    }

    /// Acts on a message the broker delivered; what to do is [`incoming`]'s decision.
    fn on_message(&mut self, topic: &str, payload: &[u8], retained: bool) {
        match incoming(&self.topics, topic, payload, retained) {
            IncomingAction::Rediscover => {
                let delay = rand::rng().random_range(REDISCOVERY_DELAY_MS);
                self.rediscover_at = Some(Instant::now() + Duration::from_millis(delay));
            }
            IncomingAction::Ignore(Ignored::RetainedOnline | Ignored::Offline) => {}
            // Neither payload nor topic is logged: it is whatever someone published.
            IncomingAction::Ignore(Ignored::OtherTopic) => tracing::warn!(
                bytes = payload.len(),
                "ignoring a message on a topic other than {}",
                self.topics.ha_status
            ),
            IncomingAction::Ignore(Ignored::UnexpectedPayload) => tracing::warn!(
                bytes = payload.len(),
                "ignoring an unexpected payload on {} (expected online or offline)",
                self.topics.ha_status
            ),
        }
    }

    fn on_down(&mut self, error: String, oversize: bool, retry_in: Duration) {
        // A retained message comes at the subscribe, right after the ConnAck: one that
        // ends a connection that had stayed up is a new one, and counts from 1. Once it
        // stopped listening, for good: each drop of the network would otherwise cost two
        // more reconnects to find the message still there.
        let soon = self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() < STABLE_AFTER);
        if self.oversize_losses < OVERSIZE_LOSSES_TO_STOP_LISTENING {
            self.oversize_losses = match (oversize, soon) {
                (false, _) => 0,
                (true, true) => self.oversize_losses + 1,
                (true, false) => 1,
            };
        }
        if self.oversize_losses == OVERSIZE_LOSSES_TO_STOP_LISTENING {
            tracing::warn!(
                "a message over the size limit on {} came back on the next connection \
                 (retained): babycryd stops listening to Home Assistant's status until it \
                 restarts (or a reload changes [mqtt]), and sends discovery at every connection only; clear the message \
                 with `mosquitto_pub -r -n -t {}`",
                self.topics.ha_status,
                self.topics.ha_status
            );
        }
        if self.connected {
            tracing::warn!(
                queued = self.outbox.len(),
                "mqtt connection lost: {error}; retrying in {:.1} s",
                retry_in.as_secs_f64()
            );
        } else {
            tracing::error!("mqtt: {error}; retrying in {:.1} s", retry_in.as_secs_f64());
        }
        self.connected = false;
        self.submitted.clear();
        self.inflight.clear();
        self.queued_in_flight = 0;
        self.retirement.connection_lost();
        self.status.failures += 1;
        self.status.last_error = Some(error);
        self.report();
    }

    fn begin_shutdown(&mut self, timeout: Duration, done: oneshot::Sender<Handover>) {
        self.closing = Some(Closing {
            deadline: Instant::now() + timeout,
            done,
            offline_sent: false,
            offline_acked: false,
            disconnect_requested: false,
            disconnected: false,
        });
        if self.connected {
            self.pump();
        }
    }

    /// Shutting down and either disconnected (nothing more can be sent now) or with
    /// everything delivered and `offline` acknowledged.
    fn finished(&mut self) -> bool {
        let delivered =
            self.queued_in_flight == 0 && self.outbox.next_from(self.next_seq).is_none();
        let Some(c) = self.closing.as_mut() else {
            return false;
        };
        if !self.connected || c.disconnected {
            return true;
        }
        if c.offline_acked && delivered && !c.disconnect_requested {
            c.disconnect_requested = true;
            if let Err(e) = self.client.try_disconnect() {
                tracing::warn!("mqtt disconnect not submitted: {e}");
                return true;
            }
        }
        false
    }
}

/// What `babycryd mqtt-remove` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Entities of the configured device.
    pub entities: usize,
    /// Another device recorded in the state directory, removed too: what differs from
    /// the configured one ("node old, base topic babycry/old").
    pub previous: Option<String>,
}

/// `babycryd mqtt-remove`: connects (as `<client_id>-remove`, without a last will),
/// publishes empty retained configs (Home Assistant removes the entities) and clears the
/// retained states, of the configured device and of another one recorded in the state
/// directory, whose record it then removes.
pub async fn remove_device(cfg: &MqttConfig, timeout: Duration) -> Result<Removed, MqttError> {
    let topics = cfg.topics();
    // The device recorded in the state directory goes too when it is another one: a
    // renamed host (the default node id follows it) with no daemon run since to clear it
    // would otherwise stay in Home Assistant, unavailable.
    let previous = cfg
        .state_dir
        .as_deref()
        .and_then(|d| super::announced::recorded_other(d, &topics));
    // No last will: this client gives up without DISCONNECT on a timeout or error, and
    // the daemon's will would then put a retained `offline` back on the status it clears.
    let opts = base_options(cfg, format!("{}-remove", cfg.client_id()))?;
    let (client, mut eventloop) = AsyncClient::new(opts, CHANNEL);
    // The retained states go too, so nothing of the device is left on the broker.
    let mut clear = retained_topics(&topics);
    let entities = clear.len() - state_topics(&topics).len();
    if let Some((old, _)) = &previous {
        clear.extend(old.iter().cloned());
    }
    let work = async {
        let mut pending = 0usize;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    for topic in &clear {
                        client
                            .try_publish(topic, QoS::AtLeastOnce, true, String::new())
                            .map_err(|e| MqttError::Broker(e.to_string()))?;
                        pending += 1;
                    }
                }
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    pending -= 1;
                    if pending == 0 {
                        client
                            .try_disconnect()
                            .map_err(|e| MqttError::Broker(e.to_string()))?;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(MqttError::Broker(describe(&e, cfg))),
            }
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        MqttError::Broker(format!(
            "no answer from {}:{} within {timeout:?}",
            cfg.host, cfg.port
        ))
    })??;
    if let Some(dir) = cfg.state_dir.as_deref() {
        super::announced::forget(dir);
    }
    Ok(Removed {
        entities,
        previous: previous.map(|(_, what)| what),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn only_a_live_online_on_the_home_assistant_status_rediscovers() {
        let t = Topics::new("babycry/n", "homeassistant", "n");
        let act = |topic: &str, payload: &[u8], retained| incoming(&t, topic, payload, retained);
        assert_eq!(
            act("homeassistant/status", b"online", false),
            IncomingAction::Rediscover
        );
        assert_eq!(
            act("homeassistant/status", b" online\n", false),
            IncomingAction::Rediscover
        );
        let ignored = [
            (
                "homeassistant/status",
                &b"online"[..],
                true,
                Ignored::RetainedOnline,
            ),
            ("homeassistant/status", b"offline", false, Ignored::Offline),
            (
                "homeassistant/status",
                b"ONLINE",
                false,
                Ignored::UnexpectedPayload,
            ),
            (
                "homeassistant/status",
                b"\xff\xfe",
                false,
                Ignored::UnexpectedPayload,
            ),
            (
                "homeassistant/status/x",
                b"online",
                false,
                Ignored::OtherTopic,
            ),
            ("babycry/n/status", b"online", false, Ignored::OtherTopic),
            ("babycry/n/crying", b"ON", false, Ignored::OtherTopic),
        ];
        for (topic, payload, retained, why) in ignored {
            assert_eq!(
                act(topic, payload, retained),
                IncomingAction::Ignore(why),
                "{topic} {payload:?} {retained}"
            );
        }
    }

    /// A link task held up (a slow fsync of the spool, say) longer than the backoff hears
    /// of a lost connection late, and until then it still submits publishes. The driver
    /// must not reconnect before: those requests would go out on the next connection (a
    /// resent event twice) and their Outgoing events would be matched to that
    /// connection's tags. Before the handshake it reconnected after the backoff alone
    /// (1..2 s), and a publish submitted after that went out on the new connection.
    #[tokio::test]
    async fn the_driver_reconnects_only_after_the_link_task_heard_of_the_failure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;
        use tokio::time::timeout;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = MqttConfig {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
            node_id: "n".into(),
            ..MqttConfig::default()
        };
        let (client, eventloop) = AsyncClient::new(options(&cfg, &cfg.topics()).unwrap(), 8);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, cfg.clone(), tx));
        let mut buf = vec![0u8; 4096];

        // The first connection ends before its ConnAck.
        let (mut first, _) = timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("first connection")
            .unwrap();
        assert!(first.read(&mut buf).await.unwrap() > 0, "no CONNECT");
        drop(first);
        let heard = loop {
            match timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(Net::Down { heard, .. })) => break heard,
                Ok(Some(Net::Event(_))) => continue,
                other => panic!("no Down from the driver: {:?}", other.is_ok()),
            }
        };

        // Past the first backoff (at most 2 s) the link task has still not heard, and
        // submits an event then; still no new connection.
        let reconnected = "the driver reconnected before the link task heard of the failure";
        let no_accept = |ms| timeout(Duration::from_millis(ms), listener.accept());
        assert!(no_accept(2200).await.is_err(), "{reconnected}");
        client
            .try_publish("babycry/n/event", QoS::AtLeastOnce, false, "stale")
            .unwrap();
        assert!(no_accept(1300).await.is_err(), "{reconnected}");

        drop(heard);
        let (mut second, _) = timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the driver reconnects once the link task heard")
            .unwrap();
        assert!(second.read(&mut buf).await.unwrap() > 0, "no CONNECT");
        // CONNACK, no session present: nothing of the old connection may follow.
        second.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        let mut sent = Vec::new();
        let _ = timeout(Duration::from_secs(1), async {
            loop {
                match second.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            !sent.windows(5).any(|w| w == b"stale"),
            "the stale publish reached the new connection: {sent:?}"
        );
        driver.abort();
    }

    #[test]
    fn backoff_doubles_with_jitter_between_one_and_sixty_seconds() {
        let secs = |lo: u64, hi: u64| Duration::from_secs(lo)..=Duration::from_secs(hi);
        let mut firsts = HashSet::new();
        for _ in 0..200 {
            let b1 = backoff(1);
            assert!(secs(1, 2).contains(&b1), "{b1:?}");
            firsts.insert(b1);
            let b3 = backoff(3);
            assert!(secs(4, 8).contains(&b3), "{b3:?}");
            let b20 = backoff(20);
            assert!(secs(30, 60).contains(&b20), "{b20:?}");
        }
        // Jitter from the first retry on: two clients that lost the broker together (or
        // that take over each other's session) do not retry in step.
        assert!(firsts.len() > 100, "{} distinct first delays", firsts.len());
    }
}
