//! The command line: flags for every subcommand, and what each subcommand does with the
//! validated settings. `main.rs` only parses, sets up logging and maps errors to exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::classify::{format_table, Classifier, ClassifyOptions};
use crate::config::{load_settings, LogFormat, Settings};
use crate::daemon::{Control, DaemonOptions, EventSink};
use crate::model::Model;
use crate::source::{AudioSource, FileSource, PcmFormat, RawPcmSource, StreamFormat};

/// Exit codes, documented in the README.
pub mod exit {
    /// Some inputs could not be processed (the others were), or the input of `run`
    /// failed in a way retrying cannot mend.
    pub const INPUT_FAILED: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// The configuration file is missing, unreadable or invalid (or the `--events` file
    /// cannot be opened).
    pub const CONFIG: u8 = 3;
    /// A model or its sidecar cannot be loaded, or the two models cannot work together.
    pub const MODEL: u8 = 4;
    /// Anything else that stopped the program.
    pub const RUNTIME: u8 = 5;
}

#[derive(Debug, Parser)]
#[command(name = "babycryd", version, about = "Baby-cry monitor for Home Assistant", long_about = None)]
pub struct Cli {
    /// Configuration file (default: $CONFIGURATION_DIRECTORY/config.toml, then /etc/babycryd/config.toml).
    #[arg(long, global = true, env = "BABYCRYD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of plain text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify audio files (WAV, FLAC, OGG/Vorbis, MP3) and print one JSON object per file.
    Classify(ClassifyArgs),
    /// Validate a configuration file and print the effective settings.
    CheckConfig,
    /// Time every pipeline stage on this machine and print a table for an issue.
    Bench(crate::bench::BenchArgs),
    /// Run the monitor: listen, detect crying, report episodes (the service).
    Run(RunArgs),
    /// List the audio input devices and the formats they offer.
    Devices,
    /// Remove this monitor from Home Assistant: empty retained discovery configs and states.
    MqttRemove,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read this audio file (replayed in real time) or raw PCM on stdin (`-`) instead of
    /// the capture device.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Replay --input as fast as it can be analysed instead of in real time.
    #[arg(long, requires = "input")]
    pub fast: bool,
    /// Sample format of raw PCM on stdin (--input -) [default: s16le].
    #[arg(long, value_enum)]
    pub format: Option<PcmFormat>,
    /// Sample rate of raw PCM on stdin (--input -), Hz [default: 16000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1000..=768_000))]
    pub rate: Option<u32>,
    /// Channels of raw PCM on stdin (--input -), interleaved [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub channels: Option<u16>,
    /// Write the JSON lines to this file (appending) instead of stdout.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Do not connect to MQTT, whatever the configuration says.
    #[arg(long)]
    pub no_mqtt: bool,
    /// Replay a bundled synthetic night (room tone, a clap, a cry-like burst, speech-like
    /// sound) as fast as possible, without MQTT: the monitor with no microphone or broker.
    #[arg(long, conflicts_with = "input")]
    pub demo: bool,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Audio files to classify.
    #[arg(required_unless_present = "demo")]
    pub files: Vec<PathBuf>,
    /// Classify a built-in synthetic cry-like signal instead of files.
    #[arg(long, conflicts_with = "files")]
    pub demo: bool,
    /// How many labels to list in top_k.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub top_k: u16,
    /// Seconds between windows of files longer than the model window (default: one window).
    #[arg(long, value_parser = hop_seconds)]
    pub hop: Option<f64>,
    /// Print JSON lines even on a terminal.
    #[arg(long, conflicts_with = "pretty")]
    pub json: bool,
    /// Print indented JSON.
    #[arg(long)]
    pub pretty: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// Which models a command loads, when not the configured ones.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Cry-reason model (.onnx with its .toml sidecar), instead of the configured one.
    /// Without --config the config file is then not read: the thresholds are the
    /// sidecar's, and no detector runs unless --detector names one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Cry-detector model, instead of the configured one.
    #[arg(long, conflicts_with = "no_detector")]
    pub detector: Option<PathBuf>,
    /// Do not load a cry detector (classify: every file is assumed to be crying).
    #[arg(long)]
    pub no_detector: bool,
}

