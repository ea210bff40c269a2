//! Launch-argument checks (dtype, shape, named dimensions, strides, kinds, count, device) and
//! buffer layout rules, on the in-memory mock backend: every failure names the argument and
//! nothing reaches the backend.

use std::sync::Mutex;

use linrec_runtime::{
    DType, Device, DeviceKind, Dim, KernelArg, KernelHandle, KernelSignature, LaunchConfig, Layout,
    RuntimeError, ScalarType, contiguous_strides, poison_pattern,
};

use crate::common::mock_device;

/// The signature of a chunked forward kernel: q, k, v [B, T, H, D], g [B, T, H], o like v.
fn fwd_sig() -> KernelSignature {
    KernelSignature::new("fwd")
        .buffer("q", DType::BF16, ["B", "T", "H", "K"])
        .buffer("k", DType::BF16, ["B", "T", "H", "K"])
        .buffer("v", DType::BF16, ["B", "T", "H", "V"])
        .buffer("g", DType::F32, ["B", "T", "H"])
        .buffer("o", DType::BF16, ["B", "T", "H", "V"])
        .scalar("scale", ScalarType::F32)
        .scalar("t", ScalarType::I32)
}

struct Fwd {
    q: linrec_runtime::DeviceBuffer,
    k: linrec_runtime::DeviceBuffer,
    v: linrec_runtime::DeviceBuffer,
    g: linrec_runtime::DeviceBuffer,
    o: linrec_runtime::DeviceBuffer,
}

fn fwd_buffers(dev: &Device) -> Fwd {
    let (b, t, h, k, v) = (2, 5, 3, 4, 8);
    Fwd {
        q: dev.alloc(DType::BF16, &[b, t, h, k]).expect("q"),
        k: dev.alloc(DType::BF16, &[b, t, h, k]).expect("k"),
        v: dev.alloc(DType::BF16, &[b, t, h, v]).expect("v"),
        g: dev.alloc(DType::F32, &[b, t, h]).expect("g"),
        o: dev.alloc(DType::BF16, &[b, t, h, v]).expect("o"),
    }
}

fn args(f: &Fwd) -> Vec<KernelArg<'_>> {
    vec![
        (&f.q).into(),
        (&f.k).into(),
        (&f.v).into(),
        (&f.g).into(),
        (&f.o).into(),
        0.5f32.into(),
        5i32.into(),
    ]
}

fn kernel(dev: &Device) -> KernelHandle {
    let m = dev.load_module(b"mock").expect("module");
    dev.kernel(&m, "fwd").expect("kernel")
}

