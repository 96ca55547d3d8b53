//! Live capture through cpal on this machine's ALSA: the `null` PCM (zero samples, any
//! format) is a real device that proves the capture path and stall detection; a device
//! that does not exist proves the daemon keeps retrying instead of exiting, and that Home
//! Assistant (a real Mosquitto in between) then shows the crying sensor unavailable.
#![cfg(feature = "alsa")]

mod broker_common;
mod daemon_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon_common::*;

fn run_live_for(config_extra: &str, secs: u64) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), config_extra);
    let child = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--no-mqtt"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(secs));
    // Still running: a missing or silent microphone never ends the daemon.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-0", &pid])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(5));
    RunOutput {
        code: out.status.code(),
        events: parse_events(&String::from_utf8_lossy(&out.stdout)),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn states(run: &RunOutput) -> Vec<String> {
    run.of_type("audio_state")
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_alsa_null_device_is_captured_and_reported_stalled() {
    let run = run_live_for("[audio]\ndevice = \"alsa:null\"\nstall_seconds = 1.0\n", 3);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        states(&run),
        ["connecting", "running", "stalled"],
        "{}",
        run.stderr
    );
    assert!(run.summary()["audio_seconds"].as_f64().unwrap() > 0.5);
    // Zeros never open the gate, so no model ran.
    assert_eq!(run.summary()["detector_inferences"], 0);
}

#[test]
fn the_configured_sample_rate_is_asked_of_the_device() {
    let run = run_live_for(
        "[audio]\ndevice = \"alsa:null\"\nsample_rate = 16000\nstall_seconds = 1.0\n",
        3,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let started = run
        .stderr
        .lines()
        .find(|l| l.contains("capture started"))
        .unwrap_or_else(|| panic!("no capture line:\n{}", run.stderr));
    assert!(started.contains("rate=16000"), "{started}");
    // The device's default layout (2 channels for the null PCM) is kept.
    assert!(started.contains("channels=2"), "{started}");
    assert!(!run.stderr.contains("does not offer"), "{}", run.stderr);
    // Converted to the models' 8 kHz like any other rate: audio time keeps up.
    assert!(run.summary()["audio_seconds"].as_f64().unwrap() > 0.5);
}

#[test]
fn a_missing_device_is_reported_once_and_retried_without_exiting() {
    let run = run_live_for(
        "[audio]\ndevice = \"no-such-microphone\"\n[logging]\nlevel = \"info,babycry::source=debug\"\n",
        4,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(states(&run), ["connecting", "lost"], "{}", run.stderr);
    // Reopened after 1..2 s and again 2..4 s later: each attempt at debug, numbered.
    assert!(
        run.stderr.matches(" attempt=").count() >= 2,
        "{}",
        run.stderr
    );
    let lost = run.of_type("audio_state")[1];
    assert!(lost["detail"]
        .as_str()
        .unwrap()
        .contains("no-such-microphone"));
    // Logged at warn once, retried (1 s, 2 s...) at debug.
    assert_eq!(run.stderr.matches(" WARN ").count(), 1, "{}", run.stderr);
}

#[test]
fn devices_lists_input_devices_with_their_formats() {
    let out = Command::new(bin()).arg("devices").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("id: alsa:null"), "{text}");
    assert!(text.contains("default format: "), "{text}");
    assert!(text.contains(" Hz, "), "{text}");
    // The null PCM takes 1 to 64 channels in 13 formats: one line per format (832 when
    // every channel count had its own).
    assert!(text.contains("supports: 1-64 ch, "), "{text}");
    assert!(text.lines().count() < 100, "{} lines", text.lines().count());

    // A reader that went away (`babycryd devices | head -2`) is no error: the pipe is
    // closed before the list is written (a panic, exit 101, before).
    let out = run_with_closed(&["devices"], Closed::Stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Home Assistant's view of a live daemon through a real Mosquitto: with the microphone
/// missing, what the daemon hears now (crying, reason, confidence) is unavailable, not
/// "Clear", while the diagnostics stay available to say why and the episode event to
/// fire for episodes a drop-out cut short; with a device delivering audio, every entity
/// is available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_shows_what_the_daemon_hears_unavailable_while_the_microphone_is_lost() {
    use broker_common::{
        available_ids, daemon_config_with, wait_until, Broker, Subscriber, HEARING, WHILE_ONLINE,
    };
    for (device, state) in [("no-such-microphone", "lost"), ("alsa:null", "running")] {
        let broker = Broker::start();
        let sub = Subscriber::start(broker.port, &["babycry/#", "homeassistant/#"]).await;
        let dir = tempfile::tempdir().unwrap();
        let audio = format!("[audio]\ndevice = \"{device}\"\nstall_seconds = 60.0\n");
        let conf = daemon_config_with(dir.path(), broker.port, "live", &audio);
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(&conf)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let diagnostics = "babycry/live/diagnostics";
        let said = format!("\"audio_state\":\"{state}\"");
        wait_until(
            &format!("audio_state {state} on MQTT"),
            Duration::from_secs(15),
            || {
                sub.on(diagnostics)
                    .last()
                    .is_some_and(|m| m.payload.contains(&said))
            },
        )
        .await;
        let configs: Vec<(String, serde_json::Value)> = sub
            .all()
            .into_iter()
            .filter(|m| m.topic.starts_with("homeassistant/"))
            .map(|m| {
                let c: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
                (c["unique_id"].as_str().unwrap().to_owned(), c)
            })
            .collect();
        assert_eq!(configs.len(), 10, "{device}");
        let latest = |t: &str| sub.on(t).last().map(|m| m.payload.clone());
        let available = available_ids(configs.iter().map(|(id, c)| (id, c)), "live_", &latest);
        let mut expected = WHILE_ONLINE.to_vec();
        if state == "running" {
            expected.extend(HEARING);
            expected.sort_unstable();
        }
        assert_eq!(available, expected, "{device}");
        assert!(Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
        assert_eq!(child.wait().unwrap().code(), Some(0), "{device}");
    }
}
