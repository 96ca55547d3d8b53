//! Criterion benches, one per pipeline stage, plus the budgets of issue 8 as ratios.
//!
//! Stages: decode (a 7 s 48 kHz WAV), resample (one second of 48 kHz audio to 8 kHz,
//! streamed in 10 ms blocks), the quiet room through the daemon's always-on path (7 s at
//! 8 kHz and at 48 kHz: capture conversion, energy gate, monitor; an hour of it is 514x
//! the 7 s figure), the front ends (one window each), each network (one window), and the
//! cry-window path (detector front end + network, reason front end + network). The
//! `baseline/*` group measures, in the same run, what the budgets are relative to: a
//! plain `f32` multiply-add loop (the machine's speed today, so ratios survive a loaded
//! machine). Run short on the shared box:
//!
//! ```text
//! cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 3 --sample-size 20
//! ```

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use babycry::bench::{quiet_room, synthetic_cry, AlwaysOnPath, CAPTURE_RATE};
use babycry::decode::{decode_file, write_wav_i16};
use babycry::features::{FrontEnd, MelMatrix};
use babycry::model::Model;
use babycry::resample::StreamResampler;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const RATE: u32 = 8000;

fn models_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
}

fn empty() -> MelMatrix {
    MelMatrix {
        n_mels: 0,
        n_frames: 0,
        data: Vec::new(),
    }
}

fn stages(c: &mut Criterion) {
    let capture = synthetic_cry(CAPTURE_RATE, 7.0);
    let wav = std::env::temp_dir().join(format!("babycry-bench-{}.wav", std::process::id()));
    write_wav_i16(&wav, &capture, CAPTURE_RATE).unwrap();
    c.bench_function("decode/wav_48k_7s", |b| {
        b.iter(|| decode_file(black_box(&wav)).unwrap().samples.len())
    });
    let _ = std::fs::remove_file(&wav);

    let second = &capture[..CAPTURE_RATE as usize];
    let mut stream = StreamResampler::new(CAPTURE_RATE, RATE).unwrap();
    let mut out = Vec::with_capacity(CAPTURE_RATE as usize);
    let mut group = c.benchmark_group("resample");
    group.throughput(Throughput::Elements(CAPTURE_RATE as u64));
    group.bench_function("48k_to_8k_per_second", |b| {
        b.iter(|| {
            for block in second.chunks(CAPTURE_RATE as usize / 100) {
                out.clear();
                stream.push(black_box(block), &mut out).unwrap();
            }
            out.len()
        })
    });
    group.finish();

    // The always-on path in a quiet room (capture conversion, gate, monitor), per 7 s.
    for capture_rate in [RATE, CAPTURE_RATE] {
        let mut path = AlwaysOnPath::with_models(
            &models_dir().join("cry-reason.onnx"),
            Some(&models_dir().join("cry-detector.onnx")),
            capture_rate,
        )
        .unwrap();
        path.warm_up().unwrap();
        let quiet = quiet_room(capture_rate, 7.0);
        c.bench_function(&format!("quiet_room/{capture_rate}_hz_7s"), |b| {
            b.iter(|| path.feed(black_box(&quiet)).unwrap())
        });
        assert_eq!(path.monitor().summary().gate_openings, 0);
    }

    let audio = synthetic_cry(RATE, 7.0);
    let mut detector = Model::load(&models_dir().join("cry-detector.onnx")).unwrap();
    let mut reason = Model::load(&models_dir().join("cry-reason.onnx")).unwrap();
    let mut fronts = Vec::new();
    for model in [&detector, &reason] {
        let sc = model.sidecar();
        let n = sc.window_samples();
        let fe = FrontEnd::new(&sc.features, sc.audio.sample_rate, n).unwrap();
        fronts.push((sc.name.clone(), fe, audio[..n].to_vec()));
    }
    let mut features = Vec::new();
    for (name, fe, window) in &mut fronts {
        let mut m = empty();
        c.bench_function(&format!("front_end/{name}"), |b| {
            b.iter(|| fe.features_into(black_box(window), &mut m))
        });
        features.push(m);
    }
    for (model, f) in [&mut detector, &mut reason].into_iter().zip(&features) {
        let name = model.sidecar().name.clone();
        c.bench_function(&format!("network/{name}"), |b| {
            b.iter(|| model.predict_features(black_box(f)).unwrap())
        });
    }
    let det_window = audio[..detector.window_samples()].to_vec();
    c.bench_function("cry_window_path/detector_plus_reason", |b| {
        b.iter(|| {
            let d = detector.predict(black_box(&det_window)).unwrap();
            let r = reason.predict(black_box(&audio)).unwrap();
            (d, r)
        })
    });

    // Same-run baseline for ratios: 1 M f32 multiply-adds in 8 independent lanes.
    let a: Vec<f32> = (0..4096).map(|i| i as f32 * 1e-4).collect();
    c.bench_function("baseline/fma_1M", |b| {
        b.iter(|| {
            let mut acc = [0.0f32; 8];
            for _ in 0..(1 << 20) / a.len() {
                for chunk in black_box(&a).chunks_exact(8) {
                    for (s, &x) in acc.iter_mut().zip(chunk) {
                        *s += x * 1.000_1;
                    }
                }
            }
            acc
        })
    });
}

criterion_group! {
    name = pipeline;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = stages
}
criterion_main!(pipeline);
