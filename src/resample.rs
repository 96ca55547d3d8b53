//! Sample-rate conversion to the models' rate (8 kHz) with rubato's synchronous FFT
//! resampler.
//!
//! It owns two uses: [`resample_all`] for a whole decoded file, and [`StreamResampler`]
//! for live audio arriving in chunks of any size (the capture thread's output), which
//! buffers to rubato's fixed input chunk, trims the filter delay once at the start so
//! stream time stays aligned with wall time, flushes what it still holds when a stream
//! ends ([`StreamResampler::finish`]), and reuses its buffers in the steady state.
//! The capture thread's converter also decides, chunk by chunk, whether audio is loud
//! enough above the room to need rubato or quiet enough for a box average, which keeps
//! the FFT asleep in a quiet room (issue 8: an hour of silence from a 48 kHz microphone).

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::error::ResampleError;
use crate::gate::{GateConfig, LevelMeter, NoiseFloor, FRAME_SAMPLES};

/// Output frames per FFT block, at least: the block length sets how sharp the
/// anti-aliasing filter is. With 160 output frames (rubato's default split for 44.1 kHz)
/// the passband loses 10 dB at 3.4 kHz; from 1024 on it is flat to 3.4 kHz.
const MIN_BLOCK_OUT: usize = 1024;

/// The input chunk: the smallest block of `from/gcd` input frames, times the power of two
/// that gives at least [`MIN_BLOCK_OUT`] output frames. Keeping the factor a power of two
/// keeps both FFT lengths smooth (48 kHz: 6144 -> 1024; 44.1 kHz: 7056 -> 1280); an
/// arbitrary chunk such as 8192 gives a 8196-point FFT with a prime factor of 683, several
/// times slower.
fn chunk_for(from_rate: u32, to_rate: u32) -> usize {
    let (mut a, mut b) = (from_rate as usize, to_rate as usize);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let (block_in, block_out) = (from_rate as usize / a, to_rate as usize / a);
    let mut k = 1;
    while block_out * k < MIN_BLOCK_OUT {
        k *= 2;
    }
    block_in * k
}

fn err(from_rate: u32, to_rate: u32, e: impl std::fmt::Display) -> ResampleError {
    ResampleError {
        from_rate,
        to_rate,
        reason: e.to_string(),
    }
}

/// rubato's FFT resampler with one sub-chunk: the longest filter for the chunk, so the
/// passband stays flat close to the 4 kHz band edge the models look at.
fn fft_resampler(from_rate: u32, to_rate: u32) -> Result<Fft<f32>, ResampleError> {
    Fft::<f32>::new_custom(
        from_rate as usize,
        to_rate as usize,
        chunk_for(from_rate, to_rate),
        1,
        1,
        rubato::WindowFunction::BlackmanHarris2,
        FixedSync::Input,
    )
    .map_err(|e| err(from_rate, to_rate, e))
}

fn check_rates(from_rate: u32, to_rate: u32) -> Result<(), ResampleError> {
    if !(1000..=768_000).contains(&from_rate) || !(1000..=768_000).contains(&to_rate) {
        return Err(err(
            from_rate,
            to_rate,
            "sample rates must be within 1000..=768000 Hz",
        ));
    }
    Ok(())
}

/// Resamples a whole mono signal; the output is `ceil(len * to / from)` samples long and
/// aligned with the input (the resampler delay is removed).
pub fn resample_all(
    samples: &[f32],
    from_rate: u32,
    to_rate: u32,
) -> Result<Vec<f32>, ResampleError> {
    check_rates(from_rate, to_rate)?;
    if from_rate == to_rate || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut resampler = fft_resampler(from_rate, to_rate)?;
    let needed = resampler.process_all_needed_output_len(samples.len());
    let mut out = vec![0.0f32; needed];
    let input =
        InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| err(from_rate, to_rate, e))?;
    let mut output =
        InterleavedSlice::new_mut(&mut out, 1, needed).map_err(|e| err(from_rate, to_rate, e))?;
    let (_, produced) = resampler
        .process_all_into_buffer(&input, &mut output, samples.len(), None)
        .map_err(|e| err(from_rate, to_rate, e))?;
    let expected =
        (samples.len() as u64 * u64::from(to_rate)).div_ceil(u64::from(from_rate)) as usize;
    out.truncate(produced.min(expected));
    Ok(out)
}

