//! babycry: a baby-cry monitor for Home Assistant.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! source ──► resample ──► gate ──► features ──► model ──► decision ──► events ──► mqtt
//! (capture:   (rubato,     (noise    (log-mel,    (tract,    (thresholds,  (JSON      (rumqttc,
//!  cpal, file, to 8 kHz)    floor)    librosa-     ONNX +     k-of-n)       lines)     HA
//!  stdin)                             exact)       sidecar)                            discovery)
//! ```
//!
//! `decode` reads files, `classify` composes the stages for whole files (the offline
//! `babycryd classify`), `monitor` composes them for a stream (gate, detector, cry
//! episodes, reasons), `daemon` wires source, monitor and outputs into the live service
//! (`babycryd run`), `capture` is the cpal source (feature `alsa`), `config` parses and
//! validates the settings, `cli` holds the command line.

pub mod bench;
#[cfg(feature = "alsa")]
pub mod capture;
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
pub mod monitor;
pub mod mqtt;
pub mod resample;
pub mod source;
pub mod synth;
