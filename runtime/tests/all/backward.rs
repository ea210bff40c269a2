//! `op::backward` on the in-memory mock backend, with hand-written launch metadata of a backward
//! kernel: the direction is checked both ways, `do` and `dht` like every other argument
//! (errors name them, nothing launches), the gradients, `dh0`, chunk states, accumulators and
//! scratch are allocated NaN-poisoned with the sizes the ABI gives, a missing `dht` is passed
//! as zeros, and a workspace relaunches without allocating. Given chunk states (a split
//! forward's) are passed as they are with `chunk_states_given` = 1 and not allocated; bad ones
//! are refused naming `chunk_states`, before anything launches. (The kernels themselves run in
//! linrec-compiler's and the facade's end-to-end tests.)

use std::sync::{Arc, Mutex};

use linrec_runtime::op::{self, BackwardArgs, BackwardOutputs, ForwardArgs};
use linrec_runtime::{
    Backend, BackendKind, DType, Device, DeviceBuffer, DeviceId, DeviceInfo, FillPattern,
    KernelHandle, LaunchArg, LaunchConfig, ModuleHandle, RawBuffer, Result, RuntimeError,
};
use linrec_spec::Role;
use linrec_spec::launch::{KernelInfo, KernelParam, Launch, Route, SizeExpr, SizeSym};

use crate::common::{BINARY, Launched, all_nan, assert_names, qkvg, test_kernel};
use crate::mock::MockBackend;

/// The mock backend, recording allocations and, per launch, the grid and every argument: a
/// buffer as its byte size, `=0` when all zeros, `=nan` when NaN-poisoned (f32 or bf16).
/// (`op`'s tests use it too.)
#[derive(Debug)]
struct Recorder {
    inner: MockBackend,
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) allocations: usize,
    pub(crate) launches: Vec<String>,
    /// Per launch, per argument: the address of a buffer's memory (the same buffer has the
    /// same one in every launch), 0 for a scalar.
    pub(crate) buffers: Vec<Vec<usize>>,
    /// Per launch, the values of its i32 scalars in order.
    pub(crate) ints: Vec<Vec<i32>>,
}

impl Recorder {
    fn describe(&self, arg: &LaunchArg<'_>) -> String {
        match arg {
            LaunchArg::Buffer(raw) => {
                let mut bytes = vec![0u8; raw.len_bytes()];
                if self.inner.download(raw, &mut bytes).is_err() {
                    return "foreign".into();
                }
                let nan = |width: usize, pattern: &[u8]| {
                    bytes.len() % width == 0 && bytes.chunks(width).all(|c| c == pattern)
                };
                let tag = if bytes.iter().all(|&b| b == 0) {
                    "=0"
                } else if nan(4, &0x7FC0_0000u32.to_le_bytes()) || nan(2, &0x7FC0u16.to_le_bytes())
                {
                    "=nan"
                } else {
                    ""
                };
                format!("{}{tag}", bytes.len())
            }
            other => other.kind_name().into(),
        }
    }
}

impl Backend for Recorder {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn device_id(&self) -> DeviceId {
        self.inner.device_id()
    }
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.inner.devices()
    }
    fn allocate(&self, bytes: usize) -> Result<RawBuffer> {
        self.log.lock().expect("lock").allocations += 1;
        self.inner.allocate(bytes)
    }
    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> Result<()> {
        self.inner.upload(dst, data)
    }
    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> Result<()> {
        self.inner.download(src, out)
    }
    fn fill(&self, dst: &RawBuffer, pattern: FillPattern) -> Result<()> {
        self.inner.fill(dst, pattern)
    }
    fn load_module(&self, image: &[u8]) -> Result<ModuleHandle> {
        self.inner.load_module(image)
    }
    fn kernel(&self, module: &ModuleHandle, name: &str) -> Result<KernelHandle> {
        self.inner.kernel(module, name)
    }
    fn launch(
        &self,
        kernel: &KernelHandle,
        config: &LaunchConfig,
        args: &[LaunchArg<'_>],
    ) -> Result<()> {
        let ids: Vec<usize> = args
            .iter()
            .map(|a| match a {
                LaunchArg::Buffer(raw) => std::ptr::from_ref::<RawBuffer>(raw) as usize,
                _ => 0,
            })
            .collect();
        let ints: Vec<i32> = args
            .iter()
            .filter_map(|a| match a {
                LaunchArg::I32(v) => Some(*v),
                _ => None,
            })
            .collect();
        let args: Vec<String> = args.iter().map(|a| self.describe(a)).collect();
        let [x, y, z] = config.grid;
        let mut log = self.log.lock().expect("lock");
        log.launches.push(format!(
            "{}[{x}x{y}x{z}]({})",
            kernel.name(),
            args.join(", ")
        ));
        log.buffers.push(ids);
        log.ints.push(ints);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}

/// A device on the recording mock backend, and its log.
pub(crate) fn device() -> (Device, Arc<Mutex<Log>>) {
    let (inner, _) = MockBackend::new();
    let log = Arc::new(Mutex::new(Log::default()));
    let backend = Recorder {
        inner,
        log: log.clone(),
    };
    (Device::from_backend(Box::new(backend)), log)
}

/// The launches recorded so far.
pub(crate) fn launches(log: &Arc<Mutex<Log>>) -> Vec<String> {
    log.lock().expect("lock").launches.clone()
}

impl Launched for Arc<Mutex<Log>> {
    fn launched(&self) -> Vec<String> {
        launches(self)
    }
}

/// What the backward kernel of [`info`] is compiled with.
#[derive(Clone, Copy)]
struct Opts {
    h0: bool,
    ht: bool,
    varlen: bool,
}

const ALL: Opts = Opts {
    h0: true,
    ht: true,
    varlen: false,
};

/// The launch metadata of a Simple-GLA-like backward kernel (q, k, v and a scalar gate), in
/// the ABI order of kernels-spec's `KernelParam`; K = 8, V = 40, C = 16, 100 scratch floats
/// per workgroup, grid (1, N·H, 1).
fn info(o: Opts) -> KernelInfo {
    let mut params = vec![
        KernelParam::Input(Role::Query),
        KernelParam::Input(Role::Key),
        KernelParam::Input(Role::Value),
        KernelParam::Input(Role::Gate),
    ];
    if o.h0 {
        params.push(KernelParam::InitialState);
    }
    if o.varlen {
        params.push(KernelParam::CuSeqlens);
    }
    params.push(KernelParam::GradOutput);
    if o.ht {
        params.push(KernelParam::GradFinalState);
    }
    params.extend([Role::Query, Role::Key, Role::Value, Role::Gate].map(KernelParam::Grad));
    if o.h0 {
        params.push(KernelParam::GradInitialState);
    }
    params.extend([
        KernelParam::ChunkStates,
        KernelParam::ChunkStatesGiven,
        KernelParam::GradAccumulator(Role::Query),
        KernelParam::GradAccumulator(Role::Key),
        KernelParam::Scratch,
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ]);
    test_kernel(
        "linrec_test_bwd",
        "backward",
        params,
        [o.h0, o.ht, o.varlen],
        [
            SizeExpr::Const(1),
            SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::H)),
            SizeExpr::Const(1),
        ],
        100,
    )
}