/// How far above the room, dB, a frame must be for the capture stream to be converted by
/// rubato; quieter audio is box-averaged (see [`StreamResampler::for_capture`]). Below the
/// gate's default margin (10 dB), so audio loud enough to open the gate is converted by
/// rubato from its first chunk.
pub const PRECISE_ABOVE_ROOM_DB: f64 = 6.0;

/// How long rubato keeps converting after the last frame above the room, seconds: longer
/// than the gate's hangover and a baby's breath between cries, so the windows the models
/// see during an episode are converted alike.
pub const PRECISE_HOLD_SECONDS: f64 = 5.0;

/// A streaming mono resampler for audio that arrives in arbitrary chunks.
///
/// It converts whole chunks of [`chunk_for`] input frames. Made by [`Self::new`], every
/// chunk goes through rubato. Made by [`Self::for_capture`] (the capture thread's), only
/// chunks within [`PRECISE_HOLD_SECONDS`] of a frame [`PRECISE_ABOVE_ROOM_DB`] above the
/// room do; the rest are converted by averaging the input over each output sample's
/// period (a box filter: about a fifth of rubato's cost, flat to 1 dB up to 2 kHz, 3.8 dB
/// down at 4 kHz, white noise at the same level as rubato's). In a quiet room that keeps the
/// FFT asleep, as the gate does the models; the gate still sees every frame. The room's
/// level is a [`NoiseFloor`] of the box-averaged frames, with the gate's default time
/// constants. The switch is seamless: rubato is restarted on the previous chunk, so its
/// output from the switch on is the same, to the bit, as if it had run all along, and
/// when it stops, the samples its delay still held are box-averaged.
pub struct StreamResampler {
    from_rate: u32,
    to_rate: u32,
    /// None when the rates are equal.
    inner: Option<ChunkConverter>,
    /// Samples pushed in and given out so far: [`Self::finish`] ends the stream at the
    /// length its input makes.
    pushed: u64,
    given: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StreamResampler({} Hz -> {} Hz)",
            self.from_rate, self.to_rate
        )
    }
}

impl StreamResampler {
    /// Every chunk through rubato.
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Self, ResampleError> {
        Self::build(from_rate, to_rate, false)
    }

    /// Rubato only above a quiet room (see the type's documentation), where the input
    /// rate is at least twice the output rate; otherwise the same as [`Self::new`].
    pub fn for_capture(from_rate: u32, to_rate: u32) -> Result<Self, ResampleError> {
        Self::build(from_rate, to_rate, from_rate >= 2 * to_rate)
    }

    fn build(from_rate: u32, to_rate: u32, box_quiet: bool) -> Result<Self, ResampleError> {
        check_rates(from_rate, to_rate)?;
        let inner = if from_rate == to_rate {
            None
        } else {
            Some(ChunkConverter::new(from_rate, to_rate, box_quiet)?)
        };
        Ok(Self {
            from_rate,
            to_rate,
            inner,
            pushed: 0,
            given: 0,
        })
    }

    pub fn from_rate(&self) -> u32 {
        self.from_rate
    }

    /// Chunks converted so far: (by rubato, in all).
    pub fn chunks(&self) -> (u64, u64) {
        self.inner
            .as_ref()
            .map_or((0, 0), |c| (c.precise_chunks, c.chunks))
    }

    /// Feeds `input` and appends every output sample that is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let start = out.len();
        match self.inner.as_mut() {
            Some(inner) => inner.push(input, out)?,
            None => out.extend_from_slice(input),
        }
        self.pushed += input.len() as u64;
        self.given += (out.len() - start) as u64;
        Ok(())
    }

    /// Ends the stream: appends to `out` what is still held (the input short of a whole
    /// chunk, and what rubato's delay holds back), converted with silence after it, so
    /// that the whole stream comes to `ceil(pushed * to / from)` samples, as
    /// [`resample_all`] gives for the whole signal. Nothing is pushed after it.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        let total = (self.pushed * u64::from(self.to_rate)).div_ceil(u64::from(self.from_rate));
        let missing = usize::try_from(total.saturating_sub(self.given))
            .map_err(|e| err(self.from_rate, self.to_rate, e))?;
        let start = out.len();
        // Each chunk of silence gives a chunk of output (less rubato's delay, at most
        // once), so this ends after two or three.
        while out.len() - start < missing {
            inner.pad(out)?;
        }
        out.truncate(start + missing);
        self.given += missing as u64;
        Ok(())
    }
}

