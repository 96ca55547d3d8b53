//! Live capture through cpal (ALSA on the Pi), behind the cargo feature `alsa`.
//!
//! It owns finding the input device (by name or ALSA id, else the default), opening it
//! at whatever rate and sample format it offers (I8/I16/I24/I32/U8/U16/F32/F64, any
//! channel count), and the real-time boundary: the cpal callback converts to f32 and
//! pushes whole frames into a lock-free ring buffer (ringbuf), never allocating or
//! blocking; the capture thread pulls from the ring. Xruns and errors after which the
//! stream goes on are counted; an error that says the stream is gone marks the device
//! lost, so the capture thread drops the stream and reopens it with backoff (see
//! [`StreamTrouble`]).
//! It also lists input devices for `babycryd devices`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::HeapRb;

use crate::source::{AudioSource, Pull, SourceError, StreamFormat};

/// Seconds of audio the ring buffer holds between the callback and the capture thread.
const RING_SECONDS: usize = 2;

/// What one stream's callbacks share with the capture thread. Each stream has its own:
/// a stream being closed (on its own thread, see `close`) cannot mark the next one lost.
#[derive(Debug, Default)]
struct Shared {
    lost: AtomicBool,
    reason: Mutex<String>,
    xruns: AtomicU64,
    /// Callbacks whose frames did not all fit in the ring buffer (the capture thread
    /// fell behind): counted with the xruns.
    overflows: AtomicU64,
    /// Errors since the last audio callback (see [`FAILING_ERRORS`]).
    errors_since_audio: AtomicU32,
}

/// Errors in a row without audio after which a stream is lost, whatever their kind. A
/// plugin PCM whose sound server lost its source (a PulseAudio or PipeWire device
/// unplugged) fails every poll with an error cpal reports as a backend error and retries
/// at once: hundreds of thousands a second, a whole core busy and millions of xruns
/// counted until the stall time ran out. A real overrun comes with audio around it.
const FAILING_ERRORS: u32 = 64;

impl Shared {
    /// The data callback delivered audio.
    fn heard_audio(&self) {
        self.errors_since_audio.store(0, Ordering::Relaxed);
    }

    /// What the error callback does with `err` (cpal's worker thread, not the audio one).
    fn stream_error(&self, kind: cpal::ErrorKind, err: &dyn std::fmt::Display) {
        let in_a_row = self.errors_since_audio.fetch_add(1, Ordering::Relaxed) + 1;
        match StreamTrouble::of(kind) {
            StreamTrouble::Counted if in_a_row < FAILING_ERRORS => {
                self.xruns.fetch_add(1, Ordering::Relaxed);
            }
            StreamTrouble::Counted => self.lose(format_args!(
                "{err} ({in_a_row} errors in a row without audio)"
            )),
            StreamTrouble::Lost => self.lose(err),
        }
    }

    fn lose(&self, reason: impl std::fmt::Display) {
        if self.lost.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut r) = self.reason.try_lock() {
            *r = reason.to_string();
        }
        self.lost.store(true, Ordering::Release);
    }
}

/// What a stream error means for the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamTrouble {
    /// An overrun (samples dropped), or an error after which cpal's worker goes on (a
    /// failed poll, a rerouted default device, real-time priority refused): counted with
    /// the xruns. Reopening for it would warn of a lost microphone that still delivers; a
    /// stream that does stop after it is reported stalled and reopened, and one that only
    /// fails ([`FAILING_ERRORS`] in a row without audio) is lost.
    Counted,
    /// The stream is gone (device unplugged, stream invalidated, access withdrawn) or the
    /// error cannot be judged: reopened with backoff.
    Lost,
}

impl StreamTrouble {
    fn of(kind: cpal::ErrorKind) -> Self {
        use cpal::ErrorKind as K;
        match kind {
            K::Xrun | K::BackendError | K::DeviceChanged | K::RealtimeDenied => Self::Counted,
            _ => Self::Lost,
        }
    }
}