struct Bufs {
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    g: DeviceBuffer,
    h0: DeviceBuffer,
    d_o: DeviceBuffer,
    dht: DeviceBuffer,
}

/// A buffer of ones (so the recorder tells it from zeros and poison).
fn ones(dev: &Device, dtype: DType, shape: &[usize]) -> DeviceBuffer {
    let buf = dev.alloc(dtype, shape).expect("alloc");
    let one = match dtype {
        DType::BF16 => FillPattern::U16(0x3F80),
        _ => FillPattern::U32(0x3F80_0000),
    };
    dev.fill(&buf, one).expect("fill");
    buf
}

/// B × T tokens, H = `heads`, HV = 2; N = `n` sequences for the states.
fn buffers(dev: &Device, b: usize, t: usize, heads: usize, n: usize) -> Bufs {
    Bufs {
        q: ones(dev, DType::BF16, &[b, t, heads, 8]),
        k: ones(dev, DType::BF16, &[b, t, heads, 8]),
        v: ones(dev, DType::BF16, &[b, t, 2, 40]),
        g: ones(dev, DType::F32, &[b, t, 2]),
        h0: ones(dev, DType::F32, &[n, 2, 8, 40]),
        d_o: ones(dev, DType::BF16, &[b, t, 2, 40]),
        dht: ones(dev, DType::F32, &[n, 2, 8, 40]),
    }
}

/// B = 2, T = 20, H = 1, HV = 2 (GVA).
fn gva(dev: &Device) -> Bufs {
    buffers(dev, 2, 20, 1, 2)
}

/// A recording device, its log, and [`gva`]'s buffers on it.
fn gva_device() -> (Device, Arc<Mutex<Log>>, Bufs) {
    let (dev, log) = device();
    let b = gva(&dev);
    (dev, log, b)
}

fn inputs(b: &Bufs) -> Vec<(Role, &DeviceBuffer)> {
    qkvg(&b.q, &b.k, &b.v, &b.g)
}

fn args<'a>(b: &'a Bufs, ins: &'a [(Role, &'a DeviceBuffer)]) -> BackwardArgs<'a> {
    BackwardArgs {
        inputs: ins,
        initial_state: Some(&b.h0),
        cu_seqlens: None,
        scale: 0.5,
        d_o: &b.d_o,
        dht: Some(&b.dht),
        chunk_states: None,
    }
}

/// `op::backward` of the kernel [`info`]`(o)`.
fn run(dev: &Device, o: Opts, a: &BackwardArgs<'_>) -> Result<BackwardOutputs> {
    op::backward(dev, &info(o), BINARY, a)
}

/// [`run`] with `b`'s arguments on the kernel of [`info`]`(ALL)`, which must refuse them.
fn refused(dev: &Device, b: &Bufs, why: &str) -> RuntimeError {
    let ins = inputs(b);
    run(dev, ALL, &args(b, &ins)).expect_err(why)
}

