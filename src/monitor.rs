//! The analysis stage of the live daemon: 8 kHz audio in, [`Update`]s out.
//!
//! It owns what happens to the stream after the source: cutting it into gate frames,
//! the [`EnergyGate`], running the cry detector every `[detector] hop_seconds` only
//! while the gate is open (a window begun then is finished after it closes), k-of-n
//! confirmation (`decision::confirmation_score`), the
//! [`CryEpisode`] (start, reason windows, end after `[episode] quiet_seconds`, cooldown),
//! the reason decision per window and per episode (`decision::reason_decision`), and
//! the counters of the run ([`RunSummary`]). It is synchronous and deterministic: the
//! same samples give the same events, whatever the chunking, so it is tested directly.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::config::Config;
use crate::decision::{confirmation_score, reason_decision, DetectorConfig, EpisodeConfig};
use crate::error::ModelError;
use crate::events::{Event, EventKind, ModelVersion, RunSummary, Update, WindowResult};
use crate::gate::{EnergyGate, GateConfig, GateTransition, FRAME_SAMPLES};
use crate::model::{Model, Prediction};

/// Audio kept behind the newest sample at least, seconds: a reason window plus the
/// confirmation delay and pre-roll of the default settings, with room to spare. Settings
/// that look further back keep more ([`CryMonitor::history_samples`]).
const HISTORY_SECONDS: f64 = 40.0;

/// How long after the end of a detector window that said cry the room's noise floor is
/// held (see [`EnergyGate::hold_floor`]), seconds: across the windows of one cry that
/// miss it (in an episode or held back by a cooldown), not across the crying's end, so
/// that a room that stays louder after a cry still has its floor rise to it.
const CRYING_HOLDS_THE_FLOOR_SECONDS: f64 = 5.0;

/// The settings the monitor uses, all replaceable at run time (SIGHUP).
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    pub gate: GateConfig,
    pub detector: DetectorConfig,
    pub episode: EpisodeConfig,
    pub thresholds: BTreeMap<String, f32>,
}

impl MonitorSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            gate: config.gate.clone(),
            detector: config.detector.clone(),
            episode: config.episode.clone(),
            thresholds: config.thresholds.clone(),
        }
    }
}

/// Why the monitor cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("the detector runs at {detector} Hz but the reason model at {reason} Hz; both must use one rate")]
    RateMismatch { detector: u32, reason: u32 },
    #[error("the detector {0} has no positive label")]
    NoPositiveLabel(String),
}

/// One cry episode while it lasts.
#[derive(Debug, Clone, PartialEq)]
pub struct CryEpisode {
    pub number: u64,
    /// Stream sample of the first cry window.
    pub start_sample: u64,
    /// Stream sample where the last window that said cry ends.
    pub last_cry_end: u64,
    pub windows: Vec<WindowResult>,
    predictions: Vec<Prediction>,
    /// (window start, cry probability) of every detector window in the episode.
    detector: Vec<(u64, f32)>,
    next_reason_start: u64,
    /// Stream sample where the latest classified reason window ends.
    classified_until: u64,
}

/// The analysis stage.
#[derive(Debug)]
pub struct CryMonitor {
    rate: u32,
    settings: MonitorSettings,
    gate: EnergyGate,
    detector: Option<Model>,
    positive: usize,
    reason: Model,
    models: Vec<ModelVersion>,
    /// Recent audio; `history[0]` is stream sample `history_start`.
    history: Vec<f32>,
    history_start: u64,
    /// Samples received (the stream position).
    pos: u64,
    /// Samples received but not yet framed.
    framed: u64,
    /// Start of the next detector window; Some while the detector runs.
    detector_next: Option<u64>,
    /// Where the gate last closed while windows begun before it are still to run.
    detector_until: Option<u64>,
    /// The last `confirm_n` detector windows: (start, cry probability).
    recent: VecDeque<(u64, f32)>,
    gate_open_from: Option<u64>,
    last_gate_close: u64,
    /// End of the last detector window that said cry (an episode's, or one a cooldown
    /// held back), stream sample.
    last_crying: u64,
    episode: Option<CryEpisode>,
    /// Where the last cooldown began (an episode's end); its length is read from the
    /// settings each time, so a reload that shortens it applies to one running.
    cooldown_from: Option<u64>,
    /// The cooldown (its `cooldown_from`) whose suppressed crying has been logged at info.
    cooldown_logged: Option<u64>,
    summary: RunSummary,
    openings: VecDeque<u64>,
    last_inference_ms: Option<f64>,
    push_started: Option<Instant>,
}

