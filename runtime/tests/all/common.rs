//! Helpers shared by the test modules.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use linrec_runtime::{DType, Device, DeviceBuffer, DeviceKind, RuntimeError};
use linrec_spec::Role;
use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, KernelParam, SizeExpr};

use crate::mock::MockBackend;

/// Whether we run under CI (`CI=true`), where a missing OpenCL runtime is a failure.
pub fn ci_mode() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The OpenCL device the SPIR-V tests run on, or `None` (with a note) when there is none
/// outside CI. Under CI a missing runtime fails the test, because CI is where the SPIR-V
/// kernels must execute.
pub fn opencl_device(test: &str) -> Option<Device> {
    match Device::new(DeviceKind::OpenCl) {
        Ok(dev) => Some(dev),
        Err(e @ (RuntimeError::DriverNotFound { .. } | RuntimeError::NoDevice { .. })) => {
            assert!(
                !ci_mode(),
                "CI=true but no OpenCL device takes SPIR-V: {e}\n\
                 CI must run `bash scripts/setup-opencl.sh` and export the OCL_ICD_VENDORS it prints"
            );
            // Straight to stderr, not eprintln!: libtest captures the macros' output of
            // passing tests, and this note must be seen. The reason once, then one line each.
            static EXPLAINED: AtomicBool = AtomicBool::new(false);
            let mut err = std::io::stderr();
            if !EXPLAINED.swap(true, Ordering::Relaxed) {
                let _ = writeln!(err, "note: the OpenCL tests skip: {e}");
            }
            let _ = writeln!(err, "note: skipping {test} (no OpenCL device takes SPIR-V)");
            None
        }
        Err(e) => panic!("opening the OpenCL device failed: {e}"),
    }
}

/// The device of `kind` where its driver and a device are present, else `None` with a note
/// (`skipping {name} {test}`): the expected case off GPU machines, so the note stays in the
/// captured output. Any other error fails the test (`opening the {title} device failed`).
pub fn gpu_device(kind: DeviceKind, name: &str, title: &str, test: &str) -> Option<Device> {
    match Device::new(kind) {
        Ok(dev) => Some(dev),
        Err(e @ (RuntimeError::DriverNotFound { .. } | RuntimeError::NoDevice { .. })) => {
            eprintln!("note: skipping {name} {test}: {e}");
            None
        }
        Err(e) => panic!("opening the {title} device failed: {e}"),
    }
}

/// One `#[test]` per named check of `crate::kernels`, each running it on the device that
/// `$open(test name)` returns (an `Option<Device>`), and skipping where that is `None`.
macro_rules! kernel_checks {
    ($open:expr; $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            if let Some(dev) = $open(stringify!($name)) {
                crate::kernels::$name(&dev);
            }
        }
    )*};
}
pub(crate) use kernel_checks;

/// A device on a fresh in-memory mock backend, and the backend's launch log.
pub fn mock_device() -> (Device, Arc<Mutex<Vec<String>>>) {
    let (backend, launches) = MockBackend::new();
    (Device::from_backend(Box::new(backend)), launches)
}

/// A launch log the op tests read: the mock backend's lines or the recorder's.
pub trait Launched {
    /// The launches recorded so far.
    fn launched(&self) -> Vec<String>;
}

impl Launched for Arc<Mutex<Vec<String>>> {
    fn launched(&self) -> Vec<String> {
        self.lock().expect("lock").clone()
    }
}

/// Asserts that `err` is about argument `arg` and mentions `needle`, and nothing launched.
pub fn assert_names(err: RuntimeError, arg: &str, needle: &str, log: &impl Launched) {
    let msg = err.to_string();
    assert!(msg.contains(&format!("`{arg}`")), "{msg}");
    assert!(msg.contains(needle), "{msg}");
    assert!(log.launched().is_empty(), "launched anyway");
}

/// The module image the op tests pass (the mock backend loads any bytes).
pub const BINARY: &[u8] = b"\x03\x02\x23\x07";

/// q, k, v and g as the inputs of an op call.
pub fn qkvg<'a>(
    q: &'a DeviceBuffer,
    k: &'a DeviceBuffer,
    v: &'a DeviceBuffer,
    g: &'a DeviceBuffer,
) -> Vec<(Role, &'a DeviceBuffer)> {
    vec![
        (Role::Query, q),
        (Role::Key, k),
        (Role::Value, v),
        (Role::Gate, g),
    ]
}

/// Whether every element of `buf` is the runtime's NaN poison: the bf16 pattern `0x7FC0`, or
/// NaN f32s (downloading as f32 fails the test for any other dtype).
pub fn all_nan(dev: &Device, buf: &DeviceBuffer) -> bool {
    match buf.dtype() {
        DType::BF16 => dev
            .download_bytes(buf)
            .expect("download")
            .chunks(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) == 0x7FC0),
        _ => dev
            .download::<f32>(buf)
            .expect("download")
            .iter()
            .all(|x| x.is_nan()),
    }
}

/// The launch metadata of a test kernel (spec `test`, SPIR-V, bf16, K = 8, V = 40, C = 16,
/// 128 threads, one launch) with the given entry, direction, ABI-ordered parameters,
/// `[h0, ht, varlen]` flags, grid and scratch floats per workgroup.
pub fn test_kernel(
    entry: &str,
    direction: &str,
    params: Vec<KernelParam>,
    [initial_state, final_state, varlen]: [bool; 3],
    grid: [SizeExpr; 3],
    scratch: u64,
) -> KernelInfo {
    KernelInfo {
        entry: entry.into(),
        spec_name: "test".into(),
        spec_hash: "00".into(),
        direction: direction.into(),
        target: "spirv".into(),
        config: KernelConfig {
            dtype: ElementType::Bf16,
            key_dim: 8,
            value_dim: 40,
            chunk: 16,
            initial_state,
            final_state,
            varlen,
        },
        params,
        grid,
        block: [128, 1, 1],
        shared_bytes: 0,
        scratch,
        then: Vec::new(),
        narrower: Vec::new(),
        instead: None,
    }
}
