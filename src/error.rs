//! Typed errors of the library, one enum per stage; the binary wraps them with anyhow
//! at the edge and maps them to exit codes.

use std::path::PathBuf;

/// A feature recipe that cannot be computed (bad ranges, window too short).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("invalid feature recipe: {0}")]
pub struct RecipeError(pub String);

/// Decoding an audio file failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the file is empty")]
    EmptyFile { path: PathBuf },
    #[error("{path}: not a supported audio file (WAV, FLAC, OGG/Vorbis, MP3): {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: corrupt or truncated audio: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: contains no audio samples")]
    NoAudio { path: PathBuf },
}

/// Loading or running a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read model sidecar: {source}")]
    SidecarIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid model sidecar: {reason}")]
    Sidecar { path: PathBuf, reason: String },
    #[error("{path}: cannot load ONNX model: {reason}")]
    Onnx { path: PathBuf, reason: String },
    #[error("{path}: the ONNX model disagrees with its sidecar {sidecar}: {}", .mismatches.join("; "))]
    Mismatch {
        path: PathBuf,
        sidecar: PathBuf,
        mismatches: Vec<String>,
    },
    #[error("model {name}: inference failed: {reason}")]
    Inference { name: String, reason: String },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
}

/// Resampler construction or processing failed.
#[derive(Debug, thiserror::Error)]
#[error("resampler ({from_rate} Hz -> {to_rate} Hz): {reason}")]
pub struct ResampleError {
    pub from_rate: u32,
    pub to_rate: u32,
    pub reason: String,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: invalid value: {reason}")]
    Invalid { path: PathBuf, reason: String },
}
