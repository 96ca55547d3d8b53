//! The Rust front end against librosa: golden fixtures written by
//! `training/make_fixtures.py` (librosa, float64) from synthetic signals.

mod common;

use babycry::features::{FeatureRecipe, FrontEnd, MelMatrix};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    sample_rate: u32,
    n_samples: usize,
    n_mels: usize,
    n_frames: usize,
    features: FeatureRecipe,
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_fixture_matches_librosa() {
    let root = common::repo().join("tests/fixtures/frontend");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 12,
        "expected at least 12 fixture cases, found {}",
        cases.len()
    );
    let mut report = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let case: Case = toml::from_str(&std::fs::read_to_string(dir.join("case.toml")).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let signal = common::read_f32(&dir.join("signal.f32"));
        assert_eq!(signal.len(), case.n_samples, "{name}");
        let mut fe = FrontEnd::new(&case.features, case.sample_rate, case.n_samples).unwrap();
        assert_eq!(
            (fe.n_mels(), fe.n_frames()),
            (case.n_mels, case.n_frames),
            "{name}: shape"
        );

        let mut db = MelMatrix {
            n_mels: 0,
            n_frames: 0,
            data: vec![],
        };
        fe.mel_db_into(&signal, &mut db);
        let golden_db = common::read_f32(&dir.join("db.f32"));
        let db_diff = if case.features.db {
            max_abs_diff(&db.data, &golden_db)
        } else {
            // A power mel is compared relative to its peak.
            let peak = golden_db
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()))
                .max(f32::MIN_POSITIVE);
            max_abs_diff(&db.data, &golden_db) / peak
        };
        let norm = fe.features(&signal);
        let norm_diff = max_abs_diff(&norm.data, &common::read_f32(&dir.join("norm.f32")));
        assert!(
            norm.data.iter().all(|v| v.is_finite()),
            "{name}: non-finite output"
        );
        report.push(format!(
            "{name}: dB {db_diff:.2e}, normalised {norm_diff:.2e}"
        ));
        assert!(
            db_diff <= 1e-3,
            "{name}: before normalisation differs by {db_diff} (limit 1e-3)"
        );
        assert!(
            norm_diff <= 1e-4,
            "{name}: normalised output differs by {norm_diff} (limit 1e-4)"
        );
    }
    println!("{}", report.join("\n"));
}
