//! The Level Zero backend without an Intel GPU: a missing loader, a wrong library and a
//! loader whose `zeInit` fails (Debian's libze1 without a GPU driver: `0x78000001`) are all
//! errors that say what to do, never a panic. With an Intel GPU the shared kernel checks run
//! on the SPIR-V fixture, the same module the OpenCL tests load.

use linrec_runtime::{
    BackendKind, Device, DeviceKind, LevelZeroBackend, RuntimeError, ZE_LIB_ENV,
    probe_level_zero_driver,
};

use crate::child::{assert_missing_override, refused_override};

fn assert_unavailable(err: &RuntimeError) {
    let msg = err.to_string();
    match err {
        RuntimeError::DriverNotFound {
            backend: BackendKind::LevelZero,
            ..
        } => {
            assert!(msg.starts_with("level_zero driver not found"), "{msg}");
            assert!(msg.contains("libze_loader"), "says what was missing: {msg}");
            assert!(
                msg.contains("libze1") && msg.contains(ZE_LIB_ENV),
                "says what to do: {msg}"
            );
        }
        RuntimeError::NoDevice {
            backend: BackendKind::LevelZero,
            detail,
            ..
        } => {
            assert!(msg.starts_with("no usable level_zero device"), "{msg}");
            if detail.starts_with("zeInit") {
                // The loader is installed: the failing call and its result code, by number
                // and by name.
                assert!(
                    detail.starts_with("zeInit(ZE_INIT_FLAG_GPU_ONLY) returned 0x"),
                    "{msg}"
                );
                assert!(detail.contains("(ZE_RESULT_"), "names the code: {msg}");
            }
            assert!(msg.contains("Intel GPU"), "says what is needed: {msg}");
        }
        _ => panic!("not a 'Level Zero unavailable' error: {err:?}"),
    }
}

#[test]
fn level_zero_reports_a_missing_or_unusable_loader() {
    let err = match LevelZeroBackend::enumerate() {
        Ok(devices) => {
            eprintln!("note: Level Zero sees {devices:?}; the failure paths are not testable here");
            return;
        }
        Err(e) => e,
    };
    eprintln!("level_zero: {err}");
    assert_unavailable(&err);
    if let RuntimeError::NoDevice { detail, .. } = &err
        && detail.contains("0x78000001")
    {
        // What Debian's libze1 says on a machine without an Intel GPU driver.
        assert!(detail.contains("ZE_RESULT_ERROR_UNINITIALIZED"), "{detail}");
    }
    assert_unavailable(&probe_level_zero_driver().expect_err("same outcome as enumerate"));
    assert_unavailable(&LevelZeroBackend::open(0).expect_err("no device to open"));
    assert_unavailable(&Device::new(DeviceKind::LevelZero).expect_err("explicit Level Zero"));
    // Twice: zeInit ran once, its failure is kept, and nothing else is called after it.
    assert_unavailable(&Device::open(DeviceKind::LevelZero, 1).expect_err("again"));
}

#[test]
fn ze_lib_override_to_a_missing_file() {
    let path = "/nonexistent/linrec-test/libze_loader.so.1";
    assert_missing_override("level_zero", ZE_LIB_ENV, path);
}

#[test]
fn ze_lib_override_to_a_library_that_is_not_level_zero() {
    let r = refused_override("l0", ZE_LIB_ENV, "libm.so.6");
    assert!(
        r.message.contains("libm.so.6 lacks zeInit") && r.message.contains("zeModuleCreate"),
        "names the missing symbols: {r:?}"
    );
}

/// On a machine with an Intel GPU: the shared kernel checks on the SPIR-V fixture. Skips
/// where there is none (CI has none).
mod on_gpu {
    use linrec_runtime::DeviceKind;

    use crate::common::{gpu_device, kernel_checks};

    kernel_checks!(
        |test| gpu_device(DeviceKind::LevelZero, "level_zero", "Level Zero", test);
        device_info,
        axpy_is_exact_and_leaves_the_tail_alone,
        block_sum_reduces_each_work_group,
        iota_writes_integers,
        module_cache_loads_once,
        bad_modules_and_names_are_errors,
        driver_checks_the_argument_count,
        fills_and_empty_tensors,
    );
}
