//! `babycryd run` on recordings replayed with `--fast` (and raw PCM on stdin): cry
//! episodes from synthetic and real crying, nothing from a clap or speech, and the gate
//! keeping the models asleep in a quiet room.
//!
//! The shipped detector is tuned for precision (threshold 0.95); on `synth::cry` it
//! gives 0.84-0.99 per window, on `synth::speech_like` below 0.06. The synthetic tests
//! therefore set `[detector] threshold = 0.8`; the real-recording test keeps the defaults.

mod common;
mod daemon_common;

use std::process::{Command, Stdio};

use babycry::synth;
use daemon_common::*;

const SYNTH_DETECTOR: &str = "[detector]\nthreshold = 0.8\n";

/// Room tone with a clap at 5 s, an 8 s cry at 10 s and speech at 45 s; 60 s long.
fn scene() -> Vec<f32> {
    let mut audio = synth::room_tone(RATE, 60.0, 0.002, 1);
    synth::mix_into(
        &mut audio,
        &synth::clap(RATE, 1.0, 0.9, 2),
        5 * RATE as usize,
    );
    synth::mix_into(&mut audio, &synth::cry(RATE, 8.0, 0.5), 10 * RATE as usize);
    synth::mix_into(
        &mut audio,
        &synth::speech_like(RATE, 5.0, 0.3, 3),
        45 * RATE as usize,
    );
    audio
}

fn f64_of(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn a_synthetic_cry_is_one_episode_and_the_clap_and_speech_are_none() {
    let dir = tempfile::tempdir().unwrap();
    let wav = write_wav(dir.path(), "scene.wav", &scene());
    let config = write_config(
        dir.path(),
        &format!("{SYNTH_DETECTOR}\n[episode]\nquiet_seconds = 5.0\n"),
    );
    let run = run_fast(&config, &wav, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let starts = run.of_type("episode_start");
    let ends = run.of_type("episode_end");
    assert_eq!(starts.len(), 1, "one episode expected: {:#?}", run.events);
    assert_eq!(ends.len(), 1);
    let start = f64_of(starts[0], "start_s");
    // The cry begins at 10.0 s: the episode starts within 3 s of it (pre-roll may put
    // it up to 0.5 s earlier).
    assert!((9.4..=13.0).contains(&start), "start_s = {start}");
    let end = f64_of(ends[0], "end_s");
    // The last burst ends at 17.7 s; the episode ends where crying stopped, not at the clap
    // or the speech.
    assert!((16.5..=19.5).contains(&end), "end_s = {end}");
    assert!((f64_of(ends[0], "duration_s") - (end - start)).abs() < 1e-6);

    // Reason windows: every full 7 s window while crying, 3.5 s apart.
    let windows = run.of_type("window");
    assert!(windows.len() >= 2, "{windows:#?}");
    assert_eq!(ends[0]["windows"], windows.len());
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w["index"], i);
        assert!((f64_of(w, "end_s") - f64_of(w, "start_s") - 7.0).abs() < 1e-6);
        // The shipped reason model abstains (threshold 1.0): always uncertain.
        assert_eq!(w["reason"], "uncertain", "{w}");
        assert!(w["probabilities"].as_object().unwrap().len() == 8);
        assert!(f64_of(w, "cry_probability") > 0.5, "{w}");
    }
    assert_eq!(ends[0]["dominant_reason"], "uncertain");

    let summary = run.summary();
    // The clap never opens the gate: two openings (cry, speech).
    assert_eq!(summary["gate_openings"], 2, "{summary}");
    assert_eq!(summary["episodes"], 1);
    assert_eq!(summary["reason_inferences"], windows.len());
    assert!((f64_of(summary, "audio_seconds") - 60.0).abs() < 0.05);
}

