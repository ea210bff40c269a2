//! `op::forward` on the in-memory mock backend: every buffer is checked against the kernel's
//! launch metadata before anything reaches the device (errors name the argument), outputs are
//! allocated NaN-poisoned with the right shapes, and the launch passes the parameters in ABI
//! order. (The kernels themselves run in linrec-compiler's end-to-end tests.)

use std::sync::{Arc, Mutex};

use linrec_runtime::op::{self, ForwardArgs};
use linrec_runtime::{DType, Device, DeviceBuffer, RuntimeError};
use linrec_spec::Role;
use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, KernelParam, SizeExpr, SizeSym};

use crate::mock::MockBackend;

fn mock_device() -> (Device, Arc<Mutex<Vec<String>>>) {
    let (backend, launches) = MockBackend::new();
    (Device::from_backend(Box::new(backend)), launches)
}

/// The launch metadata of a retention-like kernel (RetNet decay rates computed by the runtime)
/// with a scalar gate too, h0 and the final state; K = 8, V = 40 (two V blocks of 32).
fn info(varlen: bool) -> KernelInfo {
    let mut params = vec![
        KernelParam::Input(Role::Query),
        KernelParam::Input(Role::Key),
        KernelParam::Input(Role::Value),
        KernelParam::Input(Role::Gate),
        KernelParam::DecayRates,
        KernelParam::InitialState,
    ];
    if varlen {
        params.push(KernelParam::CuSeqlens);
    }
    params.extend([
        KernelParam::Output,
        KernelParam::FinalState,
        KernelParam::Scratch,
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ]);
    KernelInfo {
        entry: "linrec_test_fwd".into(),
        spec_name: "test".into(),
        spec_hash: "00".into(),
        direction: "forward".into(),
        target: "spirv".into(),
        config: KernelConfig {
            dtype: ElementType::Bf16,
            key_dim: 8,
            value_dim: 40,
            chunk: 16,
            initial_state: true,
            final_state: true,
            varlen,
        },
        params,
        grid: [
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(32)),
            SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
            SizeExpr::Const(1),
        ],
        block: [128, 1, 1],
        shared_bytes: 0,
        scratch: 1000,
        then: Vec::new(),
    }
}

struct Bufs {
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    g: DeviceBuffer,
    h0: DeviceBuffer,
}

/// B = 2, T = 5, H = 1, HV = 2.
fn buffers(dev: &Device) -> Bufs {
    Bufs {
        q: dev.alloc(DType::BF16, &[2, 5, 1, 8]).expect("alloc"),
        k: dev.alloc(DType::BF16, &[2, 5, 1, 8]).expect("alloc"),
        v: dev.alloc(DType::BF16, &[2, 5, 2, 40]).expect("alloc"),
        g: dev.alloc(DType::F32, &[2, 5, 2]).expect("alloc"),
        h0: dev.alloc(DType::F32, &[2, 2, 8, 40]).expect("alloc"),
    }
}

fn inputs(b: &Bufs) -> Vec<(Role, &DeviceBuffer)> {
    vec![
        (Role::Query, &b.q),
        (Role::Key, &b.k),
        (Role::Value, &b.v),
        (Role::Gate, &b.g),
    ]
}

fn run(
    dev: &Device,
    info: &KernelInfo,
    inputs: &[(Role, &DeviceBuffer)],
    h0: Option<&DeviceBuffer>,
) -> Result<op::ForwardOutputs, RuntimeError> {
    op::forward(
        dev,
        info,
        b"\x03\x02\x23\x07",
        &ForwardArgs {
            inputs,
            initial_state: h0,
            cu_seqlens: None,
            scale: 0.5,
        },
    )
}

#[test]
fn a_good_launch_allocates_poisoned_outputs_and_passes_the_abi_order() {
    let (dev, launches) = mock_device();
    let b = buffers(&dev);
    let out = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect("launches");
    assert_eq!(out.o.shape(), &[2, 5, 2, 40]);
    assert_eq!(out.o.dtype(), DType::BF16);
    assert_eq!(out.sequences, 2);
    let ht = out.final_state.as_ref().expect("final state");
    assert_eq!(ht.shape(), &[2, 2, 8, 40]);
    // NaN until the kernel writes them (the mock does not).
    let o = dev.download_bytes(&out.o).expect("download");
    assert!(
        o.chunks(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) == 0x7FC0)
    );
    assert!(
        dev.download::<f32>(ht)
            .expect("download")
            .iter()
            .all(|x| x.is_nan())
    );
    assert_eq!(
        launches.lock().expect("lock").as_slice(),
        [
            "linrec_test_fwd(buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, i32, i32, i32, f32)"
        ]
    );
    // The module is cached by content: a second launch loads nothing new.
    run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect("launches");
    assert_eq!(dev.module_cache().len(), 1);
}

/// Asserts that `err` is about argument `arg` and mentions `needle`, and nothing launched.
fn assert_names(err: RuntimeError, arg: &str, needle: &str, launches: &Arc<Mutex<Vec<String>>>) {
    let msg = err.to_string();
    assert!(msg.contains(&format!("`{arg}`")), "{msg}");
    assert!(msg.contains(needle), "{msg}");
    assert!(launches.lock().expect("lock").is_empty(), "launched anyway");
}

#[test]
fn a_wrong_dtype_names_the_argument() {
    let (dev, launches) = mock_device();
    let mut b = buffers(&dev);
    b.q = dev.alloc(DType::F32, &[2, 5, 1, 8]).expect("alloc");
    let err = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect_err("f32 q");
    assert!(matches!(err, RuntimeError::DType { .. }), "{err:?}");
    assert_names(err, "q", "expected dtype bf16, found f32", &launches);
}

