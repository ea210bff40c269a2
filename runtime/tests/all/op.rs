//! `op::forward` on the in-memory mock backend: every buffer is checked against the kernel's
//! launch metadata before anything reaches the device (errors name the argument), outputs are
//! allocated NaN-poisoned with the right shapes, and the launch passes the parameters in ABI
//! order. A split forward (`KernelInfo::then`) launches its kernels in order with the same
//! buffers (chunk states, scratch sized by the larger launch), checks every launch before the
//! first, and round-trips through JSON. A fused forward with a split-scan route
//! (`KernelInfo::instead`) makes the route's launches exactly at the sizes
//! `KernelInfo::takes_instead` picks, with their chunk states and segment states and decays,
//! and nothing of them otherwise. (The kernels themselves run in linrec-compiler's end-to-end
//! tests.)

use std::sync::{Arc, Mutex};

use linrec_runtime::op::{self, ForwardArgs};
use linrec_runtime::{DType, Device, DeviceBuffer, RuntimeError};
use linrec_spec::Role;
use linrec_spec::launch::{KernelInfo, KernelParam, Launch, Route, SizeExpr, SizeSym};

use crate::backward::{device as recording_device, launches as recorded};
use crate::common::{BINARY, all_nan, assert_names, mock_device, qkvg, test_kernel};

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
    test_kernel(
        "linrec_test_fwd",
        "forward",
        params,
        [true, true, varlen],
        [
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(32)),
            SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
            SizeExpr::Const(1),
        ],
        1000,
    )
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
    qkvg(&b.q, &b.k, &b.v, &b.g)
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
        BINARY,
        &ForwardArgs {
            inputs,
            initial_state: h0,
            cu_seqlens: None,
            scale: 0.5,
        },
    )
}