#[test]
fn config_thresholds_replace_uncertain_with_the_top_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut audio = synth::room_tone(RATE, 25.0, 0.002, 4);
    synth::mix_into(&mut audio, &synth::cry(RATE, 8.0, 0.5), 3 * RATE as usize);
    let wav = write_wav(dir.path(), "cry.wav", &audio);
    let labels = common::REASON_LABELS;
    let thresholds: String = labels.iter().map(|l| format!("{l} = 0.0\n")).collect();
    let config = write_config(
        dir.path(),
        &format!("{SYNTH_DETECTOR}\n[thresholds]\n{thresholds}"),
    );
    let run = run_fast(&config, &wav, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let windows = run.of_type("window");
    assert!(!windows.is_empty(), "{:#?}", run.events);
    for w in &windows {
        let reason = w["reason"].as_str().unwrap();
        assert!(labels.contains(&reason), "{w}");
        // The reported reason is the top probability.
        let probs = w["probabilities"].as_object().unwrap();
        let top = probs
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(top.0, reason);
    }
    let end = run.of_type("episode_end");
    assert!(labels.contains(&end[0]["dominant_reason"].as_str().unwrap()));
}

#[test]
fn an_hour_of_room_tone_runs_the_models_only_inside_gate_openings() {
    let dir = tempfile::tempdir().unwrap();
    let hour: f64 = 3600.0;
    let mut audio = synth::room_tone(RATE, hour as f32, 0.002, 5);
    let cries = [600usize, 1500, 2900];
    for (i, &at) in cries.iter().enumerate() {
        synth::mix_into(&mut audio, &synth::cry(RATE, 6.0, 0.4), at * RATE as usize);
        synth::mix_into(
            &mut audio,
            &synth::clap(RATE, 1.0, 0.9, 10 + i as u64),
            (at + 200) * RATE as usize,
        );
    }
    synth::mix_into(
        &mut audio,
        &synth::speech_like(RATE, 20.0, 0.2, 7),
        2000 * RATE as usize,
    );
    let wav = write_wav(dir.path(), "hour.wav", &audio);
    let config = write_config(dir.path(), SYNTH_DETECTOR);
    let started = std::time::Instant::now();
    let run = run_fast(&config, &wav, &[]);
    // Reported, not asserted: wall time depends on the machine.
    println!(
        "replayed {hour} s of audio in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let s = run.summary();
    println!("summary: {s}");
    assert!((f64_of(s, "audio_seconds") - hour).abs() < 0.1);
    assert_eq!(s["episodes"], 3, "{s}");
    // Three cries and the speech open the gate; the claps and the room do not.
    assert_eq!(s["gate_openings"], 4, "{s}");
    let open = f64_of(s, "gate_open_seconds");
    assert!(open < 60.0, "gate open {open} s of an hour");
    // The detector runs every 0.5 s of open gate (plus a window finishing after a close):
    // with the gate closed it never runs.
    let detector = s["detector_inferences"].as_u64().unwrap() as f64;
    let openings = s["gate_openings"].as_u64().unwrap() as f64;
    assert!(detector > 0.0);
    assert!(
        detector <= open / 0.5 + openings,
        "{detector} detector windows for {open} s of open gate"
    );
    // Against one every 0.5 s for the whole hour without a gate.
    assert!(detector < hour / 0.5 / 50.0, "{detector}");
}

/// Raw PCM on stdin at another rate and channel count: `arecord ... | babycryd run --input -`.
#[test]
fn raw_pcm_on_stdin_is_downmixed_and_resampled() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SYNTH_DETECTOR);
    let mono = babycry::resample::resample_all(&scene(), RATE, 16_000).unwrap();
    let bytes: Vec<u8> = mono
        .iter()
        .flat_map(|&s| {
            let v = (s * 32767.0).round() as i16;
            // Stereo: the same signal on both channels.
            [v.to_le_bytes(), v.to_le_bytes()].concat()
        })
        .collect();
    let out = common::output_with_stdin(
        Command::new(bin()).arg("--config").arg(&config).args([
            "run",
            "--no-mqtt",
            "--input",
            "-",
            "--format",
            "s16le",
            "--rate",
            "16000",
            "--channels",
            "2",
        ]),
        bytes,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = RunOutput {
        code: out.status.code(),
        events: parse_events(&String::from_utf8_lossy(&out.stdout)),
        stderr: stderr.into_owned(),
    };
    let starts = run.of_type("episode_start");
    assert_eq!(starts.len(), 1, "{:#?}", run.events);
    let start = f64_of(starts[0], "start_s");
    assert!((9.4..=13.0).contains(&start), "start_s = {start}");
    assert_eq!(run.summary()["gate_openings"], 2);
    assert!((f64_of(run.summary(), "audio_seconds") - 60.0).abs() < 0.5);
}

