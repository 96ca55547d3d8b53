//! Cross.toml parses and names the three Raspberry Pi targets, each installing the
//! target's ALSA headers; the code has no x86-only build flags.

mod common;

#[test]
fn cross_toml_names_the_pi_targets_with_alsa_headers() {
    let text = std::fs::read_to_string(common::repo().join("Cross.toml")).unwrap();
    let cross: toml::Value = toml::from_str(&text).expect("Cross.toml is valid TOML");
    let targets = cross["target"].as_table().expect("[target.*] tables");
    for t in [
        "aarch64-unknown-linux-gnu",
        "armv7-unknown-linux-gnueabihf",
        "arm-unknown-linux-gnueabihf",
    ] {
        let pre = targets
            .get(t)
            .unwrap_or_else(|| panic!("Cross.toml lacks {t}"))["pre-build"]
            .as_array()
            .unwrap_or_else(|| panic!("{t}: no pre-build"));
        let joined: Vec<&str> = pre.iter().filter_map(|v| v.as_str()).collect();
        assert!(
            joined
                .iter()
                .any(|c| c.contains("libasound2-dev:$CROSS_DEB_ARCH")),
            "{t}: {joined:?}"
        );
        assert!(
            joined.iter().any(|c| c.contains("--add-architecture")),
            "{t}: {joined:?}"
        );
    }
    let env = cross["build"]["env"]["passthrough"].as_array().unwrap();
    assert!(env
        .iter()
        .any(|v| v.as_str() == Some("PKG_CONFIG_ALLOW_CROSS=1")));
}

#[test]
fn nothing_pins_the_build_to_the_host_cpu() {
    let root = common::repo();
    for f in [".cargo/config.toml", ".cargo/config"] {
        if let Ok(text) = std::fs::read_to_string(root.join(f)) {
            assert!(
                !text.contains("target-cpu=native"),
                "{f} sets target-cpu=native"
            );
        }
    }
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in ["core::arch::x86", "std::arch::x86", "target_feature(enable"] {
                    assert!(!text.contains(needle), "{}: uses {needle}", path.display());
                }
            }
        }
    }
}
