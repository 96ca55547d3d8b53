//! `babycryd bench`: times every stage of the pipeline on this machine, one thread, and
//! prints a table a user can paste into an issue.
//!
//! It owns the definitions behind the published performance figures (docs/performance.md):
//! what a "window" costs per stage (median and p95 over repeated runs), the real-time
//! factor of a quiet room (the daemon's always-on path, [`AlwaysOnPath`]: capture
//! conversion, the energy gate and the monitor, at 8 kHz and at 48 kHz) and of a crying
//! baby (everything: the detector every hop and the reason model every 7 s), the
//! models' multiply-accumulate counts (walked from tract's decluttered graph) and the
//! fraction of this machine's peak they reach, the model load time and the process's peak
//! resident memory (`VmHWM`), and with `--starts N` the time from starting `babycryd run`
//! to its `READY=1`. Numbers are measured, never asserted: speed budgets live in the
//! criterion benches (`benches/pipeline.rs`) as ratios, not in tests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::Cost;

use crate::cli::Cli;
use crate::config::Config;
use crate::decode::{decode_file, pcm_s16le, write_wav_i16};
use crate::features::{FrontEnd, MelMatrix};
use crate::model::Model;
use crate::monitor::{CryMonitor, MonitorSettings};
use crate::resample::resample_all;
use crate::source::{CaptureConverter, StreamFormat};

/// The capture rate the resampling stage is timed at (USB microphones default to it).
pub const CAPTURE_RATE: u32 = 48_000;
/// A lower native rate many USB microphones also offer (`[audio] sample_rate`).
pub const LOW_CAPTURE_RATE: u32 = 16_000;
/// Seconds of audio one reason window covers; every per-window figure is per this much audio.
pub const WINDOW_SECONDS: f64 = 7.0;
/// Peak single-core throughput of the reference machine (AVX2 FMA, issue 8), FLOP/s.
pub const REFERENCE_PEAK_FLOPS: f64 = 100e9;
/// Seconds between detector windows in the daemon (its `[detector] hop_seconds` default).
pub const DETECTOR_HOP_SECONDS: f64 = 0.5;

/// Reason windows per [`WINDOW_SECONDS`] of crying at the daemon's default
/// `[episode] reason_overlap` (0.5: one every 3.5 s, two per 7 s).
fn reason_windows_per_window() -> f64 {
    1.0 / (1.0 - crate::decision::EpisodeConfig::default().reason_overlap)
}
/// Audio per block handed to the always-on path: 10 ms, what a capture callback delivers.
const BLOCK_SECONDS: f64 = 0.01;

/// Samples in one [`BLOCK_SECONDS`] block at `rate`.
fn block_samples(rate: u32) -> usize {
    ((f64::from(rate) * BLOCK_SECONDS) as usize).max(1)
}
/// 7 s windows of quiet room fed before timing: long enough for the monitor's history
/// buffer to reach its steady size (it trims at twice its 40 s).
const WARM_UP_WINDOWS: usize = 15;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub models: crate::cli::ModelArgs,
    /// Recordings to time decoding and the models on (default: a synthetic 7 s cry).
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// Timed repetitions of each stage (after one untimed warm-up).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(3..=100_000))]
    pub iterations: u32,
    /// Peak FLOP/s of one core, for the fraction of peak (default: the reference machine).
    #[arg(long, default_value_t = REFERENCE_PEAK_FLOPS, value_parser = peak_flops)]
    pub peak_flops: f64,
    /// Also time this many starts of `babycryd run` to READY=1 (0: skip).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub starts: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `--peak-flops`: a positive, finite FLOP/s figure (1e6 to 1e15, a microcontroller to
/// far beyond any one core); zero or a negative one would print an infinite or negative
/// fraction of peak as if it were a measurement.
fn peak_flops(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (1e6..=1e15).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a FLOP/s figure within 1e6..=1e15")),
    }
}

/// Median and 95th percentile of one stage, milliseconds per 7 s window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StageTime {
    pub median_ms: f64,
    pub p95_ms: f64,
}

