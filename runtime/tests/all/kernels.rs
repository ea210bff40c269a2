//! Kernel-execution checks shared by every backend: each function takes an opened device and
//! the fixture module in that device's format (tests/fixtures/kernels.spv or kernels.ptx, made
//! by regen.sh from the two .mlir files, with the same kernel names and launch ABI). Outputs are
//! NaN-poisoned before each launch and compared exactly: inputs are chosen so that every
//! result is exactly representable whatever the summation order or FMA contraction.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use linrec_runtime::{
    DType, Device, FillPattern, KernelSignature, LaunchConfig, ModuleFormat, ModuleHandle,
    RuntimeError, ScalarType,
};

pub const SPV: &[u8] = include_bytes!("../fixtures/kernels.spv");
pub const PTX: &[u8] = include_bytes!("../fixtures/kernels.ptx");
const WG: u32 = 64;

/// The fixture in the format `dev` loads.
pub fn image(dev: &Device) -> &'static [u8] {
    match dev.module_format() {
        ModuleFormat::SpirV => SPV,
        ModuleFormat::Ptx => PTX,
        // The mock HIP runtime (tests/mock_drivers) runs the fixture kernels itself and takes
        // a stand-in code object.
        ModuleFormat::Hsaco if dev.info().name == MOCK_HIP_DEVICE => &MOCK_HSACO,
        // A real code object is built for one gfx architecture and none is checked in; on a
        // real AMD GPU the HIP tests (hip.rs) call only the checks that load no fixture.
        ModuleFormat::Hsaco => panic!("tests/fixtures has no HSACO module"),
    }
}

/// The device name of the mock HIP runtime (tests/mock_drivers/mock_hip.c).
pub const MOCK_HIP_DEVICE: &str = "linrec mock HIP device";

/// What the mock HIP runtime loads: an ELF64 header for EM_AMDGPU (224), then its marker.
static MOCK_HSACO: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut image = b"\x7fELF\x02\x01\x01\x40".to_vec();
    image.resize(16, 0);
    image.extend_from_slice(&3u16.to_le_bytes()); // e_type: ET_DYN
    image.extend_from_slice(&224u16.to_le_bytes()); // e_machine: EM_AMDGPU
    image.resize(64, 0);
    image.extend_from_slice(b"linrec-mock-hsaco");
    image
});

fn module(dev: &Device) -> ModuleHandle {
    dev.module("fixtures/kernels", || Ok(image(dev).to_vec()))
        .expect("the fixture loads")
}

fn axpy_sig() -> KernelSignature {
    KernelSignature::new("axpy")
        .scalar("alpha", ScalarType::F32)
        .buffer("x", DType::F32, ["N"])
        .buffer("y", DType::F32, ["N"])
        .buffer("out", DType::F32, ["N"])
        .scalar("n", ScalarType::I32)
}

pub fn device_info(dev: &Device) {
    let info = dev.info();
    eprintln!("device: {} ({})", info.label(), info.driver_version);
    match dev.module_format() {
        ModuleFormat::SpirV => assert!(
            info.il_version
                .as_deref()
                .is_some_and(|v| v.contains("SPIR-V")),
            "{info:?}"
        ),
        ModuleFormat::Ptx => assert!(info.compute_capability.is_some(), "{info:?}"),
        ModuleFormat::Hsaco => assert!(
            info.arch.as_deref().is_none_or(|a| a.starts_with("gfx")),
            "{info:?}"
        ),
    }
    assert!(info.max_threads_per_block >= WG as usize);
    assert!(info.total_memory > 0);
}