/// An input device opened through cpal.
pub struct CpalSource {
    device: String,
    /// The rate to ask for (`[audio] sample_rate`); 0 = the device's default.
    sample_rate: u32,
    stream: Option<cpal::Stream>,
    ring: Option<ringbuf::HeapCons<f32>>,
    shared: Arc<Shared>,
    /// The xruns of the streams before this one.
    past_xruns: u64,
    chunk: Vec<f32>,
}

impl std::fmt::Debug for CpalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpalSource({})", self.describe())
    }
}

impl CpalSource {
    /// `device`: a name or ALSA id as `babycryd devices` lists them; empty = the default.
    /// `sample_rate`: the capture rate to ask for, 0 for the device's default.
    pub fn new(device: &str, sample_rate: u32) -> Self {
        Self {
            device: device.to_string(),
            sample_rate,
            stream: None,
            ring: None,
            shared: Arc::new(Shared::default()),
            past_xruns: 0,
            chunk: vec![0.0; 4096],
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Unavailable {
            device: self.describe(),
            reason: reason.to_string(),
        }
    }

    /// The device's default configuration, at `[audio] sample_rate` when one is set and
    /// the device offers it (the default's format and channels preferred, in that order);
    /// otherwise the default, with a warning, so a wrong rate never costs the microphone.
    fn choose_config(
        &self,
        device: &cpal::Device,
    ) -> Result<cpal::SupportedStreamConfig, SourceError> {
        let default = device
            .default_input_config()
            .map_err(|e| self.unavailable(e))?;
        let wanted = self.sample_rate;
        if wanted == 0 || wanted == default.sample_rate() {
            return Ok(default);
        }
        let chosen = device
            .supported_input_configs()
            .into_iter()
            .flatten()
            .filter_map(|range| range.try_with_sample_rate(wanted))
            .min_by_key(|c| {
                (
                    c.sample_format() != default.sample_format(),
                    c.channels() != default.channels(),
                )
            });
        Ok(chosen.unwrap_or_else(|| {
            tracing::warn!(
                device = %self.describe(),
                wanted,
                default = default.sample_rate(),
                "the device does not offer the configured sample_rate; using its default"
            );
            default
        }))
    }

    /// Finds the device and starts its stream into a new ring.
    fn open_stream(&mut self) -> Result<StreamFormat, SourceError> {
        self.close();
        let device = self.find_device()?;
        let supported = self.choose_config(&device)?;
        let format = StreamFormat {
            sample_rate: supported.sample_rate(),
            channels: supported.channels(),
        };
        // Whole frames, so that the callback can fill it to the last sample.
        let frames = (format.sample_rate as usize * RING_SECONDS).max(1024);
        let capacity = frames * usize::from(format.channels.max(1));
        let (producer, consumer) = HeapRb::<f32>::new(capacity).split();
        self.past_xruns = self.xruns();
        self.shared = Arc::new(Shared::default());
        let config = supported.config();
        let stream = match supported.sample_format() {
            SampleFormat::I8 => self.build::<i8>(&device, config, producer),
            SampleFormat::I16 => self.build::<i16>(&device, config, producer),
            SampleFormat::I24 => self.build::<cpal::I24>(&device, config, producer),
            SampleFormat::I32 => self.build::<i32>(&device, config, producer),
            SampleFormat::U8 => self.build::<u8>(&device, config, producer),
            SampleFormat::U16 => self.build::<u16>(&device, config, producer),
            SampleFormat::F32 => self.build::<f32>(&device, config, producer),
            SampleFormat::F64 => self.build::<f64>(&device, config, producer),
            other => return Err(self.unavailable(format!("unsupported sample format {other}"))),
        }
        .map_err(|e| self.unavailable(e))?;
        if let Err(e) = stream.play() {
            // Dropped on the close thread, as any stream: a plugin's worker may hang.
            self.stream = Some(stream);
            self.close();
            return Err(self.unavailable(e));
        }
        tracing::info!(
            device = %self.describe(),
            format = %supported.sample_format(),
            rate = format.sample_rate,
            channels = format.channels,
            "capture started"
        );
        self.stream = Some(stream);
        self.ring = Some(consumer);
        Ok(format)
    }

    fn find_device(&self) -> Result<cpal::Device, SourceError> {
        let host = cpal::default_host();
        if self.device.is_empty() {
            return host
                .default_input_device()
                .ok_or_else(|| self.unavailable("no default input device"));
        }
        let devices = host.input_devices().map_err(|e| self.unavailable(e))?;
        for d in devices {
            let name = d
                .description()
                .map(|x| x.name().to_string())
                .unwrap_or_default();
            let id = d.id().ok();
            let matches = name == self.device
                || id
                    .as_ref()
                    .is_some_and(|i| i.to_string() == self.device || i.id() == self.device);
            if matches {
                return Ok(d);
            }
        }
        // The short ALSA forms `arecord -l` suggests ("hw:1,0", "plughw:1",
        // "hw:CARD=Device"), which the list spells "hw:CARD=1,DEV=0": cpal's lookup by id
        // puts them in that form. It looks among every device: an output-only one is no
        // match.
        host.device_by_id(&device_id(host.id(), &self.device))
            .filter(|d| d.supports_input())
            .ok_or_else(|| self.unavailable("no input device with this name or id"))
    }

    fn build<T>(
        &self,
        device: &cpal::Device,
        config: cpal::StreamConfig,
        mut producer: ringbuf::HeapProd<f32>,
    ) -> Result<cpal::Stream, cpal::Error>
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        let data_shared = self.shared.clone();
        let error_shared = self.shared.clone();
        let channels = usize::from(config.channels.max(1));
        device.build_input_stream(
            config,
            move |data: &[T], _: &cpal::InputCallbackInfo| {
                // Real-time context: no allocation, no lock, no blocking.
                data_shared.heard_audio();
                if !push_frames(&mut producer, data, channels) {
                    data_shared.overflows.fetch_add(1, Ordering::Relaxed);
                }
            },
            move |err: cpal::Error| error_shared.stream_error(err.kind(), &err),
            None,
        )
    }
}

