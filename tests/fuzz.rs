//! Mutation fuzzing on stable Rust: everything that reads outside input (audio
//! decoding, the config file, model sidecars, raw PCM on stdin, incoming MQTT messages)
//! gets mutated versions of a committed seed corpus and must answer with a value or a
//! typed error: never a panic or a hang. The PCM reader must also deliver exactly the
//! whole frames it was given, every sample finite and within [-1, 1]; of the MQTT
//! messages only a non-retained `online` on `homeassistant/status` may act.
//! The time per target is bounded by `BABYCRY_FUZZ_SECONDS` (default 8 s; CI sets it in
//! `scripts/test.sh`); a crash found is printed with its input in hex and becomes a
//! regression seed under `tests/fuzz-corpus/`. An input that takes over 30 s is a hang:
//! the test process exits with its input printed, instead of CI waiting for it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babycry::synth::Noise;

fn budget() -> Duration {
    let secs = std::env::var("BABYCRY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    Duration::from_secs_f64(secs)
}

/// One mutation of `seed`: bit flips, byte overwrites, truncation, duplication, insertion.
fn mutate(seed: &[u8], rng: &mut Noise) -> Vec<u8> {
    let mut x = seed.to_vec();
    let pick =
        |rng: &mut Noise, n: usize| ((rng.sample() * 0.5 + 0.5) * n as f32) as usize % n.max(1);
    let rounds = 1 + pick(rng, 8);
    for _ in 0..rounds {
        if x.is_empty() {
            x.push(pick(rng, 256) as u8);
            continue;
        }
        match pick(rng, 6) {
            0 => {
                let i = pick(rng, x.len());
                x[i] ^= 1 << pick(rng, 8);
            }
            1 => {
                let i = pick(rng, x.len());
                x[i] = [0u8, 0xff, 0x7f, 0x80, 1][pick(rng, 5)];
            }
            2 => {
                let n = pick(rng, x.len());
                x.truncate(n);
            }
            3 => {
                let (a, len) = (pick(rng, x.len()), 1 + pick(rng, 64));
                let chunk: Vec<u8> = x[a..(a + len).min(x.len())].to_vec();
                let at = pick(rng, x.len());
                x.splice(at..at, chunk);
            }
            4 => {
                let at = pick(rng, x.len());
                let junk: Vec<u8> = (0..1 + pick(rng, 16))
                    .map(|_| pick(rng, 256) as u8)
                    .collect();
                x.splice(at..at, junk);
            }
            _ => {
                // Overwrite a 32-bit field with an extreme value (lengths, rates, counts).
                if x.len() >= 4 {
                    let i = pick(rng, x.len() - 3);
                    let v = [0u32, u32::MAX, 0x7fff_ffff, 1, 8000][pick(rng, 5)];
                    x[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    x
}

fn seeds(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// One input taking longer than this is a hang (the slowest takes well under a second).
const HANG: Duration = Duration::from_secs(30);

fn hex(input: &[u8]) -> String {
    input.iter().map(|b| format!("{b:02x}")).collect()
}

/// The input being tried and since when, for [`watch_for_hangs`].
type Current = Arc<Mutex<Option<(Instant, PathBuf, Vec<u8>)>>>;

/// A thread that ends the whole test process, printing the input, when one input takes
/// longer than [`HANG`]: a hung target cannot be interrupted, and without this CI would
/// only show a test that never finished.
fn watch_for_hangs(name: &'static str, current: Current) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let guard = current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, path, input)) = guard.as_ref() {
            if since.elapsed() > HANG {
                // Straight to the process's stderr: the harness captures eprintln! in
                // test threads and their children, and would drop it at the exit.
                let _ = writeln!(
                    std::io::stderr(),
                    "{name}: hang (over {HANG:?}) on {} or a mutation of it ({} bytes): {}",
                    path.display(),
                    input.len(),
                    hex(input)
                );
                std::process::exit(101);
            }
        }
    });
}

/// Runs `target` on every seed and then on mutations until the time budget is spent.
fn fuzz(
    name: &'static str,
    seeds: &[(PathBuf, Vec<u8>)],
    mut target: impl FnMut(&Path, &[u8]),
) -> usize {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let current: Current = Arc::default();
    watch_for_hangs(name, current.clone());
    let mut run = |path: &Path, input: &[u8]| {
        *current.lock().unwrap() = Some((Instant::now(), path.to_owned(), input.to_vec()));
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(path, input)));
        *current.lock().unwrap() = None;
        outcome
    };
    for (path, bytes) in seeds {
        if let Err(e) = run(path, bytes) {
            std::panic::resume_unwind(e);
        }
    }
    let mut rng = Noise::new(0x5eed ^ name.len() as u64);
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed() < budget() {
        let (path, seed) = &seeds[runs % seeds.len()];
        let input = mutate(seed, &mut rng);
        if run(path, &input).is_err() {
            panic!(
                "{name}: crash on a mutation of {} ({} bytes): {}",
                path.display(),
                input.len(),
                hex(&input)
            );
        }
        runs += 1;
    }
    println!("{name}: {runs} mutated inputs in {:?}, no crash", budget());
    runs
}

#[test]
fn fuzz_audio_decoding() {
    let corpus = common::repo().join("tests/fuzz-corpus/decode");
    let seeds = seeds(&corpus);
    let runs = fuzz("decode", &seeds, |path, bytes| {
        let ext = path.extension().and_then(|e| e.to_str());
        if let Ok(audio) = babycry::decode::decode_bytes(bytes.to_vec(), ext, path) {
            assert!(audio.sample_rate > 0);
            assert!(!audio.samples.is_empty());
            assert!(audio.samples.iter().all(|s| s.is_finite()));
        }
    });
    assert!(runs > 0);
}

#[test]
fn fuzz_config_parser_and_validator() {
    let example = std::fs::read(common::repo().join("config/babycryd.toml")).unwrap();
    let seeds = vec![(PathBuf::from("config/babycryd.toml"), example)];
    fuzz("config", &seeds, |path, bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(config) = babycry::config::Config::parse_str(&text, path) {
            let _ = config.validate(Some(path.to_owned()));
        }
    });
}

#[test]
fn fuzz_model_sidecar_parser() {
    let dir = common::repo().join("models");
    let seeds: Vec<_> = seeds(&dir)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fuzz("sidecar", &seeds, |path, bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(sidecar) = babycry::model::Sidecar::parse(&text, path) {
            // A sidecar that parses must describe a front end that can be built.
            babycry::features::FrontEnd::new(
                &sidecar.features,
                sidecar.audio.sample_rate,
                sidecar.window_samples(),
            )
            .expect("a valid sidecar gives a valid front end");
        }
    });
}

