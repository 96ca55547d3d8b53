//! Audio file decoding: WAV, FLAC, OGG/Vorbis and MP3 (symphonia, pure Rust) into mono
//! `f32` samples at the file's own rate.
//!
//! It owns telling a good recording from a bad one: a missing, empty, truncated or
//! corrupt file, or one that is not audio at all, becomes a [`DecodeError`] that names
//! the file and the cause. A file with an announced length that decodes short is
//! reported as truncated rather than silently classified on half its audio (MP3 announces
//! none: a cut MP3 is classified on what it holds). An Ogg file announces its length only
//! in its last page, so its pages are checked before it is decoded ([`check_ogg_pages`]).
//! [`AudioStream`] decodes packet by packet, for replays and `classify`, which must not
//! hold a whole night in memory; [`decode_file`] collects it (bench, tests).

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
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
    collect(AudioStream::open(path)?)
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
    collect(AudioStream::from_source(
        Box::new(std::io::Cursor::new(bytes)),
        ext,
        path,
    )?)
}

fn collect(mut stream: AudioStream) -> Result<DecodedAudio, DecodeError> {
    let mut samples = Vec::new();
    while stream.next_into(&mut samples)? {}
    Ok(DecodedAudio {
        samples,
        sample_rate: stream.sample_rate(),
        channels: stream.channels(),
    })
}

/// A recording decoded one packet at a time, downmixed to mono at its own rate, so a
/// replay holds one packet instead of the whole night. The checks of a whole-file decode
/// still hold: a stream that ends with no audio, or short of its announced length, ends
/// in an error instead of `Ok(false)`, and so does a packet of non-finite samples.
pub struct AudioStream {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    sample_rate: u32,
    channels: usize,
    announced_frames: Option<u64>,
    decoded_frames: u64,
    buffer: Option<SampleBuffer<f32>>,
    /// Made for the channels of the first packet, again if they change.
    downmix: Option<crate::source::Downmix>,
    finished: bool,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("path", &self.path)
            .field("sample_rate", &self.sample_rate)
            .field("decoded_frames", &self.decoded_frames)
            .finish()
    }
}

impl AudioStream {
    /// Opens the file at `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, DecodeError> {
        let file = File::open(path).map_err(|source| DecodeError::Open {
            path: path.to_owned(),
            source,
        })?;
        let metadata = file.metadata().ok();
        if metadata.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(DecodeError::Open {
                path: path.to_owned(),
                source: std::io::Error::new(ErrorKind::InvalidInput, "is a directory"),
            });
        }
        // Only a regular file knows its length: a pipe (`/dev/stdin`, `<(...)`, a FIFO)
        // says 0 however much it carries.
        if metadata
            .as_ref()
            .is_some_and(|m| m.is_file() && m.len() == 0)
        {
            return Err(DecodeError::EmptyFile {
                path: path.to_owned(),
            });
        }
        let ext = path.extension().and_then(|e| e.to_str());
        Self::from_source(Box::new(file), ext, path)
    }

    fn from_source(
        source: Box<dyn MediaSource>,
        ext: Option<&str>,
        path: &Path,
    ) -> Result<Self, DecodeError> {
        guarded(|| Self::probe(source, ext, path)).unwrap_or_else(|| Err(gave_up(path)))
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Channels in the file before the downmix.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Appends the next packet's mono samples to `out`: `Ok(true)` while there may be
    /// more, `Ok(false)` (nothing appended) once the recording has ended well.
    pub fn next_into(&mut self, out: &mut Vec<f32>) -> Result<bool, DecodeError> {
        if self.finished {
            return Ok(false);
        }
        let more = guarded(|| self.decode_packet(out)).unwrap_or_else(|| Err(gave_up(&self.path)));
        if !matches!(more, Ok(true)) {
            self.finished = true;
        }
        more
    }

    fn probe(
        mut source: Box<dyn MediaSource>,
        ext: Option<&str>,
        path: &Path,
    ) -> Result<Self, DecodeError> {
        check_ogg_pages(&mut source).map_err(|reason| corrupt(path, reason))?;
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
            .map_err(|e| unsupported(path, e.to_string()))?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| unsupported(path, "no audio track".into()))?;
        let track_id = track.id;
        let params = track.codec_params.clone();
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| unsupported(path, "no sample rate".into()))?;
        if sample_rate == 0 {
            return Err(corrupt(path, "sample rate 0".into()));
        }
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| unsupported(path, e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            format,
            decoder,
            track_id,
            sample_rate,
            channels: params.channels.map(|c| c.count()).unwrap_or(0),
            announced_frames: announced_length(&params),
            decoded_frames: 0,
            buffer: None,
            downmix: None,
            finished: false,
        })
    }

    fn decode_packet(&mut self, out: &mut Vec<f32>) -> Result<bool, DecodeError> {
        let path = self.path.as_path();
        loop {
            let packet = match self.format.next_packet() {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                    return self.at_end()
                }
                Err(SymError::ResetRequired) => return self.at_end(),
                Err(e) => return Err(corrupt(path, e.to_string())),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(d) => d,
                Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                    return self.at_end()
                }
                Err(e) => return Err(corrupt(path, e.to_string())),
            };
            let spec = *decoded.spec();
            let ch = spec.channels.count().max(1);
            self.channels = ch;
            let frames = decoded.frames();
            if self
                .buffer
                .as_ref()
                .is_none_or(|b| b.capacity() < decoded.capacity() * ch)
            {
                self.buffer = Some(SampleBuffer::new(decoded.capacity() as u64, spec));
            }
            let buf = self.buffer.as_mut().expect("allocated above");
            buf.copy_interleaved_ref(decoded);
            let interleaved = &buf.samples()[..frames * ch];
            let first = out.len();
            let downmix = match &mut self.downmix {
                Some(d) if d.channels() == ch => d,
                // symphonia counts at most 32 channels (a bit mask).
                other => other.insert(crate::source::Downmix::new(ch as u16, self.sample_rate)),
            };
            downmix.push(interleaved, out);
            if out[first..].iter().any(|s| !s.is_finite()) {
                return Err(corrupt(path, "samples are not finite numbers".into()));
            }
            self.decoded_frames += frames as u64;
            return Ok(true);
        }
    }

    /// The end of the packets: a recording with no audio, or one that decodes short of
    /// its announced length, is an error.
    fn at_end(&self) -> Result<bool, DecodeError> {
        let path = self.path.as_path();
        if self.decoded_frames == 0 {
            return Err(DecodeError::NoAudio {
                path: path.to_owned(),
            });
        }
        if let Some(n) = self.announced_frames {
            // Some encoders round the announced length to a block; only a real shortfall
            // is truncation.
            let rate = u64::from(self.sample_rate);
            if self.decoded_frames + rate / 100 < n {
                return Err(corrupt(
                    path,
                    format!(
                        "truncated: decoded {} of {} announced samples ({:.2} s of {:.2} s)",
                        self.decoded_frames,
                        n,
                        self.decoded_frames as f64 / rate as f64,
                        n as f64 / rate as f64
                    ),
                ));
            }
        }
        Ok(false)
    }
}