impl CryMonitor {
    /// `detector`: None treats every gate opening as crying.
    pub fn new(
        reason: Model,
        detector: Option<Model>,
        settings: MonitorSettings,
    ) -> Result<Self, MonitorError> {
        let rate = reason.sidecar().audio.sample_rate;
        let mut positive = 0;
        if let Some(d) = &detector {
            if d.sidecar().audio.sample_rate != rate {
                return Err(MonitorError::RateMismatch {
                    detector: d.sidecar().audio.sample_rate,
                    reason: rate,
                });
            }
            positive = d
                .sidecar()
                .positive_index()
                .ok_or_else(|| MonitorError::NoPositiveLabel(d.sidecar().name.clone()))?;
        }
        let models = detector
            .iter()
            .chain(std::iter::once(&reason))
            .map(|m| ModelVersion {
                name: m.sidecar().name.clone(),
                version: m.sidecar().version.clone(),
            })
            .collect();
        Ok(Self {
            rate,
            gate: EnergyGate::new(&settings.gate, rate),
            settings,
            detector,
            positive,
            reason,
            models,
            history: Vec::new(),
            history_start: 0,
            pos: 0,
            framed: 0,
            detector_next: None,
            detector_until: None,
            recent: VecDeque::new(),
            gate_open_from: None,
            last_gate_close: 0,
            last_crying: 0,
            episode: None,
            cooldown_from: None,
            cooldown_logged: None,
            summary: RunSummary::default(),
            openings: VecDeque::new(),
            last_inference_ms: None,
            push_started: None,
        })
    }

    /// The rate the monitor expects its input at (the models' rate).
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    pub fn models(&self) -> &[ModelVersion] {
        &self.models
    }

    pub fn reason_labels(&self) -> &[String] {
        self.reason.labels()
    }

    /// Replaces thresholds, gate, detector and episode settings; the noise floor, the
    /// open gate and a running episode carry on.
    pub fn apply(&mut self, settings: MonitorSettings) {
        // A cooldown that is over stays over: a longer one must not come back.
        if self.framed >= self.cooldown_until() {
            self.cooldown_from = None;
        }
        self.gate.set_config(&settings.gate);
        self.settings = settings;
    }

    /// The stream sample before which confirmed crying starts no episode.
    fn cooldown_until(&self) -> u64 {
        self.cooldown_from.map_or(0, |from| {
            from + self.samples(self.settings.episode.cooldown_seconds)
        })
    }

    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    /// The room's noise floor, dBFS, once the gate has heard the room.
    pub fn noise_floor_dbfs(&self) -> Option<f64> {
        self.gate.has_heard().then(|| self.gate.noise_floor_dbfs())
    }

    /// How long the last inference took, once one has run.
    pub fn last_inference_ms(&self) -> Option<f64> {
        self.last_inference_ms
    }

    /// Gate openings over the last hour of audio.
    pub fn gate_openings_last_hour(&self) -> usize {
        self.openings.len()
    }

    pub fn episode(&self) -> Option<&CryEpisode> {
        self.episode.as_ref()
    }

    /// The counters so far.
    pub fn summary(&self) -> RunSummary {
        let mut s = self.summary.clone();
        s.audio_seconds = self.seconds(self.pos);
        if let Some(from) = self.gate_open_from {
            s.gate_open_seconds += self.seconds(self.pos - from);
        }
        s
    }