/// Runs `f` with what alsa-lib prints on this thread kept from stderr and logged at debug
/// level instead. A missing microphone behind the `default` PCM makes alsa-lib print
/// eight lines at every attempt to open it, a journal full of them by morning, while the
/// loss itself is reported once, at warn, by the capture thread. (Messages alsa-lib
/// prints later on this thread wait in the buffer for the next call, which replaces it.)
///
/// libjack, which ALSA's `jack` plugin loads, is routed to the same log once `f` has
/// loaded it (see [`route_libjack_messages`]).
fn with_alsa_lib_messages_logged<T>(context: &str, f: impl FnOnce() -> T) -> T {
    let buffer = alsa::Output::local_error_handler()
        .inspect_err(|e| tracing::debug!("cannot take alsa-lib's messages from stderr: {e}"))
        .ok();
    let result = f();
    route_libjack_messages(Libjack::IfLoaded);
    if let Some(buffer) = buffer {
        let text = buffer.borrow().to_string();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(source = context, "alsa-lib: {line}");
        }
    }
    result
}

/// Whether [`route_libjack_messages`] may load libjack.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Libjack {
    /// Load it: `babycryd devices` probes every PCM, the jack one too, and exits.
    Load,
    /// Only a copy already loaded (by the plugin): the daemon does not carry a library
    /// it may never use (about 2 MB resident on x86_64, with libstdc++), so the first
    /// open of a jack PCM still prints, its retries do not.
    IfLoaded,
}

