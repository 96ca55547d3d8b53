//! The capture thread's recovery, driven through `daemon::run` with a source that is
//! missing at boot, is unplugged while running, is busy, then delivers digital silence
//! (stalled) before real audio, with xruns along the way: the daemon reports each state
//! once, counts the xruns without treating them as a loss, reopens the source by itself
//! and never exits before the source ends.

mod daemon_common;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use babycry::config::Config;
use babycry::daemon::{run, Control, DaemonOptions, EventSink};
use babycry::source::{AudioSource, Pull, RetryPolicy, SourceError, StreamFormat};
use babycry::synth;
use daemon_common::{audio_states, episode_starts, read_events};

/// What one `open` does, and then what the opened stream delivers.
enum Step {
    Fail(&'static str),
    /// Deliver these mono seconds (duplicated to stereo at 48 kHz), then `then`.
    Deliver(Vec<f32>, After),
}

enum After {
    Unplug,
    End,
    /// The stream hangs: no audio and no error from then on (a suspended device).
    Hang,
}

const RATE: u32 = 48_000;

struct FlakySource {
    steps: VecDeque<Step>,
    current: Option<(Vec<f32>, usize, After)>,
    opens: Arc<AtomicUsize>,
    /// Pulls that delivered audio; every tenth counts as an xrun.
    audio_pulls: u64,
}

impl FlakySource {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            current: None,
            opens: Arc::default(),
            audio_pulls: 0,
        }
    }
}

/// Runs the daemon on `source` to its end, events to a file; the summary and the events.
async fn replay(
    settings: babycry::config::Settings,
    source: FlakySource,
) -> (babycry::events::RunSummary, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let (_control, rx) = tokio::sync::mpsc::channel::<Control>(1);
    let summary = run(settings, Box::new(source), options(&events), rx)
        .await
        .unwrap();
    (summary, read_events(&events))
}

/// `seconds` of room tone at 48 kHz with `cry_seconds` of synthetic crying from `at`.
fn crying(seconds: f32, cry_seconds: f32, at: f32, seed: u64) -> Vec<f32> {
    let mut audio = synth::room_tone(RATE, seconds, 0.002, seed);
    let cry = synth::cry(RATE, cry_seconds, 0.5);
    synth::mix_into(&mut audio, &cry, (at * RATE as f32) as usize);
    audio
}

impl AudioSource for FlakySource {
    fn describe(&self) -> String {
        "flaky test microphone".into()
    }

    fn open(&mut self) -> Result<StreamFormat, SourceError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        match self.steps.pop_front().expect("no more steps") {
            Step::Fail(reason) => Err(SourceError::Unavailable {
                device: self.describe(),
                reason: reason.into(),
            }),
            Step::Deliver(samples, after) => {
                self.current = Some((samples, 0, after));
                Ok(StreamFormat {
                    sample_rate: RATE,
                    channels: 2,
                })
            }
        }
    }

    fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
        let (samples, pos, after) = self.current.as_mut().expect("pull after open");
        if *pos >= samples.len() {
            return match after {
                After::Unplug => Err(SourceError::Lost {
                    device: "flaky test microphone".into(),
                    reason: "device unplugged".into(),
                }),
                After::End => Ok(Pull::End),
                After::Hang => {
                    std::thread::sleep(Duration::from_millis(20));
                    Ok(Pull::Idle)
                }
            };
        }
        let end = (*pos + RATE as usize / 10).min(samples.len());
        buf.extend(samples[*pos..end].iter().flat_map(|&s| [s, s]));
        *pos = end;
        self.audio_pulls += 1;
        Ok(Pull::Audio)
    }

    fn xruns(&self) -> u64 {
        self.audio_pulls / 10
    }

    fn close(&mut self) {
        self.current = None;
    }

    fn reopen_when_stalled(&self) -> bool {
        true
    }
}

/// Settings with the repository's models, MQTT off, and `edit` applied.
fn settings(edit: impl FnOnce(&mut Config)) -> babycry::config::Settings {
    let mut config = Config::default();
    config.models.dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .display()
        .to_string();
    config.mqtt.enabled = false;
    edit(&mut config);
    config.validate(None).unwrap()
}