    /// Audio kept behind the newest sample: back to where an episode confirmed now can
    /// start (the oldest of the last `confirm_n` detector windows, less the pre-roll),
    /// and a reason window from there, which is classified once the crying reaches its
    /// end (the crying's last window, once it has been quiet long enough, see `frame`).
    fn history_samples(&self) -> usize {
        let d = &self.settings.detector;
        let confirm = d.confirm_n as f64 * d.hop_seconds + self.settings.gate.pre_roll_seconds;
        let windows =
            self.reason.window_samples() + self.detector.as_ref().map_or(0, |m| m.window_samples());
        (self.samples(confirm + 1.0) as usize + windows).max(self.samples(HISTORY_SECONDS) as usize)
    }

    fn seconds(&self, samples: u64) -> f64 {
        samples as f64 / f64::from(self.rate)
    }

    fn samples(&self, seconds: f64) -> u64 {
        (seconds * f64::from(self.rate)).round() as u64
    }

    fn event(&self, kind: EventKind) -> Update {
        Update::Event(Event::new(kind, self.models.clone()))
    }

    /// Analyses `samples` (mono, at [`Self::sample_rate`]) and emits what they cause.
    pub fn push(
        &mut self,
        samples: &[f32],
        emit: &mut dyn FnMut(Update),
    ) -> Result<(), ModelError> {
        self.push_started = Some(Instant::now());
        self.history.extend_from_slice(samples);
        self.pos += samples.len() as u64;
        while self.framed + FRAME_SAMPLES as u64 <= self.pos {
            let start = self.framed;
            self.framed += FRAME_SAMPLES as u64;
            self.frame(start, emit)?;
        }
        let keep = self.history_samples();
        if self.history.len() > 2 * keep {
            let drop = self.history.len() - keep;
            self.history.drain(..drop);
            self.history_start += drop as u64;
        }
        Ok(())
    }

    fn frame(&mut self, start: u64, emit: &mut dyn FnMut(Update)) -> Result<(), ModelError> {
        let end = start + FRAME_SAMPLES as u64;
        let from = (start - self.history_start) as usize;
        // While the detector hears crying the room's floor stays where it was: a cry of
        // many minutes must not become the room (without a detector, the sound is all
        // there is, and a fan must still close the gate). (`last_crying` is 0 until a
        // window said cry: the stream's first sample is no window's end.)
        let crying = self.detector.is_some()
            && self.last_crying > 0
            && start < self.last_crying + self.samples(CRYING_HOLDS_THE_FLOOR_SECONDS);
        self.gate.hold_floor(crying);
        let transition = self
            .gate
            .push_frame(&self.history[from..from + FRAME_SAMPLES], start);
        match transition {
            GateTransition::Opened { from_sample } => {
                let from_sample = from_sample
                    .max(self.history_start)
                    .max(self.last_gate_close);
                self.summary.gate_openings += 1;
                self.openings.push_back(end);
                self.gate_open_from = Some(from_sample);
                tracing::debug!(at_s = self.seconds(from_sample), "gate opened");
                if self.detector.is_some() {
                    self.detector_until = None;
                    if self.detector_next.is_none() {
                        self.detector_next = Some(from_sample);
                    }
                } else if self.episode.is_none() {
                    self.start_episode(from_sample, end, Vec::new(), emit);
                }
            }
            GateTransition::Closed { at_sample } => {
                if let Some(from) = self.gate_open_from.take() {
                    self.summary.gate_open_seconds += self.seconds(at_sample - from);
                }
                self.last_gate_close = at_sample;
                // The last windows stay in `recent` (they leave it by age, see
                // run_detector): a gate that closes at a breath of a cry and opens again
                // must not start the k-of-n count over. Windows begun while it was open
                // still run once their audio is in: with a short hangover, a cry in
                // calls shorter than a window would otherwise never complete one.
                self.detector_until = Some(at_sample);
                tracing::debug!(at_s = self.seconds(at_sample), "gate closed");
            }
            GateTransition::None => {}
        }
        let hour = self.samples(3600.0);
        while self.openings.front().is_some_and(|&o| o + hour < end) {
            self.openings.pop_front();
        }
        // Without a detector the sound is the crying: the episode lasts while frames are
        // loud (not through the gate's hangover), and crying that a cooldown suppressed
        // at its opening starts its episode once the cooldown is over, as a detector's
        // windows would go on confirming it.
        if self.detector.is_none() && self.gate.hears_sound() {
            let cooldown_until = self.cooldown_until();
            match &mut self.episode {
                Some(ep) => ep.last_cry_end = end,
                None if self.framed >= cooldown_until => {
                    self.start_episode(cooldown_until.max(start), end, Vec::new(), emit)
                }
                None => {}
            }
        }
        self.run_detector(emit)?;
        self.run_reasons(emit)?;
        if let Some(ep) = &self.episode {
            let quiet_for = self.framed.saturating_sub(ep.last_cry_end);
            let quiet = self.samples(self.settings.episode.quiet_seconds);
            // The crying's end is classified once it has been quiet for the quiet time, or
            // sooner while its audio is still held: quiet_seconds may be longer than that.
            let held =
                (self.history_samples() as u64).saturating_sub(self.reason.window_samples() as u64);
            if quiet_for >= quiet.min(held) {
                self.classify_tail(emit)?;
            }
            if quiet_for >= quiet {
                self.end_episode(emit)?;
            }
        }
        Ok(())
    }