/// Launches with `args`, expects an error, and checks that nothing was launched.
fn launch_err(args: &[KernelArg<'_>], dev: &Device, launches: &Mutex<Vec<String>>) -> RuntimeError {
    let err = dev
        .launch_checked(
            &kernel(dev),
            &fwd_sig(),
            &LaunchConfig::linear(64, 64),
            args,
        )
        .expect_err("the check must fail");
    assert!(
        launches.lock().expect("lock").is_empty(),
        "a failed check launched anyway"
    );
    err
}

#[test]
fn good_arguments_launch_and_bind_dimensions() {
    let (dev, launches) = mock_device();
    let f = fwd_buffers(&dev);
    let bindings = dev
        .launch_checked(
            &kernel(&dev),
            &fwd_sig(),
            &LaunchConfig::linear(64, 64),
            &args(&f),
        )
        .expect("launch");
    let dims: Vec<(&str, usize)> = bindings.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(dims, [("B", 2), ("H", 3), ("K", 4), ("T", 5), ("V", 8)]);
    assert_eq!(
        *launches.lock().expect("lock"),
        ["fwd(buffer, buffer, buffer, buffer, buffer, f32, i32)"]
    );
}

#[test]
fn wrong_dtype_names_the_argument() {
    let (dev, launches) = mock_device();
    let mut f = fwd_buffers(&dev);
    f.g = dev.alloc(DType::BF16, &[2, 5, 3]).expect("g");
    let err = launch_err(&args(&f), &dev, &launches);
    assert!(
        matches!(&err, RuntimeError::DType { arg, expected: DType::F32, found: DType::BF16 } if arg == "g"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "argument `g`: expected dtype f32, found bf16"
    );
}

#[test]
fn wrong_rank_and_fixed_dimension() {
    let (dev, launches) = mock_device();
    let mut f = fwd_buffers(&dev);
    f.g = dev.alloc(DType::F32, &[2, 5, 3, 1]).expect("g");
    let err = launch_err(&args(&f), &dev, &launches);
    assert_eq!(
        err.to_string(),
        "argument `g`: expected shape [B, T, H], found [2, 5, 3, 1]"
    );

    let sig = KernelSignature::new("fwd").buffer("w", DType::F32, [Dim::Fixed(4), Dim::Any]);
    let w = dev.alloc(DType::F32, &[3, 9]).expect("w");
    let err = dev
        .launch_checked(
            &kernel(&dev),
            &sig,
            &LaunchConfig::linear(1, 1),
            &[(&w).into()],
        )
        .expect_err("4 != 3");
    assert_eq!(
        err.to_string(),
        "argument `w`: expected shape [4, _], found [3, 9]"
    );
}

#[test]
fn named_dimensions_must_agree() {
    let (dev, launches) = mock_device();
    let mut f = fwd_buffers(&dev);
    f.v = dev.alloc(DType::BF16, &[2, 6, 3, 8]).expect("v"); // T = 6, q says 5
    let err = launch_err(&args(&f), &dev, &launches);
    assert!(
        matches!(&err, RuntimeError::DimConflict { arg, dim, found: 6, bound: 5, bound_by }
            if arg == "v" && dim == "T" && bound_by == "q"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "argument `v`: dimension T is 6 here but 5 in argument `q`"
    );
}

#[test]
fn non_contiguous_views_are_refused_where_the_kernel_needs_contiguous() {
    let (dev, launches) = mock_device();
    let mut f = fwd_buffers(&dev);
    // Same shape, but a permuted layout (as from a transpose): strides are not row-major.
    let base = dev.alloc(DType::BF16, &[2, 5, 3, 4]).expect("base");
    f.k = base
        .with_strides(&[2, 5, 3, 4], &[60, 1, 20, 5])
        .expect("a view inside the allocation");
    assert!(!f.k.is_contiguous());
    let err = launch_err(&args(&f), &dev, &launches);
    assert!(
        matches!(&err, RuntimeError::Strides { arg, expected, found, .. }
            if arg == "k" && expected == &[60, 12, 4, 1] && found == &[60, 1, 20, 5]),
        "{err:?}"
    );
    assert!(err.to_string().contains("copy it into a contiguous buffer"));

    // A kernel that takes strides as arguments accepts the same view.
    let sig = KernelSignature::new("fwd").buffer_with_layout(
        "k",
        DType::BF16,
        ["B", "T", "H", "K"],
        Layout::Strided,
    );
    dev.launch_checked(
        &kernel(&dev),
        &sig,
        &LaunchConfig::linear(1, 1),
        &[(&f.k).into()],
    )
    .expect("strided layouts allowed");
}

#[test]
fn scalar_and_buffer_kinds_and_count() {
    let (dev, launches) = mock_device();
    let f = fwd_buffers(&dev);
    let mut a = args(&f);
    a[5] = 1i32.into(); // scale must be f32
    let err = launch_err(&a, &dev, &launches);
    assert_eq!(
        err.to_string(),
        "argument `scale`: expected f32 scalar, found i32 scalar"
    );

    let mut a = args(&f);
    a[0] = 2.0f32.into(); // q must be a buffer
    let err = launch_err(&a, &dev, &launches);
    assert_eq!(
        err.to_string(),
        "argument `q`: expected bf16 buffer [B, T, H, K], found f32 scalar"
    );

    let mut a = args(&f);
    a[6] = 5i64.into(); // t is i32, not i64
    let err = launch_err(&a, &dev, &launches);
    assert!(
        matches!(&err, RuntimeError::ArgKind { arg, .. } if arg == "t"),
        "{err:?}"
    );

    let a = args(&f);
    let err = launch_err(&a[..6], &dev, &launches);
    assert_eq!(err.to_string(), "kernel `fwd` takes 7 argument(s), found 6");
}

#[test]
fn buffers_of_another_device_are_refused() {
    let (dev, launches) = mock_device();
    let (other, _) = mock_device();
    let mut f = fwd_buffers(&dev);
    f.o = other
        .alloc(DType::BF16, &[2, 5, 3, 8])
        .expect("o elsewhere");
    let err = launch_err(&args(&f), &dev, &launches);
    assert!(
        matches!(&err, RuntimeError::WrongDevice { what, .. } if what == "argument `o`"),
        "{err:?}"
    );
    // Kernels of another device too, and host copies.
    let foreign = kernel(&other);
    let err = dev
        .launch(&foreign, &LaunchConfig::linear(1, 1), &[])
        .expect_err("kernel of another device");
    assert!(matches!(err, RuntimeError::WrongDevice { .. }), "{err}");
    assert!(matches!(
        dev.download_bytes(&f.o),
        Err(RuntimeError::WrongDevice { .. })
    ));
}

#[test]
fn launch_limits_are_checked_first() {
    let (dev, launches) = mock_device();
    let k = kernel(&dev);
    let too_big = LaunchConfig {
        grid: [1, 1, 1],
        block: [64, 32, 1],
        shared_mem_bytes: 0,
    };
    let err = dev.launch(&k, &too_big, &[]).expect_err("2048 threads");
    assert!(err.to_string().contains("2048 threads"), "{err}");
    let zero = LaunchConfig {
        block: [0, 1, 1],
        ..too_big
    };
    assert!(dev.launch(&k, &zero, &[]).is_err());
    let smem = LaunchConfig {
        block: [32, 1, 1],
        shared_mem_bytes: 1 << 20,
        ..too_big
    };
    assert!(dev.launch(&k, &smem, &[]).is_err());
    let sig_for_other = KernelSignature::new("bwd");
    let err = dev
        .launch_checked(&k, &sig_for_other, &LaunchConfig::linear(1, 1), &[])
        .expect_err("signature of another kernel");
    assert!(err.to_string().contains("`bwd`"), "{err}");
    assert!(launches.lock().expect("lock").is_empty());
}

#[test]
fn layouts_views_and_host_copies() {
    let (dev, _) = mock_device();
    assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
    assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());

    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let b = dev.upload(&data, &[2, 3, 4]).expect("upload");
    assert_eq!(b.strides(), &[12, 4, 1]);
    assert_eq!(b.numel(), 24);
    assert_eq!(dev.download::<f32>(&b).expect("download"), data);

    let r = b.reshape(&[6, 4]).expect("reshape");
    assert_eq!(r.strides(), &[4, 1]);
    assert!(b.reshape(&[5, 5]).is_err(), "25 != 24 elements");
    // Size-1 dimensions may carry any stride and still count as contiguous.
    let unit = b.with_strides(&[1, 24], &[999, 1]).expect("view");
    assert!(unit.is_contiguous());
    // A view that reaches past the allocation is refused.
    let err = b
        .with_strides(&[2, 13], &[12, 1])
        .expect_err("past the end");
    assert!(matches!(err, RuntimeError::Layout { .. }), "{err}");
    assert!(b.with_strides(&[2, 3], &[1]).is_err(), "rank mismatch");
    // Host copies need contiguous views and the right host type and length.
    let t = b
        .with_strides(&[4, 3], &[1, 4])
        .expect("transpose of the first 12");
    assert!(matches!(
        dev.download::<f32>(&t),
        Err(RuntimeError::Strides { .. })
    ));
    assert!(matches!(
        dev.download::<i32>(&b),
        Err(RuntimeError::DType { .. })
    ));
    assert!(matches!(
        dev.write(&b, &[1.0f32; 23]),
        Err(RuntimeError::Layout { .. })
    ));
    dev.write(&b, &[7.0f32; 24]).expect("write");
    assert_eq!(
        dev.download::<f32>(&r).expect("views share memory"),
        [7.0; 24]
    );

    let i = dev.upload(&[1i64, -2, 3], &[3]).expect("i64");
    assert_eq!(dev.download::<i64>(&i).expect("i64 back"), [1, -2, 3]);
    let h = dev
        .upload_bytes(DType::BF16, &[2], &[0x80, 0x3F, 0x00, 0x40])
        .expect("bf16 bytes");
    assert_eq!(h.allocation_bytes(), 4);
    assert!(dev.upload_bytes(DType::BF16, &[3], &[0; 4]).is_err());
}

#[test]
fn poison_patterns_are_nan_for_floats() {
    let (dev, _) = mock_device();
    for dtype in DType::ALL {
        let b = dev.alloc_poisoned(dtype, &[3]).expect("alloc");
        let bytes = dev.download_bytes(&b).expect("download");
        assert_eq!(bytes.len(), 3 * dtype.size_bytes());
        match dtype {
            DType::F32 => assert!(
                bytes
                    .chunks(4)
                    .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_nan())
            ),
            // f16 / bf16 NaN: exponent all ones, mantissa non-zero.
            DType::F16 => assert!(
                bytes
                    .chunks(2)
                    .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00
                        && u16::from_le_bytes([c[0], c[1]]) & 0x03FF != 0)
            ),
            DType::BF16 => assert!(
                bytes
                    .chunks(2)
                    .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80
                        && u16::from_le_bytes([c[0], c[1]]) & 0x007F != 0)
            ),
            DType::I32 | DType::I64 => assert!(bytes.iter().all(|&b| b == 0xA5)),
        }
        assert!(poison_pattern(dtype).size_bytes() <= dtype.size_bytes());
    }
}