/// A mock device and [`buffers`] on it, changed by `change`, which the kernel of `info(false)`
/// must refuse: the error, and the device's launch log.
fn refused_after(
    change: impl FnOnce(&Device, &mut Bufs),
    why: &str,
) -> (RuntimeError, Arc<Mutex<Vec<String>>>) {
    let (dev, launches) = mock_device();
    let mut b = buffers(&dev);
    change(&dev, &mut b);
    let err = run(&dev, &info(false), &inputs(&b), Some(&b.h0)).expect_err(why);
    (err, launches)
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
    assert_eq!(ht.dtype(), DType::F32);
    // NaN until the kernel writes them (the mock does not).
    assert!(all_nan(&dev, &out.o));
    assert!(all_nan(&dev, ht));
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

/// An sm_90a kernel's TMA maps of q, k and v: encoded in the geometry the kernel reads (a
/// 3-D map over `[B·T, heads, width]`, box `[C, 1, 64]`), passed as 16-word buffers before
/// the scratch, cached per (address, geometry) so a relaunch encodes nothing; a misaligned
/// tensor is copied to an aligned buffer which the map covers, a strided view refused; a
/// device without device addresses refuses, launching nothing.
#[test]
fn tma_maps_are_encoded_cached_and_passed() {
    use std::sync::atomic::Ordering;
    let (backend, launches) = crate::mock::MockBackend::new();
    let (maps, tma, misalign) = (
        backend.maps.clone(),
        backend.tma.clone(),
        backend.misalign.clone(),
    );
    let dev = Device::from_backend(Box::new(backend));
    let mut info = info(false);
    let at = info
        .params
        .iter()
        .position(|p| *p == KernelParam::Scratch)
        .expect("scratch");
    for (i, role) in [Role::Query, Role::Key, Role::Value]
        .into_iter()
        .enumerate()
    {
        info.params.insert(at + i, KernelParam::TensorMap(role));
    }
    let b = buffers(&dev);
    run(&dev, &info, &inputs(&b), Some(&b.h0)).expect("launches");
    assert_eq!(
        launches.lock().expect("lock").as_slice(),
        [
            "linrec_test_fwd(buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, buffer, i32, i32, i32, f32)"
        ]
    );
    let address = |buf: &DeviceBuffer| dev.backend().device_address(buf.raw()).expect("address");
    let spec = |dims: [u64; 3], strides: [u64; 2]| linrec_runtime::TensorMapSpec {
        dtype: DType::BF16,
        dims,
        strides,
        boxes: [64, 1, 16],
    };
    // B·T = 10 rows; q, k: H = 1, K = 8; v: HV = 2, V = 40 (bf16).
    let qk = spec([8, 1, 10], [16, 16]);
    let v = spec([40, 2, 10], [80, 160]);
    let expected = vec![(address(&b.q), qk), (address(&b.k), qk), (address(&b.v), v)];
    assert_eq!(*maps.lock().expect("lock"), expected);
    run(&dev, &info, &inputs(&b), Some(&b.h0)).expect("launches");
    assert_eq!(
        *maps.lock().expect("lock"),
        expected,
        "a relaunch encodes again"
    );

    // A q 2 bytes past alignment: its map covers an aligned copy.
    misalign.store(2, Ordering::Relaxed);
    let q = dev.alloc(DType::BF16, &[2, 5, 1, 8]).expect("alloc");
    misalign.store(0, Ordering::Relaxed);
    run(&dev, &info, &qkvg(&q, &b.k, &b.v, &b.g), Some(&b.h0)).expect("launches");
    let last = *maps.lock().expect("lock").last().expect("a new map");
    assert_eq!(last.1, qk);
    assert!(last.0 % 16 == 0 && last.0 != address(&q), "{last:?}");

    // A strided view has no map.
    let view =
        b.q.with_strides(&[2, 5, 1, 4], &[40, 8, 8, 2])
            .expect("a strided view");
    let err = dev.tensor_map(&view, &qk).expect_err("strided");
    assert!(err.to_string().contains("strided view"), "{err}");

    tma.store(false, Ordering::Relaxed);
    launches.lock().expect("lock").clear();
    let err = run(&dev, &info, &inputs(&b), Some(&b.h0)).expect_err("no TMA");
    assert!(err.to_string().contains("CUDA only"), "{err}");
    assert!(launches.lock().expect("lock").is_empty());
}

#[test]
fn a_wrong_dtype_names_the_argument() {
    let (err, launches) = refused_after(
        |dev, b| b.q = dev.alloc(DType::F32, &[2, 5, 1, 8]).expect("alloc"),
        "f32 q",
    );
    assert!(matches!(err, RuntimeError::DType { .. }), "{err:?}");
    assert_names(err, "q", "expected dtype bf16, found f32", &launches);
}

#[test]
fn a_wrong_head_dim_names_the_argument() {
    let (err, launches) = refused_after(
        |dev, b| b.v = dev.alloc(DType::BF16, &[2, 5, 2, 64]).expect("alloc"),
        "V = 64",
    );
    assert!(matches!(err, RuntimeError::Shape { .. }), "{err:?}");
    assert_names(err, "v", "[B, T, HV, 40]", &launches);
}

#[test]
fn inconsistent_sizes_name_both_arguments() {
    let (err, launches) = refused_after(
        |dev, b| b.k = dev.alloc(DType::BF16, &[2, 6, 1, 8]).expect("alloc"),
        "T differs",
    );
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
    let ins = inputs(&b);
    let a = ForwardArgs {
        cu_seqlens: Some(&cu),
        ..forward_args(&b, &ins)
    };
    let err = op::forward(&dev, &info(true), BINARY, &a).expect_err("B = 2 with cu_seqlens");
    assert_names(err, "q", "B = 1", &launches);

    let cu64 = dev.upload(&[0i64, 2, 5], &[3]).expect("upload");
    let a = ForwardArgs {
        cu_seqlens: Some(&cu64),
        ..forward_args(&b, &ins)
    };
    let err = op::forward(&dev, &info(true), b"", &a).expect_err("i64 offsets");
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

    let ins = inputs(&b);
    let a = ForwardArgs {
        scale: f32::NAN,
        ..forward_args(&b, &ins)
    };
    let err = op::forward(&dev, &info(false), b"", &a).expect_err("NaN scale");
    assert_names(err, "scale", "positive, finite", &launches);
}

#[test]
fn a_strided_view_names_the_argument() {
    // v `[B, T, HV, V]` as a view of a heads-first `[B, HV, T, V]` allocation (a transpose in
    // another framework): the right shape, but the kernels index row-major.
    let strided_v = |dev: &Device, b: &mut Bufs| {
        let base = dev.alloc(DType::BF16, &[2, 2, 5, 40]).expect("alloc");
        b.v = base
            .with_strides(&[2, 5, 2, 40], &[400, 40, 200, 1])
            .expect("a view inside the allocation");
    };
    let (err, launches) = refused_after(strided_v, "strided v");
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
    let (other, other_launches) = mock_device();
    let (err, launches) = refused_after(
        |_, b| b.g = other.alloc(DType::F32, &[2, 5, 2]).expect("alloc"),
        "g elsewhere",
    );
    assert!(
        matches!(&err, RuntimeError::WrongDevice { what, .. } if what == "argument `g`"),
        "{err:?}"
    );
    assert_names(err, "g", "belongs to device", &launches);
    assert!(other_launches.lock().expect("lock").is_empty());
}

/// A split forward in the shape the compiler emits: a states kernel (grid (1, N·HV, 1),
/// `states_scratch` floats per workgroup) writing the chunk states and the final state, then a
/// chunk-parallel output kernel (grid (⌈V / 32⌉, ⌈B·T / C⌉ + N, HV), `output_scratch` floats
/// per workgroup) reading them.
fn split(states_scratch: u64, output_scratch: u64) -> KernelInfo {
    let mut info = info(false);
    info.entry = "linrec_test_states".into();
    info.params = vec![
        KernelParam::Input(Role::Query),
        KernelParam::Input(Role::Key),
        KernelParam::Input(Role::Value),
        KernelParam::Input(Role::Gate),
        KernelParam::DecayRates,
        KernelParam::InitialState,
        KernelParam::ChunkStates,
        KernelParam::FinalState,
        KernelParam::Scratch,
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ];
    info.grid = [
        SizeExpr::Const(1),
        SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
        SizeExpr::Const(1),
    ];
    info.scratch = states_scratch;
    info.then = vec![Launch {
        entry: "linrec_test_output".into(),
        params: vec![
            KernelParam::Input(Role::Query),
            KernelParam::Input(Role::Key),
            KernelParam::Input(Role::Value),
            KernelParam::Input(Role::Gate),
            KernelParam::DecayRates,
            KernelParam::ChunkStates,
            KernelParam::Output,
            KernelParam::Scratch,
            KernelParam::SeqLen,
            KernelParam::Heads,
            KernelParam::ValueHeads,
            KernelParam::Scale,
        ],
        grid: [
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(32)),
            SizeExpr::sum(
                SizeExpr::ceil_div(
                    SizeExpr::product(SizeExpr::Sym(SizeSym::B), SizeExpr::Sym(SizeSym::T)),
                    SizeExpr::Const(16),
                ),
                SizeExpr::Sym(SizeSym::N),
            ),
            SizeExpr::Sym(SizeSym::Hv),
        ],
        block: [64, 1, 1],
        shared_bytes: 0,
        scratch: output_scratch,
    }];
    info
}

