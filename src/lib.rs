//! babycry: a baby-cry monitor for Home Assistant.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! source ──► resample ──► gate ──► features ──► model ──► decision ──► events ──► mqtt
//! (cpal,      (rubato,     (noise    (log-mel,    (tract,    (thresholds,  (JSON      (rumqttc,
//!  file,       to 8 kHz)    floor)    librosa-     ONNX +     k-of-n,       lines)     HA
//!  stdin)                             exact)       sidecar)   episodes)                discovery)
//! ```
//!
//! `decode` reads files, `classify` composes the stages for whole files (the offline
//! `babycryd classify`), `daemon` wires them into the live service (`babycryd run`),
//! `config` parses and validates the settings, `cli` holds the command line.

pub mod bench;
pub mod classify;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decision;
pub mod decode;
pub mod error;
pub mod events;
pub mod features;
pub mod gate;
pub mod model;
pub mod mqtt;
pub mod resample;
pub mod source;
pub mod synth;
