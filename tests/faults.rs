//! Fault scenarios on the real `babycryd run --input -` (raw PCM on stdin) against a real
//! Mosquitto: a broker that is down for the first 30 s, a broker that answers slowly
//! (a TCP proxy holding every chunk), stdin closing in the middle of an episode, a spool
//! that cannot be written (full disk, read-only state directory), a storm of 100 SIGHUPs
//! in a second while audio flows, a SIGHUP that moves the daemon to another broker while
//! an episode's events wait, and SIGTERM while the models are running. Each proves:
//! the process neither crashes nor hangs (exit 0 within a bound), every window and
//! episode end it printed arrives on `<base>/event` exactly once and in order, resident
//! memory stays within a small margin across the fault, and `<base>/status` and the log
//! say what happened. The broker restarted mid-episode, SIGKILL and the spool across a
//! restart are in `mqtt_broker.rs`; a microphone that disappears and returns is in
//! `daemon_retry.rs`.

mod broker_common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babycry::synth;
use broker_common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const RATE: u32 = 8000;
/// Growth of resident memory across a fault that still counts as flat: a leak of one
/// event's buffers per reload or per retry would exceed it within the test.
const RSS_MARGIN_KIB: u64 = 8 * 1024;

/// A TCP forwarder to the broker that holds every chunk for `delay` in each direction:
/// a broker (or network) that answers slowly. Dropping it stops accepting and cuts every
/// connection.
struct DelayProxy {
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl DelayProxy {
    /// Listens on `listen` from now on and forwards to 127.0.0.1:`upstream`.
    async fn start(listen: u16, upstream: u16, delay: Duration) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", listen)).await.unwrap();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let connections = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let mut c = connections.lock().unwrap();
                c.push(tokio::spawn(delayed_copy(client_read, server_write, delay)));
                c.push(tokio::spawn(delayed_copy(server_read, client_write, delay)));
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { tasks }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; the end of the stream
/// is passed on after the data before it.
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
            if n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if bytes.is_empty() || to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// The payloads seen on `<base>/<suffix>`, in arrival order.
fn payloads(sub: &Subscriber, topic: &str) -> Vec<String> {
    sub.on(topic).into_iter().map(|m| m.payload).collect()
}

/// Every event of an episode once, in order, and `crying` OFF after them.
async fn assert_episode_delivered(sub: &Subscriber, base: &str, want: &[String]) {
    assert_events_delivered_once_in_order(sub, base, want).await;
    assert_eq!(
        payloads(sub, &format!("{base}/crying"))
            .last()
            .map(String::as_str),
        Some("OFF")
    );
}

/// Every printed window and episode end arrives on `<base>/event` once, in order.
async fn assert_events_delivered_once_in_order(sub: &Subscriber, base: &str, want: &[String]) {
    let topic = format!("{base}/event");
    wait_until("every event arrived", Duration::from_secs(30), || {
        sub.on(&topic).len() >= want.len()
    })
    .await;
    // A duplicate would arrive with (or right after) the last one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids_of(&sub.on(&topic)), want, "exactly once, in order");
}

/// The broker saw the daemon's client disconnect cleanly (DISCONNECT after `offline`),
/// so the `offline` on `<base>/status` is the daemon's own, not its last will.
async fn assert_clean_disconnect(broker: &Broker, node: &str) {
    let client = format!("Client babycryd-{node}");
    let (clean, dropped) = (
        format!("{client} disconnected."),
        format!("{client} closed its connection"),
    );
    // The broker logs the end of the connection a moment after it passed `offline` on.
    wait_until(
        "the broker logs the disconnect",
        Duration::from_secs(5),
        || {
            let log = broker.log();
            log.contains(&clean) || log.contains(&dropped)
        },
    )
    .await;
    let log = broker.log();
    assert!(
        log.contains(&clean) && !log.contains(&dropped),
        "not a clean disconnect:\n{log}"
    );
}

/// A broker, a subscriber to everything under `babycry/<node>`, and that base topic.
async fn broker_for(node: &str) -> (Broker, Subscriber, String) {
    let broker = Broker::start();
    let base = format!("babycry/{node}");
    let sub = Subscriber::start(broker.port, &[&format!("{base}/#")]).await;
    (broker, sub, base)
}

/// Starts the daemon on `conf` and waits for its `online` on `<base>/status`.
async fn start_online(sub: &Subscriber, base: &str, conf: &Path) -> StdinDaemon {
    let daemon = StdinDaemon::start(conf);
    sub.wait_for(&format!("{base}/status"), "online", Duration::from_secs(20))
        .await;
    daemon
}

/// The daemon, asked to stop, exits 0 within 5 s having closed the one open episode
/// and printed the summary last; the summary.
fn exits_with_the_episode_closed(daemon: &mut StdinDaemon) -> Value {
    let (status, took) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let records = daemon.records();
    let ends: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "episode_end")
        .collect();
    assert_eq!(ends.len(), 1, "the open episode is closed: {records:#?}");
    assert_eq!(ends[0]["episode"], 1);
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary", "{records:#?}");
    assert_eq!(summary["episodes"], 1, "{summary}");
    summary.clone()
}

fn assert_memory_flat(before_kib: u64, after_kib: u64, what: &str) {
    eprintln!("{what}: RSS {before_kib} KiB before, {after_kib} KiB after");
    assert!(
        after_kib <= before_kib + RSS_MARGIN_KIB,
        "{what}: RSS grew from {before_kib} KiB to {after_kib} KiB"
    );
}

/// The broker's port refuses connections for the daemon's first 30 s (nothing listens
/// there; the broker behind it already runs, so the test's subscriber misses nothing),
/// then accepts: the episode made meanwhile waits in memory and in the spool, and every
/// event arrives once, in order, after `online`; the spool is gone once delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_the_broker_is_down_for_30_s_at_start_arrive_once_in_order() {
    let (broker, sub, base) = broker_for("late").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = daemon_config(dir.path(), port, "late");
    let started = Instant::now();
    let mut daemon = StdinDaemon::start(&conf);
    let want = feed_an_episode(&mut daemon, 51).await;
    let spool = dir.path().join(babycry::mqtt::SPOOL_FILE);
    // Behind the printed records: a channel hop and two fsyncs per event on a loaded disk.
    wait_until("the events spooled", Duration::from_secs(20), || {
        std::fs::read_to_string(&spool).is_ok_and(|t| t.lines().count() > want.len())
    })
    .await;
    assert!(
        daemon.log().contains("cannot reach broker"),
        "{}",
        daemon.log()
    );
    assert!(sub.all().is_empty(), "nothing can have reached the broker");
    let rss_down = daemon.rss_kib();

    tokio::time::sleep_until(tokio::time::Instant::from_std(
        started + Duration::from_secs(30),
    ))
    .await;
    let _up = DelayProxy::start(port, broker.port, Duration::ZERO).await;
    let up = Instant::now();
    // The backoff doubles up to 16..32 s between attempts by now.
    sub.wait_for(&format!("{base}/status"), "online", Duration::from_secs(40))
        .await;
    eprintln!(
        "connected {:.1} s after the broker came up",
        up.elapsed().as_secs_f64()
    );
    assert_episode_delivered(&sub, &base, &want).await;
    wait_until("the spool removed", Duration::from_secs(5), || {
        !spool.exists()
    })
    .await;
    assert!(daemon.log().contains("mqtt connected"), "{}", daemon.log());
    assert_memory_flat(rss_down, daemon.rss_kib(), "broker down at start");
    daemon.finish();
    sub.wait_for(&format!("{base}/status"), "offline", Duration::from_secs(5))
        .await;
    assert_clean_disconnect(&broker, "late").await;
}

/// Every chunk between the daemon and the broker held 700 ms each way: the connection
/// still comes up, the analysis never waits for the network (no slower than the round
/// trips a daemon waiting for each acknowledgement would need), every event arrives once
/// in order, and the shutdown still says `offline` and exits in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_gets_every_event_once_and_never_holds_up_the_audio() {
    const SLOW: Duration = Duration::from_millis(700);
    let (broker, sub, base) = broker_for("slow").await;
    let port = free_port();
    let _proxy = DelayProxy::start(port, broker.port, SLOW).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config(dir.path(), port, "slow");
    let started = Instant::now();
    let mut daemon = start_online(&sub, &base, &conf).await;
    let connect = started.elapsed();
    // CONNECT, CONNACK and the `online` publish each cross the proxy once.
    assert!(connect >= 3 * SLOW, "online after {connect:?}: not delayed");
    let rss_before = daemon.rss_kib();
    let fed = Instant::now();
    let want = feed_an_episode(&mut daemon, 61).await;
    let analysed = fed.elapsed();
    eprintln!(
        "42 s of audio analysed in {:.1} s with {} events on a slow link",
        analysed.as_secs_f64(),
        want.len()
    );
    let serial = 2 * SLOW * want.len() as u32;
    assert!(
        analysed < serial,
        "analysis took {analysed:?}, as long as waiting {serial:?} for acknowledgements"
    );
    assert_events_delivered_once_in_order(&sub, &base, &want).await;
    assert_memory_flat(rss_before, daemon.rss_kib(), "slow broker");
    drop(daemon.stdin.take());
    let (status, took) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    // The MQTT shutdown is bounded (2 s) whatever the network does.
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(
        !daemon.log().contains("outputs did not finish in time"),
        "{}",
        daemon.log()
    );
    sub.wait_for(&format!("{base}/status"), "offline", Duration::from_secs(5))
        .await;
}