/// The length the container announces, unless it is the streaming sentinel: a WAV
/// written to a pipe (sox, ffmpeg, `arecord` to stdout) says 0xFFFFFFFF bytes of data,
/// which symphonia accepts and turns into about 2^32 / bytes-per-frame frames, so every
/// such recording would read as truncated. MPEG audio (MP3) announces no length at all:
/// without a Xing/Info header symphonia estimates one from the first frames, which for a
/// VBR recording that starts quiet is several times too long, so it is not checked.
fn announced_length(params: &symphonia::core::codecs::CodecParameters) -> Option<u64> {
    use symphonia::core::codecs::{CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3};
    if [CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3].contains(&params.codec) {
        return None;
    }
    let frames = params.n_frames?;
    let bytes_per_frame = u64::from(params.bits_per_coded_sample.unwrap_or(0)).div_ceil(8)
        * params.channels.map_or(0, |c| c.count() as u64);
    let sentinel = bytes_per_frame > 0
        && frames.saturating_mul(bytes_per_frame) + bytes_per_frame > u64::from(u32::MAX);
    (!sentinel).then_some(frames)
}

/// Walks a seekable Ogg source page by page and rewinds it; anything else is left
/// untouched. symphonia's Ogg reader takes the length from the last page it finds and
/// skips pages that fail their checksum, so a cut or damaged Ogg file would otherwise
/// replay in part and end as if whole (a FLAC or WAV file with the same damage is
/// refused). A pipe cannot be read twice: it is decoded unchecked.
fn check_ogg_pages(source: &mut Box<dyn MediaSource>) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    if !source.is_seekable() {
        return Ok(());
    }
    let mut magic = [0u8; 4];
    let is_ogg =
        read_up_to(source, &mut magic).map_err(|e| e.to_string())? == 4 && &magic == b"OggS";
    let verdict = if is_ogg {
        source.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        walk_ogg_pages(std::io::BufReader::new(&mut *source))
    } else {
        Ok(())
    };
    source.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    verdict
}

/// Where each logical stream of an Ogg file has got to.
struct OggStreamProgress {
    next_sequence: u32,
    ended: bool,
}

