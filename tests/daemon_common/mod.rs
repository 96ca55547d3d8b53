//! Helpers of the daemon tests: synthetic recordings, configs, running the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const RATE: u32 = 8000;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_babycryd")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sends signal `name` (`0`, `TERM`, `HUP`) to `pid` with kill(1); asserts it was sent.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Which output pipe [`run_with_closed`] closes.
pub enum Closed {
    Stdout,
    Stderr,
}

/// Runs `babycryd <args>` (the repository's models, no config file) with one of its
/// output pipes closed before it writes, as a reader that went away leaves it; returns
/// the exit status and what went to the other pipe.
pub fn run_with_closed(args: &[&str], closed: Closed) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("BABYCRYD_CONFIG")
        .env_remove("CONFIGURATION_DIRECTORY")
        .env("BABYCRYD_MODELS", repo().join("models"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match closed {
        Closed::Stdout => drop(child.stdout.take()),
        Closed::Stderr => drop(child.stderr.take()),
    }
    child.wait_with_output().unwrap()
}

/// Writes `samples` (mono, 8 kHz) as a 16-bit WAV in `dir`.
pub fn write_wav(dir: &Path, name: &str, samples: &[f32]) -> PathBuf {
    let path = dir.join(name);
    babycry::decode::write_wav_i16(&path, samples, RATE).unwrap();
    path
}

/// A config with MQTT off, the repository's models, and `extra` TOML appended
/// (sections other than [models] and [mqtt]).
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[models]\ndir = {:?}\n\n[mqtt]\nenabled = false\n\n{extra}\n",
        repo().join("models").display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The outcome of one `babycryd run`.
#[derive(Debug)]
pub struct RunOutput {
    pub code: Option<i32>,
    pub events: Vec<serde_json::Value>,
    pub stderr: String,
}

impl RunOutput {
    pub fn of_type(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }

    pub fn summary(&self) -> &serde_json::Value {
        self.of_type("summary")
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no summary record; stderr:\n{}", self.stderr))
    }
}

pub fn parse_events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// The `start_s` of every `episode_start` record, in order.
pub fn episode_starts(events: &[serde_json::Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["type"] == "episode_start")
        .map(|e| e["start_s"].as_f64().unwrap())
        .collect()
}

/// The `state` of every `audio_state` record, in order.
pub fn audio_states(events: &[serde_json::Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["type"] == "audio_state")
        .map(|e| e["state"].as_str().unwrap())
        .collect()
}

/// The JSON lines written so far to an `--events` file (none while it does not exist).
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .map(|t| parse_events(&t))
        .unwrap_or_default()
}

/// Runs `babycryd run --input WAV --fast --no-mqtt` to the end.
pub fn run_fast(config: &Path, wav: &Path, extra: &[&str]) -> RunOutput {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(["run", "--fast", "--no-mqtt", "--input"])
        .arg(wav)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or("babycry=debug".into()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    RunOutput {
        code: out.status.code(),
        events: parse_events(&String::from_utf8_lossy(&out.stdout)),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
