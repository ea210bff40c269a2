//! Helpers shared by the test modules.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use linrec_runtime::{Device, DeviceKind, RuntimeError};

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
