//! The lifecycle of the real binary under real signals: SIGTERM ends a run with exit 0
//! within 5 s and closes the running episode; SIGHUP applies a valid config without
//! dropping audio and keeps the old one when the new one is invalid; sd_notify messages
//! reach $NOTIFY_SOCKET.

mod daemon_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babycry::decode::pcm_s16le;
use babycry::synth;
use daemon_common::*;

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `cond` for up to `secs` seconds.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// s16le PCM of room tone with a cry from 2 s, then 6 s of quiet; and its length, seconds.
fn cry_segment() -> (Vec<u8>, f64) {
    let mut segment = synth::room_tone(RATE, 4.0, 0.002, 2);
    synth::mix_into(&mut segment, &synth::cry(RATE, 6.0, 0.5), 2 * RATE as usize);
    segment.extend(synth::room_tone(RATE, 6.0, 0.002, 3));
    let seconds = segment.len() as f64 / f64::from(RATE);
    (pcm_s16le(&segment).collect(), seconds)
}

/// `babycryd --config <config> run --no-mqtt <args>` with `env`, its stdin, stdout and
/// stderr piped.
fn spawn(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Child {
    Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(["run", "--no-mqtt"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// [`spawn`] reading s16le PCM at 8 kHz from its stdin.
fn spawn_stdin(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Child {
    spawn(
        config,
        env,
        &[&["--input", "-", "--rate", "8000"], args].concat(),
    )
}

/// Collects a child's stderr lines in the background.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut b = out.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

#[test]
fn sigterm_closes_the_episode_and_exits_zero_within_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut audio = synth::room_tone(RATE, 120.0, 0.002, 1);
    synth::mix_into(&mut audio, &synth::cry(RATE, 30.0, 0.5), RATE as usize);
    let wav = write_wav(dir.path(), "long.wav", &audio);
    let config = write_config(dir.path(), "[detector]\nthreshold = 0.8\n");
    let events = dir.path().join("events.jsonl");
    // Replayed in real time, as from a microphone.
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--no-mqtt", "--input"])
        .arg(&wav)
        .arg("--events")
        .arg(&events)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = collect_stderr(&mut child);
    wait_for(30, "an episode to start", || {
        read_events(&events)
            .iter()
            .any(|e| e["type"] == "episode_start")
    });
    signal(&child, "TERM");
    let sent = Instant::now();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", stderr.lock().unwrap());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let lines = read_events(&events);
    let end = lines
        .iter()
        .find(|e| e["type"] == "episode_end")
        .unwrap_or_else(|| panic!("the running episode was not closed: {lines:#?}"));
    assert_eq!(end["episode"], 1);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!(heard > 2.0 && heard < 60.0, "{heard}");
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    // Strict detector threshold: the synthetic cry (0.84-0.99) makes no episode.
    let strict =
        "[detector]\nthreshold = 0.999\n[episode]\nquiet_seconds = 2.0\ncooldown_seconds = 0.0\n";
    let config = write_config(dir.path(), strict);
    let mut child = spawn_stdin(&config, &[("RUST_LOG", "babycry=debug")], &[]);
    let stderr = collect_stderr(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let (bytes, seg_s) = cry_segment();
    let closed = |n: usize| {
        let stderr = stderr.clone();
        move || stderr.lock().unwrap().matches("gate closed").count() >= n
    };

    // 1: strict thresholds, no episode.
    stdin.write_all(&bytes).unwrap();
    wait_for(30, "the first cry to pass", closed(1));
    // 2: an invalid config is refused; the daemon keeps running on the old one. Its one
    // error is a threshold for a label the model does not have: applied anyway, even in
    // part, its detector threshold would make this cry an episode.
    write_config(
        dir.path(),
        "[detector]\nthreshold = 0.8\n[episode]\nquiet_seconds = 2.0\ncooldown_seconds = 0.0\n[thresholds]\nhungy = 0.5\n",
    );
    signal(&child, "HUP");
    wait_for(10, "the refusal", || {
        stderr
            .lock()
            .unwrap()
            .contains("configuration not reloaded")
    });
    stdin.write_all(&bytes).unwrap();
    wait_for(30, "the second cry to pass", closed(2));
    // 3: a valid config with a lower threshold: the same cry is now an episode. (Its
    // other MQTT host is nothing to say under --no-mqtt.)
    let valid = write_config(
        dir.path(),
        "[detector]\nthreshold = 0.8\n[episode]\nquiet_seconds = 2.0\ncooldown_seconds = 0.0\n",
    );
    let text = std::fs::read_to_string(&valid).unwrap().replacen(
        "enabled = false\n",
        "enabled = false\nhost = \"elsewhere.invalid\"\n",
        1,
    );
    std::fs::write(&valid, text).unwrap();
    signal(&child, "HUP");
    wait_for(10, "the reload", || {
        stderr.lock().unwrap().contains("configuration reloaded")
    });
    stdin.write_all(&bytes).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let log = stderr.lock().unwrap().clone();
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("MQTT settings"), "{log}");
    let events = parse_events(&String::from_utf8_lossy(&out.stdout));
    let starts = episode_starts(&events);
    // Only the third segment makes an episode; nothing was dropped, so its cry starts
    // 2 s into the third segment of stream time (0.5 s pre-roll earlier at most).
    assert_eq!(starts.len(), 1, "{starts:?}\n{log}");
    let cry = 2.0 * seg_s + 2.0;
    assert!(
        (cry - 0.6..=cry + 3.0).contains(&starts[0]),
        "{starts:?}, cry at {cry}"
    );
    let summary = events.last().unwrap();
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!((heard - 3.0 * seg_s).abs() < 0.1, "{summary}");
}

/// The messages sent to $NOTIFY_SOCKET, with the time each arrived.
struct NotifyListener {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    /// When the listener last found the socket empty.
    idle_at: Arc<Mutex<Instant>>,
}

impl NotifyListener {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let idle_at = Arc::new(Mutex::new(Instant::now()));
        let (sink, idle) = (messages.clone(), idle_at.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        sink.lock().unwrap().push((Instant::now(), text));
                    }
                    Err(_) => *idle.lock().unwrap() = Instant::now(),
                }
                if Arc::strong_count(&sink) == 1 {
                    return;
                }
            }
        });
        Self { messages, idle_at }
    }

    /// Waits until every message sent so far has been read: the socket found empty after
    /// this call (the sender has exited; a loaded machine may take a while to read them).
    fn drain(&self) {
        let called = Instant::now();
        let deadline = called + Duration::from_secs(10);
        while *self.idle_at.lock().unwrap() <= called {
            assert!(Instant::now() < deadline, "the notify listener is stuck");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn all(&self) -> String {
        let m = self.messages.lock().unwrap();
        m.iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Messages containing `what` that arrived within `from..to`.
    fn count_between(&self, what: &str, from: Instant, to: Instant) -> usize {
        let m = self.messages.lock().unwrap();
        m.iter()
            .filter(|(t, text)| *t >= from && *t <= to && text.contains(what))
            .count()
    }
}

/// `babycryd --config <config with extra> run --no-mqtt <args>` with $NOTIFY_SOCKET on a
/// listener in `dir`; stdin, stdout and stderr piped.
fn spawn_notified(dir: &Path, extra: &str, args: &[&str]) -> (NotifyListener, Child) {
    let socket_path = dir.join("notify.sock");
    let notify = NotifyListener::bind(&socket_path);
    let config = write_config(dir, extra);
    let socket = socket_path.to_str().unwrap();
    (notify, spawn(&config, &[("NOTIFY_SOCKET", socket)], args))
}

#[test]
fn sd_notify_sends_ready_status_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let wav = write_wav(
        dir.path(),
        "tone.wav",
        &synth::room_tone(RATE, 3.0, 0.002, 4),
    );
    let (notify, child) = spawn_notified(dir.path(), "", &["--input", wav.to_str().unwrap()]);
    assert!(child.wait_with_output().unwrap().status.success());
    notify.drain();
    let all = notify.all();
    assert!(all.contains("READY=1"), "{all}");
    assert!(all.contains("STATUS=audio running"), "{all}");
    assert!(all.contains("WATCHDOG=1"), "{all}");
    // READY comes before any watchdog ping.
    assert!(all.find("READY=1") < all.find("WATCHDOG=1"), "{all}");
}

/// A reload with an `[audio]` or `[logging]` change, which only a restart applies, warns
/// each time until the restart: the running settings keep what runs, so a second SIGHUP
/// with the same file warns again (before, it compared with the unapplied file and said
/// nothing).
#[test]
fn restart_only_changes_are_warned_about_at_every_reload_until_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut child = spawn_stdin(&config, &[], &[]);
    let stderr = collect_stderr(&mut child);
    let count = |what: &str| stderr.lock().unwrap().matches(what).count();
    wait_for(30, "the start", || count("audio source open") == 1);
    write_config(
        dir.path(),
        "[audio]\nstall_seconds = 20.0\n[logging]\nlevel = \"debug\"\n[episode]\nquiet_seconds = 5.0\n",
    );
    for reload in 1..=2 {
        signal(&child, "HUP");
        wait_for(10, "the reload", || {
            count("configuration reloaded") == reload
        });
        assert_eq!(count("[audio] changes take effect after a restart"), reload);
        assert_eq!(
            count("[logging] changes take effect after a restart"),
            reload
        );
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr.lock().unwrap());
}