fn forward_args<'a>(b: &'a Bufs, ins: &'a [(Role, &'a DeviceBuffer)]) -> ForwardArgs<'a> {
    ForwardArgs {
        inputs: ins,
        initial_state: Some(&b.h0),
        cu_seqlens: None,
        scale: 0.5,
    }
}

#[test]
fn a_then_launch_runs_after_the_first_with_the_same_buffers() {
    let (dev, log) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    let out =
        op::forward(&dev, &split(100, 50), BINARY, &forward_args(&b, &ins)).expect("launches");

    // Chunk states: ⌊B·T / C⌋ + N = ⌊10 / 16⌋ + 2 = 2 slots of [HV, K, V] = [2, 8, 40], bf16
    // like the kernel, NaN until the states kernel writes them.
    let states = out.chunk_states.as_ref().expect("chunk states");
    assert_eq!(
        (states.dtype(), states.shape()),
        (DType::BF16, &[2, 2, 8, 40][..])
    );
    assert!(all_nan(&dev, states));
    // Scratch: the larger launch's, the output kernel's 2·3·2 workgroups × 50 floats (600 >
    // the states kernel's 4 × 100), in both launches: 2400 bytes.
    assert_eq!(
        recorded(&log),
        [
            "linrec_test_states[1x4x1](160=0, 160=0, 1600=0, 80=0, 8, 5120=0, \
             2560=nan, 5120=nan, 2400=nan, i32, i32, i32, f32)",
            "linrec_test_output[2x3x2](160=0, 160=0, 1600=0, 80=0, 8, \
             2560=nan, 1600=nan, 2400=nan, i32, i32, i32, f32)",
        ]
    );
    // The same inputs, decay rates, chunk states and scratch, not copies.
    let ids = log.lock().expect("lock").buffers.clone();
    for (first, second) in [(0, 0), (3, 3), (4, 4), (6, 5), (8, 7)] {
        assert_eq!(ids[0][first], ids[1][second], "argument {first} / {second}");
    }
    let raw = |buf: &DeviceBuffer| std::ptr::from_ref(buf.raw()) as usize;
    assert_eq!(
        ids[0][6],
        raw(states),
        "the chunk states returned are the launches'"
    );
    assert_eq!(ids[1][6], raw(&out.o));
    assert_eq!(ids[0][7], raw(out.final_state.as_ref().expect("ht")));

    // Without a ChunkStates parameter there are none.
    let (dev, _) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    let out = op::forward(&dev, &info(false), BINARY, &forward_args(&b, &ins)).expect("launches");
    assert!(out.chunk_states.is_none());
}