/// The audio on stdin ends in the middle of a cry: the daemon closes the episode (printed
/// and on MQTT), prints the summary with every second it was given, publishes `offline`
/// itself (a clean DISCONNECT, not the broker's last will) and exits 0 within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_closing_mid_episode_ends_it_publishes_offline_and_exits_zero() {
    let (broker, sub, base) = broker_for("eof").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config(dir.path(), broker.port, "eof");
    let mut daemon = start_online(&sub, &base, &conf).await;
    // The cry runs to the last sample: the episode is open when the input ends.
    let audio = tone_then_cry(71);
    daemon.feed(&audio);
    wait_until("the episode start", Duration::from_secs(30), || {
        daemon.printed("episode_start") == 1
    })
    .await;
    assert_eq!(
        daemon.printed("episode_end"),
        0,
        "the episode is still open"
    );
    drop(daemon.stdin.take());
    let summary = exits_with_the_episode_closed(&mut daemon);
    let fed = audio.len() as f64 / f64::from(RATE);
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!((heard - fed).abs() < 0.05, "fed {fed} s, heard {heard} s");
    let states: Vec<String> = daemon
        .records()
        .iter()
        .filter(|r| r["type"] == "audio_state")
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("ended"),
        "{states:?}"
    );
    assert_events_delivered_once_in_order(&sub, &base, &daemon.event_ids()).await;
    // OFF from the announcement at connect, ON for the episode, OFF at its end.
    assert_eq!(
        payloads(&sub, &format!("{base}/crying")),
        ["OFF", "ON", "OFF"]
    );
    assert_eq!(
        payloads(&sub, &format!("{base}/status")),
        ["online", "offline"]
    );
    assert_clean_disconnect(&broker, "eof").await;
}

