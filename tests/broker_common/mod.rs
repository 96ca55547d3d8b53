//! Helpers of the tests that run a real Mosquitto: the broker (a process on a free port,
//! killed on drop), a real rumqttc subscriber, and the real `babycryd run --input -`
//! fed raw PCM by the test, with configs pointing it at the broker.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Incoming, MqttOptions, QoS};
use serde_json::Value;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A port nothing listens on, below the kernel's ephemeral range, for a listener started
/// later (a broker, a proxy). A port from `bind(0)` is in that range: freed again until
/// the listener binds it, an outgoing connection of any test (a subscriber, a daemon, the
/// broker's own) could take it as its local port, and the listener failed with "address
/// in use" (seen in CI).
pub fn free_port() -> u16 {
    // Tests run in parallel: a port found free and handed out twice would give two
    // brokers one port (the second fails to listen) or a test another test's broker.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_from.saturating_sub(LOWEST).max(1000);
    // Each test process starts elsewhere in the span (test binaries run one at a time,
    // but a stale broker of an earlier run may still hold a port).
    let start = std::process::id() as u16 % span;
    let mut given = GIVEN.lock().unwrap();
    for i in 0..span {
        let port = LOWEST + (start + i) % span;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {LOWEST}..{}", LOWEST + span);
}

/// A Mosquitto process; killed on drop.
pub struct Broker {
    dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    /// Other directories the broker reads (password file, certificates).
    pub keep: Vec<tempfile::TempDir>,
}

impl Broker {
    /// Starts Mosquitto on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts an anonymous Mosquitto on `port`, logging every connect and disconnect.
    pub fn start_on(port: u16) -> Self {
        Self::start_on_conf(
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_type all\n"),
        )
    }

    /// Starts Mosquitto with a whole config; `port` is where tests connect.
    pub fn start_on_conf(port: u16, conf: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Self {
            dir,
            port,
            child: None,
            keep: Vec::new(),
        };
        b.restart();
        b
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)starts the process on the same port and waits until it accepts connections.
    /// A broker that exits instead (its port taken since it was found free, by a
    /// connection's local port: the port is freed when that connection ends) is started
    /// again, for 10 s at most.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (port, log_path) = (self.port, self.path("mosquitto.log"));
        loop {
            let log = std::fs::File::create(&log_path).unwrap();
            // Held by self at once, so that a panic below kills it (Drop).
            let child = self.child.insert(
                Command::new(MOSQUITTO)
                    .arg("-c")
                    .arg(self.path("mosquitto.conf"))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("mosquitto runs"),
            );
            let exited = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not start: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            self.child = None;
            assert!(
                Instant::now() < deadline,
                "mosquitto exited ({exited}) instead of listening on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("mosquitto.log")).unwrap_or_default()
    }

    /// Sends a signal by name. SIGSTOP: the broker keeps its connections open but reads
    /// and acknowledges nothing until SIGCONT.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the broker runs").id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no clean shutdown, no saved state.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, as `systemctl restart mosquitto` or a container restart sends it: the
    /// broker finishes the packet it is handling, then closes every connection and exits.
    pub fn terminate(&mut self) {
        self.signal("TERM");
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process ignores nothing but SIGKILL; let it run its last steps.
            self.signal("CONT");
        }
        self.kill();
    }
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// A rumqttc subscriber that reconnects every 100 ms and resubscribes on every ConnAck.
pub struct Subscriber {
    seen: Arc<Mutex<Vec<Seen>>>,
    subacks: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, filters: &[&str]) -> Self {
        // Unique within the process: two subscribers with one client id would take over
        // each other's session.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("test-sub-{}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(Mutex::new(0));
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let (s, a) = (seen.clone(), subacks.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(Incoming::ConnAck(_))) => {
                        for f in &filters {
                            client.try_subscribe(f.clone(), QoS::AtLeastOnce).unwrap();
                        }
                    }
                    Ok(rumqttc::Event::Incoming(Incoming::SubAck(_))) => *a.lock().unwrap() += 1,
                    Ok(rumqttc::Event::Incoming(Incoming::Publish(p))) => {
                        s.lock().unwrap().push(Seen {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        })
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let sub = Self {
            seen,
            subacks,
            task,
        };
        sub.wait_subscribed(1).await;
        sub
    }

    /// Waits until `at_least` SUBACKs arrived since the start (one per filter and connect).
    pub async fn wait_subscribed(&self, at_least: u64) {
        let subacks = self.subacks.clone();
        wait_until(
            "the subscriber is subscribed",
            Duration::from_secs(10),
            || *subacks.lock().unwrap() >= at_least,
        )
        .await;
    }

    pub fn on(&self, topic: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for a message on `topic` with `payload`.
    pub async fn wait_for(&self, topic: &str, payload: &str, timeout: Duration) -> Seen {
        let what = format!("{topic} = {payload}");
        let start = Instant::now();
        loop {
            if let Some(m) = self.on(topic).into_iter().find(|m| m.payload == payload) {
                return m;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; saw {:?}",
                self.on(topic)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config for the real daemon: the repository's models, MQTT at `port`, node `node`.
pub fn daemon_config(dir: &Path, port: u16, node: &str) -> PathBuf {
    daemon_config_with(dir, port, node, "")
}

/// [`daemon_config`] with `extra` TOML appended (sections other than [models], [mqtt] and
/// [daemon]).
pub fn daemon_config_with(dir: &Path, port: u16, node: &str, extra: &str) -> PathBuf {
    daemon_config_at(dir, port, node, dir, extra)
}

/// [`daemon_config_with`] with the spool in `state_dir`.
pub fn daemon_config_at(
    dir: &Path,
    port: u16,
    node: &str,
    state_dir: &Path,
    extra: &str,
) -> PathBuf {
    daemon_config_full(dir, port, node, state_dir, "", extra)
}

/// [`daemon_config_at`] with `mqtt_extra` lines in `[mqtt]` (credentials, TLS).
pub fn daemon_config_full(
    dir: &Path,
    port: u16,
    node: &str,
    state_dir: &Path,
    mqtt_extra: &str,
    extra: &str,
) -> PathBuf {
    let conf = dir.join("config.toml");
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    std::fs::write(
        &conf,
        format!(
            "[models]\ndir = {:?}\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nnode_id = \"{node}\"\n{mqtt_extra}\n\n[daemon]\nstate_dir = {:?}\n\n{extra}\n",
            models.display().to_string(),
            state_dir.display().to_string()
        ),
    )
    .unwrap();
    conf
}

/// The real `babycryd run --input - --rate 8000` (raw PCM on stdin), fed by the test, with
/// its printed records collected as they come.
pub struct StdinDaemon {
    pub child: Child,
    pub stdin: Option<std::process::ChildStdin>,
    pub printed: Arc<Mutex<Vec<Value>>>,
    pub stderr: Arc<Mutex<String>>,
    /// Ends when the daemon's stdout closes: joined to have every printed record.
    stdout_reader: Option<std::thread::JoinHandle<()>>,
}

impl StdinDaemon {
    pub fn start(conf: &Path) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_babycryd"))
            .arg("--config")
            .arg(conf)
            .args(["run", "--input", "-", "--rate", "8000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (p, out) = (printed.clone(), child.stdout.take().unwrap());
        let stdout_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                p.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        let (e, err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            printed,
            stderr,
            stdout_reader: Some(stdout_reader),
        }
    }

    /// Writes `samples` as s16le (blocking while the daemon catches up).
    pub fn feed(&mut self, samples: &[f32]) {
        use std::io::Write;
        self.stdin
            .as_mut()
            .unwrap()
            .write_all(&s16le(samples))
            .unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Resident memory now, in KiB (VmRSS of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Open file descriptors now (entries of /proc/<pid>/fd).
    pub fn fd_count(&self) -> usize {
        fd_count(self.pid())
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every record printed so far; everything once the process has exited.
    pub fn records(&mut self) -> Vec<Value> {
        if self.child.try_wait().unwrap().is_some() {
            if let Some(reader) = self.stdout_reader.take() {
                reader.join().unwrap();
            }
        }
        self.printed.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the process to exit; its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "the daemon did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn printed(&self, kind: &str) -> usize {
        self.printed
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == kind)
            .count()
    }

    /// The ids of the printed records that go to `<base>/event`, in order.
    pub fn event_ids(&self) -> Vec<String> {
        self.printed
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "window" || v["type"] == "episode_end")
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Closes stdin (end of audio) and waits for a clean exit; every printed record.
    pub fn finish(mut self) -> Vec<Value> {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.stderr.lock().unwrap());
        self.records()
    }
}

/// Mono samples as raw s16le PCM.
pub fn s16le(samples: &[f32]) -> Vec<u8> {
    babycry::decode::pcm_s16le(samples).collect()
}

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// A KiB figure of /proc/<pid>/status: `VmRSS` (resident now), `VmHWM` (peak resident).
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Room tone, then a 12 s synthetic cry from 3 s on: 15 s.
pub fn tone_then_cry(seed: u64) -> Vec<f32> {
    let mut audio = babycry::synth::room_tone(8000, 15.0, 0.002, seed);
    babycry::synth::mix_into(&mut audio, &babycry::synth::cry(8000, 12.0, 0.5), 3 * 8000);
    audio
}

/// More crying, then 15 s of quiet that ends the episode.
pub fn cry_then_quiet(seed: u64) -> Vec<f32> {
    let mut audio = babycry::synth::room_tone(8000, 27.0, 0.002, seed);
    babycry::synth::mix_into(&mut audio, &babycry::synth::cry(8000, 12.0, 0.5), 0);
    audio
}

/// Feeds a whole synthetic episode (42 s: a cry from 3 s to 27 s, then quiet) to a daemon
/// that has printed none yet and waits for its end; the ids of the events it printed.
pub async fn feed_an_episode(daemon: &mut StdinDaemon, seed: u64) -> Vec<String> {
    daemon.feed(&tone_then_cry(seed));
    daemon.feed(&cry_then_quiet(seed + 1));
    wait_until("the episode end", Duration::from_secs(30), || {
        daemon.printed("episode_end") == 1
    })
    .await;
    let ids = daemon.event_ids();
    assert!(ids.len() >= 3, "windows and the episode end: {ids:?}");
    ids
}

pub fn ids_of(messages: &[Seen]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(&m.payload).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The unique ids (node prefix removed) of what the daemon hears now: unavailable in
/// Home Assistant while the microphone is not running.
pub const HEARING: [&str; 3] = ["confidence", "crying", "reason"];
/// The unique ids of the diagnostic sensors and the episode event, available whenever
/// the daemon is online.
pub const WHILE_ONLINE: [&str; 7] = [
    "audio_state",
    "episode",
    "events_dropped",
    "events_queued",
    "gate_openings_per_hour",
    "last_inference_ms",
    "noise_floor_dbfs",
];

/// The ids, without `prefix` and sorted, of the discovery configs (unique id -> config)
/// that Home Assistant shows as available given the `latest` payload of each topic.
pub fn available_ids<'a>(
    configs: impl IntoIterator<Item = (&'a String, &'a Value)>,
    prefix: &str,
    latest: &dyn Fn(&str) -> Option<String>,
) -> Vec<&'a str> {
    let mut ids: Vec<&str> = configs
        .into_iter()
        .filter(|(_, c)| ha_available(c, latest))
        .map(|(id, _)| id.trim_start_matches(prefix))
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether Home Assistant shows the entity of discovery config `config` as available,
/// given the latest payload on each topic (`latest`): with `availability_mode` `all`,
/// every entry of its `availability` list must have a payload that, rendered through the
/// entry's `value_template` (Jinja, as Home Assistant renders it, with `value` and
/// `value_json`), equals the entry's `payload_available`.
pub fn ha_available(config: &Value, latest: &dyn Fn(&str) -> Option<String>) -> bool {
    assert_eq!(config["availability_mode"], "all", "{config}");
    let entries = config["availability"]
        .as_array()
        .expect("an availability list");
    entries.iter().all(|a| {
        let Some(payload) = latest(a["topic"].as_str().unwrap()) else {
            return false;
        };
        let shown = match a["value_template"].as_str() {
            None => payload,
            Some(template) => {
                let value_json: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
                minijinja::Environment::new()
                    .render_str(
                        template,
                        minijinja::context! { value => payload, value_json => value_json },
                    )
                    .unwrap_or_else(|e| panic!("{template}: {e}"))
            }
        };
        Some(shown.as_str()) == a["payload_available"].as_str()
    })
}