#[test]
fn a_narrower_first_launch_is_picked_when_the_grid_is_small() {
    // `split`'s states kernel has 1·N·HV = 4 workgroups; its narrower variants 10·4 and
    // 40·4: the first with at least 128 (ENOUGH_WORKGROUPS) is launched, with its scratch.
    let narrow = |entry: &str, x: u64, scratch: u64| {
        let mut l = split(0, 0).then.remove(0);
        l.entry = entry.into();
        l.params = split(0, 0).params;
        l.grid = [
            SizeExpr::Const(x),
            SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
            SizeExpr::Const(1),
        ];
        l.scratch = scratch;
        l
    };
    let launched = |info: &KernelInfo| {
        let (dev, log) = recording_device();
        let b = buffers(&dev);
        let ins = inputs(&b);
        op::forward(&dev, info, BINARY, &forward_args(&b, &ins)).expect("launches");
        recorded(&log)
            .iter()
            .map(|l| l.split('(').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let mut info = split(100, 50);
    info.narrower = vec![narrow("v32", 10, 1), narrow("v16", 40, 30)];
    assert_eq!(
        launched(&info),
        ["v16[40x4x1]", "linrec_test_output[2x3x2]"]
    );
    // None reaches 128: the narrowest.
    info.narrower = vec![narrow("v32", 2, 1), narrow("v16", 4, 1)];
    assert_eq!(launched(&info), ["v16[4x4x1]", "linrec_test_output[2x3x2]"]);
    // The first launch has enough: it stays.
    info.grid[0] = SizeExpr::Const(32);
    assert_eq!(
        launched(&info),
        ["linrec_test_states[32x4x1]", "linrec_test_output[2x3x2]"]
    );
    // The scratch is the picked launch's: 160 workgroups × 30 floats.
    let (dev, log) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    let mut info = split(100, 0);
    info.narrower = vec![narrow("v16", 40, 30)];
    op::forward(&dev, &info, BINARY, &forward_args(&b, &ins)).expect("launches");
    assert!(
        recorded(&log)[0].contains("19200=nan"),
        "{:?}",
        recorded(&log)
    );
}

#[test]
fn the_scratch_is_sized_by_the_larger_launch() {
    let (dev, log) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    // The states kernel's 4 workgroups × 1000 floats > the output kernel's 12 × 50.
    op::forward(&dev, &split(1000, 50), BINARY, &forward_args(&b, &ins)).expect("launches");
    // The output kernel without scratch floats still gets the (shared) buffer it names.
    op::forward(&dev, &split(7, 0), BINARY, &forward_args(&b, &ins)).expect("launches");
    let scratch: Vec<String> = recorded(&log)
        .iter()
        .map(|l| {
            let args: Vec<&str> = l.split(", ").collect();
            args[args.len() - 5].to_owned()
        })
        .collect();
    assert_eq!(scratch, ["16000=nan", "16000=nan", "112=nan", "112=nan"]);
}

#[test]
fn a_bad_parameter_in_a_then_launch_fails_before_anything_launches() {
    let (dev, log) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    let mut bad = split(100, 50);
    bad.then[0].params.push(KernelParam::Grad(Role::Query));
    let err = op::forward(&dev, &bad, BINARY, &forward_args(&b, &ins)).expect_err("a grad");
    assert!(matches!(err, RuntimeError::Launch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("linrec_test_output") && msg.contains("unexpected parameter Grad(Query)"),
        "{msg}"
    );
    assert!(recorded(&log).is_empty(), "launched anyway");

    // An input only the second launch reads is still required, and checked.
    let mut beta = split(100, 50);
    beta.then[0]
        .params
        .insert(4, KernelParam::Input(Role::Beta));
    let err = op::forward(&dev, &beta, BINARY, &forward_args(&b, &ins)).expect_err("no beta");
    assert!(err.to_string().contains("`beta`"), "{err}");
    let mut with_beta = ins.clone();
    let wrong = dev.alloc(DType::F32, &[2, 5, 3]).expect("alloc");
    with_beta.push((Role::Beta, &wrong));
    let err = op::forward(&dev, &beta, BINARY, &forward_args(&b, &with_beta)).expect_err("HV = 3");
    assert!(err.to_string().contains("`beta`"), "{err}");
    assert!(recorded(&log).is_empty(), "launched anyway");
    with_beta[4] = (Role::Beta, &b.g);
    op::forward(&dev, &beta, BINARY, &forward_args(&b, &with_beta)).expect("launches");
    assert_eq!(recorded(&log).len(), 2);
}

#[test]
fn a_split_workspace_relaunches_both_kernels_without_allocating() {
    let (dev, log) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    let info = split(100, 50);
    let ws = op::forward_workspace(&dev, &info, BINARY, &forward_args(&b, &ins)).expect("launches");
    assert!(ws.outputs.chunk_states.is_some());
    let allocated = log.lock().expect("lock").allocations;
    op::forward_into(&dev, &info, BINARY, &forward_args(&b, &ins), &ws).expect("relaunches");
    assert_eq!(log.lock().expect("lock").allocations, allocated);
    let launched = recorded(&log);
    assert_eq!(launched.len(), 4);
    assert_eq!(launched[0..2], launched[2..4]);
    let ids = log.lock().expect("lock").buffers.clone();
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[1], ids[3]);

    // A kernel without chunk states (same scratch size) does not fit this workspace.
    let mut unsplit = split(100, 50);
    unsplit.then[0]
        .params
        .retain(|p| *p != KernelParam::ChunkStates);
    unsplit.params.retain(|p| *p != KernelParam::ChunkStates);
    let err = op::forward_into(&dev, &unsplit, BINARY, &forward_args(&b, &ins), &ws)
        .expect_err("no chunk states");
    assert!(err.to_string().contains("other parameters"), "{err}");
    // Nor does one with another chunk (other slots).
    let mut chunk4 = split(100, 50);
    chunk4.config.chunk = 4;
    let err =
        op::forward_into(&dev, &chunk4, BINARY, &forward_args(&b, &ins), &ws).expect_err("C = 4");
    assert!(err.to_string().contains("other parameters"), "{err}");
    assert_eq!(recorded(&log).len(), 4);
}

#[test]
fn a_kernel_info_with_then_round_trips_through_json() {
    let sequence = split(100, 50);
    let json = serde_json::to_string(&sequence).expect("serializes");
    assert!(
        json.contains("\"then\":[{\"entry\":\"linrec_test_output\""),
        "{json}"
    );
    assert!(json.contains("\"add\""), "{json}");
    let back: KernelInfo = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, sequence);

    // Without launches after it the field is left out, and a manifest without it (every one
    // written before it existed) reads as none.
    let single = info(false);
    let json = serde_json::to_string(&single).expect("serializes");
    assert!(!json.contains("then"), "{json}");
    assert_eq!(
        serde_json::from_str::<KernelInfo>(&json).expect("parses"),
        single
    );
}

// ---- a split-scan route (`KernelInfo::instead`) ---------------------------------------------

/// [`info`]`(false)` (a fused forward: one launch of grid (⌈V / 32⌉, N·HV, 1)) with a
/// split-scan route in the shape the compiler emits: a segment kernel writing the segment
/// states and decays, a combine kernel over segments (reading h0), a states kernel writing
/// the chunk states and the final state from the segments', the output kernel reading them.
/// Scratch floats per workgroup: 10, 0, 7, 3.
fn with_route() -> KernelInfo {
    use KernelParam as P;
    let qkvg = [Role::Query, Role::Key, Role::Value, Role::Gate].map(P::Input);
    let params = |middle: &[P], tail: &[P]| {
        let mut v = qkvg.to_vec();
        v.push(P::DecayRates);
        v.extend_from_slice(middle);
        v.extend_from_slice(tail);
        v
    };
    let sym = SizeExpr::Sym;
    let n_hv = SizeExpr::product(sym(SizeSym::N), sym(SizeSym::Hv));
    let v_blocks = |bv| SizeExpr::ceil_div(sym(SizeSym::V), SizeExpr::Const(bv));
    // ⌈B·T / (16 chunks · C = 16)⌉ segments per row.
    let segments = SizeExpr::ceil_div(
        SizeExpr::product(sym(SizeSym::B), sym(SizeSym::T)),
        SizeExpr::Const(256),
    );
    let launch = |entry: &str, params, grid, scratch| Launch {
        entry: entry.into(),
        params,
        grid,
        block: [64, 1, 1],
        shared_bytes: 0,
        scratch,
    };
    let scalars = [P::Scratch, P::SeqLen, P::Heads, P::ValueHeads];
    let mut info = info(false);
    info.instead = Some(Box::new(Route {
        launches: vec![
            launch(
                "linrec_test_segment",
                params(&[P::SegmentStates, P::SegmentDecays], &scalars),
                [v_blocks(32), n_hv.clone(), segments.clone()],
                10,
            ),
            launch(
                "linrec_test_combine",
                vec![
                    P::InitialState,
                    P::SegmentStates,
                    P::SegmentDecays,
                    P::SeqLen,
                    P::ValueHeads,
                ],
                [SizeExpr::Const(1), n_hv.clone(), SizeExpr::Const(1)],
                0,
            ),
            launch(
                "linrec_test_seg_states",
                params(
                    &[P::SegmentStates, P::ChunkStates, P::FinalState],
                    &[scalars.as_slice(), &[P::Scale]].concat(),
                ),
                [v_blocks(8), n_hv, segments],
                7,
            ),
            launch(
                "linrec_test_output",
                params(
                    &[P::ChunkStates, P::Output],
                    &[scalars.as_slice(), &[P::Scale]].concat(),
                ),
                [
                    v_blocks(32),
                    SizeExpr::sum(
                        SizeExpr::ceil_div(
                            SizeExpr::product(sym(SizeSym::B), sym(SizeSym::T)),
                            SizeExpr::Const(16),
                        ),
                        sym(SizeSym::N),
                    ),
                    sym(SizeSym::Hv),
                ],
                3,
            ),
        ],
        needs_chunk_states: false,
    }));
    info
}

/// B = 1, T = 300, H = 1, HV = 2: more than one segment of 16 chunks of 16 rows, and
/// ⌈V / 32⌉ · N·HV = 4 workgroups for the fused kernel, so the route is taken.
fn long(dev: &Device) -> Bufs {
    Bufs {
        q: dev.alloc(DType::BF16, &[1, 300, 1, 8]).expect("alloc"),
        k: dev.alloc(DType::BF16, &[1, 300, 1, 8]).expect("alloc"),
        v: dev.alloc(DType::BF16, &[1, 300, 2, 40]).expect("alloc"),
        g: dev.alloc(DType::F32, &[1, 300, 2]).expect("alloc"),
        h0: dev.alloc(DType::F32, &[1, 2, 8, 40]).expect("alloc"),
    }
}

/// The recorded launches' names and grids.
fn names_and_grids(log: &[String]) -> Vec<String> {
    log.iter()
        .map(|l| l.split('(').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_route_is_not_taken_at_short_sequences_and_allocates_nothing_of_its_own() {
    // B = 2, T = 5: 10 tokens, less than a segment per sequence.
    let (dev, log) = recording_device();
    let b = buffers(&dev);
    let ins = inputs(&b);
    let before = log.lock().expect("lock").allocations;
    op::forward(&dev, &info(false), BINARY, &forward_args(&b, &ins)).expect("launches");
    let fused = log.lock().expect("lock").allocations - before;

    let before = log.lock().expect("lock").allocations;
    let out = op::forward(&dev, &with_route(), BINARY, &forward_args(&b, &ins)).expect("launches");
    // The same buffers as the kernel without a route: no chunk or segment states.
    assert_eq!(log.lock().expect("lock").allocations - before, fused);
    assert!(out.chunk_states.is_none());
    let launched = recorded(&log);
    assert_eq!(launched.len(), 2);
    assert_eq!(
        launched[0], launched[1],
        "the fused launch, as without a route"
    );
    assert_eq!(names_and_grids(&launched[1..]), ["linrec_test_fwd[2x4x1]"]);

    // T = 300 with HV = 64: long enough, but ⌈V / 32⌉ · N·HV = 128 workgroups keep the GPU
    // busy without it.
    let (dev, log) = recording_device();
    let b = Bufs {
        v: dev.alloc(DType::BF16, &[1, 300, 64, 40]).expect("alloc"),
        g: dev.alloc(DType::F32, &[1, 300, 64]).expect("alloc"),
        h0: dev.alloc(DType::F32, &[1, 64, 8, 40]).expect("alloc"),
        ..long(&dev)
    };
    let ins = inputs(&b);
    let out = op::forward(&dev, &with_route(), BINARY, &forward_args(&b, &ins)).expect("launches");
    assert!(out.chunk_states.is_none());
    assert_eq!(
        names_and_grids(&recorded(&log)),
        ["linrec_test_fwd[2x64x1]"]
    );
}

#[test]
fn a_route_is_taken_at_long_sequences_with_its_own_buffers() {
    let (dev, log) = recording_device();
    let b = long(&dev);
    let ins = inputs(&b);
    let out = op::forward(&dev, &with_route(), BINARY, &forward_args(&b, &ins)).expect("launches");

    // Chunk states: ⌊300 / 16⌋ + 1 = 19 slots of [HV, K, V] = [2, 8, 40], bf16 like the
    // kernel: 24320 bytes. Segment states: ⌊300 / 256⌋ + 1 = 2 slots, f32: 5120 bytes;
    // segment decays [2, HV] f32: 16 bytes. Scratch: the largest launch's, the output
    // kernel's 2·20·2 workgroups × 3 floats (> the states kernel's 5·2·2 × 7, the segment
    // kernel's 2·2·2 × 10): 960 bytes. All NaN until a kernel writes them.
    let states = out.chunk_states.as_ref().expect("the route's chunk states");
    assert_eq!(
        (states.dtype(), states.shape()),
        (DType::BF16, &[19, 2, 8, 40][..])
    );
    assert!(all_nan(&dev, states));
    assert_eq!(
        recorded(&log),
        [
            "linrec_test_segment[2x2x2](4800=0, 4800=0, 48000=0, 2400=0, 8, \
             5120=nan, 16=nan, 960=nan, i32, i32, i32)",
            "linrec_test_combine[1x2x1](2560=0, 5120=nan, 16=nan, i32, i32)",
            "linrec_test_seg_states[5x2x2](4800=0, 4800=0, 48000=0, 2400=0, 8, \
             5120=nan, 24320=nan, 2560=nan, 960=nan, i32, i32, i32, f32)",
            "linrec_test_output[2x20x2](4800=0, 4800=0, 48000=0, 2400=0, 8, \
             24320=nan, 48000=nan, 960=nan, i32, i32, i32, f32)",
        ]
    );
    // One buffer each, passed to every launch that names it.
    let ids = log.lock().expect("lock").buffers.clone();
    let same = |uses: &[(usize, usize)], what: &str| {
        for &(launch, arg) in uses {
            assert_eq!(
                ids[launch][arg], ids[uses[0].0][uses[0].1],
                "{what}: {launch}/{arg}"
            );
        }
    };
    same(&[(0, 5), (1, 1), (2, 5)], "segment states");
    same(&[(0, 6), (1, 2)], "segment decays");
    same(&[(2, 6), (3, 5)], "chunk states");
    same(&[(0, 7), (2, 8), (3, 7)], "scratch");
    same(&[(0, 4), (2, 4), (3, 4)], "decay rates");
    assert_ne!(ids[0][5], ids[0][6]);
    let raw = |buf: &DeviceBuffer| std::ptr::from_ref(buf.raw()) as usize;
    assert_eq!(
        ids[2][6],
        raw(states),
        "the chunk states returned are the route's"
    );
    assert_eq!(ids[3][6], raw(&out.o));
    assert_eq!(ids[2][7], raw(out.final_state.as_ref().expect("ht")));
    assert_eq!(ids[1][0], raw(&b.h0));

    // Without a route the same call makes the fused launch.
    let (dev, log) = recording_device();
    let b = long(&dev);
    let ins = inputs(&b);
    let out = op::forward(&dev, &info(false), BINARY, &forward_args(&b, &ins)).expect("launches");
    assert!(out.chunk_states.is_none());
    assert_eq!(names_and_grids(&recorded(&log)), ["linrec_test_fwd[2x2x1]"]);
}

#[test]
fn a_route_without_segment_decays_allocates_none() {
    let (dev, log) = recording_device();
    let b = long(&dev);
    let ins = inputs(&b);
    let mut info = with_route();
    let route = info.instead.as_mut().expect("a route");
    for l in &mut route.launches {
        l.params.retain(|p| *p != KernelParam::SegmentDecays);
    }
    let before = log.lock().expect("lock").allocations;
    op::forward(&dev, &info, BINARY, &forward_args(&b, &ins)).expect("launches");
    let without = log.lock().expect("lock").allocations - before;
    let before = log.lock().expect("lock").allocations;
    op::forward(&dev, &with_route(), BINARY, &forward_args(&b, &ins)).expect("launches");
    assert_eq!(log.lock().expect("lock").allocations - before, without + 1);
    assert_eq!(
        recorded(&log)[1],
        "linrec_test_combine[1x2x1](2560=0, 5120=nan, i32, i32)"
    );
}

#[test]
fn a_route_workspace_relaunches_the_route_without_allocating() {
    let (dev, log) = recording_device();
    let b = long(&dev);
    let ins = inputs(&b);
    let routed = with_route();
    let ws = op::forward_workspace(&dev, &routed, BINARY, &forward_args(&b, &ins)).expect("made");
    assert!(ws.outputs.chunk_states.is_some());
    let allocated = log.lock().expect("lock").allocations;
    op::forward_into(&dev, &routed, BINARY, &forward_args(&b, &ins), &ws).expect("relaunches");
    assert_eq!(log.lock().expect("lock").allocations, allocated);
    let launched = recorded(&log);
    assert_eq!(launched.len(), 8);
    assert_eq!(launched[0..4], launched[4..8]);
    let ids = log.lock().expect("lock").buffers.clone();
    assert_eq!(ids[0..4], ids[4..8]);

    // A workspace of the same call made without the route has no segment or chunk states
    // (the same scratch, 4 workgroups × 60 floats: only those differ).
    let mut fused = info(false);
    fused.scratch = 60;
    let fused_ws =
        op::forward_workspace(&dev, &fused, BINARY, &forward_args(&b, &ins)).expect("made");
    let err = op::forward_into(&dev, &routed, BINARY, &forward_args(&b, &ins), &fused_ws)
        .expect_err("no route buffers");
    assert!(err.to_string().contains("other parameters"), "{err}");
    // Nor does the route's workspace fit the kernel without it.
    let err = op::forward_into(&dev, &fused, BINARY, &forward_args(&b, &ins), &ws)
        .expect_err("route buffers");
    assert!(err.to_string().contains("other parameters"), "{err}");
    // Nor one whose route takes no segment decays.
    let mut no_decays = routed.clone();
    for l in &mut no_decays.instead.as_mut().expect("a route").launches {
        l.params.retain(|p| *p != KernelParam::SegmentDecays);
    }
    let err = op::forward_into(&dev, &no_decays, BINARY, &forward_args(&b, &ins), &ws)
        .expect_err("segment decays");
    assert!(err.to_string().contains("other parameters"), "{err}");
    assert_eq!(
        recorded(&log).len(),
        9,
        "refused relaunches launched nothing"
    );
}

#[test]
fn a_route_that_reads_or_writes_other_tensors_is_refused_at_any_size() {
    let refused = |change: fn(&mut Route), needle: &str| {
        let mut info = with_route();
        change(info.instead.as_mut().expect("a route"));
        for bufs in [buffers, long] {
            let (dev, log) = recording_device();
            let b = bufs(&dev);
            let ins = inputs(&b);
            let err = op::forward(&dev, &info, BINARY, &forward_args(&b, &ins)).expect_err(needle);
            assert!(matches!(err, RuntimeError::Launch { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("linrec_test_fwd") && msg.contains(needle),
                "{msg}"
            );
            assert!(recorded(&log).is_empty(), "launched anyway");
        }
    };
    // No final state: a call's outputs must not depend on its sizes.
    refused(
        |r| {
            r.launches[2]
                .params
                .retain(|p| *p != KernelParam::FinalState)
        },
        "route does not take FinalState, which its own launches do",
    );
    refused(
        |r| r.launches[0].params.push(KernelParam::Input(Role::Beta)),
        "route takes Input(Beta), which its own launches do not",
    );
    refused(|r| r.launches.clear(), "route has no launches");
}

#[test]
fn a_bad_parameter_in_a_route_fails_before_anything_launches() {
    let (dev, log) = recording_device();
    let b = long(&dev);
    let ins = inputs(&b);
    let mut bad = with_route();
    bad.instead.as_mut().expect("a route").launches[3]
        .params
        .push(KernelParam::ChunkStateGrads);
    let err = op::forward(&dev, &bad, BINARY, &forward_args(&b, &ins)).expect_err("dh");
    let msg = err.to_string();
    assert!(
        msg.contains("linrec_test_output") && msg.contains("unexpected parameter ChunkStateGrads"),
        "{msg}"
    );
    assert!(recorded(&log).is_empty(), "launched anyway");

    // A grid that overflows where the route is decided.
    let mut huge = with_route();
    huge.grid[2] = SizeExpr::product(SizeExpr::Const(u64::MAX), SizeExpr::Sym(SizeSym::N));
    let err = op::forward(&dev, &huge, BINARY, &forward_args(&b, &ins)).expect_err("overflow");
    assert!(err.to_string().contains("a grid overflows"), "{err}");
    assert!(recorded(&log).is_empty(), "launched anyway");
}

#[test]
fn a_kernel_info_with_a_route_round_trips_through_json() {
    let routed = with_route();
    let json = serde_json::to_string(&routed).expect("serializes");
    assert!(
        json.contains("\"instead\":{\"launches\":[{\"entry\":\"linrec_test_segment\""),
        "{json}"
    );
    assert!(
        json.contains("\"segment_states\",\"segment_decays\""),
        "{json}"
    );
    let back: KernelInfo = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, routed);
    // Without one the field is left out.
    assert!(
        !serde_json::to_string(&info(false))
            .expect("serializes")
            .contains("instead")
    );
}