impl StageTime {
    /// From raw per-call timings in milliseconds, each scaled by `per_window`.
    pub fn from_samples(samples_ms: &mut [f64], per_window: f64) -> Self {
        samples_ms.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            let i = ((samples_ms.len() - 1) as f64 * q).round() as usize;
            samples_ms[i] * per_window
        };
        Self {
            median_ms: pick(0.5),
            p95_ms: pick(0.95),
        }
    }
    fn scaled(self, k: f64) -> Self {
        Self {
            median_ms: self.median_ms * k,
            p95_ms: self.p95_ms * k,
        }
    }
    fn plus(self, o: Self) -> Self {
        Self {
            median_ms: self.median_ms + o.median_ms,
            p95_ms: self.p95_ms + o.p95_ms,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub stage: String,
    /// What one call covers and how it was scaled to a 7 s window.
    pub unit: String,
    pub time: StageTime,
}

/// The cost of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    pub name: String,
    pub path: String,
    pub input_shape: Vec<usize>,
    pub macs: u64,
    /// Network alone, one window.
    pub inference: StageTime,
    /// `2 * macs / peak`: the time the MACs imply at the machine's peak.
    pub floor_ms: f64,
    /// `floor / median`.
    pub fraction_of_peak: f64,
    pub load_ms: f64,
}

/// Everything `babycryd bench` measures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub inputs: Vec<String>,
    pub iterations: u32,
    pub peak_flops: f64,
    pub stages: Vec<StageRow>,
    pub models: Vec<ModelFigures>,
    /// Front end + one detector window + reason model, ms (the cry-window path).
    pub cry_window_path: StageTime,
    /// `2 * (detector + reason MACs) / peak` over the cry-window path median.
    pub cry_window_floor_ratio: f64,
    /// Audio seconds per CPU second in a quiet room (gate closed) with an 8 kHz source:
    /// the monitor's framing, history and gate.
    pub realtime_quiet_8k: f64,
    /// The same with a 16 kHz source (`[audio] sample_rate = 16000`): capture conversion
    /// too (the box average below the room's level, [`crate::resample::StreamResampler`]).
    pub realtime_quiet_16k: f64,
    /// The same with a 48 kHz source.
    pub realtime_quiet_48k: f64,
    /// Gate openings while the quiet room was timed (0, or the quiet figures are wrong).
    pub quiet_gate_openings: u64,
    /// Audio seconds per CPU second while crying (48 kHz conversion + gate + detector
    /// every hop + reason every window).
    pub realtime_crying: f64,
    /// Both models loaded and planned, ms.
    pub load_ms: f64,
    /// Starts of `babycryd run` (`--starts`).
    pub starts: Option<StartFigures>,
    /// `VmHWM` of this process, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The daemon's always-on path, driven directly: audio at the capture rate in 10 ms
/// blocks, converted as the capture thread does ([`CaptureConverter`]), then analysed by
/// a [`CryMonitor`] (framing, history, the energy gate, and the models when it opens).
#[derive(Debug)]
pub struct AlwaysOnPath {
    converter: CaptureConverter,
    monitor: CryMonitor,
    block: usize,
}

impl AlwaysOnPath {
    pub fn new(monitor: CryMonitor, capture_rate: u32) -> anyhow::Result<Self> {
        let format = StreamFormat {
            sample_rate: capture_rate,
            channels: 1,
        };
        Ok(Self {
            converter: CaptureConverter::new(format, monitor.sample_rate())?,
            monitor,
            block: block_samples(capture_rate),
        })
    }

    /// The daemon's default settings with the given models.
    pub fn with_models(
        reason: &Path,
        detector: Option<&Path>,
        capture_rate: u32,
    ) -> anyhow::Result<Self> {
        let monitor = CryMonitor::new(
            Model::load(reason)?,
            detector.map(Model::load).transpose()?,
            MonitorSettings::from_config(&Config::default()),
        )?;
        Self::new(monitor, capture_rate)
    }

    /// Feeds quiet room until the path is in its steady state: the monitor's history has
    /// reached the size it trims at and the buffer pool is filled.
    pub fn warm_up(&mut self) -> anyhow::Result<()> {
        let rate = self.converter.source_rate();
        let audio = quiet_room(rate, WINDOW_SECONDS as f32);
        for _ in 0..WARM_UP_WINDOWS {
            self.feed(&audio)?;
        }
        Ok(())
    }

    /// Feeds mono audio at the capture rate; what the monitor emits is dropped.
    pub fn feed(&mut self, audio: &[f32]) -> anyhow::Result<()> {
        for block in audio.chunks(self.block) {
            let samples = self.converter.convert(block)?;
            self.monitor.push(&samples, &mut |_| {})?;
        }
        Ok(())
    }

