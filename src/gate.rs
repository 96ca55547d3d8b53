//! The energy gate: the cheap first stage that keeps the models asleep in a quiet room.
//!
//! It owns measuring the level of ~32 ms frames (dBFS, above 150 Hz: [`LevelMeter`], so
//! mains hum and rumble are not the room), the adaptive [`NoiseFloor`] that
//! follows the room (at once when a stretch of frames a breath long is quieter, unless
//! the old level comes back within seconds; fast when single frames are, slowly when it
//! gets louder, and while a
//! sound goes on only toward the quietest frame of the last seconds, never toward the
//! sound, and not at all while the detector hears crying; it starts at the median of the
//! first frames heard and learns the room quickly for a few seconds), and the
//! [`EnergyGate`] state machine: it opens when the level stays a margin above the floor
//! (and above an absolute minimum) for a minimum duration, closes with hysteresis after
//! a hangover, and reports where the opening starts including a pre-roll, so the start
//! of a cry is kept. While the gate is closed nothing downstream runs: no FFT, no model
//! (a detector window begun while it was open is finished, on the audio already held).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Samples per gate frame at 8 kHz: 32 ms.
pub const FRAME_SAMPLES: usize = 256;

/// The level of digital silence, and the floor of every measurement, dBFS.
pub const SILENCE_DBFS: f64 = -120.0;

/// `[gate]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Opening margin above the noise floor, dB.
    pub margin_db: f64,
    /// The gate never opens below this level, dBFS.
    pub min_level_dbfs: f64,
    /// The gate closes when the level falls this many dB below the opening level.
    pub hysteresis_db: f64,
    /// The level must stay above the opening level this long before the gate opens, s.
    pub min_open_seconds: f64,
    /// The gate stays open this long after the level falls below the closing level, s.
    pub hangover_seconds: f64,
    /// Audio kept from before the opening, s.
    pub pre_roll_seconds: f64,
    /// Time constant with which the floor follows a louder room, s.
    pub floor_rise_seconds: f64,
    /// Time constant with which the floor follows a quieter room, s.
    pub floor_fall_seconds: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            margin_db: 10.0,
            min_level_dbfs: -60.0,
            hysteresis_db: 3.0,
            min_open_seconds: 0.1,
            hangover_seconds: 1.0,
            pre_roll_seconds: 0.5,
            floor_rise_seconds: 60.0,
            floor_fall_seconds: 2.0,
        }
    }
}