/// READY=1 waits for the first frames, not for the source to open: stdin open with
/// nothing written is "audio connecting" in STATUS= (running comes with audio) and not
/// ready; the first audio makes it ready (before, READY came at the open, and a device
/// that never delivered was then restarted by the watchdog again and again).
#[test]
fn ready_waits_for_the_first_audio() {
    let dir = tempfile::tempdir().unwrap();
    let (notify, mut child) = spawn_notified(dir.path(), "", &["--input", "-", "--rate", "8000"]);
    wait_for(30, "STATUS=audio connecting", || {
        notify.all().contains("STATUS=audio connecting")
    });
    std::thread::sleep(Duration::from_millis(500));
    let all = notify.all();
    assert!(!all.contains("READY=1"), "{all}");
    assert!(!all.contains("STATUS=audio running"), "{all}");
    let mut stdin = child.stdin.take().unwrap();
    let audio: Vec<u8> = pcm_s16le(&synth::room_tone(RATE, 0.5, 0.002, 6)).collect();
    stdin.write_all(&audio).unwrap();
    wait_for(10, "READY=1", || notify.all().contains("READY=1"));
    drop(stdin);
    assert!(child.wait_with_output().unwrap().status.success());
}

/// STATUS= follows the episodes, not only the audio state: `systemctl status` says
/// "crying" while the baby cries and "quiet" again after the episode.
#[test]
fn the_status_line_follows_the_episode() {
    let dir = tempfile::tempdir().unwrap();
    let mut audio = synth::room_tone(RATE, 3.0, 0.002, 4);
    synth::mix_into(&mut audio, &synth::cry(RATE, 2.5, 0.5), 8000);
    audio.extend(synth::room_tone(RATE, 15.0, 0.002, 5));
    let wav = write_wav(dir.path(), "cry.wav", &audio);
    let (notify, child) = spawn_notified(
        dir.path(),
        "[detector]\nthreshold = 0.8\n",
        &["--fast", "--input", wav.to_str().unwrap()],
    );
    assert!(child.wait_with_output().unwrap().status.success());
    notify.drain();
    let all = notify.all();
    let crying = all
        .find("STATUS=audio running; crying (episode 1)")
        .unwrap_or_else(|| panic!("no crying status: {all}"));
    assert!(
        all[crying..].contains("STATUS=audio running; quiet"),
        "quiet again after the episode: {all}"
    );
}