#[test]
fn module_cache_on_the_mock() {
    let (dev, _) = mock_device();
    let err = dev
        .module("k", || {
            Err(RuntimeError::Layout {
                what: "producer".into(),
                detail: "compile failed".into(),
            })
        })
        .expect_err("producer error");
    assert!(err.to_string().contains("compile failed"));
    assert!(dev.cached_module("k").is_none(), "failures are not cached");
    let mut calls = 0;
    for _ in 0..3 {
        dev.module("k", || {
            calls += 1;
            Ok(b"bytes".to_vec())
        })
        .expect("load");
    }
    assert_eq!(calls, 1);
    assert_eq!(dev.module_cache().len(), 1);
    assert!(dev.module_cache().remove("k").is_some());
    assert!(dev.module_cache().is_empty());
}

#[test]
fn names_parse() {
    assert_eq!("BF16".parse::<DType>().expect("bf16"), DType::BF16);
    assert_eq!(DType::F16.size_bytes(), 2);
    assert_eq!(DType::F32.size_bytes(), 4);
    assert_eq!(DType::I32.size_bytes(), 4);
    assert_eq!(DType::I64.size_bytes(), 8);
    let err = "f64".parse::<DType>().expect_err("not supported");
    assert!(
        err.to_string().contains("bf16, f16, f32, i32, i64"),
        "{err}"
    );
    assert_eq!(
        "CUDA".parse::<DeviceKind>().expect("cuda"),
        DeviceKind::Cuda
    );
    assert_eq!(
        "auto".parse::<DeviceKind>().expect("auto"),
        DeviceKind::Auto
    );
    for (name, kind) in [
        ("hip", DeviceKind::Hip),
        ("HIP", DeviceKind::Hip),
        ("level_zero", DeviceKind::LevelZero),
        ("l0", DeviceKind::LevelZero),
        ("level-zero", DeviceKind::LevelZero),
        ("opencl", DeviceKind::OpenCl),
    ] {
        assert_eq!(name.parse::<DeviceKind>().expect(name), kind);
        // Display gives back a name that parses to the same kind.
        assert_eq!(
            kind.to_string().parse::<DeviceKind>().expect("round trip"),
            kind
        );
    }
    let err = "metal".parse::<DeviceKind>().expect_err("no such backend");
    assert!(
        err.to_string()
            .contains("auto, cuda, hip, level_zero (or l0) or opencl"),
        "{err}"
    );
}
