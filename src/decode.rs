//! Audio file decoding: WAV, FLAC, OGG/Vorbis and MP3 (symphonia, pure Rust) into mono
//! `f32` samples at the file's own rate.
//!
//! It owns telling a good recording from a bad one: a missing, empty, truncated or
//! corrupt file, or one that is not audio at all, becomes a [`DecodeError`] that names
//! the file and the cause. A file with an announced length that decodes short is
//! reported as truncated rather than silently classified on half its audio.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::DecodeError;

/// A decoded recording, downmixed to mono.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Channels in the file before the downmix.
    pub channels: usize,
}

impl DecodedAudio {
    pub fn duration_seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// Decodes the file at `path`.
pub fn decode_file(path: &Path) -> Result<DecodedAudio, DecodeError> {
    let file = File::open(path).map_err(|source| DecodeError::Open {
        path: path.to_owned(),
        source,
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(DecodeError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "is a directory"),
        });
    }
    if len == 0 {
        return Err(DecodeError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let ext = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), ext, path)
}

/// Decodes in-memory bytes; `path` only names them in errors.
pub fn decode_bytes(
    bytes: Vec<u8>,
    ext: Option<&str>,
    path: &Path,
) -> Result<DecodedAudio, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::EmptyFile {
            path: path.to_owned(),
        });
    }
    decode_source(Box::new(std::io::Cursor::new(bytes)), ext, path)
}

fn decode_source(
    source: Box<dyn MediaSource>,
    ext: Option<&str>,
    path: &Path,
) -> Result<DecodedAudio, DecodeError> {
    // symphonia asserts on some malformed headers (a zero sample rate reaches a division
    // in its time base, found by tests/fuzz.rs); a bad file must be an error, never a crash,
    // and the user sees that error alone, not the decoder's panic message.
    quiet_decoder_panics();
    DECODING.with(|d| d.set(true));
    let guarded = std::panic::AssertUnwindSafe(|| decode_unguarded(source, ext, path));
    let outcome = std::panic::catch_unwind(guarded);
    DECODING.with(|d| d.set(false));
    outcome.unwrap_or_else(|_| {
        Err(DecodeError::Corrupt {
            path: path.to_owned(),
            reason: "malformed header or stream (the decoder gave up)".into(),
        })
    })
}

thread_local! {
    /// Set while this thread runs the decoder inside `catch_unwind`.
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that logs a decoder's panic at debug level instead of
/// printing it; every other panic goes to the hook that was there before.
fn quiet_decoder_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DECODING.with(std::cell::Cell::get) {
                tracing::debug!("the decoder panicked: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

fn decode_unguarded(
    source: Box<dyn MediaSource>,
    ext: Option<&str>,
    path: &Path,
) -> Result<DecodedAudio, DecodeError> {
    let unsupported = |reason: String| DecodeError::Unsupported {
        path: path.to_owned(),
        reason,
    };
    let corrupt = |reason: String| DecodeError::Corrupt {
        path: path.to_owned(),
        reason,
    };

    let stream = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = ext {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| unsupported(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| unsupported("no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params
        .sample_rate
        .ok_or_else(|| unsupported("no sample rate".into()))?;
    if sample_rate == 0 {
        return Err(corrupt("sample rate 0".into()));
    }
    let announced_frames = params.n_frames;
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| unsupported(e.to_string()))?;

    let mut samples = Vec::new();
    let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(corrupt(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let spec = *decoded.spec();
        let ch = spec.channels.count().max(1);
        channels = ch;
        let frames = decoded.frames();
        if buffer
            .as_ref()
            .is_none_or(|b| b.capacity() < decoded.capacity() * ch)
        {
            buffer = Some(SampleBuffer::new(decoded.capacity() as u64, spec));
        }
        let buf = buffer.as_mut().expect("allocated above");
        buf.copy_interleaved_ref(decoded);
        let interleaved = &buf.samples()[..frames * ch];
        if ch == 1 {
            samples.extend_from_slice(interleaved);
        } else {
            let scale = 1.0 / ch as f32;
            samples.extend(
                interleaved
                    .chunks_exact(ch)
                    .map(|f| f.iter().sum::<f32>() * scale),
            );
        }
    }
    if samples.is_empty() {
        return Err(DecodeError::NoAudio {
            path: path.to_owned(),
        });
    }
    if let Some(n) = announced_frames {
        // Some encoders round the announced length to a block; only a real shortfall is truncation.
        if (samples.len() as u64) + u64::from(sample_rate) / 100 < n {
            return Err(corrupt(format!(
                "truncated: decoded {} of {} announced samples ({:.2} s of {:.2} s)",
                samples.len(),
                n,
                samples.len() as f64 / f64::from(sample_rate),
                n as f64 / f64::from(sample_rate)
            )));
        }
    }
    if samples.iter().any(|s| !s.is_finite()) {
        return Err(corrupt("samples are not finite numbers".into()));
    }
    Ok(DecodedAudio {
        samples,
        sample_rate,
        channels,
    })
}

/// Writes a mono 16-bit PCM WAV file: for demos and tests that make their own signals.
pub fn write_wav_i16(path: &Path, samples: &[f32], sample_rate: u32) -> std::io::Result<()> {
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&sample_rate.to_le_bytes());
    bytes.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        bytes.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let x: Vec<f32> = (0..8000).map(|i| ((i as f32) * 0.05).sin() * 0.5).collect();
        write_wav_i16(&path, &x, 8000).unwrap();
        let d = decode_file(&path).unwrap();
        assert_eq!(d.sample_rate, 8000);
        assert_eq!(d.samples.len(), 8000);
        assert!((d.samples[1234] - x[1234]).abs() < 1e-4);

        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = decode_file(&cut).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("cut.wav"), "{e}");
    }

    #[test]
    fn text_named_wav_and_empty_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("notes.wav");
        std::fs::write(&txt, "this is not audio\n").unwrap();
        assert!(matches!(
            decode_file(&txt),
            Err(DecodeError::Unsupported { .. })
        ));
        let empty = dir.path().join("empty.flac");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            decode_file(&empty),
            Err(DecodeError::EmptyFile { .. })
        ));
        assert!(matches!(
            decode_file(&dir.path().join("missing.wav")),
            Err(DecodeError::Open { .. })
        ));
    }
}