#[test]
fn a_good_launch_allocates_poisoned_grads_and_passes_the_abi_order() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let out = run(&dev, ALL, &args(&b, &ins)).expect("launches");

    let roles: Vec<Role> = out.grads.iter().map(|(r, _)| *r).collect();
    assert_eq!(roles, [Role::Query, Role::Key, Role::Value, Role::Gate]);
    let grad = |role| out.grad(role).expect("a gradient");
    for (role, dtype, shape) in [
        (Role::Query, DType::BF16, &[2, 20, 1, 8][..]),
        (Role::Key, DType::BF16, &[2, 20, 1, 8]),
        (Role::Value, DType::BF16, &[2, 20, 2, 40]),
        (Role::Gate, DType::F32, &[2, 20, 2]),
    ] {
        assert_eq!(grad(role).dtype(), dtype, "{role}");
        assert_eq!(grad(role).shape(), shape, "{role}");
        assert!(
            all_nan(&dev, grad(role)),
            "{role}: NaN until the kernel writes it"
        );
    }
    assert!(out.grad(Role::Beta).is_none());
    let dh0 = out.dh0.as_ref().expect("dh0");
    assert_eq!((dh0.dtype(), dh0.shape()), (DType::F32, &[2, 2, 8, 40][..]));
    assert!(all_nan(&dev, dh0));
    assert_eq!(
        (out.sequences, out.dims.seq_len, out.dims.value_heads),
        (2, 20, 2)
    );

    // q k v g h0 do dht | dq dk dv dg dh0 | chunk states: ⌊2·20 / 16⌋ + 2 = 4 slots of
    // [2, 8, 40] | dq, dk accumulators f32 [2, 20, 1, 8] | scratch: 2 workgroups × 100 | T H HV
    // scale.
    assert_eq!(
        launches(&log),
        [
            "linrec_test_bwd[1x2x1](640, 640, 6400, 320, 5120, 6400, 5120, \
          640=nan, 640=nan, 6400=nan, 320=nan, 5120=nan, \
          5120=nan, i32, 1280=nan, 1280=nan, 800=nan, i32, i32, i32, f32)"
        ]
    );
}

#[test]
fn without_dht_zeros_are_passed() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let a = BackwardArgs {
        dht: None,
        ..args(&b, &ins)
    };
    run(&dev, ALL, &a).expect("launches");
    let launched = launches(&log);
    assert!(
        launched[0]
            .starts_with("linrec_test_bwd[1x2x1](640, 640, 6400, 320, 5120, 6400, 5120=0, 640=nan"),
        "{launched:?}"
    );
}

#[test]
fn the_direction_is_checked_both_ways() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let mut fwd = info(ALL);
    fwd.direction = "forward".into();
    let err = op::backward(&dev, &fwd, BINARY, &args(&b, &ins)).expect_err("a forward kernel");
    assert!(matches!(err, RuntimeError::Launch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("forward kernel, not a backward one"),
        "{err}"
    );

    let err = op::forward(
        &dev,
        &info(ALL),
        BINARY,
        &ForwardArgs {
            inputs: &ins,
            initial_state: Some(&b.h0),
            cu_seqlens: None,
            scale: 0.5,
        },
    )
    .expect_err("a backward kernel");
    assert!(matches!(err, RuntimeError::Launch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("backward kernel, not a forward one"),
        "{err}"
    );
    assert!(launches(&log).is_empty());
}

#[test]
fn a_dht_for_a_kernel_without_one_is_refused() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let no_ht = Opts { ht: false, ..ALL };
    let err = run(&dev, no_ht, &args(&b, &ins)).expect_err("dht");
    assert!(matches!(err, RuntimeError::ArgKind { .. }), "{err:?}");
    assert_names(err, "dht", "compiled without dht", &log);

    let a = BackwardArgs {
        dht: None,
        ..args(&b, &ins)
    };
    run(&dev, no_ht, &a).expect("launches");
    assert_eq!(
        launches(&log),
        ["linrec_test_bwd[1x2x1](640, 640, 6400, 320, 5120, 6400, \
          640=nan, 640=nan, 6400=nan, 320=nan, 5120=nan, \
          5120=nan, i32, 1280=nan, 1280=nan, 800=nan, i32, i32, i32, f32)"]
    );
}

#[test]
fn a_bad_do_is_named() {
    let (dev, log) = device();
    // [`gva`]'s buffers with a `do` of this dtype and shape.
    let with_do = |dtype, shape: &[usize]| {
        let mut b = gva(&dev);
        b.d_o = dev.alloc(dtype, shape).expect("alloc");
        b
    };
    let err = refused(&dev, &with_do(DType::F32, &[2, 20, 2, 40]), "f32 do");
    assert!(matches!(err, RuntimeError::DType { .. }), "{err:?}");
    assert_names(err, "do", "expected dtype bf16, found f32", &log);

    let err = refused(&dev, &with_do(DType::BF16, &[2, 20, 2, 32]), "V = 32");
    assert!(matches!(err, RuntimeError::Shape { .. }), "{err:?}");
    assert_names(err, "do", "[B, T, HV, 40]", &log);

    let err = refused(&dev, &with_do(DType::BF16, &[2, 21, 2, 40]), "T = 21");
    assert_names(
        err,
        "do",
        "dimension T is 21 here but 20 in argument `q`",
        &log,
    );

    let err = refused(&dev, &with_do(DType::BF16, &[2, 20, 4, 40]), "HV = 4");
    assert_names(
        err,
        "do",
        "dimension HV is 4 here but 2 in argument `v`",
        &log,
    );
}