/// One chunk at a time: rubato or the box average, and the switch between them.
struct ChunkConverter {
    from_rate: u32,
    to_rate: u32,
    rubato: Fft<f32>,
    chunk_in: usize,
    chunk_out: usize,
    /// rubato's delay, output samples (at most one chunk).
    delay: usize,
    /// `[lead | previous chunk | this chunk]` of input: the previous chunk restarts
    /// rubato, the lead (the end of the chunk before) starts the first box. Input is
    /// written straight into this chunk's place; `filled` samples of it are there.
    raw: Vec<f32>,
    lead: usize,
    filled: usize,
    rubato_out: Vec<f32>,
    /// The box average of this chunk.
    boxed: Vec<f32>,
    box_quiet: bool,
    /// The gate's level measure, on the box-averaged frames.
    meter: LevelMeter,
    room: NoiseFloor,
    hold_chunks: u64,
    /// The last chunk (counting from 1) that rubato converts after the latest frame
    /// above the room; 0 before any.
    precise_until: u64,
    /// rubato converted the previous chunk: its state follows the stream.
    rubato_current: bool,
    chunks: u64,
    precise_chunks: u64,
}

impl ChunkConverter {
    fn new(from_rate: u32, to_rate: u32, box_quiet: bool) -> Result<Self, ResampleError> {
        let rubato = fft_resampler(from_rate, to_rate)?;
        let chunk_in = chunk_for(from_rate, to_rate);
        let chunk_out = rubato.output_frames_max();
        let delay = rubato.output_delay();
        if delay > chunk_out {
            return Err(err(from_rate, to_rate, "resampler delay exceeds its chunk"));
        }
        let lead = chunk_in / chunk_out + 2;
        let frame_seconds = FRAME_SAMPLES as f64 / f64::from(to_rate);
        let chunk_seconds = chunk_out as f64 / f64::from(to_rate);
        Ok(Self {
            from_rate,
            to_rate,
            rubato,
            chunk_in,
            chunk_out,
            delay,
            raw: vec![0.0; lead + 2 * chunk_in],
            lead,
            filled: 0,
            rubato_out: vec![0.0; chunk_out],
            boxed: Vec::with_capacity(chunk_out),
            box_quiet,
            meter: LevelMeter::new(to_rate),
            room: NoiseFloor::new(&GateConfig::default(), frame_seconds),
            hold_chunks: (PRECISE_HOLD_SECONDS / chunk_seconds).ceil() as u64,
            precise_until: 0,
            rubato_current: false,
            chunks: 0,
            precise_chunks: 0,
        })
    }

    /// Fills this chunk's place from `input`, converting every chunk it completes.
    fn push(&mut self, mut input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let (lead, n) = (self.lead, self.chunk_in);
        while !input.is_empty() {
            let take = (n - self.filled).min(input.len());
            let at = lead + n + self.filled;
            self.raw[at..at + take].copy_from_slice(&input[..take]);
            self.filled += take;
            input = &input[take..];
            if self.filled == n {
                self.next_chunk(out)?;
            }
        }
        Ok(())
    }

    /// Completes this chunk with silence and converts it (the end of the stream).
    fn pad(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let at = self.lead + self.chunk_in + self.filled;
        self.raw[at..].fill(0.0);
        self.next_chunk(out)
    }

    /// Converts the chunk now complete; it becomes the previous one.
    fn next_chunk(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        self.convert(out)?;
        self.raw.copy_within(self.chunk_in.., 0);
        self.filled = 0;
        Ok(())
    }

