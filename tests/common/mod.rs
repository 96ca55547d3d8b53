//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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