/// Sends what libjack prints to the debug log: ALSA's `jack` plugin loads libjack, which
/// prints five lines on stderr each time it finds no jack server running (`babycryd
/// devices` probes every PCM ALSA defines, a daemon configured with a jack PCM retries
/// it all night). libjack prints through callbacks of its own, one each for the process,
/// set here once. The library is kept loaded for good (one reference of ours), so the
/// callbacks outlive the plugin being unloaded and loaded again. Without libjack there
/// is nothing to route.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn route_libjack_messages(how: Libjack) {
    use std::ffi::{c_char, CStr};

    extern "C" fn log_libjack_message(message: *const c_char) {
        if message.is_null() {
            return;
        }
        // SAFETY: libjack passes a NUL-terminated string, valid during the call.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
        // A panic must not unwind into C (it would abort): a failing log is dropped.
        let _ = std::panic::catch_unwind(|| tracing::debug!("libjack: {text}"));
    }
    type SetMessageFunction = unsafe extern "C" fn(extern "C" fn(*const c_char));

    static ROUTED: AtomicBool = AtomicBool::new(false);
    if ROUTED.load(Ordering::Acquire) {
        return;
    }
    let flags = match how {
        Libjack::Load => libc::RTLD_LAZY,
        Libjack::IfLoaded => libc::RTLD_LAZY | libc::RTLD_NOLOAD,
    };
    // SAFETY: dlopen and dlsym with NUL-terminated names; the handle is never closed,
    // so the functions and the callback stay valid. Both symbols have libjack's
    // signature `void (*)(void (*func)(const char *))` (jack/jack.h). Two threads
    // getting here at once set the same callback twice, which is harmless.
    unsafe {
        let lib = libc::dlopen(c"libjack.so.0".as_ptr(), flags);
        if lib.is_null() {
            return;
        }
        for name in [c"jack_set_error_function", c"jack_set_info_function"] {
            let set = libc::dlsym(lib, name.as_ptr());
            if !set.is_null() {
                let set: SetMessageFunction = std::mem::transmute(set);
                set(log_libjack_message);
            }
        }
    }
    ROUTED.store(true, Ordering::Release);
    tracing::debug!("libjack's messages go to the debug log");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn route_libjack_messages(_how: Libjack) {}

/// `device` as a cpal device id: "alsa:hw:1,0" as it is, a bare "hw:1,0" on `host`.
fn device_id(host: cpal::HostId, device: &str) -> cpal::DeviceId {
    device
        .parse()
        .unwrap_or_else(|_| cpal::DeviceId::new(host, device))
}

/// Pushes the whole frames of `data` that fit into the ring as f32; false when some did
/// not fit (the capture thread fell behind). Whole frames only: a partial one would shift
/// the channels of every frame after it.
fn push_frames<T>(producer: &mut impl Producer<Item = f32>, data: &[T], channels: usize) -> bool
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let fits = data.len().min(producer.vacant_len()) / channels * channels;
    producer.push_iter(data[..fits].iter().map(|&s| s.to_sample::<f32>()));
    fits == data.len()
}

impl AudioSource for CpalSource {
    fn describe(&self) -> String {
        if self.device.is_empty() {
            "default input device".into()
        } else {
            self.device.clone()
        }
    }

    fn open(&mut self) -> Result<StreamFormat, SourceError> {
        let source = self.describe();
        with_alsa_lib_messages_logged(&source, || self.open_stream())
    }

