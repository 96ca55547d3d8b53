//! The soak: hours of mixed audio (a quiet room, real non-cry sounds from
//! ../shared/data/negatives, real verified cries from ../shared/data/donateacry) streamed
//! as raw PCM into the real `babycryd run --input - --rate 8000` against a real Mosquitto.
//! It proves that resident memory and open file descriptors stay flat after a warm-up,
//! that the MQTT queue does not grow and drops nothing, that every window and episode end
//! printed arrives on `<base>/event` once and in order, and that the episodes match the
//! inserted cries within the detector's measured recall (about 0.45 per recording at the
//! shipped operating point, training/reports/detector.md) plus a false-alarm allowance.
//!
//! The audio is built one 5-minute slot at a time and never held whole (24 h at 8 kHz
//! would be 2.7 GB). `BABYCRY_SOAK_HOURS` sets the length: 1 by default (what CI runs),
//! `BABYCRY_SOAK_HOURS=24 cargo test --release --test soak -- --nocapture` for the full
//! run. The curve (RSS, peak RSS, fds every 10 minutes of audio) is printed as a table.

mod broker_common;
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use babycry::synth;
use broker_common::*;
use serde_json::Value;

const RATE: u32 = 8000;
/// One inserted cry per slot, so that `SLOT_S / 60` cries make an hour.
const SLOT_S: usize = 300;
/// Where the cry starts in its slot.
const CRY_AT_S: usize = 20;
/// Where the two negatives start: after the cry's episode and its one-minute cooldown,
/// and ending (with an episode they might cause and its cooldown) before the next cry.
const NEGATIVES_AT_S: [usize; 2] = [120, 200];
/// Long negatives (music tracks) are cut to this.
const NEGATIVE_MAX_S: usize = 30;
/// Resident memory, peak and fds are sampled every this many seconds of audio.
const SAMPLE_EVERY_S: usize = 600;
/// Growth of resident memory after the warm-up that still counts as flat.
const RSS_MARGIN_KIB: u64 = 4 * 1024;
/// The negatives, one category after the other.
const CATEGORIES: [&str; 7] = [
    "speech",
    "music",
    "household",
    "baby_laugh",
    "environment",
    "animal",
    "room_tone",
];

fn soak_hours() -> f64 {
    std::env::var("BABYCRY_SOAK_HOURS").map_or(1.0, |h| {
        h.parse().expect("BABYCRY_SOAK_HOURS is a number of hours")
    })
}