    fn detector_threshold(&self) -> f32 {
        self.settings.detector.threshold.unwrap_or_else(|| {
            self.detector
                .as_ref()
                .map_or(0.5, |d| d.sidecar().threshold)
        })
    }

    fn run_detector(&mut self, emit: &mut dyn FnMut(Update)) -> Result<(), ModelError> {
        let threshold = self.detector_threshold();
        let hop = self.samples(self.settings.detector.hop_seconds).max(1);
        let (k, n) = (
            self.settings.detector.confirm_k,
            self.settings.detector.confirm_n,
        );
        while let (Some(start), Some(window)) = (
            self.detector_next,
            self.detector.as_ref().map(|d| d.window_samples() as u64),
        ) {
            if self.detector_until.is_some_and(|until| start >= until) {
                self.detector_next = None;
                break;
            }
            let end = start + window;
            if end > self.framed {
                break;
            }
            self.detector_next = Some(start + hop);
            let t0 = Instant::now();
            let from = (start.max(self.history_start) - self.history_start) as usize;
            let to = (end - self.history_start) as usize;
            let detector = self.detector.as_mut().expect("checked above");
            let p = detector.predict(&self.history[from..to])?.probabilities[self.positive];
            self.last_inference_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            self.summary.detector_inferences += 1;
            tracing::trace!(start_s = self.seconds(start), p, "detector window");
            // The last n windows of the last n hops: windows of an earlier gate opening
            // count while they are that recent, as the k-of-n rule runs on a continuous
            // stream (where a closed gate's windows would have said "no cry").
            let span = hop * n as u64;
            // (After a reload to a longer span, not before the audio still held either.)
            let stale = |r: &(u64, f32)| r.0 + span <= start || r.0 < self.history_start;
            while self.recent.len() >= n || self.recent.front().is_some_and(stale) {
                self.recent.pop_front();
            }
            self.recent.push_back((start, p));
            if p >= threshold {
                self.last_crying = self.last_crying.max(end);
            }
            if let Some(ep) = &mut self.episode {
                ep.detector.push((start, p));
                if p >= threshold {
                    ep.last_cry_end = ep.last_cry_end.max(end);
                }
            } else if self.recent.len() >= k {
                let probs: Vec<f32> = self.recent.iter().map(|r| r.1).collect();
                if confirmation_score(&probs, k, n) >= threshold {
                    let first = self
                        .recent
                        .iter()
                        .find(|r| r.1 >= threshold)
                        .map_or(start, |r| r.0);
                    let detector_windows = self.recent.iter().copied().collect();
                    self.start_episode(first, end, detector_windows, emit);
                }
            }
        }
        Ok(())
    }