#[test]
fn a_bad_dht_is_named() {
    let (dev, log, mut b) = gva_device();
    b.dht = dev.alloc(DType::F32, &[3, 2, 8, 40]).expect("alloc");
    let err = refused(&dev, &b, "N = 3");
    let ins = inputs(&b);
    // h0 has N = 2, so the named dims disagree first.
    assert_names(
        err,
        "dht",
        "dimension N is 3 here but 2 in argument `h0`",
        &log,
    );

    let no_h0 = Opts { h0: false, ..ALL };
    let a = BackwardArgs {
        initial_state: None,
        ..args(&b, &ins)
    };
    let err = run(&dev, no_h0, &a).expect_err("N = 3");
    assert_names(err, "dht", "[N, HV, K, V] = [2, 2, 8, 40]", &log);

    let mut b = gva(&dev);
    b.dht = dev.alloc(DType::BF16, &[2, 2, 8, 40]).expect("alloc");
    let err = refused(&dev, &b, "bf16 dht");
    assert!(matches!(err, RuntimeError::DType { .. }), "{err:?}");
    assert_names(err, "dht", "expected dtype f32, found bf16", &log);
}

#[test]
fn inputs_h0_and_scale_are_checked_as_in_the_forward() {
    let (dev, log, b) = gva_device();
    let mut ins = inputs(&b);
    ins.pop();
    let err = run(&dev, ALL, &args(&b, &ins)).expect_err("no gate");
    assert_names(err, "g", "gate", &log);

    let ins = inputs(&b);
    let a = BackwardArgs {
        initial_state: None,
        ..args(&b, &ins)
    };
    let err = run(&dev, ALL, &a).expect_err("no h0");
    assert_names(err, "h0", "compiled to read h0", &log);

    let a = BackwardArgs {
        scale: -1.0,
        ..args(&b, &ins)
    };
    let err = run(&dev, ALL, &a).expect_err("scale");
    assert_names(err, "scale", "positive, finite", &log);

    let mut nv = info(ALL);
    nv.target = "sm_90".into();
    let err = op::backward(&dev, &nv, BINARY, &args(&b, &ins)).expect_err("PTX on OpenCL");
    assert!(matches!(err, RuntimeError::InvalidModule { .. }), "{err:?}");
    assert!(launches(&log).is_empty());
}

#[test]
fn without_gva_the_accumulators_are_one_element() {
    let (dev, log) = device();
    // H = HV = 2.
    let b = buffers(&dev, 2, 20, 2, 2);
    let ins = inputs(&b);
    let out = run(&dev, ALL, &args(&b, &ins)).expect("launches");
    assert_eq!(out.grad(Role::Query).expect("dq").shape(), &[2, 20, 2, 8]);
    // Grid (1, N·H = 4, 1): scratch 4 × 100 floats.
    assert_eq!(
        launches(&log),
        [
            "linrec_test_bwd[1x4x1](1280, 1280, 6400, 320, 5120, 6400, 5120, \
          1280=nan, 1280=nan, 6400=nan, 320=nan, 5120=nan, \
          5120=nan, i32, 4=nan, 4=nan, 1600=nan, i32, i32, i32, f32)"
        ]
    );
}

#[test]
fn varlen_sizes_the_states_by_sequence() {
    let (dev, log) = device();
    // B = 1, T = 20 packed as sequences of 7 and 13 (N = 2).
    let b = buffers(&dev, 1, 20, 1, 2);
    let cu = dev.upload(&[0i32, 7, 20], &[3]).expect("upload");
    let ins = inputs(&b);
    let varlen = Opts {
        varlen: true,
        ..ALL
    };
    let a = BackwardArgs {
        cu_seqlens: Some(&cu),
        ..args(&b, &ins)
    };
    let out = run(&dev, varlen, &a).expect("launches");
    assert_eq!(out.sequences, 2);
    // Chunk states: ⌊20 / 16⌋ + 2 = 3 slots of [2, 8, 40] bf16 (the kernel dtype).
    assert_eq!(
        launches(&log),
        [
            "linrec_test_bwd[1x2x1](320, 320, 3200, 160, 5120, 12, 3200, 5120, \
          320=nan, 320=nan, 3200=nan, 160=nan, 5120=nan, \
          3840=nan, i32, 640=nan, 640=nan, 800=nan, i32, i32, i32, f32)"
        ]
    );

    let no_cu = BackwardArgs {
        cu_seqlens: None,
        ..a
    };
    let err = run(&dev, varlen, &no_cu).expect_err("no cu_seqlens");
    assert!(err.to_string().contains("`cu_seqlens`"), "{err}");
}