#[test]
fn a_wrong_head_dim_names_the_argument() {
    let (dev, launches) = mock_device();
    let mut b = buffers(&dev);
    b.v = dev.alloc(DType::BF16, &[2, 5, 2, 64]).expect("alloc");
    let err = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect_err("V = 64");
    assert!(matches!(err, RuntimeError::Shape { .. }), "{err:?}");
    assert_names(err, "v", "[B, T, HV, 40]", &launches);
}

#[test]
fn inconsistent_sizes_name_both_arguments() {
    let (dev, launches) = mock_device();
    let mut b = buffers(&dev);
    b.k = dev.alloc(DType::BF16, &[2, 6, 1, 8]).expect("alloc");
    let err = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect_err("T differs");
    assert_names(
        err,
        "k",
        "dimension T is 6 here but 5 in argument `q`",
        &launches,
    );
}

#[test]
fn missing_and_unexpected_inputs_are_named() {
    let (dev, launches) = mock_device();
    let b = buffers(&dev);
    let mut ins = inputs(&b);
    ins.pop();
    let err = run(&dev, &info(false), &ins, Some(&b.h0)).expect_err("no gate");
    assert_names(err, "g", "gate", &launches);

    let mut ins = inputs(&b);
    ins.push((Role::Beta, &b.g));
    let err = run(&dev, &info(false), &ins, Some(&b.h0)).expect_err("beta");
    assert_names(err, "beta", "does not take", &launches);

    let err = run(&dev, &info(false), &inputs(&b), None).expect_err("no h0");
    assert_names(err, "h0", "compiled to read h0", &launches);
}

#[test]
fn an_h0_for_the_wrong_number_of_sequences_is_named() {
    let (dev, launches) = mock_device();
    let b = buffers(&dev);
    let h0 = dev.alloc(DType::F32, &[3, 2, 8, 40]).expect("alloc");
    let err = run(&dev, &info(false), &inputs(&b), Some(&h0)).expect_err("N = 3");
    assert_names(err, "h0", "[2, 2, 8, 40]", &launches);
}

#[test]
fn varlen_needs_one_packed_row_and_offsets() {
    let (dev, launches) = mock_device();
    let b = buffers(&dev);
    let cu = dev.upload(&[0i32, 2, 5], &[3]).expect("upload");
    let err = op::forward(
        &dev,
        &info(true),
        b"\x03\x02\x23\x07",
        &ForwardArgs {
            inputs: &inputs(&b),
            initial_state: Some(&b.h0),
            cu_seqlens: Some(&cu),
            scale: 0.5,
        },
    )
    .expect_err("B = 2 with cu_seqlens");
    assert_names(err, "q", "B = 1", &launches);

    let cu64 = dev.upload(&[0i64, 2, 5], &[3]).expect("upload");
    let err = op::forward(
        &dev,
        &info(true),
        b"",
        &ForwardArgs {
            inputs: &inputs(&b),
            initial_state: Some(&b.h0),
            cu_seqlens: Some(&cu64),
            scale: 0.5,
        },
    )
    .expect_err("i64 offsets");
    assert_names(
        err,
        "cu_seqlens",
        "expected dtype i32, found i64",
        &launches,
    );
}

#[test]
fn a_kernel_for_another_format_or_a_bad_scale_is_refused() {
    let (dev, launches) = mock_device();
    let b = buffers(&dev);
    let mut nv = info(false);
    nv.target = "sm_90".into();
    let err = run(&dev, &nv, &inputs(&b), Some(&b.h0)).expect_err("PTX on OpenCL");
    assert!(matches!(err, RuntimeError::InvalidModule { .. }), "{err:?}");
    assert!(err.to_string().contains("sm_90"), "{err}");

    let err = op::forward(
        &dev,
        &info(false),
        b"",
        &ForwardArgs {
            inputs: &inputs(&b),
            initial_state: Some(&b.h0),
            cu_seqlens: None,
            scale: f32::NAN,
        },
    )
    .expect_err("NaN scale");
    assert_names(err, "scale", "positive, finite", &launches);
}

#[test]
fn a_strided_view_names_the_argument() {
    let (dev, launches) = mock_device();
    let mut b = buffers(&dev);
    // v `[B, T, HV, V]` as a view of a heads-first `[B, HV, T, V]` allocation (a transpose in
    // another framework): the right shape, but the kernels index row-major.
    let base = dev.alloc(DType::BF16, &[2, 2, 5, 40]).expect("alloc");
    b.v = base
        .with_strides(&[2, 5, 2, 40], &[400, 40, 200, 1])
        .expect("a view inside the allocation");
    let err = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect_err("strided v");
    assert!(matches!(err, RuntimeError::Strides { .. }), "{err:?}");
    assert_names(
        err,
        "v",
        "expected strides [400, 80, 40, 1] (contiguous, row-major), found [400, 40, 200, 1]",
        &launches,
    );
}

#[test]
fn a_buffer_of_another_device_names_the_argument() {
    let (dev, launches) = mock_device();
    let (other, other_launches) = mock_device();
    let mut b = buffers(&dev);
    b.g = other.alloc(DType::F32, &[2, 5, 2]).expect("alloc");
    let err = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect_err("g elsewhere");
    assert!(
        matches!(&err, RuntimeError::WrongDevice { what, .. } if what == "argument `g`"),
        "{err:?}"
    );
    assert_names(err, "g", "belongs to device", &launches);
    assert!(other_launches.lock().expect("lock").is_empty());
}
