//! Audio sources: where samples come from (live capture, a file replayed, raw PCM on
//! stdin), the thread that keeps them coming, and the `[audio]` config section.
//!
//! It owns the [`AudioSource`] trait (open, pull interleaved samples, close), the
//! capture thread ([`spawn_capture`]) whose [`CaptureConverter`] downmixes and resamples
//! every source to the models' rate with [`StreamResampler`] into pooled [`Samples`]
//! buffers (so the steady state allocates nothing per frame; what the resampler still
//! holds when a file or stdin ends is the last block), reopens a lost source with
//! exponential backoff (capped, logged once per loss; a source that fails soon after
//! each reopening keeps backing off), counts xruns, and reports the [`AudioState`]
//! (running once audio arrives, lost, stalled on digital silence or no data for
//! `[audio] stall_seconds`, ended; a live device stalled with no data is reopened as a
//! lost one). The file and stdin sources live here; the cpal one in
//! [`crate::capture`].

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::decode::AudioStream;
use crate::error::{DecodeError, ResampleError};
use crate::resample::StreamResampler;

/// `[audio]`: the capture device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Input device name or ALSA id (see `babycryd devices`); empty = the default device.
    pub device: String,
    /// Capture rate to ask the device for, Hz; 0 = the device's default rate. A lower
    /// native rate (16000, 8000) makes the always-on conversion to 8 kHz cheaper.
    pub sample_rate: u32,
    /// Seconds without audio (or with only digital silence) before the source is reported
    /// stalled; a just-opened device gets at least its retry wait for its first audio.
    pub stall_seconds: f64,
    /// Longest wait between attempts to reopen a lost device, seconds; also how long a
    /// reopened device must deliver audio before its next loss starts again from 1 s.
    pub retry_max_seconds: f64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            device: String::new(),
            sample_rate: 0,
            stall_seconds: 10.0,
            retry_max_seconds: 30.0,
        }
    }
}

impl AudioConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.sample_rate != 0 && !(8000..=192_000).contains(&self.sample_rate) {
            return Err(format!(
                "sample_rate = {} is neither 0 (the device's default) nor within 8000..=192000",
                self.sample_rate
            ));
        }
        if !(1.0..=3600.0).contains(&self.stall_seconds) {
            return Err(format!(
                "stall_seconds = {} is outside 1..=3600",
                self.stall_seconds
            ));
        }
        if !(1.0..=30.0).contains(&self.retry_max_seconds) {
            return Err(format!(
                "retry_max_seconds = {} is outside 1..=30",
                self.retry_max_seconds
            ));
        }
        Ok(())
    }
}

/// What a source delivers once opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

/// The outcome of one [`AudioSource::pull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// Samples were appended.
    Audio,
    /// Nothing arrived within the poll time (about 100 ms).
    Idle,
    /// The source has no more audio (end of file or stdin).
    End,
}

/// Why a source cannot deliver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device is missing or busy; the capture thread retries.
    #[error("{device}: unavailable: {reason}")]
    Unavailable { device: String, reason: String },
    /// The device went away while running; the capture thread reopens it.
    #[error("{device}: lost: {reason}")]
    Lost { device: String, reason: String },
    /// The source delivers a format the capture thread cannot convert (a sample rate the
    /// resampler does not take); reopening it gives the same format.
    #[error("{device}: unsupported audio format: {source}")]
    Format {
        device: String,
        source: ResampleError,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stream that cannot be reopened (stdin) failed to read: what it had not yet
    /// delivered is gone, which is no end of input.
    #[error("{device}: read failed: {reason}")]
    Read { device: String, reason: String },
    /// The capture thread died (a panic in a driver or in our code). The process ends
    /// non-zero, so systemd restarts it: a monitor that exited 0 would stay stopped.
    #[error("{device}: the capture thread failed: {reason}")]
    CaptureFailed { device: String, reason: String },
}

impl SourceError {
    /// Whether reopening the source may help: a device can come back, a bad recording
    /// cannot (and reopening one that failed part-way would replay its audio twice), nor
    /// can a format that cannot be converted (it would be retried forever).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            Self::Decode(_) | Self::Format { .. } | Self::Read { .. } | Self::CaptureFailed { .. }
        )
    }
}

/// A source of interleaved samples. Implementations: [`FileSource`], [`RawPcmSource`],
/// `capture::CpalSource`, and the failing sources of the tests.
pub trait AudioSource: Send {
    /// A name for logs and events.
    fn describe(&self) -> String;
    /// Opens (or reopens after a loss) the source.
    fn open(&mut self) -> Result<StreamFormat, SourceError>;
    /// Appends interleaved samples to `buf`, waiting at most about 100 ms.
    fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError>;
    /// Releases the device after a loss or at the end.
    fn close(&mut self) {}
    /// Overruns counted since the start.
    fn xruns(&self) -> u64 {
        0
    }
    /// Whether a source that delivers nothing for `[audio] stall_seconds` is closed and
    /// reopened, after it is reported stalled: a live device whose stream hung without
    /// an error would otherwise stay silent until a restart. Not a pipe or a recording,
    /// whose writer may just be quiet.
    fn reopen_when_stalled(&self) -> bool {
        false
    }
}

/// The source's state, as reported in events, diagnostics and `STATUS=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioState {
    Connecting,
    Running,
    Lost(String),
    /// No audio comes (a hung stream, a quiet pipe).
    Stalled(String),
    /// Audio comes, but only digital silence (a muted microphone): reported as stalled
    /// too, but the audio time goes on.
    Silent(String),
    Ended,
}

impl AudioState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Running => "running",
            Self::Lost(_) => "lost",
            Self::Stalled(_) | Self::Silent(_) => "stalled",
            Self::Ended => "ended",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Self::Lost(d) | Self::Stalled(d) | Self::Silent(d) => d,
            _ => "",
        }
    }

    /// Lost or stalled: no audio, which a parent must hear about.
    pub fn is_trouble(&self) -> bool {
        matches!(self, Self::Lost(_) | Self::Stalled(_) | Self::Silent(_))
    }

    /// Trouble in which no audio comes: what is counted in audio (an episode's quiet
    /// time, a cooldown) stops with it. Digital silence goes on being audio.
    pub fn is_gap(&self) -> bool {
        matches!(self, Self::Lost(_) | Self::Stalled(_))
    }

    /// Whether going from `previous` to this state is warned: trouble is, once; trouble
    /// that changes its kind while it lasts (a hung stream reported stalled, then
    /// reopened as lost) is the same trouble going on, logged at info.
    pub fn warns_after(&self, previous: Option<&AudioState>) -> bool {
        self.is_trouble() && !previous.is_some_and(AudioState::is_trouble)
    }
}

/// What the capture thread sends to the analysis stage.
#[derive(Debug)]
pub enum SourceEvent {
    /// Mono samples at the target rate.
    Audio(Samples),
    State(AudioState),
    /// The capture thread is alive with no audio to send: retrying a lost source
    /// (about once a second) or waiting on an idle one.
    Heartbeat,
    /// The source's overrun count went up to this total (counted, not a loss).
    Xruns(u64),
    /// No more audio; the xruns counted, and the failure that ended the source when
    /// reopening it could not help (the daemon then stops with that error).
    End {
        xruns: u64,
        error: Option<SourceError>,
    },
}

/// Buffers kept for reuse at most: more than the daemon's capture channel holds (64), so
/// a full channel still recycles every buffer.
const POOL_BUFFERS: usize = 72;

/// Free sample buffers shared by the capture thread (which takes them) and the analysis
/// stage (whose dropped [`Samples`] give them back).
#[derive(Debug)]
struct SamplePool {
    free: Mutex<Vec<Vec<f32>>>,
}

impl SamplePool {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::with_capacity(POOL_BUFFERS)),
        })
    }

    /// An empty buffer, recycled when one is free.
    fn take(self: &Arc<Self>) -> Samples {
        let data = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        Samples {
            data,
            pool: Some(Arc::clone(self)),
        }
    }

    fn give_back(&self, mut data: Vec<f32>) {
        data.clear();
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOL_BUFFERS && data.capacity() > 0 {
            free.push(data);
        }
    }
}

