//! Counts heap allocations in the steady-state hot loop with a counting global
//! allocator: the always-on path that every audio frame takes (capture conversion into
//! pooled buffers, framing, the energy gate, the monitor's history; at 48 kHz and at
//! 8 kHz) and the front end (`features_into`) must not allocate at all once warm; the
//! network's allocations per window are counted and pinned so a regression shows.
//!
//! tract allocates each node's output tensor on every run (its plan owns no arena), so
//! inference cannot be allocation-free today. Measured by this test (`cargo test --test
//! no_alloc -- --nocapture`): about 150 allocations per window for either model, the same
//! with a fresh state per run (`plan.run`) and with the model's reused
//! `TypedSimpleState` (which saves the state's own few; the rest are tract's
//! per-node outputs plus our input tensor and probability vectors). The bounds below pin
//! the measured counts with headroom, so a regression shows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use babycry::bench::{quiet_room, AlwaysOnPath};
use babycry::features::{FrontEnd, MelMatrix};
use babycry::model::Model;
use tract_onnx::prelude::*;

struct Counting;

thread_local! {
    /// Counting on this thread: the test harness's own threads (its "running for over 60
    /// seconds" notice on a slow machine) allocate too. Everything measured runs on the
    /// calling thread (tract is built without its multithreaded matmul).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// One test function: the counters are process-wide and tests run on parallel threads.
fn count<T>(f: impl FnOnce() -> T) -> (usize, usize, T) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
        out,
    )
}

const WINDOWS: usize = 20;

#[test]
fn the_hot_loop_allocates_nothing_per_frame_and_a_bounded_amount_in_tract() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for rate in [48_000, 8000] {
        let mut path = AlwaysOnPath::with_models(
            &models.join("cry-reason.onnx"),
            Some(&models.join("cry-detector.onnx")),
            rate,
        )
        .unwrap();
        path.warm_up().unwrap();
        let minute = quiet_room(rate, 60.0);
        let (allocs, bytes, result) = count(|| path.feed(&minute));
        result.unwrap();
        assert_eq!(path.monitor().summary().gate_openings, 0);
        eprintln!("always-on path at {rate} Hz: {allocs} allocations ({bytes} bytes) in 60 s");
        assert_eq!(
            allocs, 0,
            "{rate} Hz: the always-on path allocated {allocs} times in a minute of quiet room"
        );
    }
    let audio = babycry::bench::synthetic_cry(8000, 7.0);
    for (file, max_per_window) in [("cry-detector.onnx", 200), ("cry-reason.onnx", 300)] {
        let mut model = Model::load(&models.join(file)).unwrap();
        let sc = model.sidecar().clone();
        let n = sc.window_samples();
        let mut fe = FrontEnd::new(&sc.features, sc.audio.sample_rate, n).unwrap();
        let mut features = MelMatrix {
            n_mels: 0,
            n_frames: 0,
            data: Vec::new(),
        };
        // Warm up: first calls size the buffers.
        fe.features_into(&audio[..n], &mut features);
        model.predict_features(&features).unwrap();

        let (fe_allocs, _, ()) = count(|| {
            for w in 0..WINDOWS {
                let start = w * 97 % (audio.len() - n + 1);
                fe.features_into(&audio[start..start + n], &mut features);
            }
        });
        assert_eq!(
            fe_allocs, 0,
            "{file}: front end allocated {fe_allocs} times"
        );

        let (nn_allocs, nn_bytes, _) = count(|| {
            for _ in 0..WINDOWS {
                model.predict_features(&features).unwrap();
            }
        });
        // For the record: a fresh state per run (`plan.run`), what the model did before.
        let input = babycry::model::build_input(&features, &sc.input);
        let (spawn_allocs, _, _) = count(|| {
            for _ in 0..WINDOWS {
                let t = Tensor::from_shape(&sc.input.shape, &input).unwrap();
                model.plan().run(tvec!(t.into())).unwrap();
            }
        });
        eprintln!(
            "{file}: plan.run (fresh state) {:.1} allocations per window",
            spawn_allocs as f64 / WINDOWS as f64
        );
        let per_window = nn_allocs as f64 / WINDOWS as f64;
        eprintln!(
            "{file}: network {per_window:.1} allocations, {:.0} bytes per window",
            nn_bytes as f64 / WINDOWS as f64
        );
        assert!(
            per_window <= f64::from(max_per_window),
            "{file}: {per_window} allocations per window, pinned at {max_per_window}"
        );
    }
}
