//! The HIP backend without an AMD GPU: a missing runtime, a wrong library and a runtime
//! that finds no GPU are all errors that say what to do, never a panic. With a GPU the
//! device checks that need no code object run (tests/fixtures has no HSACO).

use linrec_runtime::{
    BackendKind, Device, DeviceKind, HIP_LIB_ENV, HipBackend, RuntimeError, probe_hip_driver,
};

use crate::child::{assert_missing_override, refused_override};
use crate::common::gpu_device;

/// The two ways a machine without an AMD GPU fails, each with an actionable message.
fn assert_unavailable(err: &RuntimeError) {
    let msg = err.to_string();
    match err {
        RuntimeError::DriverNotFound {
            backend: BackendKind::Hip,
            ..
        } => {
            assert!(msg.starts_with("hip driver not found"), "{msg}");
            assert!(msg.contains("libamdhip64"), "says what was missing: {msg}");
            assert!(
                msg.contains("Install ROCm") && msg.contains(HIP_LIB_ENV),
                "says what to do: {msg}"
            );
        }
        RuntimeError::NoDevice {
            backend: BackendKind::Hip,
            ..
        } => {
            // e.g. Debian's libamdhip64-5 on a machine without /dev/kfd: hipInit fails.
            assert!(msg.starts_with("no usable hip device"), "{msg}");
            assert!(
                msg.contains("hipInit returned") || msg.contains("hipGetDeviceCount returned"),
                "names the failing call and its code: {msg}"
            );
            assert!(msg.contains("/dev/kfd"), "says what to check: {msg}");
        }
        _ => panic!("not a 'HIP unavailable' error: {err:?}"),
    }
}

#[test]
fn hip_reports_a_missing_or_unusable_runtime() {
    let err = match HipBackend::enumerate() {
        Ok(devices) => {
            eprintln!("note: HIP sees {devices:?}; the failure paths are not testable here");
            return;
        }
        Err(e) => e,
    };
    eprintln!("hip: {err}");
    assert_unavailable(&err);
    assert_unavailable(&probe_hip_driver().expect_err("same outcome as enumerate"));
    assert_unavailable(&HipBackend::open(0).expect_err("no device to open"));
    assert_unavailable(&Device::new(DeviceKind::Hip).expect_err("explicit HIP"));
    // Twice: the outcome is kept, and a failed load leaves nothing behind that panics later.
    assert_unavailable(&Device::open(DeviceKind::Hip, 1).expect_err("again"));
}

#[test]
fn hip_lib_override_to_a_missing_file() {
    let path = "/nonexistent/linrec-test/libamdhip64.so";
    assert_missing_override("hip", HIP_LIB_ENV, path);
}

#[test]
fn hip_lib_override_to_a_library_that_is_not_hip() {
    // libm: loads everywhere, exports none of HIP's symbols.
    let r = refused_override("hip", HIP_LIB_ENV, "libm.so.6");
    assert!(
        r.message.contains("libm.so.6 lacks hipInit")
            && r.message.contains("hipModuleLaunchKernel"),
        "names the missing symbols: {r:?}"
    );
    assert!(r.message.contains("not the HIP runtime"), "{r:?}");
}

#[test]
fn hip_lib_override_to_a_file_that_is_not_a_library() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    refused_override("hip", HIP_LIB_ENV, path);
}

#[test]
fn hip_device_info_where_a_gpu_is_present() {
    let Some(dev) = gpu_device(DeviceKind::Hip, "hip", "HIP", "device_info") else {
        return;
    };
    crate::kernels::device_info(&dev);
    assert_eq!(dev.info().vendor, "AMD");
    eprintln!("hip arch: {:?}", dev.info().arch);
}