/// Mono samples from the capture thread. Dropping them returns the buffer to its
/// [`SamplePool`]; they read as a `[f32]`.
pub struct Samples {
    data: Vec<f32>,
    pool: Option<Arc<SamplePool>>,
}

impl From<Vec<f32>> for Samples {
    /// Samples that belong to no pool.
    fn from(data: Vec<f32>) -> Self {
        Self { data, pool: None }
    }
}

impl std::ops::Deref for Samples {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl Drop for Samples {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.data));
        }
    }
}

impl Clone for Samples {
    fn clone(&self) -> Self {
        Self::from(self.data.clone())
    }
}

impl PartialEq for Samples {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Samples({} samples)", self.data.len())
    }
}

/// What the capture thread does to every block a source delivers: downmix to mono,
/// count the run of digital silence at its end, and resample to the target rate into a
/// pooled buffer (rubato above a quiet room, a box average below it:
/// [`StreamResampler::for_capture`]). A block need not hold whole frames (a device's
/// ring is read in fixed-size pieces): a frame it ends inside of is completed by the
/// next. Its buffers are reused, so once warm it allocates nothing.
#[derive(Debug)]
pub struct CaptureConverter {
    downmix: Downmix,
    rate: u32,
    resampler: StreamResampler,
    mono: Vec<f32>,
    /// The samples of a frame the last block ended inside of (fewer than `channels`).
    partial: Vec<f32>,
    /// Digital-silence samples at the end of the stream so far (at the source rate).
    zero_run: u64,
    pool: Arc<SamplePool>,
}

impl CaptureConverter {
    pub fn new(format: StreamFormat, target_rate: u32) -> Result<Self, ResampleError> {
        Ok(Self {
            downmix: Downmix::new(format.channels, format.sample_rate),
            rate: format.sample_rate,
            resampler: StreamResampler::for_capture(format.sample_rate, target_rate)?,
            mono: Vec::with_capacity(format.sample_rate as usize),
            partial: Vec::with_capacity(usize::from(format.channels.max(1))),
            zero_run: 0,
            pool: SamplePool::new(),
        })
    }

    /// Converts one block of interleaved samples; the result may be empty while the
    /// resampler fills its first chunk.
    pub fn convert(&mut self, mut interleaved: &[f32]) -> Result<Samples, ResampleError> {
        self.mono.clear();
        let channels = self.downmix.channels();
        if !self.partial.is_empty() {
            let take = (channels - self.partial.len()).min(interleaved.len());
            self.partial.extend_from_slice(&interleaved[..take]);
            interleaved = &interleaved[take..];
            if self.partial.len() == channels {
                self.downmix.push(&self.partial, &mut self.mono);
                self.partial.clear();
            }
        }
        let whole = interleaved.len() / channels * channels;
        self.downmix.push(&interleaved[..whole], &mut self.mono);
        self.partial.extend_from_slice(&interleaved[whole..]);
        // Every source's audio passes here: one NaN or infinity from a float device (an
        // f64 beyond f32's range is one) would turn the gate's and the resampler's noise
        // floors into NaN for the rest of the run, the gate open all night; and float
        // samples far beyond full scale add up to infinity in the resampler. Clamped to
        // full scale, as the stdin reader's float PCM is: beyond it is clipping anyway.
        for s in &mut self.mono {
            *s = full_scale(*s);
        }
        match self.mono.iter().rposition(|&s| s != 0.0) {
            Some(i) => self.zero_run = (self.mono.len() - 1 - i) as u64,
            None => self.zero_run += self.mono.len() as u64,
        }
        let mut out = self.pool.take();
        self.resampler.push(&self.mono, &mut out.data)?;
        Ok(out)
    }

    /// Ends the stream: the samples the resampler still holds (see
    /// [`StreamResampler::finish`]). A partial frame left over is not audio.
    pub fn finish(&mut self) -> Result<Samples, ResampleError> {
        self.partial.clear();
        let mut out = self.pool.take();
        self.resampler.finish(&mut out.data)?;
        Ok(out)
    }

    /// The rate of the blocks it converts, Hz.
    pub fn source_rate(&self) -> u32 {
        self.rate
    }

    /// Seconds of digital silence the stream ends with.
    pub fn silent_seconds(&self) -> f64 {
        self.zero_run as f64 / f64::from(self.rate)
    }
}

/// Waits between attempts to reopen a lost source: doubling from `initial`, capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &AudioConfig) -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs_f64(config.retry_max_seconds),
        }
    }

    /// The wait after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// How long a device opened after `failures` opens that brought no audio waits for
    /// its first: the retry delay, doubling past `max` up to [`START_GRACE_MAX`]. Capped
    /// at `max` (`retry_max_seconds` = 1 s), a device slower to start than both it and
    /// the stall time was closed before its first audio at every open, for ever.
    pub fn start_grace(&self, failures: u32) -> Duration {
        let uncapped = Self {
            initial: self.initial,
            max: self.max.max(START_GRACE_MAX),
        };
        uncapped.delay(failures)
    }
}

/// The longest a device is given for its first audio after opens that brought none.
const START_GRACE_MAX: Duration = Duration::from_secs(60);

/// Settings of the capture thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptureOptions {
    /// The rate the analysis stage wants (the models').
    pub target_rate: u32,
    pub stall_seconds: f64,
    pub retry: RetryPolicy,
}

/// Downmixes interleaved frames to mono: the mean of the channels, unless they cancel in
/// it, then one channel alone: the first, or one clearly louder. Some microphones (laptop arrays, USB microphones
/// with one capsule wired in antiphase) deliver a channel inverted: the mean of the two is
/// the room's noise alone, a cry never opened the gate and nothing said why. Cancelling
/// means the mean has under half the power that channels with nothing in common would
/// leave it (1/c of theirs): two channels correlated below -0.5; channels alike or
/// independent keep the mean. It is judged on the last half second or so (powers that
/// decay), not on each block alone: a device's read can end a frame short, and a block
/// of one frame says nothing about how the channels relate.
#[derive(Debug, Clone)]
pub struct Downmix {
    channels: usize,
    /// Frames over which the powers decay by 1/e.
    memory_frames: f64,
    /// Each channel's decaying sum of squares, and the mean's.
    channel_power: Vec<f64>,
    mean_power: f64,
    /// The channel taken alone when they cancel.
    taken: usize,
}

impl Downmix {
    pub fn new(channels: u16, sample_rate: u32) -> Self {
        let channels = usize::from(channels.max(1));
        Self {
            channels,
            memory_frames: (f64::from(sample_rate) * 0.5).max(1.0),
            channel_power: vec![0.0; channels],
            mean_power: 0.0,
            taken: 0,
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Appends the mono samples of `interleaved` (whole frames) to `out`.
    pub fn push(&mut self, interleaved: &[f32], out: &mut Vec<f32>) {
        let c = self.channels;
        if c == 1 {
            out.extend_from_slice(interleaved);
            return;
        }
        let frames = interleaved.chunks_exact(c);
        let decay = (-(frames.len() as f64) / self.memory_frames).exp();
        self.mean_power *= decay;
        for p in &mut self.channel_power {
            *p *= decay;
        }
        // The powers are kept for half a second, so they are measured on samples within
        // full scale, and a frame with a NaN or an infinity (zeroed or refused after the
        // downmix) adds nothing: one bad sample must not decide for the rest of the run.
        // One pass over the block: the mean and every channel's power.
        let power = |s: f32| f64::from(s.clamp(-1.0, 1.0)).powi(2);
        let first = out.len();
        for frame in frames.clone() {
            let mean = frame.iter().sum::<f32>() / c as f32;
            if frame.iter().all(|s| s.is_finite()) {
                self.mean_power += power(mean);
                for (kept, &s) in self.channel_power.iter_mut().zip(frame) {
                    *kept += power(s);
                }
            }
            out.push(mean);
        }
        // The channels' summed power is c times their mean power, and independent
        // channels leave the mean 1/c of that.
        let total: f64 = self.channel_power.iter().sum();
        if self.mean_power * 2.0 * ((c * c) as f64) < total {
            // The loudest channel, but a channel about as loud as the one taken does not
            // take over: two channels in antiphase are equally loud, and switching
            // between them would turn the sound upside down from block to block.
            let loudest = (0..c)
                .max_by(|&a, &b| self.channel_power[a].total_cmp(&self.channel_power[b]))
                .unwrap_or(0);
            if self.channel_power[loudest] > 2.0 * self.channel_power[self.taken] {
                self.taken = loudest;
            }
            for (mono, frame) in out[first..].iter_mut().zip(frames) {
                *mono = frame[self.taken];
            }
        }
    }
}

/// Starts the capture thread: it opens `source` (retrying while it is unavailable),
/// converts everything to mono at `options.target_rate`, and sends it on `tx` until the
/// source ends, `stop` is set, or the receiver is gone.
pub fn spawn_capture(
    source: Box<dyn AudioSource>,
    options: CaptureOptions,
    tx: tokio::sync::mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("babycryd-capture".into())
        .spawn(move || {
            let (last_words, device) = (tx.clone(), source.describe());
            let capture = Capture::new(source, options, tx, stop);
            let Err(panic) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| capture.run()))
            else {
                return;
            };
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".into());
            let error = SourceError::CaptureFailed { device, reason };
            tracing::error!("{error}");
            let _ = last_words.blocking_send(SourceEvent::End {
                xruns: 0,
                error: Some(error),
            });
        })
}