    pub fn monitor(&self) -> &CryMonitor {
        &self.monitor
    }
}

fn time_ms<T>(iterations: u32, mut f: impl FnMut() -> T) -> Vec<f64> {
    std::hint::black_box(f());
    (0..iterations)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// Multiply-accumulates of one inference, from each node's cost in tract's decluttered
/// (not yet kernel-optimised) graph with the input shape fixed.
pub fn count_macs(onnx: &Path, input_shape: &[usize]) -> anyhow::Result<u64> {
    let model = tract_onnx::onnx()
        .model_for_path(onnx)?
        .with_input_fact(0, f32::fact(input_shape).into())?
        .into_typed()?
        .into_decluttered()?;
    let mut macs = 0u64;
    for id in model.eval_order()? {
        let node = model.node(id);
        let inputs = model.node_input_facts(id)?;
        for (cost, count) in node.op.cost(&inputs)? {
            if matches!(cost, Cost::FMA(_)) {
                macs += u64::try_from(count.to_i64()?).context("negative MAC count")?;
            }
        }
    }
    Ok(macs)
}

/// `VmHWM` (peak resident set) of this process in MiB, where /proc has it.
pub fn peak_rss_mib() -> Option<f64> {
    vm_hwm_mib(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmHWM` in MiB from the text of a `/proc/<pid>/status`.
fn vm_hwm_mib(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Quiet room tone at `rate`: what the always-on path sees most of the night.
pub fn quiet_room(rate: u32, seconds: f32) -> Vec<f32> {
    crate::synth::room_tone(rate, seconds, 0.002, 3)
}

/// Times `babycryd run` (this executable) from spawn to the READY=1 it sends on its
/// $NOTIFY_SOCKET, `starts` times: models loaded and optimised, audio flowing, MQTT off.
/// Each process is killed once it is ready. The audio is a quiet room streamed as raw
/// 48 kHz PCM on stdin (`--input -`, the `arecord | babycryd` path), paced at 10x real
/// time, so the process holds what it holds with a microphone, not a test recording's
/// decoder and file buffers.
pub fn start_to_ready(reason: &Path, starts: u32) -> anyhow::Result<StartFigures> {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let models_dir = reason.parent().unwrap_or(Path::new("."));
    let config = dir.path().join("babycryd.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\ndir = {:?}\nreason = {:?}\n\n[mqtt]\nenabled = false\n",
            models_dir.display().to_string(),
            reason.file_name().unwrap_or_default().to_string_lossy()
        ),
    )?;
    let pcm: std::sync::Arc<Vec<u8>> =
        std::sync::Arc::new(pcm_s16le(&quiet_room(CAPTURE_RATE, 1.0)).collect());
    let exe = std::env::current_exe().context("finding the babycryd executable")?;
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for i in 0..starts {
        let socket_path = dir.path().join(format!("notify-{i}.sock"));
        let socket = UnixDatagram::bind(&socket_path)?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let t = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .args(["run", "--no-mqtt", "--input", "-", "--format", "s16le"])
            .args(["--rate", &CAPTURE_RATE.to_string(), "--channels", "1"])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting babycryd run")?;
        let mut stdin = child.stdin.take().context("the child's stdin")?;
        let second = std::sync::Arc::clone(&pcm);
        // Ends with a broken pipe once the child is killed.
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            while stdin.write_all(&second).is_ok() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        let mut buf = [0u8; 4096];
        let ready = loop {
            match socket.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => {
                    break Ok(t.elapsed().as_secs_f64() * 1e3)
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let _ = child.kill();
        let _ = child.wait();
        let _ = feeder.join();
        times.push(ready.context("no READY=1 within 10 s")?);
        rss.extend(status.ok().as_deref().and_then(vm_hwm_mib));
    }
    Ok(StartFigures {
        ready_ms: StageTime::from_samples(&mut times, 1.0),
        peak_rss_at_ready_mib: rss.into_iter().reduce(f64::max),
    })
}

/// What `--starts` measures of the daemon itself.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StartFigures {
    /// From spawning `babycryd run` to its READY=1, ms.
    pub ready_ms: StageTime,
    /// The daemon's own `VmHWM` when it said READY (models loaded, audio flowing), MiB.
    pub peak_rss_at_ready_mib: Option<f64>,
}

/// A synthetic crying window at `rate`: room tone with a cry-like signal mixed in.
pub fn synthetic_cry(rate: u32, seconds: f32) -> Vec<f32> {
    let mut audio = crate::synth::room_tone(rate, seconds, 0.002, 7);
    crate::synth::mix_into(&mut audio, &crate::synth::cry(rate, seconds - 0.5, 0.5), 0);
    audio
}

/// Runs the whole benchmark.
pub fn measure(
    reason_path: &Path,
    detector_path: Option<&Path>,
    inputs: &[PathBuf],
    iterations: u32,
    peak_flops: f64,
) -> anyhow::Result<BenchReport> {
    let t = Instant::now();
    let mut reason = Model::load(reason_path)?;
    let mut detector = detector_path.map(Model::load).transpose()?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let rate = reason.sidecar().audio.sample_rate;
    let mut stages = Vec::new();

    // Decode: the given recordings, else a synthetic cry written as a 48 kHz WAV.
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let files: Vec<PathBuf> = if inputs.is_empty() {
        let wav = scratch.path().join("cry.wav");
        write_wav_i16(&wav, &synthetic_cry(CAPTURE_RATE, 7.0), CAPTURE_RATE)
            .context("writing the synthetic recording")?;
        vec![wav]
    } else {
        inputs.to_vec()
    };
    let mut decode_ms = Vec::new();
    let mut recordings = Vec::new();
    let per_file = (iterations as usize).div_ceil(files.len()).max(1) as u32;
    for f in &files {
        let audio = decode_file(f)?;
        let scale = WINDOW_SECONDS / audio.duration_seconds().max(1e-3);
        decode_ms.extend(
            time_ms(per_file, || decode_file(f).map(|a| a.samples.len()))
                .into_iter()
                .map(|ms| ms * scale),
        );
        recordings.push(resample_all(&audio.samples, audio.sample_rate, rate)?);
    }
    stages.push(StageRow {
        stage: "decode".into(),
        unit: format!("{} file(s), scaled to 7 s", files.len()),
        time: StageTime::from_samples(&mut decode_ms, 1.0),
    });

    // Capture conversion, as the capture thread does it: 10 ms blocks of 48 kHz into
    // pooled buffers; crying is loud above the room, so it all goes through rubato.
    let capture = synthetic_cry(CAPTURE_RATE, WINDOW_SECONDS as f32);
    let format = StreamFormat {
        sample_rate: CAPTURE_RATE,
        channels: 1,
    };
    let mut converter = CaptureConverter::new(format, rate)?;
    let block = block_samples(CAPTURE_RATE);
    let mut resample_ms = time_ms(iterations, || {
        capture
            .chunks(block)
            .map(|b| converter.convert(b).map_or(0, |s| s.len()))
            .sum::<usize>()
    });
    let resample = StageTime::from_samples(&mut resample_ms, 1.0);
    stages.push(StageRow {
        stage: format!("capture conversion {CAPTURE_RATE} -> {rate} Hz"),
        unit: "7 s of crying in 10 ms blocks (rubato, pooled buffers)".into(),
        time: resample,
    });

    // The quiet room through the real always-on path, at 8, 16 and 48 kHz.
    let mut quiet_gate_openings = 0;
    let mut quiet = Vec::new();
    for capture_rate in [rate, LOW_CAPTURE_RATE, CAPTURE_RATE] {
        let mut path = AlwaysOnPath::with_models(reason_path, detector_path, capture_rate)?;
        path.warm_up()?;
        let audio = quiet_room(capture_rate, WINDOW_SECONDS as f32);
        let before = path.monitor().summary().gate_openings;
        let mut ms = time_ms(iterations, || path.feed(&audio).is_ok());
        quiet_gate_openings += path.monitor().summary().gate_openings - before;
        let time = StageTime::from_samples(&mut ms, 1.0);
        stages.push(StageRow {
            stage: format!("quiet room at {capture_rate} Hz: always-on path"),
            unit: "7 s in 10 ms blocks (conversion, gate, monitor)".into(),
            time,
        });
        quiet.push(time);
    }
    // The always-on path at the models' rate: what crying audio costs besides conversion
    // and the models.
    let always_on = quiet[0];

    let mut models = Vec::new();
    let mut path_time = StageTime {
        median_ms: 0.0,
        p95_ms: 0.0,
    };
    let mut crying_time = resample.plus(always_on);
    let mut path_macs = 0u64;
    let mut time_model = |model: &mut Model,
                          windows_per_7s: f64,
                          stages: &mut Vec<StageRow>,
                          models: &mut Vec<ModelFigures>|
     -> anyhow::Result<StageTime> {
        let sc = model.sidecar().clone();
        let n = sc.window_samples();
        // The first window of every recording, zero-padded; timed round-robin.
        let windows: Vec<Vec<f32>> = recordings
            .iter()
            .map(|r| {
                let mut w = vec![0.0f32; n];
                let take = n.min(r.len());
                w[..take].copy_from_slice(&r[..take]);
                w
            })
            .collect();
        let mut fe = FrontEnd::new(&sc.features, sc.audio.sample_rate, n)?;
        let mut features: Vec<MelMatrix> = windows.iter().map(|w| fe.features(w)).collect();
        let mut next = 0usize;
        let mut fe_ms = time_ms(iterations, || {
            next = (next + 1) % windows.len();
            fe.features_into(&windows[next], &mut features[next])
        });
        let fe_time = StageTime::from_samples(&mut fe_ms, 1.0);
        let mut nn_ms = time_ms(iterations, || {
            next = (next + 1) % windows.len();
            model.predict_features(&features[next])
        });
        let nn_time = StageTime::from_samples(&mut nn_ms, 1.0);
        let t = Instant::now();
        let _ = Model::load(model.path())?;
        let one_load_ms = t.elapsed().as_secs_f64() * 1e3;
        let macs = count_macs(model.path(), &sc.input.shape)?;
        let floor_ms = 2.0 * macs as f64 / peak_flops * 1e3;
        stages.push(StageRow {
            stage: format!("{}: front end", sc.name),
            unit: format!("one {} s window", sc.audio.window_seconds),
            time: fe_time,
        });
        stages.push(StageRow {
            stage: format!("{}: network", sc.name),
            unit: format!("one {} s window", sc.audio.window_seconds),
            time: nn_time,
        });
        models.push(ModelFigures {
            name: sc.name.clone(),
            path: model.path().display().to_string(),
            input_shape: sc.input.shape.clone(),
            macs,
            inference: nn_time,
            floor_ms,
            fraction_of_peak: floor_ms / nn_time.median_ms,
            load_ms: one_load_ms,
        });
        path_macs += macs;
        let one = fe_time.plus(nn_time);
        crying_time = crying_time.plus(one.scaled(windows_per_7s));
        Ok(one)
    };
    if let Some(d) = detector.as_mut() {
        // A long cry runs a detector window every hop: 14 per 7 s at 0.5 s.
        let per_7s = WINDOW_SECONDS / DETECTOR_HOP_SECONDS;
        path_time = path_time.plus(time_model(d, per_7s, &mut stages, &mut models)?);
    }
    // The cry-window path is one window of each model; crying costs the default overlap's
    // reason windows.
    let reason_per_7s = reason_windows_per_window();
    let one_reason = time_model(&mut reason, reason_per_7s, &mut stages, &mut models)?;
    path_time = path_time.plus(one_reason);

    let floor_ms = 2.0 * path_macs as f64 / peak_flops * 1e3;
    Ok(BenchReport {
        inputs: if inputs.is_empty() {
            vec!["<synthetic 7 s cry at 48 kHz>".into()]
        } else {
            inputs.iter().map(|p| p.display().to_string()).collect()
        },
        iterations,
        peak_flops,
        stages,
        cry_window_path: path_time,
        cry_window_floor_ratio: path_time.median_ms / floor_ms,
        realtime_quiet_8k: WINDOW_SECONDS * 1e3 / quiet[0].median_ms,
        realtime_quiet_16k: WINDOW_SECONDS * 1e3 / quiet[1].median_ms,
        realtime_quiet_48k: WINDOW_SECONDS * 1e3 / quiet[2].median_ms,
        quiet_gate_openings,
        realtime_crying: WINDOW_SECONDS * 1e3 / crying_time.median_ms,
        models,
        load_ms,
        starts: None,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The report as a Markdown table.
pub fn format_report(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "babycryd {} bench, one thread, {} iterations, input: {}",
        env!("CARGO_PKG_VERSION"),
        r.iterations,
        if r.inputs.len() == 1 {
            r.inputs[0].clone()
        } else {
            format!("{} recordings", r.inputs.len())
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| stage | per | median ms | p95 ms |");
    let _ = writeln!(s, "|---|---|---:|---:|");
    for row in &r.stages {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {:.4} |",
            row.stage, row.unit, row.time.median_ms, row.time.p95_ms
        );
    }
    let _ = writeln!(
        s,
        "| **cry-window path** | front ends + networks, one window each | {:.4} | {:.4} |",
        r.cry_window_path.median_ms, r.cry_window_path.p95_ms
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| model | input | MACs | network median ms | floor ms (2 MACs / {:.0} GFLOP/s) | fraction of peak | load ms |",
        r.peak_flops / 1e9
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for m in &r.models {
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {:.4} | {:.4} | {:.1} % | {:.1} |",
            m.name,
            m.input_shape,
            m.macs,
            m.inference.median_ms,
            m.floor_ms,
            100.0 * m.fraction_of_peak,
            m.load_ms
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- cry-window path: {:.3} ms median, {:.1}x its MAC floor",
        r.cry_window_path.median_ms, r.cry_window_floor_ratio
    );
    let _ = writeln!(
        s,
        "- real-time factor, quiet room (always-on path, gate closed): {:.0}x at 8 kHz, {:.0}x at 16 kHz, {:.0}x at 48 kHz ({} gate openings while timed)",
        r.realtime_quiet_8k, r.realtime_quiet_16k, r.realtime_quiet_48k, r.quiet_gate_openings
    );
    let _ = writeln!(
        s,
        "- real-time factor, crying (resample + gate + detector every {} s + reason every {} s): {:.0}x",
        DETECTOR_HOP_SECONDS,
        WINDOW_SECONDS / reason_windows_per_window(),
        r.realtime_crying
    );
    let _ = writeln!(s, "- load, all models: {:.1} ms", r.load_ms);
    if let Some(f) = r.starts {
        let _ = writeln!(
            s,
            "- start to READY=1 (`babycryd run`, models loaded, audio flowing): {:.1} ms median, {:.1} ms p95",
            f.ready_ms.median_ms, f.ready_ms.p95_ms
        );
        if let Some(m) = f.peak_rss_at_ready_mib {
            let _ = writeln!(s, "- daemon peak RSS (VmHWM) at READY: {m:.1} MiB");
        }
    }
    match r.peak_rss_mib {
        Some(m) => {
            let _ = writeln!(
                s,
                "- bench process peak RSS (VmHWM, several model copies): {m:.1} MiB"
            );
        }
        None => {
            let _ = writeln!(s, "- peak RSS: unknown (no /proc/self/status)");
        }
    }
    s
}

/// `babycryd bench`.
pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let (_, reason_path, detector_path) = crate::cli::model_paths(cli, &args.models)?;
    let mut report = measure(
        &reason_path,
        detector_path.as_deref(),
        &args.input,
        args.iterations,
        args.peak_flops,
    )?;
    if args.starts > 0 {
        report.starts = Some(start_to_ready(&reason_path, args.starts)?);
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", format_report(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_sorted_sample() {
        let mut v: Vec<f64> = (1..=21).rev().map(f64::from).collect();
        let t = StageTime::from_samples(&mut v, 2.0);
        assert_eq!(t.median_ms, 22.0);
        assert_eq!(t.p95_ms, 40.0);
    }

    #[test]
    fn the_always_on_path_converts_and_gates_without_opening_in_a_quiet_room() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut path =
            AlwaysOnPath::with_models(&models.join("cry-reason.onnx"), None, CAPTURE_RATE).unwrap();
        path.feed(&quiet_room(CAPTURE_RATE, 20.0)).unwrap();
        let s = path.monitor().summary();
        // 20 s at 48 kHz arrive as 20 s at 8 kHz, less the resampler's first chunk.
        assert!((s.audio_seconds - 20.0).abs() < 0.3, "{}", s.audio_seconds);
        assert_eq!(s.gate_openings, 0);
        path.feed(&synthetic_cry(CAPTURE_RATE, 7.0)).unwrap();
        assert!(path.monitor().summary().gate_openings >= 1);
    }
}