/// Checks every page of an Ogg file: its capture pattern, version and checksum, each
/// stream begun by a first page, no page missing from a stream's sequence or out of
/// order, each stream closed by its end-of-stream page, and no second stream chained
/// after the first ones ended (symphonia would play the first alone). The error says
/// what is wrong and at which byte.
fn walk_ogg_pages(mut pages: impl std::io::Read) -> Result<(), String> {
    const BEGINNING_OF_STREAM: u8 = 0x02;
    const END_OF_STREAM: u8 = 0x04;
    let mut streams = std::collections::HashMap::<u32, OggStreamProgress>::new();
    // Streams begun and not yet ended: counted, not looked up at every page (a file of
    // many one-page streams would take quadratic time).
    let mut open_streams = 0usize;
    let mut offset = 0u64;
    let mut page = Vec::new();
    loop {
        let mut header = [0u8; 27];
        let got = read_up_to(&mut pages, &mut header).map_err(|e| e.to_string())?;
        let all_ended = !streams.is_empty() && open_streams == 0;
        let capture = got >= 4 && &header[..4] == b"OggS";
        if got == 0 || (all_ended && !capture) {
            // The end, or bytes after the last stream ended (padding, a tag) that no
            // decoder reads.
            break;
        }
        if all_ended {
            return Err(format!(
                "a second Ogg stream starts at byte {offset}, after the first ended (a \
                 chained file): only the first would be played; split the file"
            ));
        }
        if got < header.len() {
            return Err(ogg_cut_inside(offset));
        }
        if !capture {
            return Err(format!(
                "damaged: no Ogg page starts at byte {offset}, where one should"
            ));
        }
        if header[4] != 0 {
            return Err(format!(
                "damaged: the Ogg page at byte {offset} has an unknown version"
            ));
        }
        let mut lacing = [0u8; 255];
        let lacing = &mut lacing[..usize::from(header[26])];
        page.clear();
        page.extend_from_slice(&header);
        if pages.read_exact(lacing).is_err() {
            return Err(ogg_cut_inside(offset));
        }
        page.extend_from_slice(lacing);
        let body_start = page.len();
        let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        page.resize(body_start + body, 0);
        if pages.read_exact(&mut page[body_start..]).is_err() {
            return Err(ogg_cut_inside(offset));
        }
        let field =
            |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
        let (serial, sequence, stored_crc) = (field(14), field(18), field(22));
        page[22..26].fill(0);
        if ogg_crc(&page) != stored_crc {
            return Err(format!(
                "damaged: the Ogg page at byte {offset} fails its checksum"
            ));
        }
        let begins = header[5] & BEGINNING_OF_STREAM != 0;
        if !begins && !streams.contains_key(&serial) {
            return Err(format!(
                "damaged: the Ogg page at byte {offset} belongs to no stream the file began"
            ));
        }
        let stream = streams.entry(serial).or_insert_with(|| {
            open_streams += 1;
            OggStreamProgress {
                next_sequence: sequence,
                ended: false,
            }
        });
        if stream.ended {
            return Err(format!(
                "damaged: the Ogg page at byte {offset} follows the end of its stream"
            ));
        }
        if sequence != stream.next_sequence {
            return Err(format!(
                "damaged: Ogg pages are missing or out of order before byte {offset}"
            ));
        }
        stream.next_sequence = sequence.wrapping_add(1);
        stream.ended = header[5] & END_OF_STREAM != 0;
        if stream.ended {
            open_streams -= 1;
        }
        offset += page.len() as u64;
    }
    if open_streams > 0 {
        return Err(format!(
            "truncated: the file ends at byte {offset} without the Ogg stream's last page"
        ));
    }
    Ok(())
}

fn ogg_cut_inside(offset: u64) -> String {
    format!("truncated: the file ends inside the Ogg page that starts at byte {offset}")
}

/// Reads until `buf` is full or the source ends; the number of bytes read.
fn read_up_to(source: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The Ogg page checksum: CRC-32 with polynomial 0x04c11db7, not reflected, starting
/// from 0 (not the zlib CRC-32).
fn ogg_crc(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut r = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
                bit += 1;
            }
            table[i] = r;
            i += 1;
        }
        table
    };
    bytes.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

fn unsupported(path: &Path, reason: String) -> DecodeError {
    DecodeError::Unsupported {
        path: path.to_owned(),
        reason,
    }
}

fn corrupt(path: &Path, reason: String) -> DecodeError {
    DecodeError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

/// Runs a step of the decoder; `None` when it panicked. symphonia asserts on some
/// malformed headers (a zero sample rate reaches a division in its time base, found by
/// tests/fuzz.rs); a bad file must be an error ([`gave_up`]), never a crash, and the user
/// sees that error alone, not the decoder's panic message.
fn guarded<R>(step: impl FnOnce() -> R) -> Option<R> {
    quiet_decoder_panics();
    DECODING.with(|d| d.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step));
    DECODING.with(|d| d.set(false));
    outcome.ok()
}