#[test]
fn a_workspace_relaunches_without_allocating() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let ws = op::backward_workspace(&dev, &info(ALL), BINARY, &args(&b, &ins)).expect("launches");
    assert_eq!(ws.outputs.grads.len(), 4);
    let allocated = log.lock().expect("lock").allocations;

    op::backward_into(&dev, &info(ALL), BINARY, &args(&b, &ins), &ws).expect("relaunches");
    // Without dht: the workspace's zeros.
    let a = BackwardArgs {
        dht: None,
        ..args(&b, &ins)
    };
    op::backward_into(&dev, &info(ALL), BINARY, &a, &ws).expect("relaunches");
    assert_eq!(log.lock().expect("lock").allocations, allocated);
    let launched = launches(&log);
    assert_eq!(launched.len(), 3);
    assert_eq!(launched[0], launched[1]);
    assert!(
        launched[2].contains(", 6400, 5120=0, 640=nan"),
        "{launched:?}"
    );

    // Other sizes, or a kernel with other parameters, do not fit.
    let other = buffers(&dev, 2, 24, 1, 2);
    let other_ins = inputs(&other);
    let err = op::backward_into(&dev, &info(ALL), BINARY, &args(&other, &other_ins), &ws)
        .expect_err("T = 24");
    assert!(
        err.to_string().contains("the workspace was made for"),
        "{err}"
    );
    let no_h0 = Opts { h0: false, ..ALL };
    let a = BackwardArgs {
        initial_state: None,
        ..args(&b, &ins)
    };
    let err = op::backward_into(&dev, &info(no_h0), BINARY, &a, &ws).expect_err("no dh0");
    assert!(err.to_string().contains("other parameters"), "{err}");
    assert_eq!(launches(&log).len(), 3);
}

#[test]
fn a_then_launch_shares_the_chunk_states_grads_and_scratch() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    // A second kernel of the same binary reading the states the first recomputed and writing
    // dq through its accumulator: grid (⌈T / C⌉ + N, H, 1) = (4, 1, 1), 500 scratch floats per
    // workgroup (2000 > the first launch's 2 × 100).
    let mut split = info(ALL);
    split.then.push(Launch {
        entry: "linrec_test_bwd_tail".into(),
        params: vec![
            KernelParam::Input(Role::Query),
            KernelParam::ChunkStates,
            KernelParam::Grad(Role::Query),
            KernelParam::GradAccumulator(Role::Query),
            KernelParam::Scratch,
            KernelParam::SeqLen,
            KernelParam::Scale,
        ],
        grid: [
            SizeExpr::sum(
                SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::T), SizeExpr::Const(16)),
                SizeExpr::Sym(SizeSym::N),
            ),
            SizeExpr::Sym(SizeSym::H),
            SizeExpr::Const(1),
        ],
        block: [64, 1, 1],
        shared_bytes: 0,
        scratch: 500,
    });
    op::backward(&dev, &split, BINARY, &args(&b, &ins)).expect("launches");
    assert_eq!(
        launches(&log),
        [
            "linrec_test_bwd[1x2x1](640, 640, 6400, 320, 5120, 6400, 5120, \
          640=nan, 640=nan, 6400=nan, 320=nan, 5120=nan, \
          5120=nan, i32, 1280=nan, 1280=nan, 8000=nan, i32, i32, i32, f32)",
            "linrec_test_bwd_tail[4x1x1](640, 5120=nan, 640=nan, 1280=nan, 8000=nan, i32, f32)"
        ]
    );
    // The same q, chunk states, dq, dq accumulator and scratch in both launches.
    let ids = log.lock().expect("lock").buffers.clone();
    for (first, second) in [(0, 0), (12, 1), (7, 2), (14, 3), (16, 4)] {
        assert_eq!(ids[0][first], ids[1][second], "argument {first} / {second}");
    }

    // A parameter the runtime does not know, in the second launch: nothing launches.
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    split.then[0].params.push(KernelParam::FinalState);
    let err = op::backward(&dev, &split, BINARY, &args(&b, &ins)).expect_err("ht in a backward");
    let msg = err.to_string();
    assert!(
        msg.contains("linrec_test_bwd_tail") && msg.contains("unexpected parameter FinalState"),
        "{msg}"
    );
    assert!(launches(&log).is_empty(), "launched anyway");
}

// ---- given chunk states (a split forward's) ------------------------------------------------

/// The chunk states of [`gva`]'s call: ⌊2·20 / 16⌋ + 2 = 4 slots of [HV, K, V] = [2, 8, 40],
/// bf16 (the kernel's dtype), ones (so the recorder tells them from the runtime's poison).
fn gva_states(dev: &Device) -> DeviceBuffer {
    ones(dev, DType::BF16, &[4, 2, 8, 40])
}

/// The address the recorder logs for `buf`.
fn address(buf: &DeviceBuffer) -> usize {
    std::ptr::from_ref(buf.raw()) as usize
}

/// The index of the chunk states among [`info`]`(ALL)`'s arguments.
const STATES_ARG: usize = 12;

fn allocations(log: &Arc<Mutex<Log>>) -> usize {
    log.lock().expect("lock").allocations
}