    fn pull(&mut self, buf: &mut Vec<f32>) -> Result<Pull, SourceError> {
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            if self.shared.lost.load(Ordering::Acquire) {
                let reason = self
                    .shared
                    .reason
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_default();
                return Err(SourceError::Lost {
                    device: self.describe(),
                    reason,
                });
            }
            let Some(ring) = self.ring.as_mut() else {
                return Err(SourceError::Lost {
                    device: self.describe(),
                    reason: "not open".into(),
                });
            };
            let n = ring.pop_slice(&mut self.chunk);
            if n > 0 {
                buf.extend_from_slice(&self.chunk[..n]);
                return Ok(Pull::Audio);
            }
            if Instant::now() >= deadline {
                return Ok(Pull::Idle);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn close(&mut self) {
        // Dropping a cpal stream joins its worker thread, which a plugin PCM can leave
        // deadlocked: ALSA's pulse plugin does when its sound server dies under the
        // stream. Waiting for it here would stop the capture thread for good, the device
        // never reopened (tests/daemon_capture.rs
        // a_live_device_whose_server_died_is_reopened_when_it_returns). So the stream is
        // dropped on a thread of its own, which a stuck worker keeps (one thread and a
        // device handle per such loss); the capture goes on reopening the device.
        if let Some(stream) = self.stream.take() {
            let dropped = std::thread::Builder::new()
                .name("babycryd-close".into())
                .spawn(move || drop(stream));
            if let Err(e) = dropped {
                // The stream went down with the closure, here.
                tracing::warn!("cannot start a thread to close the audio stream: {e}");
            }
        }
        self.ring = None;
    }

    fn xruns(&self) -> u64 {
        self.past_xruns
            + self.shared.xruns.load(Ordering::Relaxed)
            + self.shared.overflows.load(Ordering::Relaxed)
    }

    /// A stream can hang without reporting an error (a suspended or replugged device
    /// behind a plugin PCM): reopening finds the device again.
    fn reopen_when_stalled(&self) -> bool {
        true
    }
}

/// One input device as `babycryd devices` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputDevice {
    pub name: String,
    pub id: String,
    pub default: bool,
    /// The format the daemon would open it with.
    pub default_format: Option<String>,
    /// Supported configurations: "channels ch, min-max Hz, format", the channel counts
    /// that share a rate range and format on one line ("1-64 ch, ...").
    pub configs: Vec<String>,
}

/// One line per (format, rate range), in the order first offered, with its channel
/// counts as ranges: ALSA's `null` device alone offers 64 channel counts in 13 formats,
/// 832 lines one by one.
fn group_configs(configs: impl IntoIterator<Item = (String, u32, u32, u16)>) -> Vec<String> {
    let mut groups: Vec<((String, u32, u32), Vec<u16>)> = Vec::new();
    for (format, min, max, channels) in configs {
        let key = (format, min, max);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(channels),
            None => groups.push((key, vec![channels])),
        }
    }
    groups
        .into_iter()
        .map(|((format, min, max), mut channels)| {
            channels.sort_unstable();
            channels.dedup();
            let mut runs: Vec<(u16, u16)> = Vec::new();
            for c in channels {
                match runs.last_mut() {
                    Some((_, end)) if *end + 1 == c => *end = c,
                    _ => runs.push((c, c)),
                }
            }
            let channels: Vec<String> = runs
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            format!("{} ch, {min}-{max} Hz, {format}", channels.join(", "))
        })
        .collect()
}