/// The spool cannot be written (`state_dir` made unwritable by `break_state_dir`, which
/// returns the directory to configure and the error expected in the log) while the broker
/// is stopped and an episode happens: the daemon says so in the log, keeps the events in
/// memory, and delivers every one once, in order, when the broker answers again.
async fn an_unwritable_spool_keeps_events_in_memory(
    node: &str,
    break_state_dir: impl FnOnce(&Path) -> (PathBuf, &'static str),
) {
    let (mut broker, sub, base) = broker_for(node).await;
    let dir = tempfile::tempdir().unwrap();
    let (state_dir, error) = break_state_dir(dir.path());
    let conf = daemon_config_at(dir.path(), broker.port, node, &state_dir, "");
    let mut daemon = start_online(&sub, &base, &conf).await;
    let rss_before = daemon.rss_kib();
    // Stopped, the broker acknowledges nothing: every event waits in the outbox.
    broker.signal("STOP");
    let want = feed_an_episode(&mut daemon, 81).await;
    wait_until("the spool failure logged", Duration::from_secs(5), || {
        daemon
            .log()
            .contains("cannot write the spool (events stay in memory)")
    })
    .await;
    assert!(daemon.log().contains(error), "{}", daemon.log());
    broker.signal("CONT");
    assert_events_delivered_once_in_order(&sub, &base, &want).await;
    assert!(daemon.alive());
    assert_memory_flat(rss_before, daemon.rss_kib(), node);
    assert!(!state_dir.join(babycry::mqtt::SPOOL_FILE).exists());
    daemon.finish();
    sub.wait_for(&format!("{base}/status"), "offline", Duration::from_secs(5))
        .await;
    assert_clean_disconnect(&broker, node).await;
    broker.kill();
}

/// A full disk: the spool's temporary file is a link to /dev/full, so every write of
/// it fails with ENOSPC (no root or loop device needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_spool_keeps_events_in_memory_and_delivers_them() {
    an_unwritable_spool_keeps_events_in_memory("diskfull", |dir| {
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        let tmp = state
            .join(babycry::mqtt::SPOOL_FILE)
            .with_extension("jsonl.tmp");
        std::os::unix::fs::symlink("/dev/full", tmp).unwrap();
        (state, "No space left on device")
    })
    .await;
}