/// Rates a PCM seed's first byte selects (`byte >> 5`), the CLI's extremes included.
const PCM_RATES: [u32; 8] = [1000, 8000, 16000, 22050, 44100, 48000, 96000, 768_000];

/// `tests/fuzz-corpus/pcm/`: byte 0 sets the stream (channels `1 + (b & 31)`, rate
/// `PCM_RATES[b >> 5]`), the rest is the bytes on stdin, read in each format.
#[test]
fn fuzz_stdin_pcm_reader() {
    use babycry::source::{AudioSource, PcmFormat, Pull, RawPcmSource, StreamFormat};
    let seeds = seeds(&common::repo().join("tests/fuzz-corpus/pcm"));
    let mut samples_seen = 0usize;
    fuzz("pcm", &seeds, |_, bytes| {
        let Some((&params, pcm)) = bytes.split_first() else {
            return;
        };
        let stream = StreamFormat {
            sample_rate: PCM_RATES[usize::from(params >> 5)],
            channels: 1 + u16::from(params & 31),
        };
        for format in [PcmFormat::S16le, PcmFormat::S32le, PcmFormat::F32le] {
            let reader = std::io::Cursor::new(pcm.to_vec());
            let mut source = RawPcmSource::new("fuzz".into(), reader, format, stream);
            assert_eq!(source.open().unwrap(), stream);
            let mut buf = Vec::new();
            while source.pull(&mut buf).unwrap() != Pull::End {}
            let channels = usize::from(stream.channels);
            let frame = format.bytes() * channels;
            assert_eq!(
                buf.len(),
                pcm.len() / frame * channels,
                "{format:?} {stream:?}"
            );
            assert!(
                buf.iter()
                    .all(|s| s.is_finite() && (-1.0..=1.0).contains(s)),
                "{format:?}: a sample is not finite or outside [-1, 1]"
            );
            samples_seen += buf.len();
        }
    });
    assert!(samples_seen > 0, "the corpus must yield samples");
}

/// `tests/fuzz-corpus/mqtt/`: byte 0 holds flags (bit 0: retained; bit 1: discovery
/// prefix `ha/x` instead of `homeassistant`), then the topic, a 0 byte and the payload.
/// Only a non-retained `online` on `homeassistant/status` rediscovers, whatever the
/// discovery prefix (Home Assistant's birth topic is its own setting).
#[test]
fn fuzz_incoming_mqtt_messages() {
    use babycry::mqtt::{incoming, IncomingAction, Topics};
    let seeds = seeds(&common::repo().join("tests/fuzz-corpus/mqtt"));
    let (mut rediscovered, mut ignored) = (0usize, 0usize);
    fuzz("mqtt", &seeds, |_, bytes| {
        let Some((&flags, rest)) = bytes.split_first() else {
            return;
        };
        let retained = flags & 1 != 0;
        let prefix = if flags & 2 != 0 {
            "ha/x"
        } else {
            "homeassistant"
        };
        let topics = Topics::new("babycry/n", prefix, "n");
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        // rumqttc hands over topics as strings; a payload is any bytes.
        let topic = String::from_utf8_lossy(&rest[..split]);
        let payload = rest.get(split + 1..).unwrap_or_default();
        let action = incoming(&topics, &topic, payload, retained);
        let birth = String::from_utf8_lossy(payload)
            .trim_matches(|c: char| c.is_ascii_whitespace())
            == "online";
        let expected = topic == babycry::mqtt::HA_STATUS_TOPIC && !retained && birth;
        assert_eq!(
            action == IncomingAction::Rediscover,
            expected,
            "{topic:?} retained={retained} payload={payload:?}: {action:?}"
        );
        if expected {
            rediscovered += 1;
        } else {
            ignored += 1;
        }
    });
    assert!(
        rediscovered > 0 && ignored > 0,
        "both outcomes exercised: {rediscovered} rediscoveries, {ignored} ignored"
    );
}