pub fn axpy_is_exact_and_leaves_the_tail_alone(dev: &Device) {
    // n is not a multiple of the work-group size: the last group has idle threads, and the
    // padding past n must keep its poison.
    let n = 1000usize;
    let padded = n.div_ceil(WG as usize) * WG as usize;
    let x: Vec<f32> = (0..padded).map(|i| i as f32 * 0.25).collect();
    let y: Vec<f32> = (0..padded).map(|i| (i % 7) as f32 - 3.0).collect();
    let alpha = 0.5f32;
    let dx = dev.upload(&x, &[padded]).expect("upload x");
    let dy = dev.upload(&y, &[padded]).expect("upload y");
    let out = dev
        .alloc_poisoned(DType::F32, &[padded])
        .expect("alloc out");
    assert!(
        dev.download::<f32>(&out)
            .expect("download")
            .iter()
            .all(|v| v.is_nan()),
        "poisoning fills every element with NaN"
    );

    let k = dev.kernel(&module(dev), "axpy").expect("kernel axpy");
    let bindings = dev
        .launch_checked(
            &k,
            &axpy_sig(),
            &LaunchConfig::linear(n as u32, WG),
            &[
                alpha.into(),
                (&dx).into(),
                (&dy).into(),
                (&out).into(),
                (n as i32).into(),
            ],
        )
        .expect("launch axpy");
    assert_eq!(bindings.get("N"), Some(&padded));

    let got = dev.download::<f32>(&out).expect("download out");
    for i in 0..n {
        let want = alpha * x[i] + y[i];
        assert_eq!(got[i].to_bits(), want.to_bits(), "out[{i}]");
    }
    for (i, v) in got.iter().enumerate().skip(n) {
        assert!(v.is_nan(), "out[{i}] past n was written: {v}");
    }
}

pub fn block_sum_reduces_each_work_group(dev: &Device) {
    let n = 5 * WG as usize + 17; // six groups, the last one partial
    let groups = n.div_ceil(WG as usize);
    // Small integers: every partial sum is exact in f32, so any reduction order gives the
    // same bits.
    let x: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let dx = dev.upload(&x, &[n]).expect("upload");
    let out = dev.alloc_poisoned(DType::F32, &[groups]).expect("alloc");
    let sig = KernelSignature::new("block_sum")
        .buffer("x", DType::F32, ["N"])
        .buffer("out", DType::F32, ["G"])
        .scalar("n", ScalarType::I64);
    let k = dev.kernel(&module(dev), "block_sum").expect("kernel");
    dev.launch_checked(
        &k,
        &sig,
        &LaunchConfig::linear(n as u32, WG),
        &[(&dx).into(), (&out).into(), (n as i64).into()],
    )
    .expect("launch");
    let got = dev.download::<f32>(&out).expect("download");
    let want: Vec<f32> = x.chunks(WG as usize).map(|c| c.iter().sum()).collect();
    assert_eq!(got, want);
}

pub fn iota_writes_integers(dev: &Device) {
    let n = 130usize;
    let out = dev.alloc_poisoned(DType::I32, &[192]).expect("alloc");
    let k = dev.kernel(&module(dev), "iota_i32").expect("kernel");
    dev.launch(
        &k,
        &LaunchConfig::linear(n as u32, WG),
        &[
            (&out).into(),
            (-5i32).into(),
            3i32.into(),
            (n as i32).into(),
        ],
    )
    .expect("launch");
    let got = dev.download::<i32>(&out).expect("download");
    for (i, &v) in got.iter().enumerate() {
        let want = if i < n {
            -5 + 3 * i as i32
        } else {
            i32::from_le_bytes([0xA5; 4])
        };
        assert_eq!(v, want, "out[{i}]");
    }
}

pub fn module_cache_loads_once(dev: &Device) {
    let loads = AtomicUsize::new(0);
    let load = || {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok(image(dev).to_vec())
    };
    let before = dev.module_cache().len();
    dev.module("cache-test", load).expect("first load");
    dev.module("cache-test", load).expect("second load");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the second call is a cache hit"
    );
    assert_eq!(dev.module_cache().len(), before + 1);
    assert!(dev.cached_module("cache-test").is_some());
    assert!(dev.cached_module("never-loaded").is_none());
}