/// A read-only state directory: mode 0500, or, where the tests run with the privilege to
/// write anyway (root in CI), a state directory below a regular file (ENOTDIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_dir_keeps_events_in_memory_and_delivers_them() {
    an_unwritable_spool_keeps_events_in_memory("readonly", |dir| {
        use std::os::unix::fs::PermissionsExt;
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o500)).unwrap();
        let probe = state.join("probe");
        if std::fs::write(&probe, b"").is_err() {
            return (state, "Permission denied");
        }
        // Privileged: mode bits do not stop this process.
        std::fs::remove_file(&probe).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.join("not-a-directory");
        std::fs::write(&file, b"").unwrap();
        eprintln!("privileged: the state directory is below a regular file instead");
        (file.join("state"), "Not a directory")
    })
    .await;
}

/// 100 SIGHUPs within one second while audio flows on stdin: the process lives on, every
/// second fed is analysed (summary `audio_seconds` = what was fed), the three cries make
/// three episodes, the MQTT link is not restarted (status `online` once, then `offline`
/// at the end), and resident memory does not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_100_sighups_in_a_second_drops_no_audio_and_leaks_nothing() {
    let (broker, sub, base) = broker_for("storm").await;
    let dir = tempfile::tempdir().unwrap();
    let quick = "[episode]\nquiet_seconds = 2.0\ncooldown_seconds = 0.0\n";
    let conf = daemon_config_with(dir.path(), broker.port, "storm", quick);
    let mut daemon = start_online(&sub, &base, &conf).await;
    // A cry, then quiet longer than quiet_seconds: one episode per segment.
    let segment = |seed| {
        let mut audio = tone_then_cry(seed);
        audio.extend(synth::room_tone(RATE, 5.0, 0.002, seed));
        audio
    };
    let first = segment(91);
    daemon.feed(&first);
    wait_until("the first episode end", Duration::from_secs(30), || {
        daemon.printed("episode_end") == 1
    })
    .await;
    let rss_before = daemon.rss_kib();

    // Two more segments at 10x real time (1 s of audio every 100 ms), from a thread,
    // while the storm runs.
    let rest: Vec<f32> = [segment(92), segment(93)].concat();
    let mut stdin = daemon.stdin.take().unwrap();
    let chunks: Vec<Vec<u8>> = rest.chunks(RATE as usize).map(s16le).collect();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for chunk in chunks {
            stdin.write_all(&chunk).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        stdin
    });
    std::thread::sleep(Duration::from_millis(500));
    // One process sends them all, 2 ms apart, so that the kernel does not merge them
    // into one pending SIGHUP and the daemon really reloads many times (perl-base is
    // part of every Debian and Ubuntu system).
    let storm = "select(undef, undef, undef, 0.002), kill('HUP', $ARGV[0]) for 1..100";
    let sent = Instant::now();
    let status = std::process::Command::new("perl")
        .args(["-e", storm, &daemon.pid().to_string()])
        .status()
        .unwrap();
    let storm_took = sent.elapsed();
    assert!(status.success());
    assert!(
        storm_took < Duration::from_secs(3),
        "storm took {storm_took:?}"
    );
    let stdin = writer.join().unwrap();
    daemon.stdin = Some(stdin);
    wait_until("the third episode end", Duration::from_secs(30), || {
        daemon.printed("episode_end") == 3
    })
    .await;
    assert!(daemon.alive(), "{}", daemon.log());
    let reloads = daemon.log().matches("configuration reloaded").count();
    eprintln!("100 SIGHUPs in {storm_took:?}: {reloads} reloads");
    // A signal that arrives while one is pending merges with it; most are handled one
    // by one.
    assert!((10..=100).contains(&reloads), "{reloads} reloads");
    assert!(!daemon.log().contains("not reloaded"), "{}", daemon.log());
    assert_memory_flat(rss_before, daemon.rss_kib(), "SIGHUP storm");
    let want = daemon.event_ids();
    let records = daemon.finish();
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["episodes"], 3, "{summary}");
    let fed = (first.len() + rest.len()) as f64 / f64::from(RATE);
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!((heard - fed).abs() < 0.05, "fed {fed} s, heard {heard} s");
    assert_events_delivered_once_in_order(&sub, &base, &want).await;
    sub.wait_for(&format!("{base}/status"), "offline", Duration::from_secs(5))
        .await;
    assert_eq!(
        payloads(&sub, &format!("{base}/status")),
        ["online", "offline"],
        "the reloads left the MQTT link alone"
    );
}