/// 3 s of quiet room replayed with `--events <events>` (`dir`'s `events.jsonl` when None).
fn quiet_run_with_events(dir: &std::path::Path, events: Option<&str>) -> RunOutput {
    let wav = write_wav(dir, "quiet.wav", &synth::room_tone(RATE, 3.0, 0.002, 8));
    let config = write_config(dir, "");
    let file = dir.join("events.jsonl");
    let events = events.unwrap_or_else(|| file.to_str().unwrap());
    run_fast(&config, &wav, &["--events", events])
}

#[test]
fn events_go_to_a_file_with_dash_dash_events() {
    let dir = tempfile::tempdir().unwrap();
    let run = quiet_run_with_events(dir.path(), None);
    let events = dir.path().join("events.jsonl");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.events.is_empty(),
        "stdout should be empty: {:?}",
        run.events
    );
    let lines = parse_events(&std::fs::read_to_string(&events).unwrap());
    let states = audio_states(&lines);
    assert_eq!(states, ["connecting", "running", "ended"]);
    assert_eq!(lines.last().unwrap()["type"], "summary");
    assert_eq!(lines.last().unwrap()["detector_inferences"], 0);
}

/// Event records that could not be written (a full disk) make the run end with an error
/// that counts them, after it has gone on trying; before, it ended with 0 as if they had
/// all been written.
#[test]
fn events_that_could_not_be_written_end_the_run_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = quiet_run_with_events(dir.path(), Some("/dev/full"));
    assert_eq!(run.code, Some(5), "{}", run.stderr);
    // connecting, running, ended and the summary: four records, the error logged once.
    assert!(
        run.stderr
            .contains("babycryd: /dev/full: 4 event record(s) could not be written"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches("cannot write an event").count(), 1);
}

