//! The model contract: every shipped model loads in tract and runs; the old project's
//! export format works from a sidecar alone; a sidecar that disagrees with its ONNX file
//! is named precisely.

mod common;

use babycry::model::{Model, Sidecar};
use std::path::Path;

#[test]
fn every_shipped_model_loads_and_runs_on_the_fixtures() {
    let dir = common::repo().join("models");
    let mut onnx: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    onnx.sort();
    let names: Vec<String> = onnx
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"cry-detector".into()) && names.contains(&"cry-reason".into()),
        "{names:?}"
    );
    let signals = [
        "reason_cry",
        "detector_noise",
        "old_silence",
        "detector_clipped",
    ];
    for path in &onnx {
        let size = std::fs::metadata(path).unwrap().len();
        assert!(
            size <= 2 * 1024 * 1024,
            "{}: {size} bytes is over the 2 MB edge budget",
            path.display()
        );
        let mut model = Model::load(path).unwrap_or_else(|e| panic!("{e}"));
        for s in signals {
            let x = common::read_f32(
                &common::repo().join(format!("tests/fixtures/frontend/{s}/signal.f32")),
            );
            let p = model.predict(&x).unwrap();
            assert_eq!(p.probabilities.len(), model.labels().len());
            let sum: f32 = p.probabilities.iter().sum();
            assert!(
                (sum - 1.0).abs() < 1e-4,
                "{}: probabilities sum to {sum}",
                path.display()
            );
            assert!(p.probabilities.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }
}

#[test]
fn the_old_projects_format_runs_from_a_sidecar_alone() {
    let fixtures = common::repo().join("tests/fixtures/models");
    let mut model = Model::load(&fixtures.join("old-format.onnx")).unwrap();
    assert_eq!(model.sidecar().input.shape, vec![1, 1, 224, 224]);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("old-format.expected.json")).unwrap(),
    )
    .unwrap();
    assert_matches_onnxruntime(&mut model, &fixtures, &expected["cases"]);
}

/// Checks `model` (tract, the Rust front end) against the `cases` of an `*.expected.json`
/// (librosa's front end, onnxruntime): each case's signal gives the same probabilities
/// within 1e-4 and the same top label.
fn assert_matches_onnxruntime(model: &mut Model, fixtures: &Path, cases: &serde_json::Value) {
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let signal = common::read_f32(&fixtures.join(case["signal"].as_str().unwrap()));
        let got = model.predict(&signal).unwrap();
        let want: Vec<f32> = case["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.probabilities.len(), want.len());
        let diff = got
            .probabilities
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff < 1e-4,
            "{}: probabilities differ from onnxruntime by {diff}",
            case["signal"]
        );
        let (top, _) = got.top();
        assert_eq!(model.labels()[top], case["top_label"].as_str().unwrap());
    }
}

/// The shipped models run by tract on the Rust front end give what onnxruntime gives on
/// librosa's (tests/fixtures/models/shipped.expected.json). A retrained model needs the
/// file made again: `training/.venv/bin/python training/make_test_models.py`.
#[test]
fn the_shipped_models_give_what_onnxruntime_gives() {
    let fixtures = common::repo().join("tests/fixtures/models");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("shipped.expected.json")).unwrap(),
    )
    .unwrap();
    let models = expected["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        let path = common::repo()
            .join("models")
            .join(m["model"].as_str().unwrap());
        let mut model = Model::load(&path).unwrap();
        assert_eq!(
            model.sidecar().version,
            m["version"].as_str().unwrap(),
            "{}: the fixture is for another version; make it again (see above)",
            path.display()
        );
        assert_matches_onnxruntime(&mut model, &fixtures, &m["cases"]);
    }
}

#[test]
fn a_sidecar_that_disagrees_with_the_onnx_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = common::repo().join("tests/fixtures/models");
    let onnx = dir.path().join("m.onnx");
    std::fs::copy(fixtures.join("old-format.onnx"), &onnx).unwrap();
    let sidecar = std::fs::read_to_string(fixtures.join("old-format.toml")).unwrap();

    // The image is 224x224 in the ONNX file; claim 112x112.
    let wrong = sidecar
        .replace("shape = [1, 1, 224, 224]", "shape = [1, 1, 112, 112]")
        .replace("resize = [224, 224]", "resize = [112, 112]");
    std::fs::write(dir.path().join("m.toml"), wrong).unwrap();
    let e = Model::load(&onnx).unwrap_err().to_string();
    assert!(
        e.contains("m.onnx") && e.contains("m.toml") && e.contains("axis 2 is 224"),
        "{e}"
    );

    // Three labels for an eight-logit output.
    let wrong = sidecar.replace(
        r#"labels = ["belly_pain", "burping", "cold_hot", "discomfort", "hungry", "lonely", "scared", "tired"]"#,
        r#"labels = ["a", "b", "c"]"#,
    );
    std::fs::write(dir.path().join("m.toml"), wrong).unwrap();
    let e = Model::load(&onnx).unwrap_err().to_string();
    assert!(e.contains("3 labels") && e.contains("[1, 8]"), "{e}");

    // An unknown key.
    std::fs::write(
        dir.path().join("m.toml"),
        format!("colour = \"red\"\n{sidecar}"),
    )
    .unwrap();
    let e = Model::load(&onnx).unwrap_err().to_string();
    assert!(e.contains("colour") && e.contains("m.toml"), "{e}");

    // Shape inconsistent with the features (no resize, 128 mels x 219 frames expected).
    let e = Sidecar::parse(
        &sidecar.replace("resize = [224, 224]\n", ""),
        Path::new("x.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[128, 219]"), "{e}");
}
