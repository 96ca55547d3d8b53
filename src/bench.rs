//! `babycryd bench`: times every stage of the pipeline on this machine, one thread, and
//! prints a table a user can paste into an issue.
//!
//! It owns the definitions behind the published performance figures (docs/performance.md):
//! what a "window" costs per stage (median and p95 over repeated runs), the real-time
//! factor of a quiet room (capture rate conversion and the energy gate only) and of a
//! crying baby (everything: the detector every hop and the reason model every 7 s), the
//! models' multiply-accumulate counts (walked from tract's decluttered graph) and the
//! fraction of this machine's peak they reach, the model load time and the process's peak
//! resident memory (`VmHWM`). Numbers are measured, never asserted: speed budgets live in
//! the criterion benches (`benches/pipeline.rs`) as ratios, not in tests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::Cost;

use crate::cli::Cli;
use crate::decode::{decode_file, write_wav_i16};
use crate::features::{FrontEnd, MelMatrix};
use crate::model::Model;
use crate::resample::{resample_all, StreamResampler};

/// The capture rate the resampling stage is timed at (USB microphones default to it).
pub const CAPTURE_RATE: u32 = 48_000;
/// Seconds of audio one reason window covers; every per-window figure is per this much audio.
pub const WINDOW_SECONDS: f64 = 7.0;
/// Peak single-core throughput of the reference machine (AVX2 FMA, issue 8), FLOP/s.
pub const REFERENCE_PEAK_FLOPS: f64 = 100e9;
/// Seconds between detector windows in the daemon (its `[detector] hop_seconds` default).
pub const DETECTOR_HOP_SECONDS: f64 = 0.5;
/// Frame of the stand-in energy meter: the bench does not drive `gate::EnergyGate` yet.
const GATE_FRAME: usize = 80;

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
    #[arg(long, default_value_t = REFERENCE_PEAK_FLOPS)]
    pub peak_flops: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
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
    /// Audio seconds per CPU second with the gate closed (resample + gate).
    pub realtime_quiet: f64,
    /// Audio seconds per CPU second while crying (resample + gate + detector every hop +
    /// reason every window).
    pub realtime_crying: f64,
    /// Both models loaded and planned, ms.
    pub load_ms: f64,
    /// `VmHWM` of this process, MiB.
    pub peak_rss_mib: Option<f64>,
    /// The gate row is a stand-in energy meter, not `gate::EnergyGate` (not wired in yet).
    pub gate_is_stand_in: bool,
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
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Stand-in for the energy gate: mean square per 10 ms frame compared with a floor, what
/// any level gate has to compute at least. Returns how many frames were above it.
pub fn energy_frames_above(samples: &[f32], floor: f32) -> usize {
    samples
        .chunks(GATE_FRAME)
        .filter(|f| f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32 > floor)
        .count()
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
    let tmp;
    let files: Vec<PathBuf> = if inputs.is_empty() {
        tmp = std::env::temp_dir().join(format!("babycryd-bench-{}.wav", std::process::id()));
        write_wav_i16(&tmp, &synthetic_cry(CAPTURE_RATE, 7.0), CAPTURE_RATE)
            .context("writing the synthetic recording")?;
        vec![tmp.clone()]
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
    if inputs.is_empty() {
        let _ = std::fs::remove_file(&files[0]);
    }
    stages.push(StageRow {
        stage: "decode".into(),
        unit: format!("{} file(s), scaled to 7 s", files.len()),
        time: StageTime::from_samples(&mut decode_ms, 1.0),
    });

    // Resample, as the daemon does it: a stream in 10 ms capture blocks.
    let capture = synthetic_cry(CAPTURE_RATE, WINDOW_SECONDS as f32);
    let mut stream = StreamResampler::new(CAPTURE_RATE, rate)?;
    let mut out = Vec::with_capacity(capture.len());
    let mut resample_ms = time_ms(iterations, || {
        for block in capture.chunks(CAPTURE_RATE as usize / 100) {
            out.clear();
            stream.push(block, &mut out).expect("rates were checked");
        }
        out.len()
    });
    let resample = StageTime::from_samples(&mut resample_ms, 1.0);
    stages.push(StageRow {
        stage: format!("resample {} -> {} Hz", CAPTURE_RATE, rate),
        unit: "7 s streamed in 10 ms blocks".into(),
        time: resample,
    });

    let quiet = crate::synth::room_tone(rate, WINDOW_SECONDS as f32, 0.002, 3);
    let mut gate_ms = time_ms(iterations, || energy_frames_above(&quiet, 1e-3));
    let gate = StageTime::from_samples(&mut gate_ms, 1.0);
    stages.push(StageRow {
        stage: "gate (stand-in: energy per 10 ms)".into(),
        unit: "7 s".into(),
        time: gate,
    });

    let mut models = Vec::new();
    let mut path_time = StageTime {
        median_ms: 0.0,
        p95_ms: 0.0,
    };
    let mut crying_time = resample.plus(gate);
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
        let per_7s =
            (WINDOW_SECONDS - d.sidecar().audio.window_seconds) / DETECTOR_HOP_SECONDS + 1.0;
        path_time = path_time.plus(time_model(d, per_7s, &mut stages, &mut models)?);
    }
    path_time = path_time.plus(time_model(&mut reason, 1.0, &mut stages, &mut models)?);

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
        realtime_quiet: WINDOW_SECONDS * 1e3 / resample.plus(gate).median_ms,
        realtime_crying: WINDOW_SECONDS * 1e3 / crying_time.median_ms,
        models,
        load_ms,
        peak_rss_mib: peak_rss_mib(),
        gate_is_stand_in: true,
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
        "- real-time factor, quiet room (resample + gate{}): {:.0}x",
        if r.gate_is_stand_in { " stand-in" } else { "" },
        r.realtime_quiet
    );
    let _ = writeln!(
        s,
        "- real-time factor, crying (resample + gate + detector every {} s + reason every 7 s): {:.0}x",
        DETECTOR_HOP_SECONDS, r.realtime_crying
    );
    let _ = writeln!(s, "- load, all models: {:.1} ms", r.load_ms);
    match r.peak_rss_mib {
        Some(m) => {
            let _ = writeln!(s, "- peak RSS (VmHWM): {m:.1} MiB");
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
    let report = measure(
        &reason_path,
        detector_path.as_deref(),
        &args.input,
        args.iterations,
        args.peak_flops,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", format_report(&report));
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
    fn the_energy_meter_counts_loud_frames() {
        let mut a = vec![0.0f32; 800];
        a[400..480].fill(0.5);
        assert_eq!(energy_frames_above(&a, 0.01), 1);
    }
}