#[test]
fn given_chunk_states_are_passed_with_the_flag_set_and_not_allocated() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let states = gva_states(&dev);

    // Not given: the runtime allocates them (poisoned) and the kernel recomputes (flag 0).
    let before = allocations(&log);
    run(&dev, ALL, &args(&b, &ins)).expect("launches");
    let recompute = allocations(&log) - before;

    let a = BackwardArgs {
        chunk_states: Some(&states),
        ..args(&b, &ins)
    };
    let before = allocations(&log);
    run(&dev, ALL, &a).expect("launches");
    // One buffer fewer: the chunk states are the caller's.
    assert_eq!(allocations(&log) - before, recompute - 1);

    let launched = launches(&log);
    assert!(
        launched[0].contains(", 5120=nan, i32, 1280=nan"),
        "{launched:?}"
    );
    assert!(
        launched[1].contains(", 5120, i32, 1280=nan"),
        "{launched:?}"
    );
    let log = log.lock().expect("lock");
    // chunk_states_given, T, H, HV.
    assert_eq!(log.ints, [[0, 20, 1, 2], [1, 20, 1, 2]]);
    assert_eq!(
        log.buffers[1][STATES_ARG],
        address(&states),
        "the same buffer"
    );
    assert_ne!(log.buffers[0][STATES_ARG], address(&states));
}

#[test]
fn chunk_states_of_the_wrong_dtype_shape_device_or_layout_are_refused() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let run = |states: &DeviceBuffer| {
        let a = BackwardArgs {
            chunk_states: Some(states),
            ..args(&b, &ins)
        };
        run(&dev, ALL, &a).expect_err("refused")
    };

    // f32, the dtype the kernels carry, is not the kernel's (bf16).
    let err = run(&ones(&dev, DType::F32, &[4, 2, 8, 40]));
    assert!(matches!(err, RuntimeError::DType { .. }), "{err:?}");
    assert_names(err, "chunk_states", "expected dtype bf16, found f32", &log);

    // One slot per chunk and sequence: ⌊B·T / C⌋ + N = 4, not 3 (or ⌈T / C⌉ · N).
    let err = run(&ones(&dev, DType::BF16, &[3, 2, 8, 40]));
    assert!(matches!(err, RuntimeError::Shape { .. }), "{err:?}");
    assert_names(
        err,
        "chunk_states",
        "[⌊B·T / C⌋ + N, HV, K, V] = [4, 2, 8, 40] (C = 16, N = 2 sequences)",
        &log,
    );
    let err = run(&ones(&dev, DType::BF16, &[4, 2, 40, 8]));
    assert_names(err, "chunk_states", "found [4, 2, 40, 8]", &log);

    // Another device's.
    let (other, _) = device();
    let err = run(&gva_states(&other));
    assert!(matches!(err, RuntimeError::WrongDevice { .. }), "{err:?}");
    assert_names(err, "chunk_states", "another device", &log);

    // A transposed view.
    let view = gva_states(&dev)
        .with_strides(&[4, 2, 8, 40], &[640, 320, 1, 8])
        .expect("fits");
    let err = run(&view);
    assert!(matches!(err, RuntimeError::Strides { .. }), "{err:?}");
    assert_names(err, "chunk_states", "contiguous", &log);

    // A kernel that cannot be told to skip its recompute phase.
    let mut old = info(ALL);
    old.params.retain(|p| *p != KernelParam::ChunkStatesGiven);
    let a = BackwardArgs {
        chunk_states: Some(&gva_states(&dev)),
        ..args(&b, &ins)
    };
    let err = op::backward(&dev, &old, BINARY, &a).expect_err("no flag");
    assert!(matches!(err, RuntimeError::ArgKind { .. }), "{err:?}");
    assert_names(err, "chunk_states", "cannot read given chunk states", &log);
}

#[test]
fn varlen_chunk_states_have_a_slot_per_chunk_and_sequence() {
    let (dev, log) = device();
    // B = 1, T = 20 packed as sequences of 7 and 13: ⌊20 / 16⌋ + 2 = 3 slots.
    let b = buffers(&dev, 1, 20, 1, 2);
    let cu = dev.upload(&[0i32, 7, 20], &[3]).expect("upload");
    let ins = inputs(&b);
    let varlen = Opts {
        varlen: true,
        ..ALL
    };
    let states = ones(&dev, DType::BF16, &[3, 2, 8, 40]);
    let a = BackwardArgs {
        cu_seqlens: Some(&cu),
        chunk_states: Some(&states),
        ..args(&b, &ins)
    };
    run(&dev, varlen, &a).expect("launches");
    assert_eq!(log.lock().expect("lock").ints, [[1, 20, 1, 2]]);

    let four = gva_states(&dev);
    let a = BackwardArgs {
        chunk_states: Some(&four),
        ..a
    };
    let err = run(&dev, varlen, &a).expect_err("4 slots");
    assert!(err.to_string().contains("= [3, 2, 8, 40]"), "{err}");
    assert_eq!(launches(&log).len(), 1);
}

