//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The shipped reason model's labels, in its output order (models/cry-reason.toml).
pub const REASON_LABELS: [&str; 8] = [
    "belly_pain",
    "burping",
    "cold_hot",
    "discomfort",
    "hungry",
    "lonely",
    "scared",
    "tired",
];

/// Runs `command` with `bytes` written to its stdin (from a thread, so that a full
/// stdout pipe cannot stall the writer) and returns what it printed.
pub fn output_with_stdin(command: &mut Command, bytes: Vec<u8>) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn babycryd");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The shared data folder (`$BABYCRY_DATA` or `../shared/data`), or None with a notice.
/// Under CI a missing folder is a failure, never a silent skip.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("BABYCRY_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    if dir.join("donateacry/manifest.csv").exists() {
        return Some(dir);
    }
    let msg = format!(
        "shared data not found at {} (set BABYCRY_DATA to the folder holding donateacry/ and negatives/)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}