/// The command line, checked: clap's own rules, then those it cannot say (a usage error,
/// exit 2, like clap's).
pub fn parse() -> Cli {
    use clap::{CommandFactory, Parser};
    // An empty `BABYCRYD_CONFIG=` (a line left blank in an EnvironmentFile) means unset:
    // clap would refuse it as a --config without a value, an exit 2 that systemd would
    // restart every few seconds for ever. (Before any thread exists.)
    if std::env::var_os("BABYCRYD_CONFIG").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("BABYCRYD_CONFIG");
    }
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command {
        let raw = args.format.is_some() || args.rate.is_some() || args.channels.is_some();
        if raw && args.input.as_deref() != Some(Path::new("-")) {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--format, --rate and --channels describe raw PCM on stdin and need \
                     --input -: a file says its own format, and the microphone's rate is \
                     [audio] sample_rate in the config",
                )
                .exit();
        }
    }
    cli
}

/// Loads the settings for `cli`; `uses_mqtt` as for [`load_settings`].
pub fn settings(cli: &Cli, uses_mqtt: bool) -> anyhow::Result<Settings> {
    Ok(load_settings(cli.config.as_deref(), uses_mqtt)?)
}

/// Runs the parsed command line.
pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Classify(args) => classify(&cli, args),
        Command::CheckConfig => check_config(&cli),
        Command::Run(args) => run(&cli, args),
        Command::Devices => devices(),
        Command::MqttRemove => mqtt_remove(&cli),
        Command::Bench(args) => crate::bench::run(&cli, args),
    }
}

fn load_model(path: &Path) -> anyhow::Result<Model> {
    Ok(Model::load(path)?)
}

/// The models a command uses: `--model`/`--detector` flags first (they work even where
/// the configured models are absent), else the configured ones. Returns the settings when
/// they were needed.
pub(crate) fn model_paths(
    cli: &Cli,
    args: &ModelArgs,
) -> anyhow::Result<(Option<Settings>, PathBuf, Option<PathBuf>)> {
    let (model, detector) = (args.model.as_ref(), args.detector.as_ref());
    let settings = match (model, cli.config.is_some()) {
        (Some(_), false) => None,
        _ => Some(settings(cli, false)?),
    };
    let reason_path = match (model, &settings) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.reason_model.clone(),
        (None, None) => unreachable!("settings are loaded when no model is given"),
    };
    let detector_path = if args.no_detector {
        None
    } else {
        detector.cloned().or_else(|| {
            if model.is_some() {
                None
            } else {
                settings.as_ref()?.detector_model.clone()
            }
        })
    };
    Ok((settings, reason_path, detector_path))
}

/// `--hop`: seconds within [0.05, 60] (the detector's own range starts there too; a hop
/// of a millisecond was 7000 windows for every 7 s, minutes for a short file); anything
/// else is a usage error (exit 2) before any model loads.
fn hop_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(h) if (0.05..=60.0).contains(&h) => Ok(h),
        _ => Err(format!(
            "{text:?} is not a number of seconds within 0.05..=60"
        )),
    }
}

