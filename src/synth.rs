//! Synthetic test signals: cry-like harmonic tones, claps, speech-like noise, room tone.
//!
//! The demo, the benches and the tests make their audio here instead of shipping
//! recordings: real recordings stay in ../shared and never enter the repository.

use std::f32::consts::PI;

/// A small deterministic PRNG (xorshift), so signals are identical on every machine.
#[derive(Debug, Clone)]
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    pub fn sample(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A cry-like sound: f0 around 450 Hz with 5 Hz vibrato, six harmonics, in bursts of
/// about 1.2 s separated by 0.3 s breaths, at `amplitude` peak.
pub fn cry(rate: u32, seconds: f32, amplitude: f32) -> Vec<f32> {
    sobbing_cry(rate, seconds, amplitude, 0.0)
}

/// [`cry`] whose breaths are sobbed: the voice goes on through them at `sob` times the
/// peak (0: silent breaths). With sobs, no frame of the cry is as quiet as the room.
pub fn sobbing_cry(rate: u32, seconds: f32, amplitude: f32, sob: f32) -> Vec<f32> {
    let n = (rate as f32 * seconds) as usize;
    let mut phase = 0.0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let f0 = 450.0 + 40.0 * (2.0 * PI * 5.0 * t).sin();
            // (An f32 phase: beyond about five minutes the voice loses its tone.)
            phase += 2.0 * PI * f0 / rate as f32;
            let cycle = t % 1.5;
            let envelope = if cycle < 1.2 {
                (PI * cycle / 1.2).sin().powf(0.3)
            } else {
                0.0
            };
            let voice: f32 = (1..=6).map(|h| (h as f32 * phase).sin() / h as f32).sum();
            amplitude * envelope.max(sob) * voice / 2.45
        })
        .collect()
}

/// Quiet room tone: low noise plus a faint mains hum, at `amplitude` peak.
pub fn room_tone(rate: u32, seconds: f32, amplitude: f32, seed: u64) -> Vec<f32> {
    let n = (rate as f32 * seconds) as usize;
    let mut noise = Noise::new(seed);
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            amplitude * (0.7 * noise.sample() + 0.3 * (2.0 * PI * 50.0 * t).sin())
        })
        .collect()
}

/// A loud clap: 30 ms of decaying noise, then silence up to `seconds`.
pub fn clap(rate: u32, seconds: f32, amplitude: f32, seed: u64) -> Vec<f32> {
    let n = (rate as f32 * seconds) as usize;
    let mut noise = Noise::new(seed);
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            if t < 0.03 {
                amplitude * noise.sample() * (-t / 0.008).exp()
            } else {
                0.0
            }
        })
        .collect()
}

/// Speech-like noise: noise shaped by a 4 Hz syllable rhythm, with a low voice buzz.
pub fn speech_like(rate: u32, seconds: f32, amplitude: f32, seed: u64) -> Vec<f32> {
    let n = (rate as f32 * seconds) as usize;
    let mut noise = Noise::new(seed);
    let mut lp = 0.0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let syllable = (2.0 * PI * 4.0 * t).sin().max(0.0);
            lp = 0.8 * lp + 0.2 * noise.sample();
            let buzz = (2.0 * PI * 120.0 * t).sin() * 0.3;
            amplitude * syllable * (lp * 2.0 + buzz)
        })
        .collect()
}

/// The bundled demo night for `babycryd run --demo`: 80 s of room tone with a clap at 5 s,
/// a 12 s cry-like burst at 15 s and speech-like sound at 50 s, at 8 kHz.
pub fn demo_night(rate: u32) -> Vec<f32> {
    let at = |s: f32| (s * rate as f32) as usize;
    let mut audio = room_tone(rate, 80.0, 0.002, 11);
    mix_into(&mut audio, &clap(rate, 1.0, 0.9, 12), at(5.0));
    mix_into(&mut audio, &cry(rate, 12.0, 0.5), at(15.0));
    mix_into(&mut audio, &speech_like(rate, 6.0, 0.3, 13), at(50.0));
    audio
}

/// Adds `b` into `a` starting at sample `at` (growing `a` if needed).
pub fn mix_into(a: &mut Vec<f32>, b: &[f32], at: usize) {
    if a.len() < at + b.len() {
        a.resize(at + b.len(), 0.0);
    }
    for (x, y) in a[at..].iter_mut().zip(b) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_the_asked_length_and_level() {
        let c = cry(8000, 3.0, 0.5);
        assert_eq!(c.len(), 24_000);
        let peak = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(peak > 0.2 && peak <= 0.5, "{peak}");
        let r = room_tone(8000, 1.0, 0.001, 1);
        assert!(r.iter().all(|v| v.abs() <= 0.001));
        let mut n = Noise::new(3);
        let mean: f32 = (0..10_000).map(|_| n.sample()).sum::<f32>() / 10_000.0;
        assert!(mean.abs() < 0.05);
    }
}