    fn start_episode(
        &mut self,
        start: u64,
        cry_end: u64,
        detector: Vec<(u64, f32)>,
        emit: &mut dyn FnMut(Update),
    ) {
        if self.framed < self.cooldown_until() {
            self.summary.suppressed_by_cooldown += 1;
            self.recent.clear();
            // Once per cooldown at info: crying that goes on is confirmed again every
            // few windows, dozens of lines in one cooldown.
            if self.cooldown_logged == self.cooldown_from {
                tracing::debug!(
                    at_s = self.seconds(start),
                    "crying confirmed during the cooldown again: no new episode"
                );
            } else {
                self.cooldown_logged = self.cooldown_from;
                tracing::info!(
                    at_s = self.seconds(start),
                    cooldown_until_s = self.seconds(self.cooldown_until()),
                    "crying confirmed during the cooldown: no new episode"
                );
            }
            return;
        }
        self.summary.episodes += 1;
        let number = self.summary.episodes;
        tracing::info!(
            episode = number,
            start_s = self.seconds(start),
            "cry episode started"
        );
        self.episode = Some(CryEpisode {
            number,
            start_sample: start,
            last_cry_end: cry_end,
            windows: Vec::new(),
            predictions: Vec::new(),
            detector,
            next_reason_start: start,
            classified_until: start,
        });
        emit(self.event(EventKind::EpisodeStart {
            episode: number,
            start_s: self.seconds(start),
        }));
        emit(Update::Crying(true));
    }

    fn run_reasons(&mut self, emit: &mut dyn FnMut(Update)) -> Result<(), ModelError> {
        let window = self.reason.window_samples() as u64;
        let hop =
            ((window as f64 * (1.0 - self.settings.episode.reason_overlap)).round() as u64).max(1);
        // A window runs once the crying is known to reach its end: one that reached past
        // the end of the crying was mostly the quiet after it, and counted in the dominant
        // reason as much as the crying. The crying after the last whole window is
        // classified by `classify_tail`, in a window that ends with it.
        //
        // A window with no crying in it (a pause inside the episode, shorter than the
        // quiet time) says nothing about why the baby cries: it is skipped. Crying in it
        // is a detector window at or above the threshold that starts in it, as for the
        // window's `cry_probability`.
        let threshold = self.detector_threshold();
        while let Some(ep) = &self.episode {
            let start = ep.next_reason_start.max(self.history_start);
            let end = start + window;
            if end > self.framed.min(ep.last_cry_end) {
                break;
            }
            let quiet = self.detector.is_some()
                && !ep
                    .detector
                    .iter()
                    .any(|&(s, p)| p >= threshold && (start..end).contains(&s));
            if !quiet {
                self.classify_window(start, end, emit)?;
            }
            if let Some(ep) = &mut self.episode {
                ep.next_reason_start = start + hop;
            }
        }
        Ok(())
    }

