//! Device selection: `Auto` tries CUDA, HIP, Level Zero, then OpenCL.

use linrec_runtime::{
    BackendKind, Device, DeviceKind, RuntimeError, enumerate_backend, probe_cuda_driver,
};

use crate::common::ci_mode;

/// Auto's order (DESIGN §7).
const AUTO_ORDER: [BackendKind; 4] = [
    BackendKind::Cuda,
    BackendKind::Hip,
    BackendKind::LevelZero,
    BackendKind::OpenCl,
];

/// Whether `backend` has a usable device here (then Auto may stop at it).
fn has_device(backend: BackendKind) -> bool {
    enumerate_backend(backend).is_ok()
}

#[test]
fn auto_tries_the_backends_in_order() {
    assert_eq!(DeviceKind::Auto.candidates(), AUTO_ORDER);
    assert_eq!(DeviceKind::default(), DeviceKind::Auto);
    for kind in AUTO_ORDER {
        let only = match kind {
            BackendKind::Cuda => DeviceKind::Cuda,
            BackendKind::Hip => DeviceKind::Hip,
            BackendKind::LevelZero => DeviceKind::LevelZero,
            BackendKind::OpenCl => DeviceKind::OpenCl,
        };
        assert_eq!(only.candidates(), [kind]);
    }
}

#[test]
fn auto_falls_back_to_opencl() {
    if probe_cuda_driver().is_ok() {
        eprintln!("note: libcuda is present; Auto may pick CUDA here, nothing to check");
        return;
    }
    if has_device(BackendKind::Hip) || has_device(BackendKind::LevelZero) {
        eprintln!("note: an AMD or Intel GPU is present; Auto picks it, nothing to check");
        return;
    }
    match Device::new(DeviceKind::Auto) {
        Ok(dev) => {
            assert_eq!(dev.kind(), BackendKind::OpenCl, "{:?}", dev.info());
            eprintln!("Auto picked {}", dev.info().label());
        }
        Err(RuntimeError::NoBackendAvailable { attempts }) => {
            // Every backend was tried, in order, and each says why it was skipped.
            let tried: Vec<BackendKind> = attempts.iter().map(|(b, _)| *b).collect();
            assert_eq!(tried, AUTO_ORDER);
            assert!(attempts[0].1.contains("libcuda"), "{attempts:?}");
            assert!(
                attempts[1].1.contains("libamdhip64") || attempts[1].1.contains("hip"),
                "{attempts:?}"
            );
            assert!(
                attempts[2].1.contains("Level Zero") || attempts[2].1.contains("zeInit"),
                "{attempts:?}"
            );
            assert!(
                !ci_mode(),
                "CI=true but Auto found no device: {attempts:?}; CI must install the OpenCL runtime"
            );
            eprintln!("note: no OpenCL runtime here; Auto reported: {attempts:?}");
        }
        Err(e) => panic!("Auto failed with an unexpected error: {e}"),
    }
}

/// HIP and Level Zero, with no AMD or Intel GPU here, fail in the two ways Auto skips (no
/// library, or a library that finds no device), so Auto goes on to OpenCL.
#[test]
fn auto_falls_through_hip_and_level_zero() {
    for backend in [BackendKind::Hip, BackendKind::LevelZero] {
        match enumerate_backend(backend) {
            Ok(devices) => {
                eprintln!("note: {backend} has devices here ({devices:?}); nothing to check");
            }
            Err(e @ (RuntimeError::DriverNotFound { .. } | RuntimeError::NoDevice { .. })) => {
                eprintln!("{backend}: {e}");
            }
            Err(e) => panic!("{backend} failed in a way Auto does not skip: {e:?}"),
        }
    }
}

#[test]
fn enumerate_reports_every_backend() {
    let all = Device::enumerate(DeviceKind::Auto);
    let kinds: Vec<BackendKind> = all.iter().map(|(b, _)| *b).collect();
    assert_eq!(kinds, AUTO_ORDER);
    for (backend, result) in &all {
        match result {
            Ok(devices) => {
                assert!(!devices.is_empty());
                for (i, d) in devices.iter().enumerate() {
                    assert_eq!(d.backend, *backend);
                    assert_eq!(d.ordinal, i);
                }
            }
            Err(e) => eprintln!("{backend}: {e}"),
        }
    }
    let only = Device::enumerate(DeviceKind::OpenCl);
    assert_eq!(only.len(), 1);
}

#[test]
fn ordinal_past_the_end_is_an_error() {
    let Ok(devices) = linrec_runtime::enumerate_backend(BackendKind::OpenCl) else {
        return;
    };
    let err = Device::open(DeviceKind::OpenCl, devices.len()).expect_err("one past the end");
    assert!(
        matches!(
            err,
            RuntimeError::DeviceOrdinal {
                backend: BackendKind::OpenCl,
                ..
            }
        ),
        "{err}"
    );
}