/// `--events` on a named pipe whose reader went away: the records lost there end the run
/// with exit 5 and the count, as on a full disk. Before, the broken pipe was taken for a
/// closed stdout (`| head`) and the run ended with 0 and no word at the end.
#[test]
fn events_lost_to_a_pipe_whose_reader_left_end_the_run_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let config = write_config(dir.path(), "");
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--input", "-", "--rate", "8000", "--events"])
        .arg(&fifo)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader opens the pipe without waiting for a writer (a daemon that never opened
    // it must fail this test, not hang it), reads until the daemon's first record is in,
    // and leaves. The audio, and with it every record after the first, comes after that.
    {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut first = Vec::new();
        while !first.contains(&b'\n') {
            assert!(
                std::time::Instant::now() < deadline,
                "no record on the pipe: {:?}",
                child.try_wait()
            );
            let mut buf = [0u8; 4096];
            match reader.read(&mut buf) {
                Ok(n) => first.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let pcm: Vec<u8> = synth::room_tone(RATE, 3.0, 0.002, 8)
        .iter()
        .flat_map(|&x| ((x * 32767.0) as i16).to_le_bytes())
        .collect();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pcm).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let fifo = fifo.display().to_string();
    let end = stderr.lines().last().unwrap_or_default();
    assert!(
        end.starts_with(&format!("babycryd: {fifo}: "))
            && end.contains("event record(s) could not be written")
            && end.contains("Broken pipe"),
        "{stderr}"
    );
}

/// Real crying from ../shared/data (the first three verified donateacry recordings) with
/// the default thresholds, each followed by a real non-cry recording (speech, music,
/// household noise, baby laughter from negatives/) and quiet: episodes start within 3 s
/// of a cry's onset, never inside the negatives, and end once the cry is over.
#[test]
fn real_cries_start_episodes_and_real_negatives_do_not() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let first_of = |manifest: &str, column: usize, value: &str, n: usize| -> Vec<String> {
        let text = std::fs::read_to_string(data.join(manifest)).unwrap();
        text.lines()
            .skip(1)
            .filter(|l| l.split(',').nth(column) == Some(value))
            .map(|l| l.split(',').next().unwrap().to_string())
            .take(n)
            .collect()
    };
    let verified = first_of("donateacry/manifest.csv", 2, "verified", 3);
    assert_eq!(verified.len(), 3, "need 3 verified cries in the manifest");
    let negatives: Vec<String> = ["speech", "music", "household", "baby_laugh"]
        .iter()
        .flat_map(|c| first_of("negatives/manifest.csv", 1, c, 1))
        .collect();
    assert_eq!(negatives.len(), 4, "need one negative of each category");
    let load = |path: std::path::PathBuf| {
        let rec = babycry::decode::decode_file(&path).unwrap();
        babycry::resample::resample_all(&rec.samples, rec.sample_rate, RATE).unwrap()
    };
    let secs = |audio: &[f32]| audio.len() as f64 / f64::from(RATE);
    let dir = tempfile::tempdir().unwrap();
    let mut audio = synth::room_tone(RATE, 5.0, 0.002, 9);
    // (onset of crying: the first 32 ms frame above -30 dBFS, end of the recording).
    let mut cries = Vec::new();
    let mut negative_spans = Vec::new();
    for (i, file) in verified.iter().enumerate() {
        let rec = load(data.join("donateacry").join(file));
        let loud = rec
            .chunks(256)
            .position(|f| {
                let rms = (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt();
                20.0 * rms.max(1e-9).log10() > -30.0
            })
            .unwrap_or(0);
        let at = secs(&audio);
        cries.push((at + (loud * 256) as f64 / f64::from(RATE), at + secs(&rec)));
        audio.extend_from_slice(&rec);
        // Quiet longer than quiet_seconds plus the cooldown, then a negative, then quiet.
        audio.extend(synth::room_tone(RATE, 80.0, 0.002, 11 + i as u64));
        for negative in negatives.iter().skip(i).step_by(verified.len()) {
            let rec = load(data.join("negatives").join(negative));
            let at = secs(&audio);
            negative_spans.push((negative.clone(), at, at + secs(&rec)));
            audio.extend_from_slice(&rec);
            audio.extend(synth::room_tone(RATE, 10.0, 0.002, 21 + i as u64));
        }
    }
    let wav = write_wav(dir.path(), "real.wav", &audio);
    let config = write_config(dir.path(), "");
    let run = run_fast(&config, &wav, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let episodes: Vec<(f64, f64)> = run
        .of_type("episode_end")
        .iter()
        .map(|e| (f64_of(e, "start_s"), f64_of(e, "end_s")))
        .collect();
    println!("cries (onset, end) {cries:?}\nnegatives {negative_spans:?}\nepisodes {episodes:?}");
    for (start, end) in &episodes {
        let Some((onset, cry_end)) = cries
            .iter()
            .find(|(onset, cry_end)| start + 0.6 >= *onset && start <= cry_end)
        else {
            panic!("episode at {start} s matches no cry: {cries:?}, negatives {negative_spans:?}");
        };
        assert!(
            start - onset <= 3.0,
            "episode at {start} s, cry from {onset} s"
        );
        // The last crying window ends inside the recording; the episode closes later.
        assert!(
            end > start && *end <= cry_end + 1.0,
            "episode {start}..{end}, cry ends {cry_end}"
        );
    }
    // Most recordings make one (the detector's measured recall is not 100 %).
    assert!(
        episodes.len() >= 2,
        "episodes {episodes:?}, cries {cries:?}"
    );
}

#[test]
fn a_broken_model_exits_with_the_model_code_and_a_missing_file_with_the_input_code() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    for f in ["cry-detector.toml", "cry-reason.toml", "cry-reason.onnx"] {
        std::fs::copy(repo().join("models").join(f), models.join(f)).unwrap();
    }
    std::fs::write(models.join("cry-detector.onnx"), b"not a model").unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\ndir = {:?}\n[mqtt]\nenabled = false\n",
            models.display().to_string()
        ),
    )
    .unwrap();
    let wav = write_wav(dir.path(), "q.wav", &synth::room_tone(RATE, 1.0, 0.002, 1));
    let run = run_fast(&config, &wav, &[]);
    assert_eq!(run.code, Some(4), "{}", run.stderr);
    assert!(run.stderr.contains("cry-detector.onnx"), "{}", run.stderr);
    // Models that load but cannot work together (the reason model as the detector) are
    // as final: the model code, which systemd does not restart (RestartPreventExitStatus).
    let mismatched = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&mismatched).unwrap();
    std::fs::write(
        &mismatched,
        text.replace("[models]\n", "[models]\ndetector = \"cry-reason.onnx\"\n"),
    )
    .unwrap();
    let run = run_fast(&mismatched, &wav, &[]);
    assert_eq!(run.code, Some(4), "{}", run.stderr);
    assert!(run.stderr.contains("no positive label"), "{}", run.stderr);

    let good = write_config(dir.path(), "");
    let run = run_fast(&good, &dir.path().join("missing.wav"), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("missing.wav"), "{}", run.stderr);
}