    /// Converts the chunk in `raw`'s last place.
    fn convert(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let (lead, n) = (self.lead, self.chunk_in);
        self.chunks += 1;
        if self.box_quiet && !self.above_room() {
            if self.rubato_current {
                // rubato's delay still holds the end of the previous chunk.
                box_average(
                    &self.raw[..lead + n],
                    lead,
                    n,
                    self.chunk_out,
                    self.chunk_out - self.delay..self.chunk_out,
                    out,
                );
            }
            out.extend_from_slice(&self.boxed);
            self.rubato_current = false;
            return Ok(());
        }
        self.precise_chunks += 1;
        let skip = if self.rubato_current {
            0
        } else {
            // Restart on the previous chunk, so the overlap rubato carries is the stream's;
            // the delay's worth of output covers time already sent.
            self.rubato.reset();
            self.run_rubato(lead..lead + n)?;
            self.delay
        };
        self.run_rubato(lead + n..lead + 2 * n)?;
        out.extend_from_slice(&self.rubato_out[skip..]);
        self.rubato_current = true;
        Ok(())
    }

    /// Box-averages this chunk and follows the room with it; true while rubato should
    /// convert (a frame above the room, or the hold after one).
    fn above_room(&mut self) -> bool {
        let (lead, n) = (self.lead, self.chunk_in);
        self.boxed.clear();
        box_average(
            &self.raw,
            lead + n,
            n,
            self.chunk_out,
            0..self.chunk_out,
            &mut self.boxed,
        );
        // As the gate's floor while open: during a cry and its hold the room only rises.
        let holding = self.chunks <= self.precise_until;
        for frame in self.boxed.chunks(FRAME_SAMPLES) {
            let level = self.meter.level_dbfs(frame);
            self.room.undo_a_dip(level);
            if self.room.has_heard() && level >= self.room.dbfs() + PRECISE_ABOVE_ROOM_DB {
                self.precise_until = self.chunks + self.hold_chunks;
            }
            if holding {
                self.room.follow_up(level);
            } else {
                self.room.update(level);
            }
        }
        self.chunks <= self.precise_until
    }

    fn run_rubato(&mut self, range: std::ops::Range<usize>) -> Result<(), ResampleError> {
        let (from_rate, to_rate) = (self.from_rate, self.to_rate);
        let frames = range.len();
        let input = InterleavedSlice::new(&self.raw[range], 1, frames)
            .map_err(|e| err(from_rate, to_rate, e))?;
        let mut output = InterleavedSlice::new_mut(&mut self.rubato_out, 1, self.chunk_out)
            .map_err(|e| err(from_rate, to_rate, e))?;
        let (used, produced) = self
            .rubato
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| err(from_rate, to_rate, e))?;
        if used != frames || produced != self.chunk_out {
            return Err(err(
                from_rate,
                to_rate,
                format!(
                    "rubato took {used} of {frames} frames and gave {produced} of {}",
                    self.chunk_out
                ),
            ));
        }
        Ok(())
    }
}

