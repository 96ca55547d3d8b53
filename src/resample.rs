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

/// Input frames rubato processes at a time: about 20-100 ms at common device rates.
const CHUNK: usize = 1024;

fn err(from_rate: u32, to_rate: u32, e: impl std::fmt::Display) -> ResampleError {
    ResampleError {
        from_rate,
        to_rate,
        reason: e.to_string(),
    }
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
    let mut resampler = Fft::<f32>::new(
        from_rate as usize,
        to_rate as usize,
        CHUNK,
        1,
        FixedSync::Input,
    )
    .map_err(|e| err(from_rate, to_rate, e))?;
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
            Some(
                Fft::<f32>::new(
                    from_rate as usize,
                    to_rate as usize,
                    CHUNK,
                    1,
                    FixedSync::Input,
                )
                .map_err(|e| err(from_rate, to_rate, e))?,
            )
        };
        let (chunk_out, delay_left) = match &inner {
            Some(r) => (vec![0.0; r.output_frames_max()], r.output_delay()),
            None => (Vec::new(), 0),
        };
        Ok(Self {
            from_rate,
            to_rate,
            inner,
            pending: Vec::with_capacity(2 * CHUNK),
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
        assert!(out.len() > 15_000, "{}", out.len());
        let n = out.len().min(whole.len()) - 500;
        let max_diff = (500..n)
            .map(|i| (out[i] - whole[i]).abs())
            .fold(0.0, f32::max);
        assert!(
            max_diff < 1e-3,
            "streaming and whole-file outputs differ by {max_diff}"
        );
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