fn classify(cli: &Cli, args: &ClassifyArgs) -> anyhow::Result<ExitCode> {
    let (settings, reason_path, detector_path) = model_paths(cli, &args.models)?;
    let reason = load_model(&reason_path)?;
    let detector = detector_path.as_deref().map(load_model).transpose()?;
    let mut options = ClassifyOptions {
        top_k: usize::from(args.top_k),
        hop_seconds: args.hop,
        ..Default::default()
    };
    if let Some(s) = &settings {
        options.thresholds = s.config.thresholds.clone();
        options.detector_threshold = s.config.detector.threshold;
        options.detector_hop_seconds = s.config.detector.hop_seconds;
        options.confirm_k = s.config.detector.confirm_k;
        options.confirm_n = s.config.detector.confirm_n;
    }
    let mut classifier = Classifier::new(reason, detector, options);

    let table = !args.json && !args.pretty && std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout().lock();
    let mut failed = 0usize;
    let mut verdicts = Vec::new();
    let inputs: Vec<Option<&PathBuf>> = if args.demo {
        vec![None]
    } else {
        args.files.iter().map(Some).collect()
    };
    for input in inputs {
        let result = match input {
            Some(path) => classifier.classify_file(path),
            None => {
                let rate = 8000;
                let mut demo = crate::synth::room_tone(rate, 7.0, 0.002, 7);
                crate::synth::mix_into(
                    &mut demo,
                    &crate::synth::cry(rate, 6.0, 0.5),
                    rate as usize / 2,
                );
                classifier.classify_samples("<demo: synthetic cry-like signal>", &demo, rate)
            }
        };
        match result {
            Ok(v) => {
                if table {
                    verdicts.push(v);
                } else {
                    let text = if args.pretty {
                        serde_json::to_string_pretty(&v)
                    } else {
                        serde_json::to_string(&v)
                    }?;
                    writeln!(stdout, "{text}")?;
                }
            }
            Err(e) => {
                failed += 1;
                report_error(&e.to_string());
                if !table {
                    let file = input.map(|p| p.display().to_string()).unwrap_or_default();
                    writeln!(
                        stdout,
                        "{}",
                        serde_json::json!({ "file": file, "error": e.to_string() })
                    )?;
                }
            }
        }
    }
    if table {
        write!(stdout, "{}", format_table(&verdicts))?;
    }
    stdout.flush()?;
    Ok(if failed > 0 {
        ExitCode::from(exit::INPUT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn check_config(cli: &Cli) -> anyhow::Result<ExitCode> {
    let settings = settings(cli, true)?;
    let source = settings
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<built-in defaults>".into());
    let effective = toml::to_string_pretty(&settings.config).context("printing the settings")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# effective settings from {source}")?;
    writeln!(out, "# reason model: {}", settings.reason_model.display())?;
    match &settings.detector_model {
        Some(p) => writeln!(out, "# detector model: {}", p.display())?,
        None => writeln!(out, "# detector model: none")?,
    }
    // What the empty defaults below resolve to on this machine.
    let mqtt = crate::mqtt::MqttConfig::for_daemon(&settings.config);
    if mqtt.enabled {
        let topics = mqtt.topics();
        writeln!(
            out,
            "# mqtt: node id {}, client id {}, status topic {}, discovery under {}/, password from {}",
            topics.node_id,
            mqtt.client_id(),
            topics.status,
            topics.discovery_prefix,
            mqtt.password_source()
        )?;
    } else {
        writeln!(out, "# mqtt: off")?;
    }
    let state = crate::mqtt::resolve_state_dir(&settings.config.daemon.state_dir);
    writeln!(out, "# state directory: {}", state.display())?;
    write!(out, "{effective}")?;
    Ok(ExitCode::SUCCESS)
}

/// Needs only `[mqtt]`: works where the models are not installed.
fn mqtt_remove(cli: &Cli) -> anyhow::Result<ExitCode> {
    let path = cli
        .config
        .clone()
        .or_else(crate::config::default_config_path);
    let config = match &path {
        Some(p) => crate::config::Config::load(p)?,
        None => crate::config::Config::default(),
    };
    let mqtt = config
        .mqtt
        .with_state_dir(crate::mqtt::resolve_state_dir(&config.daemon.state_dir));
    mqtt.validate()
        .map_err(|reason| crate::error::ConfigError::Invalid {
            path: path.unwrap_or_else(|| "<defaults>".into()),
            reason: format!("mqtt.{reason}"),
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let removed = runtime.block_on(crate::mqtt::remove_device(
        &mqtt,
        std::time::Duration::from_secs(10),
    ))?;
    writeln!(
        std::io::stdout(),
        "removed {} Home Assistant entities of node {} from {}:{}",
        removed.entities,
        mqtt.node_id(),
        mqtt.host,
        mqtt.port
    )?;
    if let Some(what) = removed.previous {
        writeln!(
            std::io::stdout(),
            "removed the device announced before ({what}) too"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The message for an error that ended the program: its causes joined by ": ", each
/// cause only once (an error whose text already quotes its source is not followed by it).
pub fn error_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Whether `err` is stdout closed by its reader (`babycryd devices | head -3`): that
/// reader has what it wanted, so the command ends quietly with 0, as `ls | head` does.
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Whether the log is JSON lines ([`init_logging`]): then an error that ends a command
/// is one of them too, not a plain line a JSON reader would choke on.
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the plain log goes to the journal with priorities ([`JournalPriority`]): then
/// the error that ends a command carries its priority too, or `journalctl -p warning`
/// would show every warning but the reason the monitor stopped.
static LOG_JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints `babycryd: <text>` on stderr, or logs it at error level when the log is JSON. A
/// closed stderr (`babycryd ... 2>&1 | head`, a log reader that went away) is not an
/// error of ours: `eprintln!` would panic there and turn the exit code into 101.
pub fn report_error(text: &str) {
    use std::io::Write;
    if LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{text}");
        return;
    }
    let priority = if LOG_JOURNAL.load(std::sync::atomic::Ordering::Relaxed) {
        "<3>"
    } else {
        ""
    };
    let _ = writeln!(std::io::stderr().lock(), "{priority}babycryd: {text}");
}

/// The exit code for an error that ended the program.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        // An --events file that cannot be opened (its directory missing or read-only)
        // is a setting a restart cannot mend, as a bad config is: systemd does not
        // restart for it (RestartPreventExitStatus) every few seconds for ever.
        if cause.is::<crate::error::ConfigError>()
            || cause
                .downcast_ref::<crate::daemon::DaemonError>()
                .is_some_and(|e| matches!(e, crate::daemon::DaemonError::Events { .. }))
        {
            return exit::CONFIG;
        }
        if cause.is::<crate::error::ModelError>() || cause.is::<crate::monitor::MonitorError>() {
            return exit::MODEL;
        }
        // The input of `run` failed for good (a recording it cannot convert or decode),
        // or a recording given to `bench` cannot be read.
        if cause.is::<crate::source::SourceError>() || cause.is::<crate::error::DecodeError>() {
            return exit::INPUT_FAILED;
        }
    }
    exit::RUNTIME
}

/// Fixes glibc's mmap threshold at 128 KiB for the whole process, before anything is
/// allocated.
///
/// Why: glibc raises the threshold to the size of every mmapped block that is freed, so
/// after the models' load (the ONNX bytes, the parsed tensors and tract's packed copies,
/// a few MB freed once loaded) later blocks of that size come from the heap, where freed
/// pages stay resident. With the threshold fixed every block over 128 KiB is mmapped and
/// returned to the kernel when freed: the daemon's peak RSS over the soak drops from
/// 29.5 to about 27.5 MiB (issue 8's budget is 30 MB). A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread
    // exists and its result (0 when refused) only means the default stays.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The audio source `args` ask for.
fn audio_source(args: &RunArgs, settings: &Settings) -> anyhow::Result<Box<dyn AudioSource>> {
    if args.demo {
        let rate = 8000;
        let night = crate::synth::demo_night(rate);
        return Ok(Box::new(FileSource::from_samples(
            "<demo night>".into(),
            night,
            rate,
            false,
        )));
    }
    match args.input.as_deref() {
        Some(p) if p == Path::new("-") => Ok(Box::new(RawPcmSource::new(
            "stdin".into(),
            std::io::stdin(),
            args.format.unwrap_or(PcmFormat::S16le),
            StreamFormat {
                sample_rate: args.rate.unwrap_or(16000),
                channels: args.channels.unwrap_or(1),
            },
        ))),
        Some(p) => Ok(Box::new(FileSource::new(p, !args.fast)?)),
        None => live_source(settings),
    }
}

#[cfg(feature = "alsa")]
fn live_source(settings: &Settings) -> anyhow::Result<Box<dyn AudioSource>> {
    Ok(Box::new(crate::capture::CpalSource::new(
        &settings.config.audio.device,
        settings.config.audio.sample_rate,
    )))
}

#[cfg(not(feature = "alsa"))]
fn live_source(_: &Settings) -> anyhow::Result<Box<dyn AudioSource>> {
    anyhow::bail!(
        "built without live capture (cargo feature `alsa`): use --input FILE or --input -"
    )
}

fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let uses_mqtt = !args.no_mqtt && !args.demo;
    let settings = settings(cli, uses_mqtt)?;
    let source = match audio_source(args, &settings) {
        Ok(s) => s,
        Err(e) => {
            report_error(&error_message(&e));
            return Ok(ExitCode::from(exit::INPUT_FAILED));
        }
    };
    let options = DaemonOptions {
        events: args
            .events
            .clone()
            .map_or(EventSink::Stdout, EventSink::File),
        mqtt: uses_mqtt,
        retry: None,
    };
    let config_path = settings.source.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let summary = runtime
        .block_on(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            forward_signals(tx, config_path, uses_mqtt);
            crate::daemon::run(settings, source, options, rx).await
        })
        .map_err(|e| match e {
            // Keep the model or source error itself in the chain: it selects the exit code.
            crate::daemon::DaemonError::Model(m) => anyhow::Error::from(m),
            crate::daemon::DaemonError::Monitor(m) => anyhow::Error::from(m),
            crate::daemon::DaemonError::Source(s) => anyhow::Error::from(s),
            other => anyhow::Error::from(other),
        })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    tracing::debug!(?summary, "exit");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT ask for a shutdown; SIGHUP reloads the configuration file.
/// signal-hook's iterator runs on its own thread, so the handlers themselves only set
/// flags (async-signal-safe) and a burst of SIGHUPs collapses into few reloads.
fn forward_signals(
    tx: tokio::sync::mpsc::Sender<Control>,
    config: Option<PathBuf>,
    uses_mqtt: bool,
) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return;
        }
    };
    // A detached thread, not spawn_blocking: the runtime's shutdown would wait for it
    // forever, and an error exit (a broken model) must not hang.
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let control = if signal == SIGHUP {
                    tracing::info!("SIGHUP: reloading the configuration");
                    Control::Reload(Box::new(load_settings(config.as_deref(), uses_mqtt)))
                } else {
                    Control::Shutdown
                };
                if tx.blocking_send(control).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the signal thread: {e}");
    }
}

#[cfg(feature = "alsa")]
fn devices() -> anyhow::Result<ExitCode> {
    let devices = crate::capture::list_input_devices().context("listing input devices")?;
    // PCMs that ALSA defines but that cannot be opened now (a sound server that is not
    // running, a plugin without its hardware) are named on one line at the end, not
    // listed as devices without a format.
    let (usable, closed): (Vec<_>, Vec<_>) = devices
        .into_iter()
        .partition(|d| d.default_format.is_some() || !d.configs.is_empty());
    let mut out = std::io::stdout().lock();
    if usable.is_empty() {
        writeln!(out, "no input devices found")?;
    }
    for d in usable {
        writeln!(
            out,
            "{}{}\n  id: {}\n  default format: {}",
            d.name,
            if d.default { " (default)" } else { "" },
            d.id,
            d.default_format.as_deref().unwrap_or("-")
        )?;
        for c in d.configs {
            writeln!(out, "  supports: {c}")?;
        }
    }
    if !closed.is_empty() {
        let ids: Vec<&str> = closed.iter().map(|d| d.id.as_str()).collect();
        writeln!(
            out,
            "defined but not openable now (RUST_LOG=debug says why): {}",
            ids.join(", ")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "alsa"))]
fn devices() -> anyhow::Result<ExitCode> {
    anyhow::bail!("built without live capture (cargo feature `alsa`)")
}

/// The logging settings of the configuration `cli` names, if it loads; errors surface
/// later, when the command loads it again.
pub fn configured_logging(cli: &Cli) -> (Option<String>, bool) {
    match settings(cli, false) {
        Ok(s) => (
            Some(s.config.logging.level.clone()).filter(|l| !l.trim().is_empty()),
            s.config.logging.format == LogFormat::Json,
        ),
        Err(_) => (None, false),
    }
}

/// Whether stderr is systemd's journal: `$JOURNAL_STREAM` names its device and inode
/// (set for a service whose output goes to the journal, and inherited by anything it
/// starts, whose stderr may be elsewhere).
fn stderr_is_the_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        v.split_once(':')
            .map(|(d, i)| (d.parse::<u64>(), i.parse::<u64>()))
    }) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat for the open descriptor 2 into `stat`, read only when
    // it succeeded.
    if unsafe { libc::fstat(2, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // (Casts: ino_t is 32 bits on 32-bit ARM.)
    #[allow(clippy::unnecessary_cast)]
    let (st_dev, st_ino) = (stat.st_dev as u64, stat.st_ino as u64);
    dev == Ok(st_dev) && ino == Ok(st_ino)
}

/// A plain log line for the journal: its syslog priority first (`<3>` error, `<4>`
/// warning, `<6>` info, `<7>` debug and trace), which journald takes as the entry's
/// priority and strips, so `journalctl -p warning -u babycryd` finds the warnings (every
/// line was at journald's default priority before); no time, which journald adds.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Logging through tracing on stderr: plain lines without colour (in the journal with
/// their priority and without the time, see [`JournalPriority`]), or JSON with
/// `--log-json`. RUST_LOG wins over the config's `level`. The audio
/// decoder's own log lines ("probe reach EOF", "ignoring unknown chunk") are dropped
/// unless RUST_LOG asks for them: a bad file is reported once, as a decode error.
///
/// An empty RUST_LOG (`RUST_LOG=` left in an EnvironmentFile) counts as unset, and one
/// that would log nothing it seems to ask for (a misspelt level) is ignored with a
/// warning: either silenced every line before, errors included.
pub fn init_logging(json: bool, level: Option<&str>) {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let ignored = env
        .as_deref()
        .and_then(|v| crate::config::log_filter_problem(v).map(|p| (v.to_owned(), p)));
    let spec = match (&env, &ignored) {
        (Some(v), None) => v.clone(),
        _ => format!("{},symphonia=off", level.unwrap_or("info")),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,symphonia=off"));
    // A log line that cannot be written (stderr closed) is dropped: tracing would
    // otherwise report it with `eprintln!`, which panics on a closed stderr and would
    // end the monitor in the middle of an episode.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .log_internal_errors(false);
    let journal = !json && stderr_is_the_journal();
    let _ = if json {
        builder.json().try_init()
    } else if journal {
        builder
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .try_init()
    } else {
        builder.try_init()
    };
    LOG_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
    LOG_JOURNAL.store(journal, std::sync::atomic::Ordering::Relaxed);
    if let Some((value, problem)) = ignored {
        tracing::warn!("RUST_LOG = {value:?} ignored: {problem}");
    }
}