pub fn bad_modules_and_names_are_errors(dev: &Device) {
    let format = dev.module_format();
    let err = dev
        .load_module(b"// neither PTX nor SPIR-V")
        .expect_err("not a module");
    assert!(
        matches!(&err, RuntimeError::InvalidModule { expected, .. } if *expected == format),
        "{err}"
    );
    // A plausible header, then garbage: the driver must refuse it, not crash.
    let junk = match format {
        ModuleFormat::SpirV => {
            let mut j = SPV[..20].to_vec();
            j.extend_from_slice(&[0xFF; 64]);
            j
        }
        ModuleFormat::Ptx => {
            b".version 8.0\n.target sm_90\n.address_size 64\nnot ptx at all\n".to_vec()
        }
        ModuleFormat::Hsaco => {
            // An ELF64 header for EM_AMDGPU (224), then garbage.
            let mut j = b"\x7fELF\x02\x01\x01\x40".to_vec();
            j.resize(18, 0);
            j.extend_from_slice(&224u16.to_le_bytes());
            j.extend_from_slice(&[0xFF; 64]);
            j
        }
    };
    let err = dev.load_module(&junk).expect_err("corrupt module");
    assert!(matches!(err, RuntimeError::ModuleBuild { .. }), "{err}");

    let err = dev
        .kernel(&module(dev), "no_such_kernel")
        .expect_err("unknown kernel");
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::KernelNotFound { .. }), "{msg}");
    if format == ModuleFormat::SpirV {
        // OpenCL can list a program's kernels; the CUDA driver API cannot.
        assert!(
            msg.contains("axpy") && msg.contains("block_sum"),
            "lists the kernels: {msg}"
        );
    }
    assert!(dev.kernel(&module(dev), "a\0b").is_err());
}

/// OpenCL knows each kernel's arity (CL_KERNEL_NUM_ARGS); the CUDA path relies on the
/// signature check instead.
pub fn driver_checks_the_argument_count(dev: &Device) {
    if dev.module_format() != ModuleFormat::SpirV {
        return;
    }
    let out = dev.alloc(DType::I32, &[64]).expect("alloc");
    let k = dev.kernel(&module(dev), "iota_i32").expect("kernel");
    // Unchecked launch with one argument missing: the backend knows the kernel's arity.
    let err = dev
        .launch(
            &k,
            &LaunchConfig::linear(64, WG),
            &[(&out).into(), 0i32.into(), 1i32.into()],
        )
        .expect_err("3 of 4 arguments");
    assert!(
        matches!(
            err,
            RuntimeError::ArgCount {
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
}

pub fn fills_and_empty_tensors(dev: &Device) {
    let b = dev.alloc(DType::F16, &[5]).expect("alloc");
    dev.fill(&b, FillPattern::U16(0x3C00))
        .expect("fill 1.0 in f16");
    assert_eq!(
        dev.download_bytes(&b).expect("download"),
        [0x00, 0x3C].repeat(5)
    );
    dev.poison(&b).expect("poison");
    assert_eq!(
        dev.download_bytes(&b).expect("download"),
        [0x00, 0x7E].repeat(5)
    );
    let err = dev
        .fill(&b, FillPattern::U32(0))
        .expect_err("10 bytes, 4-byte pattern");
    assert!(matches!(err, RuntimeError::Layout { .. }), "{err}");

    // T = 0: empty buffers, empty copies and an empty grid are all fine.
    let empty = dev.upload::<f32>(&[], &[1, 0, 4]).expect("empty upload");
    dev.poison(&empty).expect("poison empty");
    assert!(
        dev.download::<f32>(&empty)
            .expect("download empty")
            .is_empty()
    );
    let k = dev.kernel(&module(dev), "axpy").expect("kernel");
    let flat = empty.reshape(&[0]).expect("reshape");
    dev.launch_checked(
        &k,
        &axpy_sig(),
        &LaunchConfig::linear(0, WG),
        &[
            1.0f32.into(),
            (&flat).into(),
            (&flat).into(),
            (&flat).into(),
            0i32.into(),
        ],
    )
    .expect("empty launch");
    dev.synchronize().expect("synchronize");
}