/// The input devices cpal sees. alsa-lib's messages on finding and probing them go to
/// the debug log, under the id of the device probed.
pub fn list_input_devices() -> Result<Vec<InputDevice>, cpal::Error> {
    route_libjack_messages(Libjack::Load);
    let (default_id, devices) = with_alsa_lib_messages_logged("devices", || {
        let host = cpal::default_host();
        let default_id = host.default_input_device().and_then(|d| d.id().ok());
        host.input_devices()
            .map(|devices| (default_id, devices.collect::<Vec<_>>()))
    })?;
    let probe = |d: &cpal::Device| {
        let default_format = d.default_input_config().ok().map(|c| {
            format!(
                "{} ch, {} Hz, {}",
                c.channels(),
                c.sample_rate(),
                c.sample_format()
            )
        });
        let configs = d
            .supported_input_configs()
            .map(|cs| {
                group_configs(cs.map(|c| {
                    (
                        c.sample_format().to_string(),
                        c.min_sample_rate(),
                        c.max_sample_rate(),
                        c.channels(),
                    )
                }))
            })
            .unwrap_or_default();
        (default_format, configs)
    };
    Ok(devices
        .iter()
        .map(|d| {
            let id = d.id().ok();
            let shown = id.as_ref().map(|i| i.to_string()).unwrap_or_default();
            let (default_format, configs) = with_alsa_lib_messages_logged(&shown, || probe(d));
            InputDevice {
                name: d
                    .description()
                    .map(|x| x.name().to_string())
                    .unwrap_or_default(),
                default: id.is_some() && id == default_id,
                id: shown,
                default_format,
                configs,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xruns are counted, not treated as loss; neither is an error after which cpal's
    /// ALSA worker goes on polling the same stream. A vanished device is a loss.
    #[test]
    fn only_a_stream_that_is_gone_is_a_lost_device() {
        use cpal::ErrorKind as K;
        for kind in [
            K::Xrun,
            K::BackendError,
            K::DeviceChanged,
            K::RealtimeDenied,
        ] {
            assert_eq!(StreamTrouble::of(kind), StreamTrouble::Counted, "{kind:?}");
        }
        for kind in [
            K::DeviceNotAvailable,
            K::StreamInvalidated,
            K::PermissionDenied,
            K::HostUnavailable,
            K::Other,
        ] {
            assert_eq!(StreamTrouble::of(kind), StreamTrouble::Lost, "{kind:?}");
        }
    }

    /// Errors with audio between them are counted as xruns; [`FAILING_ERRORS`] in a row
    /// without audio (a plugin PCM whose source vanished fails every poll) lose the
    /// stream, with the error as the reason, and stop the count.
    #[test]
    fn a_stream_that_only_fails_is_lost_and_one_with_audio_between_is_not() {
        use cpal::ErrorKind as K;
        let shared = Shared::default();
        for _ in 0..3 {
            for _ in 1..FAILING_ERRORS {
                shared.stream_error(K::BackendError, &"poll failed");
            }
            shared.heard_audio();
        }
        let counted = u64::from(3 * (FAILING_ERRORS - 1));
        assert!(!shared.lost.load(Ordering::Acquire));
        assert_eq!(shared.xruns.load(Ordering::Relaxed), counted);
        for _ in 0..2 * FAILING_ERRORS {
            shared.stream_error(K::BackendError, &"Input/output error");
        }
        assert!(shared.lost.load(Ordering::Acquire));
        let reason = shared.reason.lock().unwrap().clone();
        assert_eq!(
            reason,
            format!("Input/output error ({FAILING_ERRORS} errors in a row without audio)")
        );
        let xruns = shared.xruns.load(Ordering::Relaxed);
        assert_eq!(xruns, counted + u64::from(FAILING_ERRORS - 1));
    }

    /// What is asked of cpal's lookup, which spells "hw:1,0" the way its list does.
    #[test]
    fn a_configured_device_is_asked_for_on_the_alsa_host() {
        let alsa = cpal::HostId::Alsa;
        for (configured, id) in [
            ("hw:1,0", "hw:1,0"),
            ("plughw:1", "plughw:1"),
            ("alsa:hw:CARD=Device", "hw:CARD=Device"),
            ("null", "null"),
        ] {
            let asked = device_id(alsa, configured);
            assert_eq!((asked.host(), asked.id()), (alsa, id), "{configured}");
        }
    }

    #[test]
    fn supported_configs_are_one_line_per_format_and_rate_range() {
        let offered = [
            (1, "i16"),
            (2, "i16"),
            (3, "i16"),
            (6, "i16"),
            (2, "f32"),
            (1, "f32"),
        ]
        .into_iter()
        .map(|(ch, f)| (f.to_string(), 8000, 48000, ch))
        .chain([("i16".to_string(), 44100, 44100, 2)]);
        assert_eq!(
            group_configs(offered),
            [
                "1-3, 6 ch, 8000-48000 Hz, i16",
                "1-2 ch, 8000-48000 Hz, f32",
                "2 ch, 44100-44100 Hz, i16"
            ]
        );
    }

    #[test]
    fn a_ring_that_is_nearly_full_takes_whole_frames_only() {
        // Stereo, three frames of room; the capture thread read one and a half frames.
        let (mut producer, mut consumer) = HeapRb::<f32>::new(6).split();
        assert!(push_frames(&mut producer, &[1i16, 2, 3, 4, 5, 6], 2));
        let mut popped = [0.0; 3];
        assert_eq!(consumer.pop_slice(&mut popped), 3);
        // Room for three samples: one frame of the two goes in, the rest is an overflow.
        assert!(!push_frames(&mut producer, &[7i16, 8, 9, 10], 2));
        let mut left = [0.0; 6];
        let n = consumer.pop_slice(&mut left);
        let scale = 1.0 / 32768.0;
        let want: Vec<f32> = [4.0, 5.0, 6.0, 7.0, 8.0]
            .iter()
            .map(|v| v * scale)
            .collect();
        assert_eq!(left[..n], want[..]);
        // The next callback's frames start on a frame boundary.
        assert!(push_frames(&mut producer, &[11i16, 12], 2));
        assert_eq!(consumer.pop_slice(&mut left), 2);
        assert_eq!(left[..2], [11.0 * scale, 12.0 * scale]);
    }
}