struct Capture {
    source: Box<dyn AudioSource>,
    options: CaptureOptions,
    tx: tokio::sync::mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
    state: Option<AudioState>,
    /// Frames the source delivered since it was last opened.
    delivered: u64,
}

impl Capture {
    fn new(
        source: Box<dyn AudioSource>,
        options: CaptureOptions,
        tx: tokio::sync::mpsc::Sender<SourceEvent>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            source,
            options,
            tx,
            stop,
            state: None,
            delivered: 0,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends an event; false when the analysis stage is gone.
    fn send(&self, event: SourceEvent) -> bool {
        self.tx.blocking_send(event).is_ok()
    }

    /// Reports a stall (`AudioState::Stalled` or `AudioState::Silent`) once, when it
    /// begins: its message is made only then, not for every block of a muted microphone
    /// or every idle pull. False when the analysis stage is gone.
    fn stall(&mut self, kind: fn(String) -> AudioState, detail: impl FnOnce() -> String) -> bool {
        let going_on = self.state.as_ref().map(std::mem::discriminant)
            == Some(std::mem::discriminant(&kind(String::new())));
        going_on || self.set_state(kind(detail()))
    }

    fn set_state(&mut self, state: AudioState) -> bool {
        // One report per state: a loss that keeps failing for the same reason, or a stall
        // that lasts longer, is not news. A loss whose reason changed is (unplugged, then
        // "no such device" at each reopen: the status must say what is wrong now), at
        // info: the warning was given when it began. (Digital silence that turns into no
        // audio at all is news too: both are "stalled", but only the second stops the
        // audio.)
        let same_kind =
            self.state.as_ref().map(std::mem::discriminant) == Some(std::mem::discriminant(&state));
        let same_reason = self.state.as_ref().map(AudioState::detail) == Some(state.detail());
        if same_kind && (same_reason || !matches!(state, AudioState::Lost(_))) {
            return true;
        }
        let (source, name) = (self.source.describe(), state.name());
        if state.warns_after(self.state.as_ref()) {
            tracing::warn!(source = %source, state = name, "{}", state.detail());
        } else if state.is_trouble() {
            tracing::info!(source = %source, state = name, "{}", state.detail());
        } else {
            tracing::info!(source = %source, state = name, "audio");
        }
        self.state = Some(state.clone());
        self.send(SourceEvent::State(state))
    }

    /// Sleeps `delay` in short steps, sending a heartbeat every second; false on stop.
    fn wait(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let mut beat = Instant::now();
        while Instant::now() < until {
            if self.stopped() {
                return false;
            }
            if beat.elapsed() >= Duration::from_secs(1) {
                beat = Instant::now();
                if !self.send(SourceEvent::Heartbeat) {
                    return false;
                }
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        !self.stopped()
    }

    fn run(mut self) {
        if !self.set_state(AudioState::Connecting) {
            return;
        }
        let error = match self.deliver() {
            Ok(true) => None,
            Ok(false) => return,
            Err(e) => Some(e),
        };
        self.source.close();
        self.set_state(AudioState::Ended);
        let xruns = self.source.xruns();
        self.send(SourceEvent::End { xruns, error });
    }

    /// Opens the source and delivers it, reopening it with backoff while it is lost or
    /// unavailable: Ok(true) when it ended or a stop was asked, Ok(false) when the
    /// receiver is gone (or a stop came while waiting), Err on a failure that reopening
    /// cannot mend (a bad recording, a format that cannot be converted).
    fn deliver(&mut self) -> Result<bool, SourceError> {
        let mut failures = 0u32;
        while !self.stopped() {
            let format = match self.source.open() {
                Ok(f) => f,
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => {
                    failures += 1;
                    // Warn once per loss (set_state reports a loss again only when its
                    // reason changes); details at debug.
                    tracing::debug!(attempt = failures, "{e}");
                    if !self.set_state(AudioState::Lost(e.to_string()))
                        || !self.wait(self.options.retry.delay(failures))
                    {
                        return Ok(false);
                    }
                    continue;
                }
            };
            match self.stream(format, failures) {
                Ok(done) => return Ok(done),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => {
                    self.source.close();
                    // A source that delivered audio for the longest wait before it failed
                    // is a new loss: back to the shortest wait. One that fails as soon as
                    // it opens (or soon after) is the same loss going on: the waits keep
                    // doubling, or it would be reopened, and logged, every second forever.
                    let seconds = self.delivered as f64 / f64::from(format.sample_rate.max(1));
                    failures = if seconds >= self.options.retry.max.as_secs_f64() {
                        1
                    } else {
                        failures + 1
                    };
                    if !self.set_state(AudioState::Lost(e.to_string()))
                        || !self.wait(self.options.retry.delay(failures))
                    {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Delivers an opened source until it ends (Ok(true)), the receiver is gone or a
    /// stop is asked (Ok(false) / Ok(true)), or it fails (Err: reopened when retryable).
    /// `failures`: the opens before this one that brought no lasting audio.
    fn stream(&mut self, format: StreamFormat, failures: u32) -> Result<bool, SourceError> {
        self.delivered = 0;
        let device = self.source.describe();
        // A conversion that fails mid-stream: reopened, as the device would be.
        let lost = |e: ResampleError| SourceError::Lost {
            device: device.clone(),
            reason: e.to_string(),
        };
        let mut converter =
            CaptureConverter::new(format, self.options.target_rate).map_err(|source| {
                SourceError::Format {
                    device: device.clone(),
                    source,
                }
            })?;
        tracing::info!(
            source = %device,
            rate = format.sample_rate,
            channels = format.channels,
            "audio source open"
        );
        // `running` is reported with the first audio, not here: a device that opens and
        // fails at once is the same loss going on, not a recovery to report each time.
        let stall_time = Duration::from_secs_f64(self.options.stall_seconds);
        // Before its first audio a device is given at least as long as the wait before it
        // would be reopened, which grows with each open that brought none: one slower to
        // start than `stall_seconds` (PulseAudio under load took over 1 s) would
        // otherwise be closed before its first audio and reopened for ever.
        let start_time = stall_time.max(self.options.retry.start_grace(failures));
        let mut buf = Vec::with_capacity(format.sample_rate as usize);
        let mut last_audio = Instant::now();
        let mut xruns = self.source.xruns();
        loop {
            if self.stopped() {
                return Ok(true);
            }
            buf.clear();
            let pulled = self.source.pull(&mut buf)?;
            if self.source.xruns() > xruns {
                xruns = self.source.xruns();
                tracing::debug!(source = %self.source.describe(), xruns, "capture overrun");
                if !self.send(SourceEvent::Xruns(xruns)) {
                    return Ok(false);
                }
            }
            match pulled {
                Pull::End => {
                    // The end of the recording, still inside the resampler, is the last
                    // block; without it up to a chunk and rubato's delay (0.1-0.2 s)
                    // would never reach the analysis.
                    let tail = converter.finish().map_err(lost)?;
                    if !tail.is_empty() && !self.send(SourceEvent::Audio(tail)) {
                        return Ok(false);
                    }
                    return Ok(true);
                }
                Pull::Idle => {
                    let allowed = if self.delivered == 0 {
                        start_time
                    } else {
                        stall_time
                    };
                    if last_audio.elapsed() < allowed {
                        if !self.send(SourceEvent::Heartbeat) {
                            return Ok(false);
                        }
                    } else {
                        let detail =
                            || format!("no audio for {:.0} s", last_audio.elapsed().as_secs_f64());
                        if self.source.reopen_when_stalled() {
                            // Reported stalled once (not again while the reopened device
                            // still delivers nothing: that is the loss going on), then
                            // reopened with the backoff of a loss.
                            if matches!(self.state, Some(AudioState::Running))
                                && !self.stall(AudioState::Stalled, detail)
                            {
                                return Ok(false);
                            }
                            // No measured time in the reason: it grows at each reopen, and a
                            // loss whose reason changes is reported again (set_state).
                            return Err(SourceError::Lost {
                                device,
                                reason: "no audio came: reopening".into(),
                            });
                        }
                        if !self.stall(AudioState::Stalled, detail) {
                            return Ok(false);
                        }
                    }
                }
                Pull::Audio => {
                    last_audio = Instant::now();
                    self.delivered += (buf.len() / usize::from(format.channels.max(1))) as u64;
                    let out = converter.convert(&buf).map_err(lost)?;
                    let silent = converter.silent_seconds();
                    let reported = if silent >= self.options.stall_seconds {
                        self.stall(AudioState::Silent, || {
                            format!("only digital silence for {silent:.0} s")
                        })
                    } else {
                        self.set_state(AudioState::Running)
                    };
                    if !reported {
                        return Ok(false);
                    }
                    if !out.is_empty() && !self.send(SourceEvent::Audio(out)) {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Samples per pull of the file and stdin sources: 100 ms.
fn pull_frames(rate: u32) -> usize {
    (rate as usize / 10).max(1)
}

/// A recording replayed in real time or as fast as the pipeline takes it.
#[derive(Debug)]
pub struct FileSource {
    name: String,
    replay: Replay,
    rate: u32,
    realtime: bool,
    emitted: u64,
    started: Option<Instant>,
}

#[derive(Debug)]
enum Replay {
    /// Samples made in memory (the demo night, tests, benches).
    Memory { samples: Vec<f32>, pos: usize },
    /// A file decoded a packet at a time: `pending` holds the decoded samples not yet
    /// delivered from `pos` on, so a night-long recording costs one packet of memory.
    Stream {
        stream: Box<AudioStream>,
        pending: Vec<f32>,
        pos: usize,
    },
}

impl FileSource {
    /// Opens `path` for a replay. A regular file is decoded once now without keeping its
    /// samples, so a bad or truncated recording fails before the daemon starts; the replay
    /// then decodes it again, packet by packet. A pipe (`/dev/stdin`, `<(...)`, a FIFO)
    /// can be read once: it is decoded as it is replayed.
    pub fn new(path: &Path, realtime: bool) -> Result<Self, DecodeError> {
        if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            let mut check = AudioStream::open(path)?;
            let mut scratch = Vec::new();
            while check.next_into(&mut scratch)? {
                scratch.clear();
            }
        }
        let stream = AudioStream::open(path)?;
        Ok(Self {
            name: path.display().to_string(),
            rate: stream.sample_rate(),
            replay: Replay::Stream {
                stream: Box::new(stream),
                pending: Vec::new(),
                pos: 0,
            },
            realtime,
            emitted: 0,
            started: None,
        })
    }

    /// A source replaying mono `samples` at `rate`.
    pub fn from_samples(name: String, samples: Vec<f32>, rate: u32, realtime: bool) -> Self {
        Self {
            name,
            replay: Replay::Memory { samples, pos: 0 },
            rate,
            realtime,
            emitted: 0,
            started: None,
        }
    }
}

impl AudioSource for FileSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn open(&mut self) -> Result<StreamFormat, SourceError> {
        Ok(StreamFormat {
            sample_rate: self.rate,
            channels: 1,
        })
    }

    fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
        let want = pull_frames(self.rate);
        let chunk: &[f32] = match &mut self.replay {
            Replay::Memory { samples, pos } => {
                if *pos >= samples.len() {
                    return Ok(Pull::End);
                }
                let start = *pos;
                *pos = (start + want).min(samples.len());
                &samples[start..*pos]
            }
            Replay::Stream {
                stream,
                pending,
                pos,
            } => {
                pending.drain(..*pos);
                *pos = 0;
                while pending.len() < want && stream.next_into(pending)? {}
                if pending.is_empty() {
                    return Ok(Pull::End);
                }
                *pos = want.min(pending.len());
                &pending[..*pos]
            }
        };
        if self.realtime {
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = started + Duration::from_secs_f64(self.emitted as f64 / f64::from(self.rate));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        buf.extend_from_slice(chunk);
        self.emitted += chunk.len() as u64;
        Ok(Pull::Audio)
    }
}

/// Raw PCM sample formats accepted on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PcmFormat {
    /// Signed 16-bit little-endian (`arecord -f S16_LE`).
    S16le,
    /// Signed 32-bit little-endian.
    S32le,
    /// 32-bit float little-endian.
    F32le,
}

/// A sample as the analysis takes it: finite and within full scale ([-1, 1]); NaN and
/// infinities become 0 (they would make the noise floors NaN for the rest of the run),
/// values beyond full scale are clipped.
fn full_scale(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

impl PcmFormat {
    /// As `--format` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::S16le => "s16le",
            Self::S32le => "s32le",
            Self::F32le => "f32le",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::S16le => 2,
            Self::S32le | Self::F32le => 4,
        }
    }

    /// One sample from its `self.bytes()` bytes, always finite and within [-1, 1]: a
    /// float stream's NaN, infinities and out-of-range values would otherwise poison the
    /// gate's noise floor and the models, so non-finite samples become 0 and the rest are
    /// clamped (the integer formats are in range by construction).
    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Self::S16le => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0,
            Self::S32le => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
            Self::F32le => full_scale(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        }
    }
}

/// Raw interleaved PCM from a reader (stdin: `arecord ... | babycryd run --input -`).
///
/// A reader thread does the blocking reads and hands chunks over a bounded channel, so
/// [`AudioSource::pull`] waits at most 100 ms: a pipe that stays open but stops sending
/// is then reported as stalled like any other silent source, instead of blocking the
/// capture thread inside `read`.
pub struct RawPcmSource<R> {
    name: String,
    reader: Option<R>,
    format: PcmFormat,
    stream: StreamFormat,
    /// What the reader thread read, or why it stopped reading.
    chunks: Option<std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>>,
    /// Bytes received but not yet decoded (a partial frame waits for the next chunk).
    pending: Vec<u8>,
    /// The stream's first bytes, kept until they tell whether a file was piped in (see
    /// [`piped_file`]); `None` once they said it is not.
    head: Option<Vec<u8>>,
}

/// What a raw stream's first bytes say about it.
#[derive(Debug, PartialEq)]
enum PipedFile {
    /// A file of this kind was piped in.
    Named(&'static str),
    NotAFile,
    TooFewBytes,
}

/// The most first bytes [`piped_file`] looks at: three MPEG audio frame headers and the
/// frames between (the longest, Layer II at 384 kbit/s and 32 kHz, is 1730 bytes).
const PIPED_FILE_BYTES: usize = 3 * 1730 + 4;

/// Whether a raw stream's first bytes are an audio file's: a file piped in
/// (`cat night.wav |`, `arecord` without `-t raw`, `lame ... -`) is not raw PCM, and
/// decoded as such its header is a click and its samples noise at the wrong width, which
/// never opens the gate: a monitor that hears nothing, and says nothing.
fn piped_file(first: &[u8]) -> PipedFile {
    let at = |i: usize, magic: &[u8]| first.get(i..i + magic.len()) == Some(magic);
    if first.len() < 12 {
        return PipedFile::TooFewBytes;
    }
    if (at(0, b"RIFF") || at(0, b"RIFX") || at(0, b"RF64")) && at(8, b"WAVE") {
        return PipedFile::Named("WAV");
    }
    if at(0, b"fLaC") {
        return PipedFile::Named("FLAC");
    }
    if at(0, b"OggS") {
        return PipedFile::Named("Ogg");
    }
    if at(0, b"ID3") {
        return PipedFile::Named("MP3");
    }
    // An MP3 without a tag starts with a frame header, whose sync bits are also a valid
    // sample: two more headers of the same stream, each where the frame before ends, say
    // MPEG audio. (Random samples would match about once in 10^13 streams. Layer I is not
    // taken: no encoder in use writes it, and its header is what a stereo stream whose
    // left channel sits at -1 looks like, frame after frame, 4 bytes apart.)
    let mut at = 0;
    let mut stream = None;
    for _ in 0..3 {
        let Some(header) = first.get(at..at + 4) else {
            return PipedFile::TooFewBytes;
        };
        match mpeg_frame(header) {
            Some((length, s)) if stream.is_none_or(|first| first == s) => {
                stream = Some(s);
                at += length;
            }
            _ => return PipedFile::NotAFile,
        }
    }
    PipedFile::Named("MP3")
}

/// The MPEG audio frame (Layer II or III: MP2, MP3) whose 4-byte header starts `h`, if one
/// does: its length in bytes, and the bits that name its stream (version, layer, sample
/// rate).
fn mpeg_frame(h: &[u8]) -> Option<(usize, u16)> {
    // kbit/s by bit-rate index 1..=14: MPEG 1 Layer II, MPEG 1 Layer III, and MPEG 2 and
    // 2.5 (both layers).
    const MPEG1_LAYER2: [u16; 14] = [
        32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ];
    const MPEG1_LAYER3: [u16; 14] = [
        32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const MPEG2: [u16; 14] = [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let h = h.get(..4)?;
    if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 0: MPEG 2.5, 1: reserved, 2: MPEG 2, 3: MPEG 1
    let layer = 4 - ((h[1] >> 1) & 3); // 1, 2, 3; 4 is reserved
    let bitrate_index = usize::from(h[2] >> 4);
    let rate_index = usize::from((h[2] >> 2) & 3);
    // MPEG 2.5 has Layer III only.
    if version == 1
        || !(2..=3).contains(&layer)
        || (version == 0 && layer != 3)
        || !(1..15).contains(&bitrate_index)
        || rate_index == 3
    {
        return None;
    }
    let (table, base_rate) = match (version, layer) {
        (3, 2) => (&MPEG1_LAYER2, 44_100),
        (3, _) => (&MPEG1_LAYER3, 44_100),
        (2, _) => (&MPEG2, 22_050),
        _ => (&MPEG2, 11_025),
    };
    let rate = [
        base_rate,
        base_rate * 48_000 / 44_100,
        base_rate * 32_000 / 44_100,
    ][rate_index];
    let bits_per_second = usize::from(table[bitrate_index - 1]) * 1000;
    let padding = usize::from((h[2] >> 1) & 1);
    // Samples per frame / 8: 1152 / 8, but 576 / 8 for Layer III below MPEG 1.
    let bytes_per_bit_rate = if layer == 3 && version != 3 { 72 } else { 144 };
    let length = bytes_per_bit_rate * bits_per_second / rate + padding;
    Some((length, u16::from(h[1] & 0x1E) << 8 | u16::from(h[2] & 0x0C)))
}

/// How long [`RawPcmSource::pull`] waits for the reader thread.
const RAW_PCM_POLL: Duration = Duration::from_millis(100);

impl<R: Read + Send + 'static> RawPcmSource<R> {
    pub fn new(name: String, reader: R, format: PcmFormat, stream: StreamFormat) -> Self {
        Self {
            name,
            reader: Some(reader),
            format,
            stream,
            chunks: None,
            pending: Vec::new(),
            head: Some(Vec::new()),
        }
    }

    fn frame_bytes(&self) -> usize {
        self.format.bytes() * usize::from(self.stream.channels.max(1))
    }

    fn spawn_reader(&mut self, mut reader: R) -> Result<(), SourceError> {
        let chunk = self.frame_bytes() * pull_frames(self.stream.sample_rate);
        // A few chunks of slack: the reader never runs far ahead of the pipeline.
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        std::thread::Builder::new()
            .name("babycryd-pcm-reader".into())
            .spawn(move || {
                // One buffer for every read; each chunk sent holds only the bytes read.
                let mut bytes = vec![0; chunk];
                loop {
                    match reader.read(&mut bytes) {
                        Ok(0) => break,
                        Ok(n) => {
                            if tx.send(Ok(bytes[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // A non-blocking stdin (inherited that way) has nothing yet.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
            })
            .map_err(|e| SourceError::Unavailable {
                device: self.name.clone(),
                reason: format!("cannot start the reader thread: {e}"),
            })?;
        self.chunks = Some(rx);
        Ok(())
    }
}

impl<R: Read + Send + 'static> AudioSource for RawPcmSource<R> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn open(&mut self) -> Result<StreamFormat, SourceError> {
        if let Some(reader) = self.reader.take() {
            self.spawn_reader(reader)?;
        }
        Ok(self.stream)
    }

    fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
        let Some(chunks) = &self.chunks else {
            return Ok(Pull::End);
        };
        match chunks.recv_timeout(RAW_PCM_POLL) {
            Ok(Ok(bytes)) => {
                self.pending.extend_from_slice(&bytes);
                // The first bytes are decoded as they come all the same: a header ends
                // the run a few samples later.
                if let Some(head) = &mut self.head {
                    let more = PIPED_FILE_BYTES - head.len();
                    head.extend_from_slice(&bytes[..more.min(bytes.len())]);
                    match piped_file(head) {
                        PipedFile::Named(kind) => {
                            return Err(SourceError::Read {
                                device: self.name.clone(),
                                reason: format!(
                                    "the stream is in {kind} format, not raw PCM: give \
                                     the file itself with --input FILE, or record raw \
                                     samples (arecord -t raw)"
                                ),
                            });
                        }
                        PipedFile::TooFewBytes if head.len() < PIPED_FILE_BYTES => {}
                        _ => self.head = None,
                    }
                }
            }
            Ok(Err(e)) => {
                return Err(SourceError::Read {
                    device: self.name.clone(),
                    reason: e.to_string(),
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Ok(Pull::Idle),
            // The reader reached the end of the stream; a trailing partial frame is not
            // audio, and says the stream was cut off or is not in the format given.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if !self.pending.is_empty() {
                    tracing::warn!(
                        source = %self.name,
                        bytes = self.pending.len(),
                        "the stream ended inside a frame of {} bytes; the partial frame is dropped (cut off, or not {} with {} channels?)",
                        self.frame_bytes(),
                        self.format.name(),
                        self.stream.channels
                    );
                    self.pending.clear();
                }
                return Ok(Pull::End);
            }
        }
        let frame = self.frame_bytes();
        let whole = self.pending.len() / frame * frame;
        buf.extend(
            self.pending[..whole]
                .chunks_exact(self.format.bytes())
                .map(|b| self.format.decode(b)),
        );
        self.pending.drain(..whole);
        Ok(if whole > 0 { Pull::Audio } else { Pull::Idle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a warning about a partial frame calls the format is what `--format` takes.
    #[test]
    fn pcm_format_names_are_the_flag_values() {
        use clap::ValueEnum;
        for f in PcmFormat::value_variants() {
            assert_eq!(f.to_possible_value().unwrap().get_name(), f.name());
        }
    }

    /// "Log once at warn" (a lost device): a hung live stream is reported stalled, then
    /// reopened as lost while it lasts, one warning; trouble after audio came back is
    /// news again.
    #[test]
    fn trouble_is_warned_once_while_it_lasts() {
        let lost = AudioState::Lost("no audio for 30 s: reopening".into());
        let stalled = AudioState::Stalled("no audio for 30 s".into());
        let running = AudioState::Running;
        assert!(stalled.warns_after(Some(&running)));
        assert!(!lost.warns_after(Some(&stalled)));
        assert!(!stalled.warns_after(Some(&lost)));
        assert!(lost.warns_after(Some(&AudioState::Connecting)));
        assert!(lost.warns_after(None));
        assert!(lost.warns_after(Some(&running)));
        assert!(!running.warns_after(Some(&lost)));
        assert!(!AudioState::Ended.warns_after(Some(&running)));
    }

    #[test]
    fn a_file_replay_streams_the_decoded_samples_holding_one_packet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten-minutes.wav");
        let rate = 16_000;
        let samples: Vec<f32> = (0..rate as usize * 600)
            .map(|i| 0.3 * (i as f32 * 0.05).sin() + 0.01 * ((i * 7919) % 101) as f32 / 101.0)
            .collect();
        crate::decode::write_wav_i16(&path, &samples, rate).unwrap();
        let whole = crate::decode::decode_file(&path).unwrap().samples;

        let mut source = FileSource::new(&path, false).unwrap();
        assert_eq!(
            source.open().unwrap(),
            StreamFormat {
                sample_rate: rate,
                channels: 1
            }
        );
        let (mut replayed, mut buf, mut held) = (Vec::new(), Vec::new(), 0);
        while let Pull::Audio = source.pull(&mut buf).unwrap() {
            replayed.extend_from_slice(&buf);
            buf.clear();
            if let Replay::Stream { pending, .. } = &source.replay {
                held = held.max(pending.capacity());
            }
        }
        assert_eq!(
            replayed, whole,
            "the replay is the decoded file, sample for sample"
        );
        // 9.6 M samples decoded; the replay never held more than a pull and a packet.
        assert!(held > 0 && held <= 65_536, "held {held} samples at once");
        assert!(matches!(source.pull(&mut buf), Ok(Pull::End)));
    }

    #[test]
    fn a_truncated_file_fails_before_its_replay_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.wav");
        crate::decode::write_wav_i16(&path, &vec![0.1; 80_000], 8000).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = FileSource::new(&path, false).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn backoff_doubles_and_caps_at_the_maximum() {
        let p = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        let waits: Vec<u64> = (1..=7).map(|f| p.delay(f).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(p.delay(1000).as_secs(), 30);
    }

    #[test]
    fn the_capture_rate_is_zero_or_a_real_rate() {
        let ok = |rate| {
            AudioConfig {
                sample_rate: rate,
                ..AudioConfig::default()
            }
            .validate()
        };
        assert!(ok(0).is_ok());
        assert!(ok(16_000).is_ok());
        let err = ok(100).unwrap_err();
        assert!(err.contains("sample_rate = 100"), "{err}");
        assert!(ok(384_000).is_err());
    }

    /// A converter of 8 kHz audio with `channels` channels to 8 kHz mono.
    fn converter_8k(channels: u16) -> CaptureConverter {
        let format = StreamFormat {
            sample_rate: 8000,
            channels,
        };
        CaptureConverter::new(format, 8000).unwrap()
    }

    #[test]
    fn non_finite_samples_are_zeroed_before_the_analysis() {
        let mut converter = converter_8k(2);
        let block = [
            f32::INFINITY,
            0.5,
            f32::NAN,
            0.5,
            3.0,
            3.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -0.25,
            -0.25,
        ];
        let out = converter.convert(&block).unwrap();
        // (inf + 0.5) / 2, (NaN + 0.5) / 2, 3 (clipped), (-inf + inf) / 2, -0.25.
        assert_eq!(&out[..], [0.0, 0.0, 1.0, 0.0, -0.25]);
    }

    fn downmixed(interleaved: &[f32], channels: u16, block_frames: usize) -> Vec<f32> {
        let mut downmix = Downmix::new(channels, 8000);
        let mut out = Vec::new();
        for block in interleaved.chunks(block_frames * usize::from(channels)) {
            downmix.push(block, &mut out);
        }
        out
    }

    #[test]
    fn downmix_averages_channels() {
        assert_eq!(downmixed(&[1.0, 0.0, 0.5, 0.5], 2, 2), vec![0.5, 0.5]);
    }

    /// A channel in antiphase: the mix would cancel the sound (a cry 40 dB down, to the
    /// room's noise), so the loudest channel is taken alone, in blocks of any size (a
    /// device read can end a frame short: a block of one frame); two independent noises,
    /// or six, keep the mean, in blocks of one frame too.
    #[test]
    fn channels_that_cancel_are_not_averaged() {
        let cry = crate::synth::cry(8000, 1.0, 0.5);
        let mut noise = crate::synth::Noise::new(3);
        let stereo: Vec<f32> = cry
            .iter()
            .flat_map(|&s| [s + 0.001 * noise.sample(), -s + 0.001 * noise.sample()])
            .collect();
        let first: Vec<f32> = stereo.iter().step_by(2).copied().collect();
        // (Compared from 0.1 s on: a first frame alone, where the cry has not started,
        // is two independent noises.)
        for block_frames in [1, 3, 512, 8000] {
            let out = downmixed(&stereo, 2, block_frames);
            assert!(out[800..] == first[800..], "{block_frames}");
        }
        // A NaN and an infinity (clamped after the downmix) in the second channel, and a
        // sample far beyond full scale: the choice stays with the first channel.
        let mut damaged = stereo.clone();
        damaged[1001] = f32::NAN;
        damaged[3001] = f32::INFINITY;
        damaged[5001] = 1e30;
        assert!(downmixed(&damaged, 2, 512)[800..] == first[800..]);
        // Three channels: the first dead, the other two in antiphase.
        let dead_first: Vec<f32> = cry
            .iter()
            .flat_map(|&s| [0.0, 0.8 * s, -s + 0.001 * noise.sample()])
            .collect();
        let third: Vec<f32> = dead_first.iter().skip(2).step_by(3).copied().collect();
        assert!(downmixed(&dead_first, 3, 256) == third);
        for c in [2u16, 6] {
            let independent: Vec<f32> =
                (0..8000 * usize::from(c)).map(|_| noise.sample()).collect();
            let c = usize::from(c);
            let means: Vec<f32> = independent
                .chunks(c)
                .map(|f| f.iter().sum::<f32>() / c as f32)
                .collect();
            assert!(downmixed(&independent, c as u16, 8000) == means, "{c}");
            // One frame at a time: the first frames say little, and from then on the
            // last half second decides.
            assert!(
                downmixed(&independent, c as u16, 1)[800..] == means[800..],
                "{c}"
            );
        }
    }

    #[test]
    fn a_block_that_ends_inside_a_frame_keeps_the_partial_frame_for_the_next() {
        // 4096 samples of 6 channels: 682 frames and 4 samples of the next, each time.
        let mut converter = converter_8k(6);
        let mut out = Vec::new();
        for _ in 0..3 {
            out.extend_from_slice(&converter.convert(&[0.25; 4096]).unwrap());
        }
        assert_eq!(out.len(), 2048);
        assert!(out.iter().all(|&s| s == 0.25), "{out:?}");

        // Frame k holds k/5000 + c/10 on channel c (mean k/5000 + 0.25), cut anywhere.
        let mut converter = converter_8k(6);
        let frames = 3000;
        let interleaved: Vec<f32> = (0..frames * 6)
            .map(|i| (i / 6) as f32 / 5000.0 + (i % 6) as f32 / 10.0)
            .collect();
        let (mut out, mut rest) = (Vec::new(), &interleaved[..]);
        for size in [4096, 7, 1, 5, 11, 4095].iter().cycle() {
            let (block, after) = rest.split_at((*size).min(rest.len()));
            out.extend_from_slice(&converter.convert(block).unwrap());
            rest = after;
            if rest.is_empty() {
                break;
            }
        }
        assert_eq!(out.len(), frames);
        for (k, &s) in out.iter().enumerate() {
            let want = k as f32 / 5000.0 + 0.25;
            assert!((s - want).abs() < 1e-4, "frame {k}: {s}, want {want}");
        }
    }

    /// An 8 kHz mono test microphone: its n-th open delivers `script[n]` samples (the
    /// last entry repeats) and then fails on the next pull. It records when each open
    /// and each failure happened.
    struct Flapping {
        script: Vec<usize>,
        left: usize,
        opens: Arc<Mutex<Vec<Instant>>>,
        failures: Arc<Mutex<Vec<Instant>>>,
    }

    impl AudioSource for Flapping {
        fn describe(&self) -> String {
            "flapping test microphone".into()
        }

        fn open(&mut self) -> Result<StreamFormat, SourceError> {
            let mut opens = self.opens.lock().unwrap();
            self.left = self.script[opens.len().min(self.script.len() - 1)];
            opens.push(Instant::now());
            Ok(StreamFormat {
                sample_rate: 8000,
                channels: 1,
            })
        }

        fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
            if self.left == 0 {
                self.failures.lock().unwrap().push(Instant::now());
                return Err(SourceError::Lost {
                    device: self.describe(),
                    reason: "gone again".into(),
                });
            }
            let n = self.left.min(800);
            buf.extend(std::iter::repeat_n(0.1, n));
            self.left -= n;
            Ok(Pull::Audio)
        }
    }

    /// Runs `script` through the capture thread until `opens` opens (or 10 s) and
    /// returns the waits between each failure and the next open.
    fn waits_between_failure_and_reopen(
        script: Vec<usize>,
        retry: RetryPolicy,
        opens: usize,
        within: Duration,
    ) -> Vec<Duration> {
        let (open_times, failure_times) = Default::default();
        let source = Flapping {
            script,
            left: 0,
            opens: Arc::clone(&open_times),
            failures: Arc::clone(&failure_times),
        };
        let options = CaptureOptions {
            target_rate: 8000,
            stall_seconds: 10.0,
            retry,
        };
        // Room for every event of a run that reopens every millisecond.
        let (tx, _rx) = tokio::sync::mpsc::channel(100_000);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_capture(Box::new(source), options, tx, stop.clone()).unwrap();
        let started = Instant::now();
        while open_times.lock().unwrap().len() < opens && started.elapsed() < within {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        let (open_times, failure_times) =
            (open_times.lock().unwrap(), failure_times.lock().unwrap());
        failure_times
            .iter()
            .zip(open_times.iter().skip(1))
            .map(|(failed, opened)| *opened - *failed)
            .collect()
    }

    /// A device that is missing for several opens, for one reason and then another,
    /// then comes: each reason is reported once, the newest last (it is what STATUS=
    /// and the diagnostics show), then the audio.
    #[test]
    fn a_loss_whose_reason_changes_is_reported_again() {
        struct Missing(Vec<&'static str>);
        impl AudioSource for Missing {
            fn describe(&self) -> String {
                "missing test microphone".into()
            }
            fn open(&mut self) -> Result<StreamFormat, SourceError> {
                if self.0.is_empty() {
                    return Ok(StreamFormat {
                        sample_rate: 8000,
                        channels: 1,
                    });
                }
                Err(SourceError::Unavailable {
                    device: self.describe(),
                    reason: self.0.remove(0).into(),
                })
            }
            fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
                buf.extend([0.1; 800]);
                Ok(Pull::Audio)
            }
        }
        let source = Missing(vec!["unplugged", "unplugged", "busy", "busy", "busy"]);
        let options = CaptureOptions {
            target_rate: 8000,
            stall_seconds: 10.0,
            retry: RetryPolicy {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_capture(Box::new(source), options, tx, stop.clone()).unwrap();
        let mut states = Vec::new();
        let started = Instant::now();
        while !states.contains(&AudioState::Running) && started.elapsed() < Duration::from_secs(10)
        {
            match rx.try_recv() {
                Ok(SourceEvent::State(state)) => states.push(state),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        thread.join().unwrap();
        let lost = |reason: &str| {
            AudioState::Lost(format!("missing test microphone: unavailable: {reason}"))
        };
        assert_eq!(
            states,
            [
                AudioState::Connecting,
                lost("unplugged"),
                lost("busy"),
                AudioState::Running
            ]
        );
    }

    #[test]
    fn a_source_that_fails_as_soon_as_it_opens_is_reopened_with_doubling_waits() {
        let retry = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(160),
        };
        // For 1 s: opens at 0, 10, 30, 70, 150, 310, 470, 630, 790 and 950 ms at the
        // earliest; one every 10 ms would be about 100.
        let waits = waits_between_failure_and_reopen(vec![0], retry, 1000, Duration::from_secs(1));
        assert!(
            (3..=10).contains(&waits.len()),
            "{} reopens in 1 s: {waits:?}",
            waits.len()
        );
        for (i, wait) in waits.iter().enumerate() {
            let due = retry.delay(i as u32 + 1);
            assert!(*wait >= due, "wait {i}: {wait:?}, due {due:?}; {waits:?}");
        }
    }

    #[test]
    fn a_source_that_delivered_for_the_longest_wait_starts_the_backoff_again() {
        let retry = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        // Four opens that fail at once (waits 10, 20, 40 and 80 ms), one that delivers
        // 0.2 s of audio (longer than the longest wait) before it fails (10 ms again),
        // then failing at once again (20 ms).
        let waits = waits_between_failure_and_reopen(
            vec![0, 0, 0, 0, 1600, 0],
            retry,
            7,
            Duration::from_secs(10),
        );
        assert!(waits.len() >= 6, "{waits:?}");
        assert!(waits[3] >= Duration::from_millis(80), "{waits:?}");
        assert!(waits[4] < waits[3], "{waits:?}");
        assert!(waits[5] >= Duration::from_millis(20), "{waits:?}");
    }

    /// An 8 kHz mono test microphone that, after each open, delivers nothing for
    /// `start_up` (a device starting under load) and then audio for good.
    struct SlowToStart {
        start_up: Duration,
        opened: Option<Instant>,
        opens: Arc<Mutex<Vec<Instant>>>,
    }

    impl AudioSource for SlowToStart {
        fn describe(&self) -> String {
            "slow test microphone".into()
        }

        fn open(&mut self) -> Result<StreamFormat, SourceError> {
            let now = Instant::now();
            self.opened = Some(now);
            self.opens.lock().unwrap().push(now);
            Ok(StreamFormat {
                sample_rate: 8000,
                channels: 1,
            })
        }

        fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
            std::thread::sleep(Duration::from_millis(10));
            if self.opened.is_some_and(|t| t.elapsed() < self.start_up) {
                return Ok(Pull::Idle);
            }
            buf.extend(std::iter::repeat_n(0.1, 80));
            Ok(Pull::Audio)
        }

        fn reopen_when_stalled(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_device_slower_to_start_than_the_stall_time_is_given_longer_at_each_open() {
        slower_to_start_than_the_stall_time_comes_up(Duration::from_millis(800));
        // Also with the retry delay capped below the start-up time: before, the wait for
        // the first audio stopped growing at that cap and the device never came up.
        slower_to_start_than_the_stall_time_comes_up(Duration::from_millis(100));
    }

    fn slower_to_start_than_the_stall_time_comes_up(retry_max: Duration) {
        let opens = Arc::new(Mutex::new(Vec::new()));
        let source = SlowToStart {
            start_up: Duration::from_millis(300),
            opened: None,
            opens: Arc::clone(&opens),
        };
        let options = CaptureOptions {
            target_rate: 8000,
            stall_seconds: 0.05,
            retry: RetryPolicy {
                initial: Duration::from_millis(50),
                max: retry_max,
            },
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_capture(Box::new(source), options, tx, stop.clone()).unwrap();
        let started = Instant::now();
        let (mut running, mut audio) = (None, 0usize);
        while started.elapsed() < Duration::from_secs(5) && audio < 8000 {
            match rx.blocking_recv() {
                Some(SourceEvent::State(AudioState::Running)) => {
                    running.get_or_insert(started.elapsed());
                }
                Some(SourceEvent::Audio(samples)) => audio += samples.len(),
                Some(_) => {}
                None => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        thread.join().unwrap();
        let opens = opens.lock().unwrap().len();
        // Waits for the first audio of 50, 50, 100, 200 and 400 ms: the fifth open lasts
        // its 300 ms start-up, about 1.2 s after the first. With 50 ms at every open it
        // was reopened every 100-150 ms and never delivered.
        let running = running.unwrap_or_else(|| panic!("never running; {opens} opens"));
        assert!(audio >= 8000, "{audio} samples in 5 s; {opens} opens");
        assert!((2..=6).contains(&opens), "{opens} opens");
        assert!(
            running < Duration::from_secs(3),
            "running after {running:?}"
        );
    }

    #[test]
    fn raw_pcm_keeps_partial_frames_for_the_next_read() {
        // Stereo s16le, delivered one byte at a time.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                if self.1 >= self.0.len() {
                    return Ok(0);
                }
                b[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let bytes: Vec<u8> = [16384i16, -16384, 32767, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let stream = StreamFormat {
            sample_rate: 8000,
            channels: 2,
        };
        let mut src = RawPcmSource::new("t".into(), Trickle(bytes, 0), PcmFormat::S16le, stream);
        assert_eq!(src.open().unwrap(), stream);
        let mut buf = Vec::new();
        while src.pull(&mut buf).unwrap() != Pull::End {}
        assert_eq!(buf, vec![0.5, -0.5, 32767.0 / 32768.0, 0.0]);
    }

    /// A WAV (or FLAC, Ogg, MP3) file piped in is refused by name, not decoded as raw
    /// samples: before, its header was a click and its 24-bit samples read as 16-bit
    /// noise that never opened the gate, with no word of it. Raw PCM that happens to
    /// start with one of the magic words elsewhere is audio.
    #[test]
    fn a_file_piped_in_as_raw_pcm_is_refused_by_name() {
        let stream = StreamFormat {
            sample_rate: 8000,
            channels: 1,
        };
        let pull_all = |bytes: Vec<u8>| -> Result<Vec<f32>, SourceError> {
            let reader = std::io::Cursor::new(bytes);
            let mut src = RawPcmSource::new("t".into(), reader, PcmFormat::S16le, stream);
            src.open()?;
            let mut buf = Vec::new();
            while src.pull(&mut buf)? != Pull::End {}
            Ok(buf)
        };
        let mut wav = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
        wav.extend([0u8; 64]);
        let e = pull_all(wav).unwrap_err().to_string();
        assert!(e.contains("the stream is in WAV format"), "{e}");
        let e = pull_all(b"fLaC\0\0\0\x22\0\0\0\0\0\0".to_vec()).unwrap_err();
        assert!(e.to_string().contains("FLAC"), "{e}");
        let mut raw = b"\0\0RIFF\0\0\0\0WAVE".to_vec();
        raw.extend([0u8; 2]);
        assert_eq!(pull_all(raw).unwrap().len(), 8);

        // An MP3 without a tag: lame's frames (MPEG 2.5 Layer III, 8 kbit/s at 8 kHz: 72
        // bytes each), one header per frame.
        let mp3 = include_bytes!("../tests/fuzz-corpus/decode/tone.mp3");
        assert_eq!(mpeg_frame(mp3), Some((72, 0x0208)));
        let e = pull_all(mp3.to_vec()).unwrap_err().to_string();
        assert!(e.contains("the stream is in MP3 format"), "{e}");
        // Three frames whose headers are given, each `length` bytes: the bytes of a
        // stream that starts with them.
        let frames = |headers: [[u8; 4]; 3], length: usize| {
            let mut bytes = vec![0u8; 3 * length + 4];
            for (i, h) in headers.iter().enumerate() {
                bytes[i * length..i * length + 4].copy_from_slice(h);
            }
            bytes
        };
        // MPEG 1 Layer III at 128 kbit/s and 44.1 kHz, padded: 418 bytes (the third frame
        // unpadded, 417); Layer II at 384 kbit/s and 32 kHz, the longest frame: 1729.
        let (padded, unpadded) = ([0xFF, 0xFB, 0x92, 0x64], [0xFF, 0xFB, 0x90, 0x64]);
        assert_eq!(mpeg_frame(&padded), Some((418, 0x1A00)));
        assert_eq!(mpeg_frame(&unpadded), Some((417, 0x1A00)));
        assert!(pull_all(frames([padded, padded, unpadded], 418)).is_err());
        let longest = [0xFF, 0xFD, 0xEA, 0x00];
        assert_eq!(mpeg_frame(&longest), Some((1729, 0x1C08)));
        assert!(pull_all(frames([longest; 3], 1729)).is_err());
        // Two headers and no third; a third of another stream (another sample rate); a
        // Layer I header (which a stereo stream whose left channel sits at -1 repeats
        // every 4 bytes): raw PCM.
        let raw = pull_all(frames([padded, padded, [0x12, 0x34, 0x56, 0x78]], 418));
        assert_eq!(raw.unwrap().len(), 3 * 418 / 2 + 2);
        let raw = pull_all(frames([padded, padded, [0xFF, 0xFB, 0x94, 0x64]], 418));
        assert_eq!(raw.unwrap().len(), 3 * 418 / 2 + 2);
        let left_at_minus_one: Vec<u8> = [0xFF, 0xFF, 0x50, 0x10].repeat(4000);
        assert_eq!(mpeg_frame(&left_at_minus_one), None);
        assert_eq!(pull_all(left_at_minus_one).unwrap().len(), 8000);
    }

    /// A read error on stdin is a failure (the daemon exits non-zero), not the end of
    /// the input; a non-blocking stdin with nothing yet is waited for.
    #[test]
    fn raw_pcm_read_errors_fail_and_a_non_blocking_reader_is_waited_for() {
        struct Flaky(Vec<std::io::Result<Vec<u8>>>);
        impl Read for Flaky {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let bytes = self.0.remove(0)?;
                b[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
        }
        let stream = StreamFormat {
            sample_rate: 8000,
            channels: 1,
        };
        let pull_all = |reads| {
            let mut src = RawPcmSource::new("t".into(), Flaky(reads), PcmFormat::S16le, stream);
            src.open().unwrap();
            let mut buf = Vec::new();
            loop {
                match src.pull(&mut buf) {
                    Ok(Pull::End) => return (buf, None),
                    Ok(_) => {}
                    Err(e) => return (buf, Some(e)),
                }
            }
        };
        let half = 16384i16.to_le_bytes().to_vec();
        let would_block = || Err(std::io::ErrorKind::WouldBlock.into());
        let (buf, error) = pull_all(vec![would_block(), Ok(half.clone()), would_block()]);
        assert_eq!((buf, error.is_none()), (vec![0.5], true));
        let eio = std::io::Error::other("input/output error");
        let (buf, error) = pull_all(vec![Ok(half), Err(eio)]);
        assert_eq!(buf, vec![0.5]);
        let error = error.expect("a read error is not the end of the input");
        assert!(!error.retryable(), "{error}");
        assert_eq!(error.to_string(), "t: read failed: input/output error");
    }

    #[test]
    fn float_pcm_is_sanitised_to_finite_samples_within_one() {
        let cases = [
            (f32::NAN, 0.0),
            (f32::INFINITY, 0.0),
            (f32::NEG_INFINITY, 0.0),
            (1e30, 1.0),
            (-3.5, -1.0),
            (f32::MIN_POSITIVE, f32::MIN_POSITIVE),
            (0.25, 0.25),
            (-1.0, -1.0),
        ];
        for (raw, want) in cases {
            let got = PcmFormat::F32le.decode(&raw.to_le_bytes());
            assert_eq!(got, want, "{raw}");
        }
        // Integer extremes stay within [-1, 1).
        assert_eq!(PcmFormat::S16le.decode(&i16::MIN.to_le_bytes()), -1.0);
        assert_eq!(PcmFormat::S32le.decode(&i32::MIN.to_le_bytes()), -1.0);
        assert!(PcmFormat::S32le.decode(&i32::MAX.to_le_bytes()) <= 1.0);
    }

    #[test]
    fn raw_pcm_reports_idle_while_the_writer_keeps_the_pipe_open_and_quiet() {
        // A pipe whose writer is alive but silent: `read` blocks until it is dropped.
        let (reader, writer) = std::io::pipe().unwrap();
        let stream = StreamFormat {
            sample_rate: 8000,
            channels: 1,
        };
        let mut src = RawPcmSource::new("t".into(), reader, PcmFormat::S16le, stream);
        src.open().unwrap();
        let mut buf = Vec::new();
        let started = Instant::now();
        assert_eq!(src.pull(&mut buf).unwrap(), Pull::Idle);
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(writer);
        let mut end = Pull::Idle;
        for _ in 0..50 {
            end = src.pull(&mut buf).unwrap();
            if end != Pull::Idle {
                break;
            }
        }
        assert_eq!(end, Pull::End);
        assert!(buf.is_empty());
    }
}
