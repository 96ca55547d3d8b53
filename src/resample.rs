//! Sample-rate conversion to the models' rate (8 kHz) with rubato's synchronous FFT
//! resampler.
//!
//! It owns two uses: [`resample_all`] for a whole decoded file, and [`StreamResampler`]
//! for live audio arriving in chunks of any size (the capture thread's output), which
//! buffers to rubato's fixed input chunk, trims the filter delay once at the start so
//! stream time stays aligned with wall time, and reuses its buffers in the steady state.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::error::ResampleError;

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

/// A streaming mono resampler for audio that arrives in arbitrary chunks.
pub struct StreamResampler {
    from_rate: u32,
    to_rate: u32,
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    chunk_out: Vec<f32>,
    /// Output samples still to drop: the resampler's delay, dropped once at the start.
    delay_left: usize,
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
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Self, ResampleError> {
        check_rates(from_rate, to_rate)?;
        let inner = if from_rate == to_rate {
            None
        } else {
            Some(fft_resampler(from_rate, to_rate)?)
        };
        let (chunk_out, delay_left) = match &inner {
            Some(r) => (vec![0.0; r.output_frames_max()], r.output_delay()),
            None => (Vec::new(), 0),
        };
        Ok(Self {
            from_rate,
            to_rate,
            inner,
            pending: Vec::with_capacity(2 * chunk_for(from_rate, to_rate)),
            chunk_out,
            delay_left,
        })
    }

    pub fn from_rate(&self) -> u32 {
        self.from_rate
    }

    /// Feeds `input` and appends every output sample that is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        self.pending.extend_from_slice(input);
        let mut start = 0;
        while self.pending.len() - start >= inner.input_frames_next() {
            let need = inner.input_frames_next();
            let (from_rate, to_rate) = (self.from_rate, self.to_rate);
            let input = InterleavedSlice::new(&self.pending[start..start + need], 1, need)
                .map_err(|e| err(from_rate, to_rate, e))?;
            let max_out = self.chunk_out.len();
            let mut output = InterleavedSlice::new_mut(&mut self.chunk_out, 1, max_out)
                .map_err(|e| err(from_rate, to_rate, e))?;
            let (used, produced) = inner
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| err(from_rate, to_rate, e))?;
            start += used;
            let skip = self.delay_left.min(produced);
            self.delay_left -= skip;
            out.extend_from_slice(&self.chunk_out[skip..produced]);
        }
        self.pending.drain(..start);
        Ok(())
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
