//! cudarc interop (`linrec_runtime::interop`): `CudaSlice`s as device buffers and back.
//!
//! Without an NVIDIA driver (CI) only the signatures and the non-CUDA error path can be
//! checked: a `CudaSlice` cannot exist without libcuda. On a GPU machine the round trips run:
//! slices taken over and borrowed, a kernel reading them, its output copied into a new slice
//! on the caller's stream, and the errors for a wrong shape, dtype, context or device.

use std::sync::Arc;

use linrec_runtime::cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use linrec_runtime::half::{bf16, f16};
use linrec_runtime::{
    CudaElement, DType, Device, DeviceBuffer, DeviceKind, KernelSignature, LaunchConfig,
    RuntimeError, ScalarType,
};

use crate::mock::MockBackend;

/// The interop API takes every element type linrec has (compile-time check).
#[allow(dead_code)]
fn signatures(
    dev: &Device,
    stream: &Arc<CudaStream>,
    b: CudaSlice<bf16>,
    h: &CudaSlice<f16>,
    buf: &DeviceBuffer,
) -> linrec_runtime::Result<()> {
    fn dtype<T: CudaElement>() -> DType {
        T::DTYPE
    }
    assert_eq!(
        [
            dtype::<bf16>(),
            dtype::<f16>(),
            dtype::<f32>(),
            dtype::<i32>(),
            dtype::<i64>()
        ],
        DType::ALL
    );
    let _: DeviceBuffer = dev.from_cuda_slice(b, &[2, 3])?;
    // SAFETY: not run; `h` outlives the view inside this function.
    let _: DeviceBuffer = unsafe { dev.view_cuda_slice(h, &[6]) }?;
    let _: CudaSlice<f32> = dev.to_cuda_slice(buf, stream)?;
    let _: Option<Arc<CudaStream>> = dev.cuda_stream();
    Ok(())
}

#[test]
fn a_device_that_is_not_cuda_has_no_cuda_stream() {
    let (backend, _) = MockBackend::new();
    let dev = Device::from_backend(Box::new(backend));
    assert!(dev.cuda_stream().is_none());
}

/// The CUDA device, or `None` with a note off GPU machines.
fn cuda(test: &str) -> Option<Device> {
    match Device::new(DeviceKind::Cuda) {
        Ok(dev) => Some(dev),
        Err(e @ (RuntimeError::DriverNotFound { .. } | RuntimeError::NoDevice { .. })) => {
            eprintln!("note: skipping {test}: {e}");
            None
        }
        Err(e) => panic!("opening the CUDA device failed: {e}"),
    }
}

#[test]
fn cuda_slices_round_trip_through_a_kernel() {
    let Some(dev) = cuda("cuda_slices_round_trip_through_a_kernel") else {
        return;
    };
    let ctx = CudaContext::new(dev.info().ordinal).expect("primary context");
    // The caller's own stream, not linrec's: the interop orders the two.
    let stream = ctx.new_stream().expect("stream");
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let xs = stream.clone_htod(&x).expect("x to the device");
    let ys = stream.clone_htod(&y).expect("y to the device");

    let dx = dev.from_cuda_slice(xs, &[n]).expect("take x over");
    // SAFETY: `ys` lives to the end of this function; `dy` and every clone of it are dropped
    // before (at the latest with `dev`'s last use below).
    let dy = unsafe { dev.view_cuda_slice(&ys, &[n]) }.expect("borrow y");
    assert_eq!((dx.dtype(), dx.shape()), (DType::F32, &[n][..]));
    // linrec reads them (its own download), after the caller's uploads on the other stream.
    assert_eq!(dev.download::<f32>(&dx).expect("download x"), x);

    let out = dev.alloc_poisoned(DType::F32, &[n]).expect("alloc out");
    let module = dev
        .module("fixtures/kernels", || Ok(crate::kernels::PTX.to_vec()))
        .expect("fixture PTX");
    let axpy = dev.kernel(&module, "axpy").expect("axpy");
    let sig = KernelSignature::new("axpy")
        .scalar("alpha", ScalarType::F32)
        .buffer("x", DType::F32, ["N"])
        .buffer("y", DType::F32, ["N"])
        .buffer("out", DType::F32, ["N"])
        .scalar("n", ScalarType::I32);
    dev.launch_checked(
        &axpy,
        &sig,
        &LaunchConfig::linear(n as u32, 64),
        &[
            0.5f32.into(),
            (&dx).into(),
            (&dy).into(),
            (&out).into(),
            (n as i32).into(),
        ],
    )
    .expect("launch");

    // Back into a slice on the caller's stream, without waiting on the host.
    let back: CudaSlice<f32> = dev.to_cuda_slice(&out, &stream).expect("copy out");
    drop(out); // linrec may free its buffer at once: the copy is ordered before.
    let got = stream.clone_dtoh(&back).expect("to the host");
    for i in 0..n {
        assert_eq!(got[i], 0.5 * x[i] + y[i], "element {i}");
    }
    drop((dx, dy));
    drop(ys);

    // bf16 and i32, and on linrec's own stream.
    let own = dev.cuda_stream().expect("a CUDA device has a stream");
    let b: Vec<bf16> = (0..24).map(|i| bf16::from_f32(i as f32 - 8.5)).collect();
    let bs = own.clone_htod(&b).expect("bf16 to the device");
    let db = dev.from_cuda_slice(bs, &[2, 3, 4]).expect("take bf16 over");
    assert_eq!(db.dtype(), DType::BF16);
    let bytes = dev.download_bytes(&db).expect("download");
    let want: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(bytes, want);
    let again: CudaSlice<bf16> = dev.to_cuda_slice(&db, &own).expect("copy bf16");
    assert_eq!(own.clone_dtoh(&again).expect("to the host"), b);
    let empty = dev.alloc(DType::I32, &[0, 4]).expect("empty");
    let none: CudaSlice<i32> = dev.to_cuda_slice(&empty, &stream).expect("empty copy");
    assert!(none.is_empty());
    stream.synchronize().expect("sync");

    // Errors.
    let s = stream.clone_htod(&[1.0f32; 6]).expect("upload");
    let e = dev.from_cuda_slice(s, &[4]).expect_err("4 != 6 elements");
    assert!(
        e.to_string()
            .contains("a shape of 6 elements (the slice's length)"),
        "{e}"
    );
    let e = dev
        .to_cuda_slice::<f16>(&db, &stream)
        .expect_err("bf16 buffer, f16 slice");
    assert!(matches!(e, RuntimeError::DType { .. }), "{e}");
    let strided = db.with_strides(&[4, 3], &[1, 4]).expect("transposed view");
    let e = dev
        .to_cuda_slice::<bf16>(&strided, &stream)
        .expect_err("strided");
    assert!(matches!(e, RuntimeError::Strides { .. }), "{e}");
    let (mock, _) = MockBackend::new();
    let mock = Device::from_backend(Box::new(mock));
    let s = stream.clone_htod(&[1.0f32; 6]).expect("upload");
    let e = mock
        .from_cuda_slice(s, &[6])
        .expect_err("not a CUDA device");
    assert!(e.to_string().contains("not a CUDA device"), "{e}");
    let other = CudaContext::new_non_primary(dev.info().ordinal, 0).expect("another context");
    let s = other
        .default_stream()
        .clone_htod(&[1.0f32; 6])
        .expect("upload");
    let e = dev.from_cuda_slice(s, &[6]).expect_err("another context");
    assert!(e.to_string().contains("another context"), "{e}");
    eprintln!(
        "cuda interop: round trips and errors checked on {}",
        dev.info().label()
    );
}