fn gave_up(path: &Path) -> DecodeError {
    corrupt(
        path,
        "malformed header or stream (the decoder gave up)".into(),
    )
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
    bytes.extend(pcm_s16le(samples));
    std::fs::write(path, bytes)
}

/// `samples` as signed 16-bit little-endian PCM (clamped to [-1, 1]): a WAV's data, or
/// what `arecord -f S16_LE` writes to a pipe.
pub fn pcm_s16le(samples: &[f32]) -> impl Iterator<Item = u8> + '_ {
    samples
        .iter()
        .flat_map(|&s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
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

        // Written to a pipe: RIFF and data sizes are the 0xFFFFFFFF sentinel.
        let mut streamed = bytes.clone();
        streamed[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        streamed[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let piped = dir.path().join("piped.wav");
        std::fs::write(&piped, &streamed).unwrap();
        assert_eq!(decode_file(&piped).unwrap().samples.len(), 8000);
    }

    /// One Ogg page of logical stream `serial`, its checksum computed.
    fn ogg_page(serial: u32, sequence: u32, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut page = b"OggS\0".to_vec();
        page.push(flags);
        page.extend_from_slice(&0u64.to_le_bytes());
        page.extend_from_slice(&serial.to_le_bytes());
        page.extend_from_slice(&sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]);
        let lacing: Vec<u8> = body.chunks(255).map(|c| c.len() as u8).collect();
        page.push(lacing.len() as u8);
        page.extend_from_slice(&lacing);
        page.extend_from_slice(body);
        let crc = ogg_crc(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        page
    }

    #[test]
    fn a_cut_or_damaged_ogg_file_is_refused_before_it_is_decoded() {
        let tone = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/decode/tone.ogg"),
        )
        .unwrap();
        let path = Path::new("tone.ogg");
        // oggenc's own checksums: the page walk accepts the whole file, and trailing bytes
        // after the stream's end.
        assert_eq!(walk_ogg_pages(&tone[..]), Ok(()));
        let padded = [&tone[..], &[0; 10]].concat();
        let decoded = |bytes: Vec<u8>| decode_bytes(bytes, Some("ogg"), path).map(|d| d.samples);
        assert_eq!(decoded(padded).unwrap(), decoded(tone.clone()).unwrap());

        // Pages: 0..58 and 58..2640 hold the headers, 2640.. the audio and the stream's end.
        let cut = decode_bytes(tone[..2700].to_vec(), Some("ogg"), path).unwrap_err();
        assert_eq!(
            cut.to_string(),
            "tone.ogg: corrupt or truncated audio: truncated: the file ends inside the Ogg page that starts at byte 2640"
        );
        let mut flipped = tone.clone();
        flipped[2700] ^= 0x01;
        let e = decode_bytes(flipped, Some("ogg"), path)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("damaged: the Ogg page at byte 2640 fails its checksum"),
            "{e}"
        );

        let (first, second, last) = (
            ogg_page(7, 0, 0x02, &[1; 300]),
            ogg_page(7, 1, 0, &[2; 20]),
            ogg_page(7, 2, 0x04, &[3; 20]),
        );
        let whole = [&first[..], &second, &last].concat();
        assert_eq!(walk_ogg_pages(&whole[..]), Ok(()));
        // Each damage, and what the walk says of it.
        let gap = [&first[..], &last].concat();
        let unended = [&first[..], &second].concat();
        // A page of a stream the file never began (spliced in from another file).
        let stray = [&first[..], &ogg_page(9, 5, 0, &[5; 9]), &second, &last].concat();
        let at = first.len();
        for (bytes, says) in [
            (
                gap,
                format!("damaged: Ogg pages are missing or out of order before byte {at}"),
            ),
            (
                unended.clone(),
                format!(
                    "truncated: the file ends at byte {} without the Ogg stream's last page",
                    unended.len()
                ),
            ),
            (
                stray,
                format!("damaged: the Ogg page at byte {at} belongs to no stream the file began"),
            ),
        ] {
            assert_eq!(walk_ogg_pages(&bytes[..]), Err(says));
        }
        // A chained file (another stream after the first one's end; the same one again
        // too): symphonia would play the first alone.
        for next in [ogg_page(8, 0, 0x06, &[4; 9]), first.clone()] {
            let chained = [&whole[..], &next].concat();
            assert_eq!(
                walk_ogg_pages(&chained[..]),
                Err(format!(
                    "a second Ogg stream starts at byte {}, after the first ended (a chained file): only the first would be played; split the file",
                    whole.len()
                ))
            );
        }
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