/// Appends the outputs `outputs` of the chunk of `chunk_in` input frames starting at
/// `input[start]` (converted to `chunk_out` outputs), each the mean of the input over
/// its sample period centred on it. The periods tile the input, so every input sample
/// counts once; `input` must hold half a period before `start`.
fn box_average(
    input: &[f32],
    start: usize,
    chunk_in: usize,
    chunk_out: usize,
    outputs: std::ops::Range<usize>,
    out: &mut Vec<f32>,
) {
    // Output j is centred on input j * chunk_in / chunk_out; its period starts at
    // ceil((2j - 1) * chunk_in / (2 * chunk_out)).
    let edge = |j: usize| -> usize {
        let num = (2 * j * chunk_in) as i64 - chunk_in as i64;
        let den = (2 * chunk_out) as i64;
        let from_start = -((-num).div_euclid(den));
        (start as i64 + from_start) as usize
    };
    let mut lo = edge(outputs.start);
    if chunk_in.is_multiple_of(chunk_out) {
        // Whole periods (48 kHz: 6 samples each): no edges to compute.
        let period = chunk_in / chunk_out;
        let scale = 1.0 / period as f32;
        let end = lo + outputs.len() * period;
        out.extend(
            input[lo..end]
                .chunks_exact(period)
                .map(|p| p.iter().sum::<f32>() * scale),
        );
        return;
    }
    for j in outputs {
        let hi = edge(j + 1);
        let period = &input[lo..hi];
        out.push(period.iter().sum::<f32>() / period.len() as f32);
        lo = hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn whole_signal_keeps_length_and_frequency() {
        let x = sine(1000.0, 48_000, 1.0);
        let y = resample_all(&x, 48_000, 8000).unwrap();
        assert_eq!(y.len(), 8000);
        // Zero crossings of a 1 kHz sine over 1 s: about 2000.
        let crossings = y[100..7900]
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        assert!((crossings as i32 - 975).abs() <= 2, "{crossings}");
    }

    #[test]
    fn streaming_matches_whole_signal_after_the_delay() {
        let x = sine(440.0, 44_100, 2.0);
        let whole = resample_all(&x, 44_100, 8000).unwrap();
        let mut stream = StreamResampler::new(44_100, 8000).unwrap();
        let mut out = Vec::new();
        for chunk in x.chunks(333) {
            stream.push(chunk, &mut out).unwrap();
        }
        assert!(out.len() > 12_000, "{}", out.len());
        let n = out.len().min(whole.len()) - 500;
        let max_diff = (500..n)
            .map(|i| (out[i] - whole[i]).abs())
            .fold(0.0, f32::max);
        assert!(
            max_diff < 1e-3,
            "streaming and whole-file outputs differ by {max_diff}"
        );
    }

    /// Amplitude of the `freq` component of `x` (least-squares fit of a sine and cosine).
    fn amplitude_at(x: &[f32], freq: f32, rate: u32) -> f32 {
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * f64::from(freq) * i as f64 / f64::from(rate);
            s += f64::from(v) * ph.sin();
            c += f64::from(v) * ph.cos();
        }
        (2.0 * (s * s + c * c).sqrt() / x.len() as f64) as f32
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn sweep_from_44k1_and_48k_keeps_the_passband_and_rejects_aliases() {
        for rate in [44_100u32, 48_000] {
            let mut worst_pass_db = 0.0f32;
            for freq in (100..=3400).step_by(300) {
                let y = resample_all(&sine(freq as f32, rate, 1.0), rate, 8000).unwrap();
                let a = amplitude_at(&y[400..7600], freq as f32, 8000);
                worst_pass_db = worst_pass_db.max((20.0 * a.log10()).abs());
            }
            assert!(
                worst_pass_db < 0.1,
                "{rate} Hz: passband error {worst_pass_db:.3} dB"
            );
            let mut worst_alias_db = f32::NEG_INFINITY;
            for freq in (4800..=(rate / 2 - 200)).step_by(1300) {
                let y = resample_all(&sine(freq as f32, rate, 1.0), rate, 8000).unwrap();
                // A full-scale sine has RMS 1/sqrt(2); whatever comes through is an alias.
                let db = 20.0
                    * (rms(&y[400..7600]) * std::f32::consts::SQRT_2)
                        .max(1e-12)
                        .log10();
                worst_alias_db = worst_alias_db.max(db);
            }
            assert!(
                worst_alias_db < -55.0,
                "{rate} Hz: aliases at {worst_alias_db:.1} dB"
            );
            println!("{rate} Hz -> 8 kHz: passband error {worst_pass_db:.4} dB, worst alias {worst_alias_db:.1} dB");
        }
    }

    /// Mono audio through a stream resampler in 10 ms blocks.
    fn stream(mut resampler: StreamResampler, audio: &[f32]) -> (Vec<f32>, (u64, u64)) {
        let mut out = Vec::new();
        for block in audio.chunks(resampler.from_rate() as usize / 100) {
            resampler.push(block, &mut out).unwrap();
        }
        (out, resampler.chunks())
    }

    fn db(x: &[f32]) -> f32 {
        20.0 * rms(x).max(1e-9).log10()
    }

    #[test]
    fn the_capture_stream_is_rubato_to_the_bit_above_the_room_and_boxed_below() {
        use crate::synth::{cry, room_tone};
        let rate = 48_000u32;
        let mut audio = room_tone(rate, 8.0, 0.002, 1);
        audio.extend(cry(rate, 3.0, 0.3));
        audio.extend(room_tone(rate, 12.0, 0.002, 2));
        let (precise, (all_rubato, chunks)) =
            stream(StreamResampler::new(rate, 8000).unwrap(), &audio);
        let (capture, (by_rubato, same_chunks)) =
            stream(StreamResampler::for_capture(rate, 8000).unwrap(), &audio);
        assert_eq!((all_rubato, chunks), (same_chunks, same_chunks));
        println!("{by_rubato} of {chunks} chunks by rubato");
        // The precise stream still holds rubato's delay; the boxed one does not.
        assert_eq!(capture.len() as u64, chunks * 1024);
        assert_eq!(precise.len() as u64, chunks * 1024 - 512);
        // Rubato from the chunk where the cry starts (8 s) to the end of the hold: 3 s of
        // cry and 5 s after it, in 128 ms chunks.
        let onset_chunk = 8 * 48_000 / 6144;
        let first = onset_chunk * 1024;
        let expected = ((3.0 + PRECISE_HOLD_SECONDS) / 0.128) as u64;
        assert!(
            (expected..=expected + 3).contains(&by_rubato),
            "{by_rubato} chunks by rubato, expected about {expected}"
        );
        let last = first + (by_rubato as usize - 1) * 1024;
        assert_eq!(capture[first..last], precise[first..last]);
        assert_ne!(capture[..first - 2048], precise[..first - 2048]);
        // Outside, every 32 ms frame (the switches included) is within 1 dB of rubato's.
        for (i, (a, b)) in capture[..precise.len()]
            .chunks(256)
            .zip(precise.chunks(256))
            .enumerate()
            .skip(1)
        {
            let (a, b) = (db(a), db(b));
            assert!(
                (a - b).abs() < 1.0,
                "frame {i}: boxed {a:.2} dBFS, rubato {b:.2}"
            );
        }
    }

    #[test]
    fn box_averages_line_up_with_rubato_at_44k1_and_48k() {
        for rate in [44_100u32, 48_000] {
            // Quiet and steady: boxed all along.
            let x: Vec<f32> = sine(150.0, rate, 3.0).iter().map(|v| 0.01 * v).collect();
            let (precise, _) = stream(StreamResampler::new(rate, 8000).unwrap(), &x);
            let (capture, (by_rubato, chunks)) =
                stream(StreamResampler::for_capture(rate, 8000).unwrap(), &x);
            assert_eq!(
                by_rubato, 0,
                "{rate} Hz: {by_rubato} of {chunks} chunks by rubato"
            );
            // Half an output sample off would be a 6 % error at 150 Hz.
            let worst = (1000..precise.len() - 1000)
                .map(|i| (capture[i] - precise[i]).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < 0.0002,
                "{rate} Hz: boxed and rubato differ by {worst}"
            );
            // White noise comes out at rubato's level.
            let noise = crate::synth::room_tone(rate, 3.0, 0.01, 5);
            let (precise, _) = stream(StreamResampler::new(rate, 8000).unwrap(), &noise);
            let (capture, _) = stream(StreamResampler::for_capture(rate, 8000).unwrap(), &noise);
            let n = precise.len() - 1000;
            let (a, b) = (db(&capture[1000..n]), db(&precise[1000..n]));
            assert!(
                (a - b).abs() < 0.5,
                "{rate} Hz: noise boxed {a:.2} dBFS, rubato {b:.2}"
            );
        }
    }

    #[test]
    fn every_common_capture_rate_converts_chunk_for_chunk() {
        for rate in [
            11_025u32, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000, 192_000,
        ] {
            // Quiet, then loud: both conversions and the switch.
            let mut x: Vec<f32> = sine(300.0, rate, 2.0).iter().map(|v| 0.001 * v).collect();
            x.extend(sine(300.0, rate, 2.0).iter().map(|v| 0.5 * v));
            let (out, (by_rubato, chunks)) =
                stream(StreamResampler::for_capture(rate, 8000).unwrap(), &x);
            let chunk_out = chunk_for(rate, 8000) as u64 * 8000 / u64::from(rate);
            assert!(
                by_rubato > 0 && chunks > by_rubato || rate < 16_000,
                "{rate} Hz: {by_rubato} of {chunks}"
            );
            // It ends loud, so rubato's delay (half a chunk) is still inside it.
            assert_eq!(
                out.len() as u64,
                chunks * chunk_out - chunk_out / 2,
                "{rate} Hz"
            );
            // The loud half comes out at the sine's amplitude.
            let tail = &out[out.len() - 4000..out.len() - 1000];
            assert!(
                (rms(tail) * std::f32::consts::SQRT_2 - 0.5).abs() < 0.01,
                "{rate} Hz"
            );
        }
    }

    #[test]
    fn below_twice_the_output_rate_the_capture_stream_is_all_rubato() {
        let x = sine(440.0, 11_025, 1.0);
        let (precise, _) = stream(StreamResampler::new(11_025, 8000).unwrap(), &x);
        let (capture, (by_rubato, chunks)) =
            stream(StreamResampler::for_capture(11_025, 8000).unwrap(), &x);
        assert_eq!(by_rubato, chunks);
        assert_eq!(capture, precise);
    }

    #[test]
    fn a_finished_stream_is_the_whole_signal_to_its_last_sample() {
        // A quiet second (the capture stream box-averages it), then loud to the end
        // (rubato from the chunk of the onset on, 8 s of hold: to the end).
        let loud: Vec<f32> = sine(440.0, 48_000, 2.0)
            .iter()
            .zip(sine(2900.0, 48_000, 2.0))
            .map(|(a, b)| 0.4 * a + 0.3 * b)
            .collect();
        let mut x: Vec<f32> = sine(440.0, 48_000, 1.0).iter().map(|v| 0.001 * v).collect();
        x.extend(loud);
        for n in [
            1usize, 5, 6, 100, 6143, 6144, 6145, 48_000, 100_001, 144_000,
        ] {
            let whole = resample_all(&x[..n], 48_000, 8000).unwrap();
            assert_eq!(whole.len(), n.div_ceil(6), "{n}");
            for block in [333usize, 4800, 6144] {
                for capture in [false, true] {
                    let mut stream = if capture {
                        StreamResampler::for_capture(48_000, 8000).unwrap()
                    } else {
                        StreamResampler::new(48_000, 8000).unwrap()
                    };
                    let mut out = Vec::new();
                    for chunk in x[..n].chunks(block) {
                        stream.push(chunk, &mut out).unwrap();
                    }
                    stream.finish(&mut out).unwrap();
                    let case = format!("{n} samples in blocks of {block}, capture {capture}");
                    assert_eq!(out.len(), n.div_ceil(6), "{case}");
                    // All rubato: the whole signal's conversion, to the bit. The capture
                    // stream is rubato's from the chunk of the onset (48 000 / 6144: the
                    // 8th) on.
                    let from = match (capture, n > 48_000) {
                        (false, _) => 0,
                        (true, true) => 8 * 1024,
                        (true, false) => continue,
                    };
                    assert!(out[from..] == whole[from..], "{case}");
                }
            }
        }
        // Equal rates pass through; finishing adds nothing.
        let mut same = StreamResampler::new(8000, 8000).unwrap();
        let mut out = Vec::new();
        same.push(&x[..1001], &mut out).unwrap();
        same.finish(&mut out).unwrap();
        assert_eq!(out, x[..1001]);
    }

    #[test]
    fn chunks_keep_the_fft_lengths_smooth() {
        assert_eq!(chunk_for(48_000, 8000), 6144);
        assert_eq!(chunk_for(44_100, 8000), 7056);
        assert_eq!(chunk_for(16_000, 8000), 2048);
    }

    #[test]
    fn same_rate_passes_through_and_bad_rates_fail() {
        assert_eq!(
            resample_all(&[0.5, -0.5], 8000, 8000).unwrap(),
            vec![0.5, -0.5]
        );
        assert!(StreamResampler::new(0, 8000).is_err());
    }
}