/// Raw PCM on stdin that pauses with the pipe still open: the watchdog stops while no
/// frames arrive, the source is reported stalled, and both come back with the audio.
#[test]
fn the_watchdog_pauses_while_a_stdin_source_stops_sending() {
    let dir = tempfile::tempdir().unwrap();
    let (notify, mut child) = spawn_notified(
        dir.path(),
        "[audio]\nstall_seconds = 1.0\n",
        &["--input", "-", "--rate", "8000"],
    );
    let stderr = collect_stderr(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    // 100 ms of room tone every 100 ms, like a live recorder, for `secs` seconds.
    let chunk: Vec<u8> = pcm_s16le(&synth::room_tone(RATE, 0.1, 0.002, 5)).collect();
    let mut stream = |secs: f64| {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < until {
            stdin.write_all(&chunk).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    stream(4.5);
    let pause_start = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let pause_end = Instant::now();
    stream(4.5);
    let resumed = Instant::now();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    notify.drain();
    let log = stderr.lock().unwrap().clone();
    assert!(out.status.success(), "{log}");
    let all = notify.all();
    let before = notify.count_between(
        "WATCHDOG=1",
        pause_start - Duration::from_secs(4),
        pause_start,
    );
    // The last chunks are analysed within moments (up to 2 s on a loaded machine); after
    // that, silence on the socket: a ping every 2 s would put two in the 4 s left.
    let during = notify.count_between(
        "WATCHDOG=1",
        pause_start + Duration::from_secs(2),
        pause_end,
    );
    let after = notify.count_between("WATCHDOG=1", pause_end, resumed);
    assert!(before >= 1, "no watchdog while audio flowed:\n{all}");
    assert_eq!(during, 0, "watchdog pinged while no audio arrived:\n{all}");
    assert!(after >= 1, "no watchdog after the audio came back:\n{all}");
    let stalled =
        notify.count_between("STATUS=audio stalled (no audio for", pause_start, pause_end);
    assert_eq!(stalled, 1, "{all}");
    let running = notify.count_between("STATUS=audio running", pause_end, resumed);
    assert_eq!(running, 1, "{all}");
    let events = parse_events(&String::from_utf8_lossy(&out.stdout));
    let states = audio_states(&events);
    assert_eq!(
        states,
        ["connecting", "running", "stalled", "running", "ended"],
        "{log}"
    );
}

/// A microphone that is not there: the daemon keeps retrying, says so in STATUS=, and
/// neither claims READY nor pings the watchdog; SIGTERM still ends it cleanly.
#[cfg(feature = "alsa")]
#[test]
fn a_missing_microphone_is_never_ready_and_never_pings_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (notify, mut child) = spawn_notified(
        dir.path(),
        "[audio]\ndevice = \"babycryd-test-no-such-microphone\"\nretry_max_seconds = 1.0\n\
         [logging]\nlevel = \"info,babycry::source=debug\"\n",
        &[],
    );
    let stderr = collect_stderr(&mut child);
    wait_for(30, "STATUS=audio lost", || {
        notify.all().contains("STATUS=audio lost")
    });
    // Several retries (1 s apart) pass without READY or a watchdog ping.
    std::thread::sleep(Duration::from_secs(4));
    assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
    signal(&child, "TERM");
    let asked = Instant::now();
    let out = child.wait_with_output().unwrap();
    let log = stderr.lock().unwrap().clone();
    assert!(out.status.success(), "{log}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    let all = notify.all();
    assert!(!all.contains("READY=1"), "{all}");
    assert!(!all.contains("WATCHDOG=1"), "{all}");
    assert!(all.contains("babycryd-test-no-such-microphone"), "{all}");
    // The loss is logged once at warn, not once per retry; the retries (each at debug,
    // with its number) went on the whole time, at most 1 s apart.
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    assert!(log.matches(" attempt=").count() >= 3, "{log}");
}

/// logrotate moves the `--events` file and sends SIGHUP: the daemon writes on at the
/// path, in a new file, and the moved one keeps what came before (before, every later
/// event went on into the moved file).
#[test]
fn sighup_reopens_the_events_file_for_logrotate() {
    let dir = tempfile::tempdir().unwrap();
    let (events, rotated) = (
        dir.path().join("events.jsonl"),
        dir.path().join("events.jsonl.1"),
    );
    // Each cry an episode, closed 2 s after it.
    let quick =
        "[detector]\nthreshold = 0.8\n[episode]\nquiet_seconds = 2.0\ncooldown_seconds = 0.0\n";
    let config = write_config(dir.path(), quick);
    let mut child = spawn_stdin(&config, &[], &["--events", events.to_str().unwrap()]);
    let stderr = collect_stderr(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let (bytes, _) = cry_segment();
    let ends = |path: &Path| {
        read_events(path)
            .iter()
            .filter(|e| e["type"] == "episode_end")
            .count()
    };
    stdin.write_all(&bytes).unwrap();
    wait_for(30, "the first episode's end", || ends(&events) == 1);
    std::fs::rename(&events, &rotated).unwrap();
    signal(&child, "HUP");
    wait_for(10, "the reload", || {
        stderr.lock().unwrap().contains("configuration reloaded")
    });
    stdin.write_all(&bytes).unwrap();
    drop(stdin);
    assert!(child.wait_with_output().unwrap().status.success());
    let kinds = |path: &Path| -> Vec<String> {
        read_events(path)
            .iter()
            .filter(|e| e["type"] != "window")
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ends(&rotated), 1, "{:?}", kinds(&rotated));
    assert_eq!(
        kinds(&events),
        ["episode_start", "episode_end", "audio_state", "summary"],
        "{}",
        stderr.lock().unwrap()
    );
}
