//! Device selection: `Auto` tries CUDA, then OpenCL.

use linrec_runtime::{BackendKind, Device, DeviceKind, RuntimeError, probe_cuda_driver};

use crate::common::ci_mode;

#[test]
fn auto_falls_back_to_opencl() {
    if probe_cuda_driver().is_ok() {
        eprintln!("note: libcuda is present; Auto may pick CUDA here, nothing to check");
        return;
    }
    match Device::new(DeviceKind::Auto) {
        Ok(dev) => {
            assert_eq!(dev.kind(), BackendKind::OpenCl, "{:?}", dev.info());
            eprintln!("Auto picked {}", dev.info().label());
        }
        Err(RuntimeError::NoBackendAvailable { attempts }) => {
            // Both backends were tried, in order, and each says why it was skipped.
            let tried: Vec<BackendKind> = attempts.iter().map(|(b, _)| *b).collect();
            assert_eq!(tried, [BackendKind::Cuda, BackendKind::OpenCl]);
            assert!(attempts[0].1.contains("libcuda"), "{attempts:?}");
            assert!(
                !ci_mode(),
                "CI=true but Auto found no device: {attempts:?}; CI must install the OpenCL runtime"
            );
            eprintln!("note: no OpenCL runtime here; Auto reported: {attempts:?}");
        }
        Err(e) => panic!("Auto failed with an unexpected error: {e}"),
    }
}

#[test]
fn enumerate_reports_every_backend() {
    let all = Device::enumerate(DeviceKind::Auto);
    let kinds: Vec<BackendKind> = all.iter().map(|(b, _)| *b).collect();
    assert_eq!(kinds, [BackendKind::Cuda, BackendKind::OpenCl]);
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