/// A recording at a rate the resampler does not take (a WAV header saying 500 Hz) is an
/// input that cannot be processed: the daemon says why and exits with the input code,
/// instead of reopening it every second forever.
#[test]
fn a_recording_at_an_unsupported_rate_exits_with_the_input_code() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("rate500.wav");
    babycry::decode::write_wav_i16(&wav, &synth::room_tone(500, 2.0, 0.01, 1), 500).unwrap();
    let config = write_config(dir.path(), "");
    let stderr_path = dir.path().join("stderr.txt");
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--fast", "--no-mqtt", "--input"])
        .arg(&wav)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "still running after 30 s:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("babycryd: ") && last.contains("rate500.wav") && last.contains("500 Hz"),
        "{stderr}"
    );
}

/// The end of a recording at another rate reaches the analysis: the resampler's last
/// partial chunk and the samples its delay holds are flushed when the file ends.
#[test]
fn a_44k1_or_48_khz_recording_is_analysed_to_its_last_sample() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    for rate in [48_000u32, 44_100] {
        // It ends loud, so rubato (not the quiet room's box average) converts the end
        // and its delay holds samples at the end of the file.
        let mut audio = synth::room_tone(rate, 20.0, 0.002, 12);
        synth::mix_into(&mut audio, &synth::cry(rate, 4.0, 0.5), 16 * rate as usize);
        assert_eq!(audio.len(), 20 * rate as usize);
        let wav = dir.path().join(format!("tail-{rate}.wav"));
        babycry::decode::write_wav_i16(&wav, &audio, rate).unwrap();
        let run = run_fast(&config, &wav, &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let seconds = f64_of(run.summary(), "audio_seconds");
        assert!(
            (seconds - 20.0).abs() < 0.001,
            "{rate} Hz: {seconds} s analysed of 20 s"
        );
    }
}

/// A closed stderr (`babycryd run 2>&1 | head`, a log reader that went away) costs the
/// log lines, not the monitor: the whole demo night is still analysed and the run exits
/// 0 (a panic in tracing's fallback `eprintln!` made it 101, mid-night).
/// A closed stdout (`babycryd run --demo | head`): its reader had what it wanted, so the
/// run ends with 0 and no error (before: `ERROR ... cannot write an event: Broken pipe`).
#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    let out = run_with_closed(&["run", "--demo"], Closed::Stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(
        stderr.contains("stopped"),
        "the night was analysed: {stderr}"
    );
}

#[test]
fn a_closed_stderr_does_not_stop_the_monitor() {
    let out = run_with_closed(&["run", "--demo"], Closed::Stderr);
    assert_eq!(out.status.code(), Some(0));
    let events = parse_events(&String::from_utf8_lossy(&out.stdout));
    let summary = events.last().expect("records on stdout");
    assert_eq!(summary["type"], "summary", "{summary}");
    assert!(f64_of(summary, "audio_seconds") > 60.0, "{summary}");
    assert!(f64_of(summary, "episodes") >= 1.0, "{summary}");
}