#[test]
fn a_workspace_takes_given_chunk_states_either_way() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    let states = gva_states(&dev);
    let given = BackwardArgs {
        chunk_states: Some(&states),
        ..args(&b, &ins)
    };

    // Made without given states: it has its own, and relaunches either way.
    let before = allocations(&log);
    let own = op::backward_workspace(&dev, &info(ALL), BINARY, &args(&b, &ins)).expect("made");
    let with_own = allocations(&log) - before;
    op::backward_into(&dev, &info(ALL), BINARY, &given, &own).expect("reads the given ones");
    op::backward_into(&dev, &info(ALL), BINARY, &args(&b, &ins), &own).expect("recomputes");

    // Made with given states: none of its own (one allocation fewer); relaunches must give them.
    let before = allocations(&log);
    let bare = op::backward_workspace(&dev, &info(ALL), BINARY, &given).expect("made");
    assert_eq!(allocations(&log) - before, with_own - 1);
    let allocated = allocations(&log);
    op::backward_into(&dev, &info(ALL), BINARY, &given, &bare).expect("reads the given ones");
    let err = op::backward_into(&dev, &info(ALL), BINARY, &args(&b, &ins), &bare)
        .expect_err("nowhere to recompute them");
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::ArgKind { .. }), "{err:?}");
    assert!(
        msg.contains("`chunk_states`") && msg.contains("pass them again"),
        "{msg}"
    );
    assert_eq!(allocations(&log), allocated, "a relaunch allocates nothing");

    let log = log.lock().expect("lock");
    assert_eq!(
        log.launches.len(),
        5,
        "the refused relaunch launched nothing"
    );
    let flags: Vec<i32> = log.ints.iter().map(|i| i[0]).collect();
    assert_eq!(flags, [0, 1, 0, 1, 1]);
    let passed: Vec<usize> = log.buffers.iter().map(|b| b[STATES_ARG]).collect();
    let s = address(&states);
    assert_eq!(passed[1], s);
    assert_eq!(passed[2], passed[0], "the workspace's own");
    assert_ne!(passed[0], s);
    assert_eq!((passed[3], passed[4]), (s, s));
}

/// A forward then a backward on the mock: the split forward's chunk states go to the backward
/// as they are.
#[test]
fn a_split_forwards_chunk_states_fit_the_backward() {
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    // A forward of the same config writing the chunk states.
    let mut fwd = info(ALL);
    fwd.direction = "forward".into();
    fwd.entry = "linrec_test_states".into();
    fwd.config.final_state = true;
    fwd.params = vec![
        KernelParam::Input(Role::Query),
        KernelParam::Input(Role::Key),
        KernelParam::Input(Role::Value),
        KernelParam::Input(Role::Gate),
        KernelParam::InitialState,
        KernelParam::Output,
        KernelParam::FinalState,
        KernelParam::ChunkStates,
        KernelParam::Scratch,
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ];
    let out = op::forward(
        &dev,
        &fwd,
        BINARY,
        &ForwardArgs {
            inputs: &ins,
            initial_state: Some(&b.h0),
            cu_seqlens: None,
            scale: 0.5,
        },
    )
    .expect("forward");
    let states = out.chunk_states.as_ref().expect("a split forward's");
    let a = BackwardArgs {
        chunk_states: Some(states),
        ..args(&b, &ins)
    };
    run(&dev, ALL, &a).expect("backward");
    let log = log.lock().expect("lock");
    assert_eq!(log.buffers[1][STATES_ARG], log.buffers[0][7]);
    assert_eq!(log.ints[1][0], 1);
}

/// A launch of a test route: grid (1, N, 1), 64 threads.
fn launch(entry: &str, params: Vec<KernelParam>) -> Launch {
    Launch {
        entry: entry.into(),
        params,
        grid: [
            SizeExpr::Const(1),
            SizeExpr::Sym(SizeSym::N),
            SizeExpr::Const(1),
        ],
        block: [64, 1, 1],
        shared_bytes: 0,
        scratch: 0,
    }
}

/// A fused forward with a split-scan route ([`KernelInfo::instead`]): a call that takes the
/// route returns the chunk states its states kernel wrote, which the backward reads; a call
/// that does not returns none, and the backward recomputes them.
#[test]
fn a_routed_forwards_chunk_states_fit_the_backward_and_a_fused_call_has_none() {
    use KernelParam as P;
    let inputs_of = [Role::Query, Role::Key, Role::Value, Role::Gate].map(P::Input);
    let with = |more: &[P]| [inputs_of.as_slice(), more].concat();
    let mut fwd = info(ALL);
    fwd.direction = "forward".into();
    fwd.entry = "linrec_test_fused".into();
    fwd.config.final_state = true;
    let scalars = [P::Scratch, P::SeqLen, P::Heads, P::ValueHeads, P::Scale];
    fwd.params = with(&[&[P::InitialState, P::Output, P::FinalState][..], &scalars].concat());
    fwd.instead = Some(Box::new(Route {
        launches: vec![
            launch(
                "linrec_test_segment",
                with(&[P::SegmentStates, P::Scratch, P::SeqLen]),
            ),
            launch(
                "linrec_test_combine",
                vec![P::InitialState, P::SegmentStates, P::SeqLen],
            ),
            launch(
                "linrec_test_seg_states",
                with(&[P::SegmentStates, P::ChunkStates, P::FinalState, P::SeqLen]),
            ),
            launch(
                "linrec_test_output",
                with(&[&[P::ChunkStates, P::Output][..], &scalars].concat()),
            ),
        ],
        needs_chunk_states: false,
    }));
    let forward = |dev: &Device, b: &Bufs, ins: &[(Role, &DeviceBuffer)]| {
        let out = op::forward(
            dev,
            &fwd,
            BINARY,
            &ForwardArgs {
                inputs: ins,
                initial_state: Some(&b.h0),
                cu_seqlens: None,
                scale: 0.5,
            },
        )
        .expect("forward");
        out.chunk_states
    };

    // B = 1, T = 300: longer than a segment (16 chunks of 16), 1·N = 1 workgroup fused.
    let (dev, log) = device();
    let b = buffers(&dev, 1, 300, 1, 1);
    let ins = inputs(&b);
    let states = forward(&dev, &b, &ins).expect("the route's chunk states");
    // ⌊300 / 16⌋ + 1 = 19 slots, bf16: what the backward would allocate.
    assert_eq!(
        (states.dtype(), states.shape()),
        (DType::BF16, &[19, 2, 8, 40][..])
    );
    assert_eq!(launches(&log).len(), 4);
    let a = BackwardArgs {
        chunk_states: Some(&states),
        ..args(&b, &ins)
    };
    run(&dev, ALL, &a).expect("backward");
    {
        let log = log.lock().expect("lock");
        // The states kernel's and the output kernel's chunk states.
        assert_eq!(log.buffers[4][STATES_ARG], log.buffers[2][5]);
        assert_eq!(log.buffers[4][STATES_ARG], log.buffers[3][4]);
        assert_eq!(log.ints[4][0], 1, "read, not recomputed");
    }

    // B = 2, T = 20: the fused launch alone, no chunk states; the backward recomputes them.
    let (dev, log, b) = gva_device();
    let ins = inputs(&b);
    assert!(forward(&dev, &b, &ins).is_none());
    run(&dev, ALL, &args(&b, &ins)).expect("backward");
    let log = log.lock().expect("lock");
    assert!(log.launches[0].starts_with("linrec_test_fused["));
    assert_eq!(log.launches.len(), 2);
    assert_eq!(log.ints[1][0], 0, "recomputed");
}