/// Events to `events`, no MQTT, fast retries.
fn options(events: &Path) -> DaemonOptions {
    DaemonOptions {
        events: EventSink::File(events.to_owned()),
        mqtt: false,
        retry: Some(RetryPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_source_is_retried_reported_and_resumed() {
    let settings = settings(|c| c.audio.stall_seconds = 1.0);

    let tone = |secs: f32, seed| synth::room_tone(RATE, secs, 0.01, seed);
    let source = FlakySource::new([
        Step::Fail("no such device (boot)"),
        Step::Fail("no such device (boot)"),
        Step::Deliver(tone(2.0, 1), After::Unplug),
        Step::Fail("device busy"),
        Step::Deliver(
            [vec![0.0; 2 * RATE as usize], tone(2.0, 2)].concat(),
            After::End,
        ),
    ]);
    let opens = source.opens.clone();
    let (summary, lines) = replay(settings, source).await;
    let states: Vec<(String, String)> = lines
        .iter()
        .filter(|e| e["type"] == "audio_state")
        .map(|e| {
            (
                e["state"].as_str().unwrap().to_string(),
                e["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = states.iter().map(|s| s.0.as_str()).collect();
    // Two failed opens at boot are one loss, reported once. A loss whose reason
    // changes (unplugged, then busy at the reopen) is reported again: the state shown
    // says what is wrong now.
    assert_eq!(
        names,
        [
            "connecting",
            "lost",
            "running",
            "lost",
            "lost",
            "running",
            "stalled",
            "running",
            "ended"
        ],
        "{states:#?}"
    );
    assert!(states[1].1.contains("no such device"), "{states:?}");
    assert!(states[3].1.contains("device unplugged"), "{states:?}");
    assert!(states[4].1.contains("device busy"), "{states:?}");
    assert!(states[6].1.contains("digital silence"), "{states:?}");
    assert_eq!(opens.load(Ordering::SeqCst), 5);
    // Every delivered second reached the analysis (6 s at 48 kHz -> 8 kHz, less the
    // resampler's start-up delay at each reopen).
    assert!(
        (5.0..=6.01).contains(&summary.audio_seconds),
        "{}",
        summary.audio_seconds
    );
    // 60 pulls of 100 ms: 6 xruns, counted without any state change.
    assert_eq!(summary.xruns, 6);
    assert_eq!(lines.last().unwrap()["type"], "summary");
    assert_eq!(lines.last().unwrap()["xruns"], 6);
}

/// A source whose driver panics on its sixth pull, after half a second of audio.
struct PanickingSource {
    pulls: u32,
}

impl AudioSource for PanickingSource {
    fn describe(&self) -> String {
        "panicking".into()
    }

    fn open(&mut self) -> Result<StreamFormat, SourceError> {
        Ok(StreamFormat {
            sample_rate: RATE,
            channels: 1,
        })
    }

    fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
        self.pulls += 1;
        assert!(self.pulls < 6, "a driver bug");
        buf.extend(synth::room_tone(RATE, 0.1, 0.01, u64::from(self.pulls)));
        Ok(Pull::Audio)
    }

    fn xruns(&self) -> u64 {
        0
    }

    fn close(&mut self) {}
}

/// A capture thread that dies (a panic in a driver) ends `run` with an error, so the
/// process exits non-zero and systemd restarts it. Before, the closed channel read as the
/// end of the input: exit 0, and a monitor that stayed stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_thread_that_dies_ends_the_run_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(&dir.path().join("events.jsonl"));
    let (_control, rx) = tokio::sync::mpsc::channel::<Control>(1);
    let source = Box::new(PanickingSource { pulls: 0 });
    let e = run(settings(|_| {}), source, options, rx)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("panicking: the capture thread failed: a driver bug"),
        "{text}"
    );
}

/// The microphone is unplugged in the middle of a cry: the episode ends then, at its last
/// crying, and `crying` goes OFF. Its quiet time counts audio, so before it stayed open
/// while no audio came, then ran on into the audio after the microphone came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microphone_lost_in_the_middle_of_a_cry_ends_the_episode_then() {
    // The synthetic cry scores 0.84-0.99 on the shipped detector.
    let settings = settings(|c| c.detector.threshold = Some(0.8));
    let source = FlakySource::new([
        Step::Deliver(crying(8.0, 6.0, 2.0, 3), After::Unplug),
        Step::Fail("no such device"),
        Step::Fail("no such device"),
        Step::Deliver(synth::room_tone(RATE, 3.0, 0.002, 4), After::End),
    ]);
    let (_, lines) = replay(settings, source).await;
    let kinds: Vec<String> = lines
        .iter()
        .filter(|e| {
            ["episode_start", "episode_end", "audio_state"].contains(&e["type"].as_str().unwrap())
        })
        .map(|e| match e["state"].as_str() {
            Some(state) => state.to_string(),
            None => e["type"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "connecting",
            "running",
            "episode_start",
            "episode_end",
            // Unplugged, then no such device at the reopens.
            "lost",
            "lost",
            "running",
            "ended"
        ]
    );
    let end = lines.iter().find(|e| e["type"] == "episode_end").unwrap();
    let end_s = end["end_s"].as_f64().unwrap();
    assert!((7.0..=8.05).contains(&end_s), "the cry ends at 8 s: {end}");
}

/// A cry that goes on after a short microphone drop-out is a new episode at once: the
/// interrupted episode starts no cooldown (60 s by default, counted in audio), which
/// before hid the crying after the microphone came back for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cry_going_on_after_a_microphone_drop_out_is_reported_at_once() {
    let settings = settings(|c| c.detector.threshold = Some(0.8));
    assert_eq!(settings.config.episode.cooldown_seconds, 60.0);
    let source = FlakySource::new([
        Step::Deliver(crying(8.0, 6.0, 2.0, 3), After::Unplug),
        Step::Fail("no such device"),
        Step::Deliver(crying(12.0, 8.0, 0.0, 4), After::End),
    ]);
    let (_, lines) = replay(settings, source).await;
    let starts = episode_starts(&lines);
    // The crying resumes with the audio, just after the first episode's end in audio time
    // (the first 8 s, less what the lost stream's resampler held): the episode after the
    // drop-out starts within 3 s of it, and not inside the one before.
    assert_eq!(starts.len(), 2, "episode starts {starts:?}");
    let first_end = lines.iter().find(|e| e["type"] == "episode_end").unwrap()["end_s"]
        .as_f64()
        .unwrap();
    assert!(
        (first_end..=first_end + 3.0).contains(&starts[1]),
        "the first episode ends at {first_end}, then episode starts {starts:?}"
    );
    let summary = lines.iter().find(|e| e["type"] == "summary").unwrap();
    assert_eq!(summary["suppressed_by_cooldown"], 0, "{summary}");
}

/// A microphone that delivers only digital silence for a while (muted, or a USB
/// microphone that gates a quiet room to zero) is reported stalled, but its zeros are
/// audio: a cooldown running goes on through them, and crying heard after them inside
/// it starts no new episode. Before, the stall ended the cooldown as a real gap does:
/// a second alert for one crying bout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digital_silence_does_not_end_a_running_cooldown() {
    let settings = settings(|c| c.detector.threshold = Some(0.8));
    assert_eq!(settings.config.episode.cooldown_seconds, 60.0);
    assert_eq!(settings.config.audio.stall_seconds, 10.0);
    // A cry at 2..8 s (its episode ends near 18 s, its cooldown near 78 s), 12 s of zeros
    // from 30 s, then crying again at 47..55 s, inside the cooldown.
    let mut audio = crying(30.0, 6.0, 2.0, 5);
    audio.extend(std::iter::repeat_n(0.0, 12 * RATE as usize));
    audio.extend(crying(25.0, 8.0, 5.0, 6));
    let source = FlakySource::new([Step::Deliver(audio, After::End)]);
    let (summary, lines) = replay(settings, source).await;
    assert_eq!(
        audio_states(&lines),
        ["connecting", "running", "stalled", "running", "ended"],
        "{lines:?}"
    );
    assert_eq!(episode_starts(&lines).len(), 1, "{lines:?}");
    assert!(summary.suppressed_by_cooldown >= 1, "{summary:?}");
}

/// A live stream that hangs (no audio, no error: a suspended device behind a plugin PCM)
/// is reported stalled, then reopened like a lost one, and the audio of the reopened
/// device is analysed. Before, it stayed stalled until the daemon was restarted: this
/// test then never ended (bounded here at 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_hangs_is_reported_stalled_and_reopened() {
    let settings = settings(|c| {
        c.audio.stall_seconds = 1.0;
        c.detector.threshold = Some(0.8);
    });
    let source = FlakySource::new([
        Step::Deliver(synth::room_tone(RATE, 2.0, 0.002, 5), After::Hang),
        // Reopened, and still nothing.
        Step::Deliver(Vec::new(), After::Hang),
        Step::Deliver(crying(8.0, 6.0, 1.0, 7), After::End),
    ]);
    let opens = source.opens.clone();
    let (summary, lines) = tokio::time::timeout(Duration::from_secs(60), replay(settings, source))
        .await
        .expect("the hung stream was never reopened");
    let states = audio_states(&lines);
    // The second hang, right after a reopen, is the same loss going on: not news.
    assert_eq!(
        states,
        [
            "connecting",
            "running",
            "stalled",
            "lost",
            "running",
            "ended"
        ],
        "{lines:#?}"
    );
    assert_eq!(opens.load(Ordering::SeqCst), 3);
    assert_eq!(episode_starts(&lines).len(), 1, "the cry after the reopen");
    // 2 s before the hang and 8 s after the reopen (less the resampler's start-up delay).
    assert!(
        (9.8..=10.01).contains(&summary.audio_seconds),
        "{summary:?}"
    );
}

/// A device that opens and fails at once (a USB microphone answering its first read with
/// an error), three times, is one loss, warned once: `running` comes with audio, not
/// with an open that delivers nothing. Before, each reopen reported `running` and the next
/// failure `lost` again, a warning and an MQTT state flap every backoff step for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_fails_as_soon_as_it_opens_is_one_loss() {
    let settings = settings(|_| {});
    let source = FlakySource::new([
        Step::Deliver(Vec::new(), After::Unplug),
        Step::Deliver(Vec::new(), After::Unplug),
        Step::Deliver(Vec::new(), After::Unplug),
        Step::Deliver(synth::room_tone(RATE, 1.0, 0.002, 8), After::End),
    ]);
    let (_, lines) = replay(settings, source).await;
    let states = audio_states(&lines);
    assert_eq!(states, ["connecting", "lost", "running", "ended"]);
}