/// The daemon points at a port where no broker listens, with the spool `spool` (on: the
/// spool file; off: memory only), while an episode happens; then a SIGHUP moves it to the
/// real broker (another `[mqtt] port`). The new link takes over the events the old one
/// could not deliver: every one arrives once, in order, and `crying` ends OFF.
async fn events_waiting_for_a_broker_survive_a_reload_to_another_one(node: &str, spool: bool) {
    let (broker, sub, base) = broker_for(node).await;
    let dir = tempfile::tempdir().unwrap();
    let nowhere = free_port();
    let conf = daemon_config(dir.path(), nowhere, node);
    let text = std::fs::read_to_string(&conf).unwrap();
    let with_spool = text.replace(
        &format!("node_id = \"{node}\"\n"),
        &format!("node_id = \"{node}\"\nspool = {spool}\n"),
    );
    assert_ne!(with_spool, text);
    std::fs::write(&conf, &with_spool).unwrap();
    let mut daemon = StdinDaemon::start(&conf);
    let want = feed_an_episode(&mut daemon, 61).await;
    wait_until("a failed attempt", Duration::from_secs(5), || {
        daemon.log().contains("cannot reach broker")
    })
    .await;
    let spool_file = dir.path().join(babycry::mqtt::SPOOL_FILE);
    // The link task writes each event ahead into the spool as it receives it, behind the
    // printed record (a channel hop and two fsyncs per save): on a loaded machine that
    // lags, so wait for it; without a spool, wait past two spool ticks.
    if spool {
        wait_until("the spool file", Duration::from_secs(10), || {
            spool_file.exists()
        })
        .await;
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!spool_file.exists(), "a spool with `spool = false`");
    }

    let moved = with_spool.replace(
        &format!("port = {nowhere}\n"),
        &format!("port = {}\n", broker.port),
    );
    assert_ne!(moved, with_spool);
    std::fs::write(&conf, moved).unwrap();
    daemon.signal("HUP");
    assert_episode_delivered(&sub, &base, &want).await;
    wait_until("no spool once delivered", Duration::from_secs(5), || {
        !spool_file.exists()
    })
    .await;
    daemon.finish();
    sub.wait_for(&format!("{base}/status"), "offline", Duration::from_secs(5))
        .await;
}

/// With the spool off the undelivered events exist only in the old link's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_in_memory_survive_a_reload_to_another_broker() {
    events_waiting_for_a_broker_survive_a_reload_to_another_one("hupmem", false).await;
}

/// With the spool on the new link, spooling to the same file, must not load the
/// events a second time from the file the old link left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_in_the_spool_survive_a_reload_to_another_broker_once() {
    events_waiting_for_a_broker_survive_a_reload_to_another_one("hupspool", true).await;
}

/// SIGTERM while crying audio streams in and the models run: exit 0 within 5 s, the open
/// episode ended (printed and on MQTT), `crying` OFF, and `offline` from the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_inference_ends_the_episode_on_mqtt_and_publishes_offline() {
    let (broker, sub, base) = broker_for("term").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config(dir.path(), broker.port, "term");
    let mut daemon = start_online(&sub, &base, &conf).await;
    // A minute of crying at 4x real time: the detector and the reason model keep running
    // until the signal.
    let mut audio = synth::room_tone(RATE, 63.0, 0.002, 101);
    synth::mix_into(&mut audio, &synth::cry(RATE, 60.0, 0.5), 3 * RATE as usize);
    let mut stdin = daemon.stdin.take().unwrap();
    let chunks: Vec<Vec<u8>> = audio.chunks(RATE as usize).map(s16le).collect();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for chunk in chunks {
            // The daemon stops reading when it exits.
            if stdin.write_all(&chunk).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    wait_until("two classified windows", Duration::from_secs(30), || {
        daemon.printed("window") >= 2
    })
    .await;
    daemon.signal("TERM");
    let summary = exits_with_the_episode_closed(&mut daemon);
    writer.join().unwrap();
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!(
        heard < 60.0,
        "stopped before the end of the audio: {heard} s"
    );
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());
    assert_episode_delivered(&sub, &base, &daemon.event_ids()).await;
    assert_eq!(
        payloads(&sub, &format!("{base}/status")),
        ["online", "offline"]
    );
    assert_clean_disconnect(&broker, "term").await;
}