/// A backward with a split-scan route that needs the caller's chunk states
/// (`Route::needs_chunk_states`): at sizes that ask for it, the route runs only when the
/// chunk states are given (it reads, never writes them); without them the own launch
/// recomputes them.
#[test]
fn a_route_that_needs_chunk_states_runs_only_with_them() {
    use KernelParam as P;
    let inputs_of = [Role::Query, Role::Key, Role::Value, Role::Gate].map(P::Input);
    let with = |more: &[P]| [inputs_of.as_slice(), more].concat();
    let scalars = [P::Scratch, P::SeqLen, P::Heads, P::ValueHeads, P::Scale];
    let grads = [Role::Query, Role::Key, Role::Value, Role::Gate].map(P::Grad);
    let mut bwd = info(ALL);
    bwd.instead = Some(Box::new(Route {
        launches: vec![
            launch(
                "linrec_test_dh_segments",
                with(
                    &[
                        &[P::InitialState, P::GradOutput, P::SegmentStates][..],
                        &scalars,
                    ]
                    .concat(),
                ),
            ),
            launch(
                "linrec_test_dh_combine",
                vec![P::SegmentStates, P::GradFinalState, P::SeqLen],
            ),
            launch(
                "linrec_test_dh_scan",
                with(
                    &[
                        &[
                            P::InitialState,
                            P::GradOutput,
                            P::GradInitialState,
                            P::SegmentStates,
                        ][..],
                        &scalars,
                    ]
                    .concat(),
                ),
            ),
            launch(
                "linrec_test_grads",
                with(
                    &[
                        &[P::InitialState, P::GradOutput][..],
                        &grads,
                        &[
                            P::ChunkStates,
                            P::GradAccumulator(Role::Query),
                            P::GradAccumulator(Role::Key),
                        ],
                        &scalars,
                    ]
                    .concat(),
                ),
            ),
        ],
        needs_chunk_states: true,
    }));

    // B = 1, T = 300: longer than a segment (16 chunks of 16), one workgroup of its own.
    let (dev, log) = device();
    let b = buffers(&dev, 1, 300, 1, 1);
    let ins = inputs(&b);
    assert_eq!(
        bwd.takes_instead(
            &linrec_spec::Dims::new(1, 300, 1, 8, 40).with_value_heads(2),
            1
        ),
        Some(true)
    );
    op::backward(&dev, &bwd, BINARY, &args(&b, &ins)).expect("backward without states");
    assert_eq!(
        launches(&log).len(),
        1,
        "its own launch, recomputing the states"
    );
    assert!(launches(&log)[0].starts_with("linrec_test_bwd["));

    let states = ones(&dev, DType::BF16, &[19, 2, 8, 40]);
    let a = BackwardArgs {
        chunk_states: Some(&states),
        ..args(&b, &ins)
    };
    op::backward(&dev, &bwd, BINARY, &a).expect("backward with states");
    let names = launches(&log);
    assert_eq!(names.len(), 5);
    let route = ["dh_segments", "dh_combine", "dh_scan", "grads"];
    for (name, want) in names[1..].iter().zip(route) {
        assert!(name.starts_with(&format!("linrec_test_{want}[")), "{name}");
    }
    let log = log.lock().expect("lock");
    // The grads launch reads the caller's chunk states; the segment states are the same
    // buffer in the three launches that take them.
    let grads_states = 4 + 2 + 4;
    assert_eq!(log.buffers[4][grads_states], address(&states));
    assert_eq!(log.buffers[1][6], log.buffers[2][0]);
    assert_eq!(log.buffers[1][6], log.buffers[3][7]);
}