    fn classify_window(
        &mut self,
        start: u64,
        end: u64,
        emit: &mut dyn FnMut(Update),
    ) -> Result<(), ModelError> {
        let t0 = Instant::now();
        let from = (start.max(self.history_start) - self.history_start) as usize;
        let to = (end.min(self.framed).max(self.history_start) - self.history_start) as usize;
        let pred = self.reason.predict(&self.history[from..to.max(from)])?;
        self.last_inference_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        self.summary.reason_inferences += 1;
        let (reason, confidence) =
            reason_decision(&pred, self.reason.sidecar(), &self.settings.thresholds);
        let Some(ep) = self.episode.as_ref() else {
            return Ok(());
        };
        let cry: Vec<f32> = ep
            .detector
            .iter()
            .filter(|(s, _)| (start..end).contains(s))
            .map(|r| r.1)
            .collect();
        let result = WindowResult {
            start_s: self.seconds(start),
            end_s: self.seconds(end),
            reason: reason.clone(),
            confidence,
            probabilities: pred.by_label(self.reason.labels()),
            cry_probability: (!cry.is_empty()).then(|| cry.iter().sum::<f32>() / cry.len() as f32),
            latency_ms: self
                .push_started
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0),
        };
        let (number, index) = (ep.number, ep.windows.len() as u32);
        emit(self.event(EventKind::Window {
            episode: number,
            index,
            result: result.clone(),
        }));
        emit(Update::Reason { reason, confidence });
        if let Some(ep) = &mut self.episode {
            ep.windows.push(result);
            ep.predictions.push(pred);
            ep.classified_until = ep.classified_until.max(end);
        }
        Ok(())
    }

    /// Classifies the crying no reason window has covered (an episode shorter than a
    /// window, the crying after the last whole one, a stream that ends in one): the last
    /// window's worth of the episode up to its last crying, zero-padded where it is
    /// shorter. Whole windows
    /// after it, if the crying resumes, begin where it ends.
    fn classify_tail(&mut self, emit: &mut dyn FnMut(Update)) -> Result<(), ModelError> {
        let Some(ep) = &self.episode else {
            return Ok(());
        };
        // The end of the crying is known to a detector hop (without a detector, to a gate
        // frame): less than that uncovered is the last window's crying, which a second
        // window would count twice.
        let resolution = match self.detector {
            Some(_) => self.samples(self.settings.detector.hop_seconds),
            None => FRAME_SAMPLES as u64,
        };
        if !ep.predictions.is_empty() && ep.last_cry_end <= ep.classified_until + resolution {
            return Ok(());
        }
        let window = self.reason.window_samples() as u64;
        let start = ep
            .last_cry_end
            .saturating_sub(window)
            .max(ep.start_sample)
            .max(self.history_start);
        // Not past the crying: in an episode shorter than a window the rest was the quiet
        // after it, classified as if it were crying (the model zero-pads a short window,
        // as it does a short file).
        let end = ep.last_cry_end.min(start + window);
        self.classify_window(start, end, emit)?;
        if let Some(ep) = &mut self.episode {
            ep.next_reason_start = ep.next_reason_start.max(ep.classified_until);
        }
        Ok(())
    }

    fn end_episode(&mut self, emit: &mut dyn FnMut(Update)) -> Result<(), ModelError> {
        self.classify_tail(emit)?;
        let Some(ep) = self.episode.take() else {
            return Ok(());
        };
        let mean = Prediction::mean(&ep.predictions, self.reason.labels().len());
        let (dominant_reason, confidence) =
            reason_decision(&mean, self.reason.sidecar(), &self.settings.thresholds);
        let end = ep.last_cry_end.min(self.framed.max(ep.start_sample));
        tracing::info!(
            episode = ep.number,
            start_s = self.seconds(ep.start_sample),
            end_s = self.seconds(end),
            reason = %dominant_reason,
            "cry episode ended"
        );
        emit(self.event(EventKind::EpisodeEnd {
            episode: ep.number,
            start_s: self.seconds(ep.start_sample),
            end_s: self.seconds(end),
            duration_s: self.seconds(end - ep.start_sample),
            dominant_reason,
            confidence,
            probabilities: mean.by_label(self.reason.labels()),
            windows: ep.windows.len() as u32,
        }));
        emit(Update::Crying(false));
        self.cooldown_from = Some(self.framed);
        self.recent.clear();
        Ok(())
    }

    /// The audio stopped coming (the microphone was lost, or stalled without audio; digital
    /// silence is audio and goes through the gate as such): a running episode
    /// ends now, at its last crying. Its quiet time is counted in audio, so without this
    /// it would stay open, `crying` ON, until audio came back, and then run on into it.
    /// No cooldown follows, and none runs on: crying heard when the audio comes back may
    /// be the same cry going on, and must be reported at once, not a cooldown of new
    /// audio later.
    pub fn interrupt(&mut self, emit: &mut dyn FnMut(Update)) -> Result<(), ModelError> {
        // The audio after the gap does not continue the audio before it: no detector
        // window, confirmation or pre-roll reaches back across it (an episode after the
        // gap starting inside the one before).
        self.last_gate_close = self.last_gate_close.max(self.framed);
        if let Some(next) = &mut self.detector_next {
            *next = (*next).max(self.framed);
        }
        self.recent.clear();
        self.gate.interrupt();
        self.end_episode(emit)?;
        // A cooldown already running ends too: it is counted in audio, which stops with
        // it, so its rest held back crying heard after a gap of any length (after a
        // minute without audio, up to a minute more of crying reported as nothing).
        self.cooldown_from = None;
        Ok(())
    }

    /// The end of the stream (or a shutdown): finishes a running episode.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Update)) -> Result<RunSummary, ModelError> {
        self.end_episode(emit)?;
        Ok(self.summary())
    }
}