/// The files of `dir/manifest.csv` whose `column` equals `value`.
fn manifest_files(dir: &Path, column: usize, value: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(dir.join("manifest.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| l.split(',').nth(column) == Some(value))
        .map(|l| dir.join(l.split(',').next().unwrap()))
        .collect()
}

/// A recording, mono at 8 kHz.
fn load(path: &Path) -> Vec<f32> {
    let rec = babycry::decode::decode_file(path).unwrap();
    babycry::resample::resample_all(&rec.samples, rec.sample_rate, RATE).unwrap()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Where something was inserted, in seconds of the stream.
#[derive(Debug)]
struct Span {
    start_s: f64,
    end_s: f64,
    what: String,
}

/// The daemon's process after `audio_s` seconds had been written.
#[derive(Debug)]
struct ProcessSample {
    audio_s: f64,
    rss_kib: u64,
    peak_kib: u64,
    fds: usize,
}

/// What was streamed.
struct Replay {
    cries: Vec<Span>,
    negatives: Vec<Span>,
    samples: Vec<ProcessSample>,
    seconds: f64,
}

/// Streams `hours` of audio to the daemon `pid` through `stdin`, one slot at a time: room
/// tone, a cry (`cries` in turn) at `CRY_AT_S`, two negatives (the categories in turn);
/// closes stdin at the end.
fn replay(
    mut stdin: ChildStdin,
    pid: u32,
    hours: f64,
    cries: &[PathBuf],
    negatives: &[Vec<PathBuf>],
) -> Replay {
    let slots = (hours * 3600.0 / SLOT_S as f64).round() as usize;
    let mut out = Replay {
        cries: Vec::new(),
        negatives: Vec::new(),
        samples: Vec::new(),
        seconds: (slots * SLOT_S) as f64,
    };
    let mut next_of_category = vec![0usize; negatives.len()];
    let second = RATE as usize;
    for slot in 0..slots {
        let t0 = (slot * SLOT_S) as f64;
        let mut audio = synth::room_tone(RATE, SLOT_S as f32, 0.002, slot as u64 + 1);
        let path = &cries[slot % cries.len()];
        let cry = load(path);
        synth::mix_into(&mut audio, &cry, CRY_AT_S * second);
        out.cries.push(Span {
            start_s: t0 + CRY_AT_S as f64,
            end_s: t0 + CRY_AT_S as f64 + cry.len() as f64 / f64::from(RATE),
            what: file_name(path),
        });
        for (i, at) in NEGATIVES_AT_S.into_iter().enumerate() {
            let category = (2 * slot + i) % negatives.len();
            let files = &negatives[category];
            let path = &files[next_of_category[category] % files.len()];
            next_of_category[category] += 1;
            let mut clip = load(path);
            clip.truncate(NEGATIVE_MAX_S * second);
            synth::mix_into(&mut audio, &clip, at * second);
            out.negatives.push(Span {
                start_s: t0 + at as f64,
                end_s: t0 + at as f64 + clip.len() as f64 / f64::from(RATE),
                what: format!("{} {}", CATEGORIES[category], file_name(path)),
            });
        }
        audio.truncate(SLOT_S * second);
        stdin.write_all(&s16le(&audio)).unwrap();
        let written = (slot + 1) * SLOT_S;
        if written.is_multiple_of(SAMPLE_EVERY_S) {
            out.samples.push(ProcessSample {
                audio_s: written as f64,
                rss_kib: rss_kib(pid),
                peak_kib: proc_status_kib(pid, "VmHWM"),
                fds: fd_count(pid),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_mixed_replay_keeps_memory_fds_and_the_queue_flat_and_delivers_every_event() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let hours = soak_hours();
    let cries = manifest_files(&data.join("donateacry"), 2, "verified");
    assert!(!cries.is_empty(), "no verified cries in the manifest");
    let negatives: Vec<Vec<PathBuf>> = CATEGORIES
        .iter()
        .map(|c| manifest_files(&data.join("negatives"), 1, c))
        .collect();
    for (c, files) in CATEGORIES.iter().zip(&negatives) {
        assert!(!files.is_empty(), "no {c} negatives in the manifest");
    }

    let broker = Broker::start();
    let base = "babycry/soak";
    let sub = Subscriber::start(broker.port, &["babycry/soak/#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config(dir.path(), broker.port, "soak");
    let mut daemon = StdinDaemon::start(&conf);
    sub.wait_for(&format!("{base}/status"), "online", Duration::from_secs(20))
        .await;
    let (stdin, pid) = (daemon.stdin.take().unwrap(), daemon.pid());
    let started = Instant::now();
    let replay = tokio::task::spawn_blocking(move || replay(stdin, pid, hours, &cries, &negatives))
        .await
        .unwrap();
    let (status, _) = daemon.wait_exit(Duration::from_secs(120));
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let records = daemon.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary", "{}", daemon.log());
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!(
        (heard - replay.seconds).abs() < 0.1,
        "fed {} s, heard {heard} s",
        replay.seconds
    );

    // Episodes against the inserted cries: a hit starts between a second before the
    // recording (the gate's pre-roll) and 3 s after its end.
    let starts: Vec<f64> = records
        .iter()
        .filter(|r| r["type"] == "episode_start")
        .map(|r| r["start_s"].as_f64().unwrap())
        .collect();
    let hits = replay
        .cries
        .iter()
        .filter(|c| {
            starts
                .iter()
                .any(|&s| s >= c.start_s - 1.0 && s <= c.end_s + 3.0)
        })
        .count();
    let false_alarms: Vec<(f64, &str)> = starts
        .iter()
        .filter(|&&s| {
            !replay
                .cries
                .iter()
                .any(|c| s >= c.start_s - 1.0 && s <= c.end_s + 3.0)
        })
        .map(|&s| {
            let during = replay
                .negatives
                .iter()
                .find(|n| s >= n.start_s - 1.0 && s <= n.end_s + 3.0)
                .map_or("room tone", |n| n.what.as_str());
            (s, during)
        })
        .collect();

    // The MQTT side: every event once, in order; the queue as diagnostics reported it.
    let want: Vec<String> = records
        .iter()
        .filter(|r| r["type"] == "window" || r["type"] == "episode_end")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let event_topic = format!("{base}/event");
    wait_until("every event arrived", Duration::from_secs(30), || {
        sub.on(&event_topic).len() >= want.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = ids_of(&sub.on(&event_topic));
    let diagnostics: Vec<Value> = sub
        .on(&format!("{base}/diagnostics"))
        .iter()
        .map(|m| serde_json::from_str(&m.payload).unwrap())
        .collect();
    let queued: Vec<u64> = diagnostics
        .iter()
        .map(|d| d["events_queued"].as_u64().unwrap())
        .collect();
    let dropped = diagnostics
        .iter()
        .map(|d| d["events_dropped"].as_u64().unwrap())
        .max()
        .unwrap_or(0);

    println!(
        "soak: {hours} h of audio in {wall:.0} s ({:.0}x real time), {} cries, {} negatives",
        replay.seconds / wall,
        replay.cries.len(),
        replay.negatives.len()
    );
    println!("| audio (h) | RSS (MiB) | peak RSS (MiB) | open fds |");
    println!("|---|---|---|---|");
    for s in &replay.samples {
        println!(
            "| {:.2} | {:.1} | {:.1} | {} |",
            s.audio_s / 3600.0,
            s.rss_kib as f64 / 1024.0,
            s.peak_kib as f64 / 1024.0,
            s.fds
        );
    }
    println!(
        "episodes {} = {hits} of {} cries (recall {:.2}) + {} false alarms {false_alarms:?}",
        starts.len(),
        replay.cries.len(),
        hits as f64 / replay.cries.len() as f64,
        false_alarms.len()
    );
    println!(
        "events {} printed, {} on MQTT; diagnostics {}: events_queued max {}, events_dropped {dropped}",
        want.len(),
        got.len(),
        diagnostics.len(),
        queued.iter().max().copied().unwrap_or(0)
    );
    println!("summary {summary}");

    assert_eq!(got, want, "every event once, in order");
    assert_eq!(dropped, 0, "the MQTT queue dropped events");
    // At most the events of one episode wait at a time.
    assert!(queued.iter().all(|&q| q <= 16), "queue grew: {queued:?}");
    assert_eq!(queued.last(), Some(&0), "events left in the queue");

    // Warm-up: the first hour, or the first third of a shorter run.
    let warm_up = (replay.seconds / 3.0).min(3600.0);
    let after: Vec<&ProcessSample> = replay
        .samples
        .iter()
        .filter(|s| s.audio_s >= warm_up)
        .collect();
    let baseline = after.first().expect("samples after the warm-up");
    for s in &after {
        assert!(
            s.rss_kib <= baseline.rss_kib + RSS_MARGIN_KIB,
            "RSS grew from {} KiB at {} s to {} KiB at {} s",
            baseline.rss_kib,
            baseline.audio_s,
            s.rss_kib,
            s.audio_s
        );
        assert!(
            s.fds <= baseline.fds + 1,
            "fds grew from {} at {} s to {} at {} s",
            baseline.fds,
            baseline.audio_s,
            s.fds,
            s.audio_s
        );
    }

    // The detector's measured recall is about 0.45 per held-out recording (0.57 on this
    // mix over 24 h, 0.67 in the first hour); ask for 0.3.
    let cries = replay.cries.len();
    assert!(
        hits * 10 >= cries * 3,
        "{hits} of {cries} cries made an episode"
    );
    // Under one false alarm per hour of negatives was measured; a few per hour of this
    // mix (a fifth of it is negatives, many of them baby laughter) is the allowance.
    let allowance = (2.0 * hours).ceil() as usize + 2;
    assert!(
        false_alarms.len() <= allowance,
        "{} false alarms in {hours} h: {false_alarms:?}",
        false_alarms.len()
    );
    assert!(starts.len() <= cries + allowance);
}