fn check(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if !(lo..=hi).contains(&v) {
        return Err(format!("{name} = {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

/// How far above the noise floor the closing level (opening level minus the hysteresis)
/// must stay, dB. While the gate is open the floor only rises, and the gate closes only
/// after a whole hangover of frames below the closing level: a closing level at or below
/// the room would keep it open, and the models running, for good.
pub const MIN_CLOSE_ABOVE_FLOOR_DB: f64 = 3.0;

impl GateConfig {
    pub fn validate(&self) -> Result<(), String> {
        // Under 3 dB no hysteresis_db (>= 0) could keep the closing level above the room.
        check("margin_db", self.margin_db, MIN_CLOSE_ABOVE_FLOOR_DB, 60.0)?;
        check("min_level_dbfs", self.min_level_dbfs, SILENCE_DBFS, 0.0)?;
        check("hysteresis_db", self.hysteresis_db, 0.0, 30.0)?;
        if self.margin_db - self.hysteresis_db < MIN_CLOSE_ABOVE_FLOOR_DB {
            return Err(format!(
                "hysteresis_db = {} must be at least {MIN_CLOSE_ABOVE_FLOOR_DB} dB below \
                 margin_db = {}: the gate closes only below the room's level otherwise",
                self.hysteresis_db, self.margin_db
            ));
        }
        check("min_open_seconds", self.min_open_seconds, 0.0, 2.0)?;
        check("hangover_seconds", self.hangover_seconds, 0.0, 10.0)?;
        check("pre_roll_seconds", self.pre_roll_seconds, 0.0, 5.0)?;
        check("floor_rise_seconds", self.floor_rise_seconds, 1.0, 3600.0)?;
        check("floor_fall_seconds", self.floor_fall_seconds, 0.1, 600.0)?;
        Ok(())
    }
}

/// The level of a frame, dBFS (a full-scale square wave is 0 dBFS), never below
/// [`SILENCE_DBFS`]. Its DC offset does not count (the power around the frame's mean):
/// cheap USB and I2S microphones often have one, and it is no sound. Counted, an offset
/// of 1 % of full scale was a room at -40 dBFS, and a cry 20 dB above the real room
/// never opened the gate.
pub fn level_dbfs(frame: &[f32]) -> f64 {
    if frame.is_empty() {
        return SILENCE_DBFS;
    }
    let n = frame.len() as f64;
    let mean = frame.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
    let power = frame
        .iter()
        .map(|&s| (f64::from(s) - mean).powi(2))
        .sum::<f64>()
        / n;
    dbfs_of(power)
}

/// The power below which a frame is digital silence: [`SILENCE_DBFS`].
const SILENCE_POWER: f64 = 1e-12;

/// A mean power in dBFS, never below [`SILENCE_DBFS`].
fn dbfs_of(power: f64) -> f64 {
    (10.0 * power.max(SILENCE_POWER).log10()).max(SILENCE_DBFS)
}

/// Below this frequency, Hz, sound does not count in the gate's level (see
/// [`LevelMeter`]): a cry's voice starts at about 250 Hz, mains hum (50/60 Hz and its
/// first harmonics) and the rumble of a fan or of traffic lie under it.
pub const LEVEL_HIGH_PASS_HZ: f64 = 150.0;

/// One second-order section of a high-pass filter (transposed direct form II), f64 state.
#[derive(Debug, Clone, PartialEq)]
struct HighPass {
    b: [f64; 3],
    a: [f64; 2],
    z: [f64; 2],
}

impl HighPass {
    /// The RBJ cookbook high-pass at `hz` with quality `q`, at `rate`.
    fn new(hz: f64, q: f64, rate: u32) -> Self {
        let w0 = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
        let (cos, alpha) = (w0.cos(), w0.sin() / (2.0 * q));
        let a0 = 1.0 + alpha;
        let b0 = (1.0 + cos) / 2.0 / a0;
        Self {
            b: [b0, -2.0 * b0, b0],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            z: [0.0; 2],
        }
    }

    fn step(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.z[0];
        self.z[0] = self.b[1] * x - self.a[0] * y + self.z[1];
        self.z[1] = self.b[2] * x - self.a[1] * y;
        y
    }
}

/// The level the gate (and the capture's choice of resampler) measures: [`level_dbfs`]
/// of the frame above [`LEVEL_HIGH_PASS_HZ`] (a 4th-order Butterworth high-pass, its
/// state carried from frame to frame). Mains hum at -45 dBFS counted as the room: a cry
/// at -45 dBFS, 15 dB above the room without it, never opened the gate. Digital silence
/// stays [`SILENCE_DBFS`] (the filter's tail is not sound).
#[derive(Debug, Clone, PartialEq)]
pub struct LevelMeter {
    sections: [HighPass; 2],
}

impl LevelMeter {
    pub fn new(rate: u32) -> Self {
        // Butterworth: the two sections' Q of a 4th-order filter.
        let q = |k: f64| 1.0 / (2.0 * (std::f64::consts::PI * (2.0 * k - 1.0) / 8.0).cos());
        Self {
            sections: [
                HighPass::new(LEVEL_HIGH_PASS_HZ, q(1.0), rate),
                HighPass::new(LEVEL_HIGH_PASS_HZ, q(2.0), rate),
            ],
        }
    }

    /// The frame's level above the cut-off, dBFS.
    pub fn level_dbfs(&mut self, frame: &[f32]) -> f64 {
        // One pass: the filtered power, and the frame's own sums for the silence check.
        let (mut power, mut sum, mut squares) = (0.0f64, 0.0f64, 0.0f64);
        for &x in frame {
            let x = f64::from(x);
            let y = self
                .sections
                .iter_mut()
                .fold(x, |v, section| section.step(v));
            power += y * y;
            sum += x;
            squares += x * x;
        }
        if !power.is_finite() {
            // Not a number in, or beyond f64: start the filter again rather than carry it.
            self.sections.iter_mut().for_each(|s| s.z = [0.0; 2]);
            return level_dbfs(frame);
        }
        let n = frame.len().max(1) as f64;
        // The frame's power around its mean (as [`level_dbfs`]) at silence.
        if squares / n - (sum / n).powi(2) <= SILENCE_POWER {
            return SILENCE_DBFS;
        }
        dbfs_of(power / n)
    }
}

/// How many frames of sound start a new floor: it begins at their median, so that one odd
/// frame at the start (a device fading in, a click) does not become the room. A floor
/// begun at a fade-in 50 dB under the room left the gate open, the models running and,
/// without a detector, a false cry episode going, for two minutes.
const START_FRAMES: usize = 8;

/// How long a new floor learns the room, in seconds of frames it follows (digital silence
/// and frames an open gate does not follow do not count): it starts at the first frames
/// heard, which may be a cry (a daemon restarted in the middle of one), and meanwhile
/// falls to a quieter frame with [`LEARNING_FALL_SECONDS`], so that the first breath
/// between two calls teaches it the room.
const LEARNING_SECONDS: f64 = 5.0;

/// The fall time constant while learning, s: a breath (0.2-0.5 s) brings the floor most
/// of the way down; one odd quiet frame does not.
const LEARNING_FALL_SECONDS: f64 = 0.1;

/// How far back a busy floor ([`NoiseFloor::follow_up`]) looks for the room, s: it rises
/// only toward the quietest frame of this span. A crying baby breathes every few seconds,
/// so during a cry that frame is a breath, the room; a fan or a white-noise machine
/// switched on has no quieter frame, so the floor still rises to it.
const BUSY_QUIETEST_SECONDS: f64 = 5.0;

/// How long a stretch of frames must all stay below the floor for the room to be taken
/// as no louder than the loudest of them, s (see [`NoiseFloor::update`]): a breath
/// (0.2-0.5 s) is such a stretch; one odd quiet frame is not.
const QUIET_STRETCH_SECONDS: f64 = 0.12;

/// How long after such a fall a frame back near the floor it fell from undoes it, s: the
/// quiet was a dip (the gap of a white-noise machine's loop, a microphone's gain ducking),
/// not a quieter room. Kept, the room coming back 10 dB above the fallen floor opened the
/// gate and held it open for one to two minutes, the models running all the while.
const DIP_SECONDS: f64 = 2.0;

/// How close to the floor it fell from a frame must come to undo the fall, dB.
const DIP_BACK_DB: f64 = 3.0;

/// The room's noise floor: an exponential follower of frame levels in dB, quick to fall
/// (a door closes) and slow to rise (a cry must not become the floor).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseFloor {
    level_dbfs: Option<f64>,
    rise: f64,
    fall: f64,
    learning_fall: f64,
    /// Frames still to follow with `learning_fall`.
    learning_frames: u32,
    /// Levels of the frames heard before the floor starts (at most [`START_FRAMES`]).
    starting: Vec<f64>,
    /// Levels of the last [`BUSY_QUIETEST_SECONDS`] of frames heard, digital silence
    /// included (at [`SILENCE_DBFS`]): a muted breath keeps a busy floor from rising too.
    recent: VecDeque<f64>,
    recent_frames: usize,
    /// Frames in a [`QUIET_STRETCH_SECONDS`] stretch.
    stretch_frames: usize,
    /// Frames in [`DIP_SECONDS`].
    dip_frames: u32,
    /// After a stretch's fall: the floor it fell from, and the frames left in which a
    /// frame back near it undoes the fall.
    fell_from: Option<(f64, u32)>,
    /// The floor does not move (see [`EnergyGate::hold_floor`]); frames are still heard.
    held: bool,
}

impl NoiseFloor {
    pub fn new(config: &GateConfig, frame_seconds: f64) -> Self {
        let recent_frames = (BUSY_QUIETEST_SECONDS / frame_seconds).ceil().max(1.0) as usize;
        let mut floor = Self {
            level_dbfs: None,
            rise: 0.0,
            fall: 0.0,
            learning_fall: 1.0 - (-frame_seconds / LEARNING_FALL_SECONDS).exp(),
            learning_frames: (LEARNING_SECONDS / frame_seconds).ceil() as u32,
            starting: Vec::with_capacity(START_FRAMES),
            recent: VecDeque::with_capacity(recent_frames + 1),
            recent_frames,
            stretch_frames: (QUIET_STRETCH_SECONDS / frame_seconds).ceil().max(1.0) as usize,
            dip_frames: (DIP_SECONDS / frame_seconds).ceil() as u32,
            fell_from: None,
            held: false,
        };
        floor.configure(config, frame_seconds);
        floor
    }

    /// Takes new time constants, keeping the level learnt so far.
    pub fn configure(&mut self, config: &GateConfig, frame_seconds: f64) {
        self.rise = 1.0 - (-frame_seconds / config.floor_rise_seconds).exp();
        self.fall = 1.0 - (-frame_seconds / config.floor_fall_seconds).exp();
    }

    /// Keeps one frame's level among the recent ones; false for a level that says nothing
    /// about the room, which is not followed: digital silence (exact zeros: a muted
    /// microphone, a device starting up or resuming; a floor dragged down to it left the
    /// gate open, and the models running, for minutes once the room's sound came back,
    /// as the floor rises slowly while open) and a level that is not a number.
    fn hear(&mut self, frame_dbfs: f64) -> bool {
        if frame_dbfs.is_nan() {
            return false;
        }
        if self.recent.len() == self.recent_frames {
            self.recent.pop_front();
        }
        self.recent.push_back(frame_dbfs.max(SILENCE_DBFS));
        frame_dbfs.is_finite() && frame_dbfs > SILENCE_DBFS
    }

    /// Moves the floor toward `target`, a level heard (unless held).
    fn follow(&mut self, target: f64) {
        if self.held {
            return;
        }
        let Some(floor) = self.level_dbfs.as_mut() else {
            self.starting.push(target);
            if self.starting.len() == START_FRAMES {
                self.starting.sort_by(f64::total_cmp);
                self.level_dbfs = Some(self.starting[START_FRAMES / 2]);
            }
            return;
        };
        let coeff = match (target < *floor, self.learning_frames > 0) {
            (true, true) => self.learning_fall,
            (true, false) => self.fall,
            (false, _) => self.rise,
        };
        self.learning_frames = self.learning_frames.saturating_sub(1);
        *floor += coeff * (target - *floor);
    }

    /// Follows one frame's level (not digital silence, see `hear`); and when the last
    /// [`QUIET_STRETCH_SECONDS`] of frames heard were all below the floor, the floor
    /// falls at once to the loudest of them: the room is no louder than that. Following
    /// only the frame, a floor left high by a long loud sound (a vacuum cleaner, the gate
    /// open for minutes) fell toward a quiet cry that began as it ended, and then only in
    /// the cry's breaths: the cry stayed under the opening level and was confirmed 11 s
    /// late.
    pub fn update(&mut self, frame_dbfs: f64) {
        if !self.hear(frame_dbfs) {
            return;
        }
        self.follow(frame_dbfs);
        if self.held || self.recent.len() < self.stretch_frames {
            return;
        }
        let Some(floor) = self.level_dbfs.as_mut() else {
            return;
        };
        let stretch = self.recent.range(self.recent.len() - self.stretch_frames..);
        // Digital silence in the stretch says nothing about the room (see `hear`).
        let loudest = stretch
            .copied()
            .try_fold(SILENCE_DBFS, |m, l| (l > SILENCE_DBFS).then_some(m.max(l)));
        if let Some(loudest) = loudest.filter(|&l| l < *floor) {
            // A fall within a fall still answers to the floor before the first.
            let from = self.fell_from.map_or(*floor, |(from, _)| from);
            self.fell_from = Some((from, self.dip_frames));
            *floor = loudest;
        }
    }

    /// Called with every frame's level, heard or not (a frame loud enough to open the
    /// gate is not heard): a frame back within [`DIP_BACK_DB`] of the floor a stretch's
    /// fall left, within [`DIP_SECONDS`] of it, puts the floor back there (see
    /// [`NoiseFloor::update`]). A quiet cry after a long loud sound stays under that
    /// level; a cry as loud as the sound was is heard as before the fall existed.
    pub fn undo_a_dip(&mut self, frame_dbfs: f64) {
        let Some((from, left)) = self.fell_from else {
            return;
        };
        if self.held || left == 0 {
            self.fell_from = None;
        } else if frame_dbfs >= from - DIP_BACK_DB {
            self.level_dbfs = Some(from);
            self.fell_from = None;
        } else {
            self.fell_from = Some((from, left - 1));
        }
    }

    /// Follows the room while something is going on (the gate open, a cry's hold): the
    /// floor may rise, toward the quietest frame of the last [`BUSY_QUIETEST_SECONDS`],
    /// but never toward the sound itself, and the pauses between cries must not drag it
    /// down. Before, it rose toward every frame at or above it: a cry 11 dB above the
    /// room became the floor within a minute, the gate closed in the middle of it, and
    /// the cry was cut into episodes the cooldown then hid.
    pub fn follow_up(&mut self, frame_dbfs: f64) {
        if !self.hear(frame_dbfs) {
            return;
        }
        if !self.has_heard() {
            self.follow(frame_dbfs);
            return;
        }
        let quietest = self.recent.iter().copied().fold(f64::INFINITY, f64::min);
        if quietest >= self.dbfs() {
            self.follow(quietest);
        }
    }

    /// Whether it has started (heard its first [`START_FRAMES`] frames of sound).
    pub fn has_heard(&self) -> bool {
        self.level_dbfs.is_some()
    }

    /// The floor, dBFS (silence until it starts).
    pub fn dbfs(&self) -> f64 {
        self.level_dbfs.unwrap_or(SILENCE_DBFS)
    }
}

/// What one frame did to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTransition {
    None,
    /// The gate opened; the opening counts from this stream sample (pre-roll included).
    Opened {
        from_sample: u64,
    },
    /// The gate closed at this stream sample.
    Closed {
        at_sample: u64,
    },
}

/// The gate's state machine over frames of [`FRAME_SAMPLES`].
#[derive(Debug, Clone)]
pub struct EnergyGate {
    config: GateConfig,
    rate: u32,
    meter: LevelMeter,
    floor: NoiseFloor,
    open: bool,
    /// Stream sample where the current run of loud frames began (closed gate).
    loud_since: Option<u64>,
    /// Quiet samples since the level fell below the closing level (open gate).
    quiet_samples: u64,
}

impl EnergyGate {
    pub fn new(config: &GateConfig, rate: u32) -> Self {
        Self {
            config: config.clone(),
            rate,
            meter: LevelMeter::new(rate),
            floor: NoiseFloor::new(config, FRAME_SAMPLES as f64 / f64::from(rate)),
            open: false,
            loud_since: None,
            quiet_samples: 0,
        }
    }

    /// Holds the noise floor where it is while `crying` (the cry detector hears crying),
    /// until called with false. Energy alone cannot tell a cry that goes on for minutes
    /// from a fan switched on, and the floor rises under both, toward the quietest frame
    /// of the last seconds: with sobbing between the bursts instead of a breath at the
    /// room's level, that frame is the cry's own, and the gate closed about three minutes
    /// into a loud cry and never opened again (the closed gate's floor then followed the
    /// cry itself): most of a ten-minute cry unreported. The detector can tell them
    /// apart, so what it calls crying is never the room.
    pub fn hold_floor(&mut self, crying: bool) {
        self.floor.held = crying;
    }

    /// Takes a new configuration without forgetting the room or closing the gate.
    pub fn set_config(&mut self, config: &GateConfig) {
        self.floor
            .configure(config, FRAME_SAMPLES as f64 / f64::from(self.rate));
        self.config = config.clone();
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Open, and the last frame was above the closing level: the sound itself, not the
    /// hangover that follows it.
    pub fn hears_sound(&self) -> bool {
        self.open && self.quiet_samples == 0
    }

    pub fn noise_floor_dbfs(&self) -> f64 {
        self.floor.dbfs()
    }

    /// Whether the floor has started (see [`NoiseFloor::has_heard`]).
    pub fn has_heard(&self) -> bool {
        self.floor.has_heard()
    }

    fn seconds(&self, s: f64) -> u64 {
        (s * f64::from(self.rate)).round() as u64
    }

    /// The audio stopped coming: loud frames before the gap and after it are not one run
    /// (3 loud frames, a gap, then a 32 ms click opened the gate).
    pub fn interrupt(&mut self) {
        self.loud_since = None;
    }

    /// Feeds one frame that starts at stream sample `start`.
    pub fn push_frame(&mut self, frame: &[f32], start: u64) -> GateTransition {
        let level = self.meter.level_dbfs(frame);
        self.floor.undo_a_dip(level);
        // The first frames heard start the floor instead of being measured against none:
        // any room above `min_level_dbfs` opened the gate at start (in no-detector mode,
        // a false cry episode at every start).
        if !self.floor.has_heard() {
            self.floor.update(level);
            return GateTransition::None;
        }
        let opening = (self.floor.dbfs() + self.config.margin_db).max(self.config.min_level_dbfs);
        let end = start + frame.len() as u64;
        if self.open {
            // The floor keeps rising slowly while open, toward the room under the sound,
            // so a room that became louder for good (a fan) closes the gate in the end.
            self.floor.follow_up(level);
            if level >= opening - self.config.hysteresis_db {
                self.quiet_samples = 0;
            } else {
                self.quiet_samples += frame.len() as u64;
                if self.quiet_samples >= self.seconds(self.config.hangover_seconds) {
                    self.open = false;
                    self.quiet_samples = 0;
                    return GateTransition::Closed { at_sample: end };
                }
            }
            return GateTransition::None;
        }
        if level >= opening {
            let since = *self.loud_since.get_or_insert(start);
            if end - since >= self.seconds(self.config.min_open_seconds).max(1) {
                self.open = true;
                self.loud_since = None;
                self.quiet_samples = 0;
                let from_sample = since.saturating_sub(self.seconds(self.config.pre_roll_seconds));
                return GateTransition::Opened { from_sample };
            }
        } else {
            self.loud_since = None;
            self.floor.update(level);
        }
        GateTransition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    const RATE: u32 = 8000;

    fn run(gate: &mut EnergyGate, audio: &[f32], offset: u64) -> Vec<GateTransition> {
        audio
            .chunks_exact(FRAME_SAMPLES)
            .enumerate()
            .map(|(i, f)| gate.push_frame(f, offset + (i * FRAME_SAMPLES) as u64))
            .filter(|t| *t != GateTransition::None)
            .collect()
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        assert!(GateConfig::default().validate().is_ok());
        let refused = |edit: fn(&mut GateConfig)| {
            let mut c = GateConfig::default();
            edit(&mut c);
            c.validate().unwrap_err()
        };
        let e = refused(|c| c.hangover_seconds = 11.0);
        assert!(e.starts_with("hangover_seconds = 11"), "{e}");
        let e = refused(|c| c.min_level_dbfs = 3.0);
        assert!(e.starts_with("min_level_dbfs"), "{e}");
        let e = refused(|c| (c.margin_db, c.hysteresis_db) = (5.0, 3.0));
        assert!(e.starts_with("hysteresis_db = 3 must be"), "{e}");
        // Below 3 dB no hysteresis could do: the margin itself is named.
        let e = refused(|c| (c.margin_db, c.hysteresis_db) = (2.0, 0.0));
        assert!(e.starts_with("margin_db = 2 is outside 3..=60"), "{e}");
        assert!(GateConfig {
            margin_db: 6.0,
            hysteresis_db: 3.0,
            ..GateConfig::default()
        }
        .validate()
        .is_ok());
    }

    /// Why the settings above are refused: with the closing level at the room's level,
    /// half the room's frames are above it, a hangover's worth of quiet frames in a row
    /// never comes, and the gate stays open long after the cry.
    #[test]
    fn a_closing_level_at_the_room_keeps_the_gate_open_and_a_valid_one_closes() {
        let stays_open = |margin_db: f64, hysteresis_db: f64| {
            let config = GateConfig {
                margin_db,
                hysteresis_db,
                ..GateConfig::default()
            };
            let mut gate = EnergyGate::new(&config, RATE);
            let mut audio = synth::room_tone(RATE, 4.0, 0.01, 1);
            audio.extend(synth::cry(RATE, 2.0, 0.5));
            audio.extend(synth::room_tone(RATE, 60.0, 0.01, 2));
            run(&mut gate, &audio, 0);
            gate.is_open()
        };
        assert!(stays_open(2.0, 3.0));
        assert!(!stays_open(10.0, 3.0));
        assert!(!stays_open(6.0, 3.0));
    }

    #[test]
    fn levels_are_dbfs() {
        let square =
            |a: f32| -> Vec<f32> { (0..256).map(|i| if i % 2 == 0 { a } else { -a }).collect() };
        assert!((level_dbfs(&square(1.0)) - 0.0).abs() < 1e-9);
        assert!((level_dbfs(&square(0.1)) + 20.0).abs() < 1e-6);
        assert_eq!(level_dbfs(&[0.0; 256]), SILENCE_DBFS);
        // An offset is no sound, and does not change the level of one.
        assert_eq!(level_dbfs(&[0.1; 256]), SILENCE_DBFS);
        let offset: Vec<f32> = square(0.1).iter().map(|s| s + 0.01).collect();
        assert!((level_dbfs(&offset) + 20.0).abs() < 1e-6);
    }

    /// A floor started at `level` (its first frames all there).
    fn floor_at(level: f64) -> NoiseFloor {
        let mut floor = NoiseFloor::new(&GateConfig::default(), 0.032);
        for _ in 0..START_FRAMES {
            assert!(!floor.has_heard());
            floor.update(level);
        }
        assert_eq!(floor.dbfs(), level);
        floor
    }

    #[test]
    fn floor_starts_at_the_median_of_its_first_frames() {
        let mut floor = NoiseFloor::new(&GateConfig::default(), 0.032);
        for level in [-90.0, -41.0, -40.0, -39.0, -40.5, -20.0, -39.5, -40.2] {
            floor.update(level);
        }
        assert_eq!(floor.dbfs(), -40.0);
    }

    #[test]
    fn floor_falls_fast_and_rises_slowly() {
        let mut floor = floor_at(-40.0);
        // 2 s at -60: the fast fall covers most of the way.
        for _ in 0..63 {
            floor.update(-60.0);
        }
        assert!(floor.dbfs() < -52.0, "{}", floor.dbfs());
        let low = floor.dbfs();
        // 2 s at -20: the slow rise moves a few dB only.
        for _ in 0..63 {
            floor.update(-20.0);
        }
        assert!(floor.dbfs() - low < 3.0, "{} -> {}", low, floor.dbfs());
    }

    /// A floor left high by a long loud sound (learnt at -30 dBFS) falls in the first
    /// stretch of quieter frames to the loudest of them: a breath brings it to the room
    /// at once. One odd quiet frame moves it only by its time constant.
    #[test]
    fn a_stretch_of_quiet_frames_brings_a_high_floor_down_at_once() {
        let mut floor = floor_at(-30.0);
        for _ in 0..200 {
            floor.update(-30.0);
        }
        for level in [-30.0, -30.0, -60.0, -30.0, -30.0, -30.0] {
            floor.update(level);
        }
        assert!(floor.dbfs() > -31.0, "{}", floor.dbfs());
        let before = floor.dbfs();
        for level in [-60.0, -59.0, -61.0, -60.0] {
            floor.update(level);
        }
        assert_eq!(floor.dbfs(), -59.0);
        // The old room back within 2 s: that was a dip, and the fall is undone; after
        // 2 s of quiet, the room is the quiet one.
        let mut dip = floor.clone();
        dip.undo_a_dip(-45.0);
        assert_eq!(dip.dbfs(), -59.0);
        dip.undo_a_dip(-32.0);
        // (The stretch's own frames had moved it by their time constant first.)
        assert!(
            (dip.dbfs() - before).abs() < 2.0,
            "{before} -> {}",
            dip.dbfs()
        );
        for _ in 0..70 {
            floor.update(-60.0);
            floor.undo_a_dip(-60.0);
        }
        floor.undo_a_dip(-30.0);
        assert!(floor.dbfs() < -59.0, "{}", floor.dbfs());
        // Held (the detector hears crying), it does not move.
        let mut held = floor_at(-30.0);
        held.held = true;
        for _ in 0..10 {
            held.update(-60.0);
        }
        assert_eq!(held.dbfs(), -30.0);
    }

    fn sine(hz: f32, amplitude: f32, seconds: f32) -> Vec<f32> {
        (0..(seconds * RATE as f32) as usize)
            .map(|i| amplitude * (2.0 * std::f32::consts::PI * hz * i as f32 / RATE as f32).sin())
            .collect()
    }

    /// The meter leaves out mains hum and rumble (50 Hz 38 dB down, 100 Hz 14 dB) and
    /// keeps a cry's voice (400 Hz within 0.1 dB); digital silence stays silence.
    #[test]
    fn the_level_meter_leaves_out_hum_and_keeps_the_voice() {
        let last_frame = |audio: &[f32]| {
            let mut meter = LevelMeter::new(RATE);
            let frames: Vec<&[f32]> = audio.chunks_exact(FRAME_SAMPLES).collect();
            let levels: Vec<f64> = frames.iter().map(|f| meter.level_dbfs(f)).collect();
            let last = frames.len() - 1;
            (levels[last], level_dbfs(frames[last]))
        };
        for (hz, least, most) in [
            (50.0, -40.0, -37.0),
            (100.0, -15.0, -13.0),
            (400.0, -0.1, 0.1),
        ] {
            let (filtered, full) = last_frame(&sine(hz, 0.1, 1.0));
            let down = filtered - full;
            assert!((least..=most).contains(&down), "{hz} Hz: {down:.2} dB");
        }
        let mut meter = LevelMeter::new(RATE);
        meter.level_dbfs(&sine(400.0, 0.1, 0.032));
        assert_eq!(meter.level_dbfs(&[0.0; FRAME_SAMPLES]), SILENCE_DBFS);
    }

    /// A room at about -62 dBFS with mains hum at -45 dBFS, and a cry whose bursts are
    /// about -40 dBFS: the gate opens at the cry. Before, the hum was the room, the cry
    /// 5 dB above it, and the gate never opened.
    #[test]
    fn a_cry_opens_the_gate_over_mains_hum() {
        let mut audio = synth::room_tone(RATE, 30.0, 0.002, 3);
        synth::mix_into(&mut audio, &sine(50.0, 0.008, 30.0), 0);
        synth::mix_into(&mut audio, &synth::cry(RATE, 5.0, 0.02), 20 * RATE as usize);
        opens_at_20_s_over_a_quiet_floor(&audio);
    }

    /// The default gate over `audio` first opens at its cry, 20 s in (pre-roll aside),
    /// with the floor at the quiet room.
    fn opens_at_20_s_over_a_quiet_floor(audio: &[f32]) {
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        let t = run(&mut gate, audio, 0);
        assert!(
            matches!(t.first(), Some(GateTransition::Opened { from_sample }) if (19 * RATE as u64..21 * RATE as u64).contains(from_sample)),
            "{t:?}"
        );
        assert!(
            gate.noise_floor_dbfs() < -55.0,
            "{}",
            gate.noise_floor_dbfs()
        );
    }

    /// A steady room with a short dip (the gap where a white-noise machine loops, a
    /// microphone's gain ducking): 0.3 s 12 or 30 dB down, then the room again. The gate
    /// stays closed. Before the fall a dip caused was undone, the room came back 10 dB
    /// over the fallen floor, opened the gate and held it open for one to two minutes.
    #[test]
    fn a_short_dip_in_a_steady_room_opens_nothing() {
        for gain in [0.25f32, 0.03] {
            let mut audio = synth::room_tone(RATE, 120.0, 0.02, 5);
            let dip = (30 * RATE) as usize..(30 * RATE + RATE * 3 / 10) as usize;
            audio[dip].iter_mut().for_each(|s| *s *= gain);
            let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
            assert_eq!(run(&mut gate, &audio, 0), vec![], "gain {gain}");
        }
    }

    #[test]
    fn a_cry_opens_with_pre_roll_and_closes_after_the_hangover() {
        let config = GateConfig::default();
        let mut gate = EnergyGate::new(&config, RATE);
        let mut audio = synth::room_tone(RATE, 10.0, 0.002, 1);
        let onset = 4 * RATE as usize;
        synth::mix_into(&mut audio, &synth::cry(RATE, 3.0, 0.5), onset);
        let t = run(&mut gate, &audio, 0);
        assert_eq!(t.len(), 2, "{t:?}");
        let GateTransition::Opened { from_sample } = t[0] else {
            panic!("{t:?}")
        };
        // Opens within a frame of the onset, minus the 0.5 s pre-roll.
        let expected = onset as i64 - 4000;
        assert!(
            (from_sample as i64 - expected).abs() <= 2 * FRAME_SAMPLES as i64,
            "{from_sample}"
        );
        let GateTransition::Closed { at_sample } = t[1] else {
            panic!("{t:?}")
        };
        // The cry's last burst ends at 4 + 2.7 s; closes about 1 s later.
        let closed_s = at_sample as f64 / f64::from(RATE);
        assert!((7.4..8.2).contains(&closed_s), "{closed_s}");
        assert!(!gate.is_open());
    }

    #[test]
    fn a_clap_is_too_short_to_open_the_gate() {
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        let mut audio = synth::room_tone(RATE, 6.0, 0.002, 2);
        synth::mix_into(
            &mut audio,
            &synth::clap(RATE, 1.0, 0.9, 3),
            3 * RATE as usize,
        );
        assert_eq!(run(&mut gate, &audio, 0), vec![]);
    }

    /// A microphone with a DC offset of 1 % of full scale: a cry 20 dB above the room
    /// (not above the offset) opens the gate. Before, the offset was the room.
    #[test]
    fn a_dc_offset_is_not_the_room() {
        let mut audio = synth::room_tone(RATE, 30.0, 0.002, 4);
        synth::mix_into(&mut audio, &synth::cry(RATE, 5.0, 0.05), 20 * RATE as usize);
        audio.iter_mut().for_each(|s| *s += 0.01);
        opens_at_20_s_over_a_quiet_floor(&audio);
    }

    #[test]
    fn quiet_sounds_below_the_absolute_minimum_stay_closed() {
        // Digital near-silence: a sound 30 dB above the floor but below -60 dBFS.
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        let mut audio = synth::room_tone(RATE, 6.0, 0.00001, 4);
        synth::mix_into(
            &mut audio,
            &synth::cry(RATE, 2.0, 0.0005),
            3 * RATE as usize,
        );
        assert_eq!(run(&mut gate, &audio, 0), vec![]);
    }

    /// A muted microphone (exact zeros) for 2 s in a room at about -40 dBFS: the floor
    /// stays at the room, so the room's sound coming back opens nothing. Before, the
    /// floor fell to digital silence and the gate stayed open for about 2 minutes.
    #[test]
    fn digital_silence_does_not_drag_the_floor_down() {
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        let ten = (10 * RATE) as u64;
        run(&mut gate, &synth::room_tone(RATE, 10.0, 0.01, 7), 0);
        let room = gate.noise_floor_dbfs();
        assert!(room > -50.0 && room < -35.0, "{room}");
        let muted = vec![0.0; 2 * RATE as usize];
        assert_eq!(run(&mut gate, &muted, ten), vec![]);
        assert_eq!(gate.noise_floor_dbfs(), room);
        let back = synth::room_tone(RATE, 60.0, 0.01, 8);
        assert_eq!(run(&mut gate, &back, ten + muted.len() as u64), vec![]);
    }

    /// A level that is not a number or infinite (float samples far beyond full scale,
    /// summed) leaves the floor as it was: before, infinity became the floor and the next
    /// frame made it NaN, which no level ever compares above, for the rest of the run.
    #[test]
    fn a_level_that_is_not_finite_is_not_followed() {
        let mut floor = floor_at(-45.0);
        for level in [f64::INFINITY, f64::NAN, f64::NEG_INFINITY] {
            floor.update(level);
            floor.follow_up(level);
            assert_eq!(floor.dbfs(), -45.0, "{level}");
        }
    }

    /// Room tone at about -41 dBFS and, from 10 s, 300 s of cry whose bursts are about
    /// 12 dB above it, 10 dB over a burst and its breath (a cry across the room with a
    /// white-noise machine on); and that 10 dB.
    fn long_cry_a_little_above_the_room() -> (Vec<f32>, f64) {
        let mut audio = synth::room_tone(RATE, 340.0, 0.02, 1);
        let cry = synth::cry(RATE, 300.0, 0.107);
        let room = level_dbfs(&audio[..RATE as usize]);
        // A whole burst and its breath.
        let burst = level_dbfs(&cry[..12000]);
        synth::mix_into(&mut audio, &cry, 10 * RATE as usize);
        (audio, burst - room)
    }

    /// The gate stays open through the whole cry, at its breaths too. Before, the floor
    /// rose toward the cry while the gate was open, the gate closed after about 50 s of
    /// crying, and it opened and closed three more times before the cry ended.
    #[test]
    fn a_long_cry_a_little_above_the_room_keeps_the_gate_open() {
        let (audio, above) = long_cry_a_little_above_the_room();
        assert!((9.5..10.5).contains(&above), "{above}");
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        let t = run(&mut gate, &audio, 0);
        assert_eq!(t.len(), 2, "{t:?}");
        let (GateTransition::Opened { from_sample }, GateTransition::Closed { at_sample }) =
            (t[0], t[1])
        else {
            panic!("{t:?}")
        };
        let (opened, closed) = (
            from_sample as f64 / f64::from(RATE),
            at_sample as f64 / f64::from(RATE),
        );
        assert!((9.0..10.5).contains(&opened), "{opened}");
        // The last burst ends at 10 + 298.7 s; the hangover is 1 s.
        assert!((309.0..311.0).contains(&closed), "{closed}");
    }

    /// A fan switched on 15 dB above the room has no quieter frame: the floor still rises
    /// to it, and the gate closes within about a minute and stays closed.
    #[test]
    fn a_room_louder_for_good_closes_the_gate() {
        let mut audio = synth::room_tone(RATE, 190.0, 0.002, 1);
        let fan = synth::room_tone(RATE, 180.0, 0.0112, 2);
        synth::mix_into(&mut audio, &fan, 10 * RATE as usize);
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        let t = run(&mut gate, &audio, 0);
        assert_eq!(t.len(), 2, "{t:?}");
        let GateTransition::Closed { at_sample } = t[1] else {
            panic!("{t:?}")
        };
        let closed = at_sample as f64 / f64::from(RATE);
        assert!((40.0..80.0).contains(&closed), "{closed}");
    }

    /// One near-silent frame at the start (a device fading in) does not become the room.
    /// Before, the floor began there, 50 dB under the room, and the room's own sound kept
    /// the gate open for two minutes.
    #[test]
    fn one_quiet_frame_at_the_start_does_not_open_the_gate() {
        let mut audio = synth::room_tone(RATE, 0.032, 0.00005, 3);
        audio.extend(synth::room_tone(RATE, 200.0, 0.02, 3));
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        assert_eq!(run(&mut gate, &audio, 0), vec![]);
        let floor = gate.noise_floor_dbfs();
        assert!((-45.0..-38.0).contains(&floor), "{floor}");
    }

    /// Loud frames before a gap in the audio and after it are not one run: 3 loud frames
    /// (96 ms, under the 100 ms that open the gate), the audio lost, then one 32 ms click
    /// open nothing. Before, the run went on across the gap and the click opened the gate.
    #[test]
    fn a_loud_run_does_not_go_on_across_a_gap() {
        let opens = |interrupted: bool| {
            let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
            let room = synth::room_tone(RATE, 2.0, 0.002, 1);
            run(&mut gate, &room, 0);
            let mut at = room.len() as u64;
            let loud = synth::room_tone(RATE, 0.096, 0.5, 2);
            let mut t = run(&mut gate, &loud, at);
            at += loud.len() as u64;
            if interrupted {
                gate.interrupt();
            }
            t.extend(run(&mut gate, &loud[..FRAME_SAMPLES], at));
            t
        };
        assert_eq!(opens(true), vec![]);
        assert_eq!(opens(false).len(), 1, "the run the gap must break");
    }

    #[test]
    fn new_settings_keep_the_floor() {
        let mut gate = EnergyGate::new(&GateConfig::default(), RATE);
        run(&mut gate, &synth::room_tone(RATE, 3.0, 0.01, 5), 0);
        let before = gate.noise_floor_dbfs();
        gate.set_config(&GateConfig {
            margin_db: 20.0,
            ..GateConfig::default()
        });
        assert_eq!(gate.noise_floor_dbfs(), before);
        assert!(before > -50.0 && before < -35.0, "{before}");
    }
}
