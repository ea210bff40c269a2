//! The typed ops (`linrec::ops`, `Variant::forward`, `Variant::backward`) seen from a user's
//! crate.
//!
//! - Numerics (feature `jit`): built-ins and variants declared here run forward and backward
//!   on the OpenCL device that takes SPIR-V (Intel's CPU runtime in CI) and match the f64
//!   reference. Without `OCL_ICD_VENDORS` they skip with a note, except under `CI=true`, where
//!   they fail.
//! - Errors: every bad argument is reported naming it, before any kernel is fetched — on a
//!   host-memory stand-in device, so these run everywhere, with or without `jit`. (The
//!   backward's checks need a `Saved`, so there the stand-in "launches" a stand-in forward
//!   kernel that does nothing.)
//!
//! One file: with `jit` every test binary links MLIR.

use std::sync::Mutex;

use linrec::Error;
use linrec::catalogue::{Retention, Rwkv6, Rwkv6Inputs, SimpleGla, SimpleGlaInputs};
use linrec::ops::{self, BackwardOptions, ForwardOptions, Grads};
use linrec::runtime::kernels::Kernel;
use linrec::runtime::{
    Backend, BackendKind, DType, Device, DeviceBuffer, DeviceId, DeviceInfo, FillPattern,
    KernelHandle, Kernels, LaunchArg, LaunchConfig, ModuleHandle, RawBuffer, RuntimeError,
};
use linrec::spec::launch::{
    ElementType, KernelConfig, KernelInfo, KernelParam, Launch, Route, SizeExpr,
};
use linrec::spec::{Dims, Role, Spec};

linrec::recurrence! {
    /// Gated retention with a write strength: Mamba2's data-dependent scalar decay, with β
    /// scaling each token's write and q, k L2-normalised — but no delta rule.
    pub BetaGatedRetention {
        inputs { q: [K], k: [K], v: [V], g: log_gate, beta: scalar }
        state S: [K, V];
        l2norm(q, k);
        S = exp(g) * S + beta * k * v^T;
        o = S^T * q * scale;
    }

    /// Lightning attention with learned per-head log-decay rates, queries named `x`.
    pub Lightning {
        inputs { x: [K], k: [K], v: [V], a: log_rate }
        state S: [K, V];
        S = exp(a) * S + k * v^T;
        o = S^T * x * scale;
    }

    /// A scalar-gated variant of its own: a fixed scale of 0.5 and its own names — queries
    /// `r`, keys `key`, gate `alpha`.
    pub HalfScaleGate {
        inputs { r: [K], key: [K], v: [V], alpha: log_gate }
        state S: [K, V];
        S = exp(alpha) * S + key * v^T;
        o = S^T * r * scale;
        scale = 0.5;
    }
}

// ---- a host-memory device, for the checks that need no kernel ---------------------------

/// A device whose memory is host memory and which launches nothing: the checks run before any
/// launch, so they need no driver. It says it is OpenCL, so the ops pick the SPIR-V target.
/// [`HostBackend::device`] panics at a module load (the checks must come first);
/// [`HostBackend::launching`] loads anything and launches as a no-op.
#[derive(Debug)]
struct HostBackend {
    id: DeviceId,
    info: DeviceInfo,
    launches: bool,
}

struct HostMem(Mutex<Vec<u8>>);

impl HostBackend {
    fn device() -> Device {
        Self::open(false)
    }

    fn launching() -> Device {
        Self::open(true)
    }

    fn open(launches: bool) -> Device {
        Device::from_backend(Box::new(HostBackend {
            launches,
            id: DeviceId::fresh(),
            info: DeviceInfo {
                backend: BackendKind::OpenCl,
                ordinal: 0,
                name: "host memory (tests/ops.rs)".into(),
                vendor: String::new(),
                driver_version: String::new(),
                total_memory: 0,
                max_threads_per_block: 1024,
                max_shared_memory_per_block: 65536,
                compute_capability: None,
                arch: None,
                il_version: None,
                is_cpu: true,
            },
        }))
    }

    fn mem<'a>(&self, raw: &'a RawBuffer) -> linrec::runtime::Result<&'a HostMem> {
        raw.downcast::<HostMem>().ok_or(RuntimeError::Layout {
            what: "host backend".into(),
            detail: "not a host buffer".into(),
        })
    }
}

impl Backend for HostBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::OpenCl
    }
    fn device_id(&self) -> DeviceId {
        self.id
    }
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn devices(&self) -> linrec::runtime::Result<Vec<DeviceInfo>> {
        Ok(vec![self.info.clone()])
    }
    fn allocate(&self, bytes: usize) -> linrec::runtime::Result<RawBuffer> {
        Ok(RawBuffer::new(
            self.id,
            bytes,
            Box::new(HostMem(Mutex::new(vec![0; bytes]))),
        ))
    }
    fn upload(&self, dst: &RawBuffer, data: &[u8]) -> linrec::runtime::Result<()> {
        let mut m = self.mem(dst)?.0.lock().expect("not poisoned");
        m[..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn download(&self, src: &RawBuffer, out: &mut [u8]) -> linrec::runtime::Result<()> {
        let m = self.mem(src)?.0.lock().expect("not poisoned");
        out.copy_from_slice(&m[..out.len()]);
        Ok(())
    }
    fn fill(&self, _dst: &RawBuffer, _pattern: FillPattern) -> linrec::runtime::Result<()> {
        Ok(())
    }
    fn load_module(&self, _image: &[u8]) -> linrec::runtime::Result<ModuleHandle> {
        assert!(
            self.launches,
            "the checks must fail before a module is loaded"
        );
        Ok(ModuleHandle::new(self.id, std::sync::Arc::new(())))
    }
    fn kernel(&self, _m: &ModuleHandle, name: &str) -> linrec::runtime::Result<KernelHandle> {
        assert!(
            self.launches,
            "the checks must fail before a kernel is looked up"
        );
        Ok(KernelHandle::new(self.id, name, std::sync::Arc::new(())))
    }
    fn launch(
        &self,
        _k: &KernelHandle,
        _c: &LaunchConfig,
        _a: &[LaunchArg<'_>],
    ) -> linrec::runtime::Result<()> {
        assert!(self.launches, "the checks must fail before a launch");
        Ok(())
    }
    fn synchronize(&self) -> linrec::runtime::Result<()> {
        Ok(())
    }
}

fn zeros(dev: &Device, dtype: DType, shape: &[usize]) -> DeviceBuffer {
    dev.upload_bytes(
        dtype,
        shape,
        &vec![0u8; shape.iter().product::<usize>() * dtype.size_bytes()],
    )
    .expect("host upload")
}

/// Valid simple_gla inputs `[B, T, H, K]`, `[B, T, HV, V]`, `[B, T, HV]`.
fn simple_gla_inputs(dev: &Device, d: Dims, dtype: DType) -> SimpleGlaInputs<DeviceBuffer> {
    let (b, t, h, hv, k, v) = (
        d.batch,
        d.seq_len,
        d.heads,
        d.value_heads,
        d.key_dim,
        d.value_dim,
    );
    SimpleGlaInputs {
        q: zeros(dev, dtype, &[b, t, h, k]),
        k: zeros(dev, dtype, &[b, t, h, k]),
        v: zeros(dev, dtype, &[b, t, hv, v]),
        g: zeros(dev, DType::F32, &[b, t, hv]),
    }
}

/// The error of a call, checked to name `argument` (and the variant) in its message.
#[track_caller]
fn names<T>(result: Result<T, Error>, argument: &str, says: &str) -> Error {
    let err = match result {
        Ok(_) => panic!("expected an error naming `{argument}`"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.argument(), Some(argument), "{msg}");
    assert!(msg.contains(&format!("`{argument}`")), "{msg}");
    assert!(msg.contains(says), "`{says}` not in: {msg}");
    err
}

const D: Dims = Dims {
    batch: 2,
    seq_len: 5,
    heads: 2,
    value_heads: 2,
    key_dim: 8,
    value_dim: 4,
};

#[test]
fn a_wrong_dtype_is_named() {
    let dev = HostBackend::device();
    let opts = ForwardOptions::new();
    let mut x = simple_gla_inputs(&dev, D, DType::BF16);
    x.q = zeros(&dev, DType::I32, &[2, 5, 2, 8]);
    names(SimpleGla::forward(&dev, &x, &opts), "q", "dtype i32");

    let mut x = simple_gla_inputs(&dev, D, DType::BF16);
    x.k = zeros(&dev, DType::F16, &[2, 5, 2, 8]);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "k",
        "expected bf16 (the dtype of `q`)",
    );

    let mut x = simple_gla_inputs(&dev, D, DType::BF16);
    x.g = zeros(&dev, DType::BF16, &[2, 5, 2]);
    let e = names(
        SimpleGla::forward(&dev, &x, &opts),
        "g",
        "expected f32 [B, T, HV] = [2, 5, 2], found bf16",
    );
    assert!(e.to_string().starts_with("simple_gla: "), "{e}");

    // A user's own name for the query (rwkv6 calls it `r`) is the name reported.
    let r = Rwkv6Inputs {
        r: zeros(&dev, DType::I64, &[1, 3, 1, 4]),
        k: zeros(&dev, DType::F32, &[1, 3, 1, 4]),
        v: zeros(&dev, DType::F32, &[1, 3, 1, 4]),
        w: zeros(&dev, DType::F32, &[1, 3, 1, 4]),
        u: zeros(&dev, DType::F32, &[1, 4]),
    };
    names(Rwkv6::forward(&dev, &r, &opts), "r", "use bf16, f16 or f32");
}

#[test]
fn a_wrong_rank_or_shape_is_named() {
    let dev = HostBackend::device();
    let opts = ForwardOptions::new();
    let mut x = simple_gla_inputs(&dev, D, DType::F32);
    x.v = zeros(&dev, DType::F32, &[2, 5, 8]);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "v",
        "expected rank 4 [B, T, HV, V], found rank 3 [2, 5, 8]",
    );

    let mut x = simple_gla_inputs(&dev, D, DType::F32);
    x.k = zeros(&dev, DType::F32, &[2, 6, 2, 8]);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "k",
        "[B, T, H, K] = [2, 5, 2, 8], found f32 [2, 6, 2, 8]",
    );

    let mut x = simple_gla_inputs(&dev, D, DType::F32);
    x.v = zeros(&dev, DType::F32, &[1, 5, 2, 4]);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "v",
        "[B, T, HV, V] = [2, 5, 2, 4], found f32 [1, 5, 2, 4]",
    );

    // A declared name other than the role's: Lightning's queries are `x`.
    let l = LightningInputs {
        x: zeros(&dev, DType::F32, &[1, 4, 2, 8]),
        k: zeros(&dev, DType::F32, &[1, 4, 2, 8]),
        v: zeros(&dev, DType::F32, &[1, 4, 2, 8]),
        a: zeros(&dev, DType::F32, &[3]),
    };
    names(
        Lightning::forward(&dev, &l, &opts),
        "a",
        "expected f32 [HV] = [2], found f32 [3]",
    );

    let h0 = zeros(&dev, DType::F32, &[1, 2, 8, 4]);
    let x = simple_gla_inputs(&dev, D, DType::F32);
    names(
        SimpleGla::forward(&dev, &x, &ForwardOptions::new().initial_state(&h0)),
        "h0",
        "expected f32 [N, HV, K, V] = [2, 2, 8, 4] (N = 2 sequences), found f32 [1, 2, 8, 4]",
    );

    // A transposed view: the kernels read contiguous tensors.
    let mut x = simple_gla_inputs(&dev, D, DType::F32);
    x.q =
        x.q.with_strides(&[2, 5, 2, 8], &[80, 8, 40, 1])
            .expect("fits");
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "q",
        "are not contiguous",
    );

    // A buffer of another device.
    let other = HostBackend::device();
    let mut x = simple_gla_inputs(&dev, D, DType::F32);
    x.g = zeros(&other, DType::F32, &[2, 5, 2]);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "g",
        "belongs to another device",
    );
}

#[test]
fn heads_and_head_dims_out_of_range_are_named() {
    let dev = HostBackend::device();
    let opts = ForwardOptions::new();
    let x = simple_gla_inputs(&dev, D.with_value_heads(3), DType::F32);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "v",
        "HV = 3 (in [2, 5, 3, 4]) is not a non-zero multiple of H = 2",
    );
    // GVA itself is fine as far as the checks go: HV = 4 = 2 H reaches the kernel provider.

    let big = Dims { key_dim: 257, ..D };
    let x = simple_gla_inputs(&dev, big, DType::BF16);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "q",
        "key head dim K = 257 is not supported: linrec's kernels take 1..=256",
    );
    let big = Dims {
        value_dim: 300,
        ..D
    };
    let x = simple_gla_inputs(&dev, big, DType::BF16);
    names(
        SimpleGla::forward(&dev, &x, &opts),
        "v",
        "value head dim V = 300",
    );
    let x = simple_gla_inputs(&dev, Dims { heads: 0, ..D }, DType::BF16);
    names(SimpleGla::forward(&dev, &x, &opts), "q", "H = 0");
}

#[test]
fn varlen_offsets_are_checked() {
    let dev = HostBackend::device();
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let cu = dev.upload(&[0i32, 2, 5], &[3]).expect("upload");
    names(
        SimpleGla::forward(&dev, &x, &ForwardOptions::new().cu_seqlens(&cu)),
        "cu_seqlens",
        "given with B = 2",
    );

    let one = Dims { batch: 1, ..D };
    let x = simple_gla_inputs(&dev, one, DType::F32);
    for (offsets, says) in [
        (&[0i32, 3, 2, 5][..], "the offsets decrease"),
        (&[0, 2, 4][..], "the last offset is not T"),
        (&[1, 5][..], "the first offset is not 0"),
    ] {
        let cu = dev.upload(offsets, &[offsets.len()]).expect("upload");
        names(
            SimpleGla::forward(&dev, &x, &ForwardOptions::new().cu_seqlens(&cu)),
            "cu_seqlens",
            says,
        );
    }
    let cu = dev.upload(&[0i64, 5], &[2]).expect("upload");
    names(
        SimpleGla::forward(&dev, &x, &ForwardOptions::new().cu_seqlens(&cu)),
        "cu_seqlens",
        "expected i32 [N+1] with N >= 1 sequences, found i64 [2]",
    );
    // h0 has one state per sequence, not per batch row.
    let cu = dev.upload(&[0i32, 0, 2, 5], &[4]).expect("upload");
    let h0 = zeros(&dev, DType::F32, &[1, 2, 8, 4]);
    names(
        SimpleGla::forward(
            &dev,
            &x,
            &ForwardOptions::new().cu_seqlens(&cu).initial_state(&h0),
        ),
        "h0",
        "(N = 3 sequences)",
    );
}

#[test]
fn options_out_of_range_are_named() {
    let dev = HostBackend::device();
    let x = simple_gla_inputs(&dev, D, DType::F32);
    names(
        SimpleGla::forward(&dev, &x, &ForwardOptions::new().chunk(48)),
        "chunk",
        "48 is not allowed: use one of [16, 32, 64]",
    );
    for bad in [0.0, -1.0, f64::NAN, 1e300] {
        names(
            SimpleGla::forward(&dev, &x, &ForwardOptions::new().scale(bad)),
            "scale",
            "is not a positive number",
        );
    }
}

#[test]
fn the_untyped_forms_check_the_input_set() {
    let dev = HostBackend::device();
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let spec = SimpleGla::spec();
    let opts = ForwardOptions::new();
    names(
        ops::forward(
            &dev,
            spec,
            &[(Role::Query, &x.q), (Role::Key, &x.k), (Role::Value, &x.v)],
            &opts,
        ),
        "g",
        "missing: `simple_gla` takes `q`, `k`, `v`, `g`",
    );
    let beta = zeros(&dev, DType::F32, &[2, 5, 2]);
    let mut all: Vec<(Role, &DeviceBuffer)> = x.named().map(|(_, r, b)| (r, b)).to_vec();
    all.push((Role::Beta, &beta));
    names(
        ops::forward(&dev, spec, &all, &opts),
        "beta",
        "`simple_gla` has no beta input",
    );
    all[4] = (Role::Key, &x.k);
    names(ops::forward(&dev, spec, &all, &opts), "k", "given twice");
    names(
        ops::forward_named(&dev, spec, &[("q", &x.q), ("gate", &x.g)], &opts),
        "gate",
        "no such input; `simple_gla` takes `q`, `k`, `v`, `g`",
    );

    // A spec built by hand is validated.
    let mut bad: Spec = spec.clone();
    bad.inputs.pop();
    let err = ops::forward(&dev, &bad, &all[..3], &opts).expect_err("invalid spec");
    assert!(matches!(err, Error::Spec(_)), "{err:?}");
    assert!(
        err.to_string().contains("needs an input with role `gate`"),
        "{err}"
    );
}

/// gla's diagonal decay is a form the compiler does not derive yet: the op says so (with the
/// compiler linked it can tell; without it the kernel is merely missing).
#[cfg(feature = "jit")]
#[test]
fn a_form_the_compiler_does_not_derive_yet_says_so() {
    use linrec::catalogue::{Gla, GlaInputs};
    let dev = HostBackend::device();
    let (b, t, h, k, v) = (1, 4, 1, 8, 8);
    let x = GlaInputs {
        q: zeros(&dev, DType::F32, &[b, t, h, k]),
        k: zeros(&dev, DType::F32, &[b, t, h, k]),
        v: zeros(&dev, DType::F32, &[b, t, h, v]),
        g: zeros(&dev, DType::F32, &[b, t, h, k]),
    };
    let err = Gla::forward(&dev, &x, &ForwardOptions::new()).expect_err("not derived yet");
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::NotYetSupported { variant, .. } if variant == "gla"),
        "{err:?}"
    );
    assert!(
        msg.contains("not yet supported: the diagonal decay"),
        "{msg}"
    );
}

#[cfg(not(feature = "jit"))]
#[test]
fn without_a_compiler_a_missing_kernel_says_how_to_build_it() {
    let dev = HostBackend::device();
    let x = simple_gla_inputs(&dev, D, DType::BF16);
    let kernels = linrec::runtime::Kernels::builder()
        .no_disk_cache()
        .build()
        .expect("no sources to read");
    let err = SimpleGla::forward(&dev, &x, &ForwardOptions::new().kernels(&kernels))
        .expect_err("no kernel anywhere");
    let msg = err.to_string();
    assert!(matches!(err, Error::Kernel(_)), "{err:?}");
    assert!(
        msg.contains("linrec compile simple_gla --target spirv --dtype bf16 --head-dims 8:4"),
        "{msg}"
    );
}

// ---- the backward's checks --------------------------------------------------------------

/// A provider holding a stand-in forward kernel of `spec` for `config` on the SPIR-V target —
/// launch metadata only, its module never runs (the launching host device ignores it) — and no
/// compiler, no disk cache: a backward kernel is missing, which a valid backward call reports.
fn stand_in_forward(spec: &Spec, config: KernelConfig) -> Kernels {
    stand_in(spec, config, false)
}

/// [`stand_in_forward`], as a split forward when `split`: a second parameter list would be its
/// output kernel; one launch that writes the chunk states is all the runtime needs to know.
fn stand_in(spec: &Spec, config: KernelConfig, split: bool) -> Kernels {
    let kernels = Kernels::builder()
        .no_disk_cache()
        .no_compiler()
        .build()
        .expect("no sources to read");
    let mut params: Vec<KernelParam> = spec
        .inputs
        .iter()
        .map(|i| KernelParam::Input(i.role))
        .collect();
    if config.initial_state {
        params.push(KernelParam::InitialState);
    }
    params.push(KernelParam::Output);
    if config.final_state {
        params.push(KernelParam::FinalState);
    }
    if config.varlen {
        params.push(KernelParam::CuSeqlens);
    }
    if split {
        params.push(KernelParam::ChunkStates);
    }
    params.extend([
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ]);
    let info = KernelInfo {
        entry: format!("stand_in_{}_fwd", spec.name),
        spec_name: spec.name.clone(),
        spec_hash: spec.hash().hex(),
        direction: "forward".into(),
        target: "spirv".into(),
        config,
        params,
        grid: [SizeExpr::Const(1), SizeExpr::Const(1), SizeExpr::Const(1)],
        block: [1, 1, 1],
        shared_bytes: 0,
        scratch: 0,
        then: Vec::new(),
        narrower: Vec::new(),
        instead: None,
    };
    kernels
        .insert(Kernel {
            info,
            binary: Vec::new(),
        })
        .expect("a forward kernel");
    kernels
}

/// The forward config of a simple_gla call at `D` in f32.
fn config(initial_state: bool, final_state: bool) -> KernelConfig {
    KernelConfig {
        dtype: ElementType::F32,
        key_dim: D.key_dim,
        value_dim: D.value_dim,
        chunk: 64,
        initial_state,
        final_state,
        varlen: false,
    }
}

#[test]
fn backward_arguments_are_named_before_a_kernel_is_fetched() {
    let dev = HostBackend::launching();
    let kernels = stand_in_forward(SimpleGla::spec(), config(true, false));
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let h0 = zeros(&dev, DType::F32, &[2, 2, 8, 4]);
    let fwd = SimpleGla::forward(
        &dev,
        &x,
        &ForwardOptions::new().initial_state(&h0).kernels(&kernels),
    )
    .expect("the stand-in forward runs");
    let saved = &fwd.saved;
    let opts = BackwardOptions::new().kernels(&kernels);
    let bwd = |grads: &Grads<'_>| SimpleGla::backward_with(&dev, saved, grads, &opts);

    // dO: the dtype of q, the shape of o, this device's, contiguous.
    let d_o = zeros(&dev, DType::BF16, &[2, 5, 2, 4]);
    names(
        bwd(&Grads::new(&d_o)),
        "do",
        "expected f32 (the dtype of `q`) [B, T, HV, V] = [2, 5, 2, 4] (the shape of `o`), found bf16 [2, 5, 2, 4]",
    );
    let d_o = zeros(&dev, DType::F32, &[2, 5, 2, 8]);
    names(bwd(&Grads::new(&d_o)), "do", "found f32 [2, 5, 2, 8]");
    let other = HostBackend::device();
    let d_o = zeros(&other, DType::F32, &[2, 5, 2, 4]);
    names(bwd(&Grads::new(&d_o)), "do", "belongs to another device");
    let d_o = zeros(&dev, DType::F32, &[2, 5, 2, 4])
        .with_strides(&[2, 5, 2, 4], &[40, 4, 20, 1])
        .expect("fits");
    names(bwd(&Grads::new(&d_o)), "do", "are not contiguous");

    // dht when the forward returned no final state.
    let d_o = zeros(&dev, DType::F32, &[2, 5, 2, 4]);
    let dht = zeros(&dev, DType::F32, &[2, 2, 8, 4]);
    names(
        bwd(&Grads::new(&d_o).dht(&dht)),
        "dht",
        "the forward returned no final state",
    );

    // Another device than the forward's.
    names(
        SimpleGla::backward_with(&other, saved, &Grads::new(&d_o), &opts),
        "device",
        "run the backward on the forward's device",
    );
    // A Saved of another variant (the untyped form takes any).
    names(
        Retention::backward_with(&dev, saved, &Grads::new(&d_o), &opts),
        "saved",
        "comes from a forward of `simple_gla`, not of `retention`",
    );

    // Valid arguments reach the provider, which has no backward kernel.
    let err = ops::backward(&dev, saved, &Grads::new(&d_o), &opts).expect_err("no kernel");
    assert!(matches!(err, Error::Kernel(_)), "{err:?}");
    assert!(err.to_string().contains("backward"), "{err}");
    let err =
        SimpleGla::backward_with(&dev, saved, &Grads::new(&d_o), &opts).expect_err("no kernel");
    assert!(matches!(err, Error::Kernel(_)), "{err:?}");
}

#[test]
fn backward_dht_must_fit_the_final_state() {
    let dev = HostBackend::launching();
    let kernels = stand_in_forward(SimpleGla::spec(), config(false, true));
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let fwd = SimpleGla::forward(
        &dev,
        &x,
        &ForwardOptions::new()
            .output_final_state(true)
            .kernels(&kernels),
    )
    .expect("the stand-in forward runs");
    assert_eq!(
        fwd.final_state.as_ref().map(|b| b.shape()),
        Some(&[2, 2, 8, 4][..])
    );
    let opts = BackwardOptions::new().kernels(&kernels);
    let d_o = zeros(&dev, DType::F32, &[2, 5, 2, 4]);
    for (dtype, shape, says) in [
        (
            DType::F32,
            &[1, 2, 8, 4][..],
            "expected f32 [N, HV, K, V] = [2, 2, 8, 4] (the shape of the final state, N = 2 sequences), found f32 [1, 2, 8, 4]",
        ),
        (DType::BF16, &[2, 2, 8, 4][..], "found bf16 [2, 2, 8, 4]"),
    ] {
        let dht = zeros(&dev, dtype, shape);
        names(
            ops::backward(&dev, &fwd.saved, &Grads::new(&d_o).dht(&dht), &opts),
            "dht",
            says,
        );
    }
    let dht = zeros(&HostBackend::device(), DType::F32, &[2, 2, 8, 4]);
    names(
        ops::backward(&dev, &fwd.saved, &Grads::new(&d_o).dht(&dht), &opts),
        "dht",
        "belongs to another device",
    );
    // A fitting dht, or none (zeros), passes the checks.
    let dht = zeros(&dev, DType::F32, &[2, 2, 8, 4]);
    for grads in [Grads::new(&d_o).dht(&dht), Grads::new(&d_o)] {
        let err = ops::backward(&dev, &fwd.saved, &grads, &opts).expect_err("no kernel");
        assert!(matches!(err, Error::Kernel(_)), "{err:?}");
    }
}

#[test]
fn saving_chunk_states_needs_a_forward_kernel_that_writes_them() {
    // A fused forward kernel writes none: an option error before anything is launched (the
    // host device panics at a module load).
    let dev = HostBackend::device();
    let kernels = stand_in_forward(SimpleGla::spec(), config(false, false));
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let opts = ForwardOptions::new()
        .kernels(&kernels)
        .save_chunk_states(true);
    let err = names(
        SimpleGla::forward(&dev, &x, &opts),
        "save_chunk_states",
        "is one fused kernel",
    );
    assert!(matches!(err, Error::Option { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("LINREC_FORWARD=split"), "{msg}");
    assert!(msg.contains("`stand_in_simple_gla_fwd`"), "{msg}");

    // A split one does: `Saved` keeps them (⌊B·T / C⌋ + N = 0 + 2 slots of [HV, K, V], in
    // the dtype of q) only when asked to.
    let dev = HostBackend::launching();
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let kernels = stand_in(SimpleGla::spec(), config(false, false), true);
    let opts = ForwardOptions::new().kernels(&kernels);
    let plain = SimpleGla::forward(&dev, &x, &opts).expect("runs");
    assert!(plain.saved.chunk_states().is_none());
    let kept = SimpleGla::forward(&dev, &x, &opts.save_chunk_states(true)).expect("runs");
    let states = kept.saved.chunk_states().expect("kept");
    assert_eq!(
        (states.dtype(), states.shape()),
        (DType::F32, &[2, 2, 8, 4][..])
    );
    assert!(ops::writes_chunk_states(
        &kernels
            .get(&linrec::runtime::KernelRequest::forward(
                SimpleGla::spec(),
                "spirv",
                config(false, false)
            ))
            .expect("the stand-in")
            .kernel
            .info
    ));
    // The backward of either gets as far as the provider, which has no backward kernel.
    let d_o = zeros(&dev, DType::F32, &[2, 5, 2, 4]);
    let bopts = BackwardOptions::new().kernels(&kernels);
    for saved in [&plain.saved, &kept.saved] {
        let err = ops::backward(&dev, saved, &Grads::new(&d_o), &bopts).expect_err("no kernel");
        assert!(matches!(err, Error::Kernel(_)), "{err:?}");
    }
}

/// A fused forward kernel with a split-scan route (`KernelInfo::instead`) writes chunk states
/// only in the calls that take it: saving them is no error, and `Saved` has them exactly
/// there (the backward recomputes them otherwise).
#[test]
fn a_fused_forward_with_a_split_scan_saves_chunk_states_where_it_takes_it() {
    let request =
        linrec::runtime::KernelRequest::forward(SimpleGla::spec(), "spirv", config(false, false));
    let mut info = stand_in(SimpleGla::spec(), config(false, false), false)
        .get(&request)
        .expect("the stand-in")
        .kernel
        .info
        .clone();
    assert!(!ops::writes_chunk_states(&info));
    // The fused launch's parameters, plus the chunk states before the scalars.
    let mut params = info.params.clone();
    params.insert(params.len() - 4, KernelParam::ChunkStates);
    info.instead = Some(Box::new(Route {
        launches: vec![Launch {
            entry: "stand_in_states".into(),
            params,
            grid: info.grid.clone(),
            block: [1, 1, 1],
            shared_bytes: 0,
            scratch: 0,
        }],
        needs_chunk_states: false,
    }));
    assert!(ops::writes_chunk_states(&info));
    let kernels = Kernels::builder()
        .no_disk_cache()
        .no_compiler()
        .build()
        .expect("no sources to read");
    kernels
        .insert(Kernel {
            info,
            binary: Vec::new(),
        })
        .expect("a forward kernel");
    let dev = HostBackend::launching();
    let opts = ForwardOptions::new()
        .kernels(&kernels)
        .save_chunk_states(true);

    // B·T = 10 tokens, less than a segment (16 chunks of 64): the fused launch, no states.
    let x = simple_gla_inputs(&dev, D, DType::F32);
    let short = SimpleGla::forward(&dev, &x, &opts).expect("runs");
    assert!(short.saved.chunk_states().is_none());

    // B = 1, T = 1100 > 1024: the route's, ⌊1100 / 64⌋ + 1 = 18 slots of [HV, K, V].
    let long = Dims {
        batch: 1,
        seq_len: 1100,
        ..D
    };
    let x = simple_gla_inputs(&dev, long, DType::F32);
    let kept = SimpleGla::forward(&dev, &x, &opts).expect("runs");
    let states = kept.saved.chunk_states().expect("the route's");
    assert_eq!(
        (states.dtype(), states.shape()),
        (DType::F32, &[18, 2, 8, 4][..])
    );
}

/// The typed forward takes owned buffers and references alike (compile-time check).
#[allow(dead_code)]
fn typed_forward_takes_owned_and_borrowed_buffers(
    dev: &Device,
    owned: &SimpleGlaInputs<DeviceBuffer>,
    borrowed: &BetaGatedRetentionInputs<&DeviceBuffer>,
) -> Result<(), Error> {
    SimpleGla::forward(dev, owned, &ForwardOptions::new())?;
    SimpleGla::forward(dev, &owned.as_ref(), &ForwardOptions::new())?;
    let out = BetaGatedRetention::forward(dev, borrowed, &ForwardOptions::new())?;
    let grads: ops::Backward = BetaGatedRetention::backward(dev, &out.saved, &Grads::new(&out.o))?;
    let _: Option<&DeviceBuffer> = grads.grad_named("beta");
    Ok(())
}

// ---- numerics on OpenCL -----------------------------------------------------------------

#[cfg(feature = "jit")]
mod on_opencl {
    use super::*;
    use std::sync::Arc;

    use linrec::catalogue::{LinearAttn, LinearAttnInputs, RetentionInputs};
    use linrec::host;
    use linrec::ops::Forward;
    use linrec::reference::{self, Rng, Tensor};
    use linrec::runtime::kernels::KernelSource;
    use linrec::runtime::{DeviceKind, Kernels};
    use linrec::spec::RunOptions;
    use linrec::spec::launch::ElementType;

    /// The OpenCL device, or `None` with a note when `OCL_ICD_VENDORS` is unset (a failure
    /// under `CI=true`: CI must run these).
    fn opencl(test: &str) -> Option<Device> {
        if std::env::var_os("OCL_ICD_VENDORS").is_none() {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "CI must run the OpenCL tests: scripts/test.sh sets OCL_ICD_VENDORS"
            );
            eprintln!("note: OCL_ICD_VENDORS unset, {test} skipped (scripts/setup-opencl.sh)");
            return None;
        }
        Some(Device::new(DeviceKind::OpenCl).expect("OCL_ICD_VENDORS is set: OpenCL opens"))
    }

    /// One problem: random inputs (rounded to what the kernel reads), uploaded by role.
    struct Problem {
        spec: Spec,
        dtype: ElementType,
        inputs: reference::Inputs,
        buffers: Vec<(Role, DeviceBuffer)>,
        h0: Option<DeviceBuffer>,
        cu: Option<DeviceBuffer>,
        opts: RunOptions,
    }

    impl Problem {
        fn new(
            dev: &Device,
            spec: &Spec,
            dims: Dims,
            dtype: ElementType,
            cu: Option<Vec<i64>>,
            with_h0: bool,
            seed: u64,
        ) -> Problem {
            let mut inputs = reference::random_inputs(spec, &dims, seed);
            let n = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
            if with_h0 {
                let mut rng = Rng::new(seed ^ 0x5eed);
                inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(n), || rng.normal()));
            }
            let mut buffers = Vec::new();
            for input in &spec.inputs {
                let elem = match input.role {
                    Role::Query | Role::Key | Role::Value => dtype,
                    _ => ElementType::F32,
                };
                let t = tensor_mut(&mut inputs, input.role);
                host::round_to(elem, &mut t.data);
                let dt = linrec::runtime::op::dtype(elem);
                let buf = dev
                    .upload_bytes(dt, &t.shape, &host::to_bytes(elem, &t.data))
                    .expect("upload");
                buffers.push((input.role, buf));
            }
            let h0 = inputs.h0.as_ref().map(|h0| {
                dev.upload(
                    &h0.data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    &h0.shape,
                )
                .expect("upload h0")
            });
            if let Some(h0) = inputs.h0.as_mut() {
                host::round_to(ElementType::F32, &mut h0.data);
            }
            let cu_buf = cu.as_ref().map(|c| {
                let c32: Vec<i32> = c.iter().map(|&x| x as i32).collect();
                dev.upload(&c32, &[c32.len()]).expect("upload cu_seqlens")
            });
            Problem {
                spec: spec.clone(),
                dtype,
                inputs,
                buffers,
                h0,
                cu: cu_buf,
                opts: RunOptions {
                    cu_seqlens: cu,
                    output_final_state: true,
                    scale: None,
                },
            }
        }

        fn buffer(&self, role: Role) -> Result<&DeviceBuffer, String> {
            self.buffers
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, b)| b)
                .ok_or_else(|| format!("no {role} buffer"))
        }

        fn options(&self) -> ForwardOptions<'_> {
            ForwardOptions {
                initial_state: self.h0.as_ref(),
                cu_seqlens: self.cu.as_ref(),
                output_final_state: self.opts.output_final_state,
                scale: self.opts.scale,
                ..Default::default()
            }
        }

        /// ‖o − ref‖/‖ref‖ and the same for the final state (0 when not asked for).
        fn errors(&self, dev: &Device, out: &Forward) -> (f64, f64) {
            let want = reference::forward(&self.spec, &self.inputs, &self.opts).expect("ref");
            let bytes = dev.download_bytes(&out.o).expect("download o");
            let o = Tensor::from_vec(out.o.shape(), host::from_bytes(self.dtype, &bytes))
                .expect("o size");
            let rh = match (&out.final_state, &want.ht, self.opts.output_final_state) {
                (Some(ht), Some(w), true) => {
                    let got: Vec<f64> = dev
                        .download::<f32>(ht)
                        .expect("download ht")
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    Tensor::from_vec(ht.shape(), got)
                        .expect("ht size")
                        .rel_error(w)
                }
                (None, _, false) => 0.0,
                _ => f64::INFINITY,
            };
            (o.rel_error(&want.o), rh)
        }
    }

    fn tensor_mut(inputs: &mut reference::Inputs, role: Role) -> &mut Tensor {
        match role {
            Role::Query => &mut inputs.q,
            Role::Key => &mut inputs.k,
            Role::Value => &mut inputs.v,
            Role::Gate => inputs.g.as_mut().expect("gate"),
            Role::Beta => inputs.beta.as_mut().expect("beta"),
            Role::Bonus => inputs.u.as_mut().expect("bonus"),
            Role::DecayRate => inputs.decay_rate.as_mut().expect("decay rate"),
        }
    }

    const TOL: f64 = 0.005;

    #[track_caller]
    fn assert_close(what: &str, (ro, rh): (f64, f64)) {
        eprintln!("{what}: ‖o − ref‖/‖ref‖ = {ro:.2e}, ‖ht − ref‖/‖ref‖ = {rh:.2e}");
        assert!(
            ro < TOL && rh < TOL,
            "{what}: o {ro:.2e}, ht {rh:.2e} (limit {TOL})"
        );
    }

    #[test]
    fn builtins_match_the_reference() {
        let Some(dev) = opencl("builtins_match_the_reference") else {
            return;
        };
        // simple_gla, bf16, two batch rows, h0 and the final state, odd T.
        let p = Problem::new(
            &dev,
            SimpleGla::spec(),
            Dims::new(2, 37, 2, 16, 8),
            ElementType::Bf16,
            None,
            true,
            1,
        );
        let x = SimpleGlaInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = SimpleGla::forward(&dev, &x, &p.options()).expect("simple_gla runs");
        assert_close("simple_gla", p.errors(&dev, &out));
        assert_eq!(out.o.shape(), &[2, 37, 2, 8]);
        assert_eq!(out.o.dtype(), DType::BF16);

        // linear_attn, f16, GVA (HV = 2 H), chunk 32, no h0, no final state.
        let mut p = Problem::new(
            &dev,
            LinearAttn::spec(),
            Dims::new(1, 40, 1, 8, 16).with_value_heads(2),
            ElementType::F16,
            None,
            false,
            2,
        );
        p.opts.output_final_state = false;
        let x = LinearAttnInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = LinearAttn::forward(&dev, &x, &p.options().chunk(32)).expect("linear_attn runs");
        assert!(out.final_state.is_none());
        assert_eq!(out.saved.config().chunk, 32);
        assert_close("linear_attn", p.errors(&dev, &out));

        // retention, f32, varlen with an empty sequence, h0 per sequence, an explicit scale.
        let mut p = Problem::new(
            &dev,
            Retention::spec(),
            Dims::new(1, 30, 2, 8, 8),
            ElementType::F32,
            Some(vec![0, 0, 11, 30]),
            true,
            3,
        );
        p.opts.scale = Some(0.25);
        let x = RetentionInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = Retention::forward(&dev, &x, &p.options()).expect("retention runs");
        assert_eq!(out.saved.sequences(), 3);
        assert_eq!(out.saved.scale(), 0.25);
        assert_eq!(
            out.final_state.as_ref().map(|s| s.shape()),
            Some(&[3, 2, 8, 8][..])
        );
        assert_close("retention varlen", p.errors(&dev, &out));
    }

    #[test]
    fn a_variant_declared_here_matches_the_reference() {
        let Some(dev) = opencl("a_variant_declared_here_matches_the_reference") else {
            return;
        };
        let p = Problem::new(
            &dev,
            BetaGatedRetention::spec(),
            Dims::new(2, 45, 2, 16, 16),
            ElementType::Bf16,
            None,
            true,
            4,
        );
        let x = BetaGatedRetentionInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = BetaGatedRetention::forward(&dev, &x, &p.options()).expect("runs");
        assert_close("beta_gated_retention", p.errors(&dev, &out));

        // The same call by declared names gives the same output.
        let named: Vec<(&str, &DeviceBuffer)> = x.named().map(|(n, _, b)| (n, *b)).to_vec();
        let again = ops::forward_named(&dev, BetaGatedRetention::spec(), &named, &p.options())
            .expect("runs by name");
        assert_eq!(
            dev.download_bytes(&again.o).expect("download"),
            dev.download_bytes(&out.o).expect("download")
        );

        // Lightning: the decay rates are an input, and the queries are called `x`.
        let p = Problem::new(
            &dev,
            Lightning::spec(),
            Dims::new(1, 33, 2, 8, 8),
            ElementType::F32,
            None,
            false,
            5,
        );
        let x = LightningInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = Lightning::forward(&dev, &x, &p.options()).expect("lightning runs");
        assert_close("lightning", p.errors(&dev, &out));
    }

    #[test]
    fn saved_holds_the_call_and_the_provider_reuses_kernels() {
        let Some(dev) = opencl("saved_holds_the_call_and_the_provider_reuses_kernels") else {
            return;
        };
        let kernels = Kernels::builder()
            .no_disk_cache()
            .build()
            .expect("no sources to read");
        let p = Problem::new(
            &dev,
            SimpleGla::spec(),
            Dims::new(1, 20, 1, 8, 8),
            ElementType::F32,
            None,
            true,
            6,
        );
        let x = SimpleGlaInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let opts = p.options().kernels(&kernels);
        let first = SimpleGla::forward(&dev, &x, &opts).expect("runs");
        assert!(
            matches!(
                first.kernel_source,
                KernelSource::Compiled { cached: None, .. }
            ),
            "{:?}",
            first.kernel_source
        );
        let second = SimpleGla::forward(&dev, &x, &opts).expect("runs again");
        assert_eq!(second.kernel_source, KernelSource::Memory);

        let saved = &second.saved;
        assert_eq!(saved.spec(), SimpleGla::spec());
        assert_eq!(saved.spec_hash(), &SimpleGla::spec().hash());
        assert_eq!(saved.target(), "spirv");
        let c = saved.config();
        assert_eq!(
            (c.dtype, c.key_dim, c.value_dim, c.chunk),
            (ElementType::F32, 8, 8, 64)
        );
        assert!(c.initial_state && c.final_state && !c.varlen);
        assert_eq!(saved.dims(), &Dims::new(1, 20, 1, 8, 8));
        // The inputs are kept as views of the caller's memory, not copies.
        for (role, buf) in &p.buffers {
            let kept = saved.input(*role).expect("kept");
            assert!(std::ptr::eq(kept.raw(), buf.raw()), "{role}");
        }
        let h0 = saved.initial_state().expect("h0 kept");
        assert!(std::ptr::eq(h0.raw(), p.h0.as_ref().expect("h0").raw()));
        assert!(saved.cu_seqlens().is_none());
        assert_eq!(saved.device().info().label(), dev.info().label());
        // Saved and Forward go to other threads.
        let handle = std::thread::spawn({
            let saved = Arc::new(saved.clone());
            move || saved.sequences()
        });
        assert_eq!(handle.join().expect("thread"), 1);
    }

    // ---- the backward on OpenCL ---------------------------------------------------------

    /// fla's bound on a gradient's `‖out − ref‖/‖ref‖` (`None`: dh0): 0.02 for a gate's and
    /// β's, else 0.005 — 0.008 for specs with a β-write (the delta family).
    fn grad_tolerance(spec: &Spec, role: Option<Role>) -> f64 {
        use linrec::spec::{Transition, Write};
        match role {
            Some(Role::Gate | Role::Beta) => 0.02,
            _ if spec.write == Write::BetaOuter
                || matches!(spec.transition, Transition::Delta { .. }) =>
            {
                0.008
            }
            _ => 0.005,
        }
    }

    /// The gradients flowing in: random `dO` (the kernel's dtype) and, when the forward
    /// returned the final state, `dht` (f32), as host tensors (rounded to what the kernel
    /// reads) and device buffers.
    struct GradsIn {
        d_o: Tensor,
        dht: Option<Tensor>,
        d_o_buf: DeviceBuffer,
        dht_buf: Option<DeviceBuffer>,
    }

    impl GradsIn {
        fn grads(&self) -> Grads<'_> {
            Grads {
                d_o: &self.d_o_buf,
                dht: self.dht_buf.as_ref(),
            }
        }
    }

    fn download(dev: &Device, buf: &DeviceBuffer) -> Tensor {
        let elem = match buf.dtype() {
            DType::BF16 => ElementType::Bf16,
            DType::F16 => ElementType::F16,
            DType::F32 => ElementType::F32,
            other => panic!("a gradient of dtype {other}"),
        };
        let bytes = dev.download_bytes(buf).expect("download");
        Tensor::from_vec(buf.shape(), host::from_bytes(elem, &bytes)).expect("size")
    }

    impl Problem {
        fn grads_in(&self, dev: &Device, out: &Forward, seed: u64) -> GradsIn {
            let mut rng = Rng::new(seed ^ 0xd0d0);
            let mut d_o = Tensor::from_fn(out.o.shape(), || rng.normal());
            host::round_to(self.dtype, &mut d_o.data);
            let d_o_buf = dev
                .upload_bytes(
                    linrec::runtime::op::dtype(self.dtype),
                    &d_o.shape,
                    &host::to_bytes(self.dtype, &d_o.data),
                )
                .expect("upload do");
            let dht = out.final_state.as_ref().map(|ht| {
                let mut t = Tensor::from_fn(ht.shape(), || rng.normal());
                host::round_to(ElementType::F32, &mut t.data);
                t
            });
            let dht_buf = dht.as_ref().map(|t| {
                dev.upload(
                    &t.data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    &t.shape,
                )
                .expect("upload dht")
            });
            GradsIn {
                d_o,
                dht,
                d_o_buf,
                dht_buf,
            }
        }

        /// Every gradient against the reference's exact backward, each within its bound;
        /// the gradient of a decay-rate input is not computed on devices (`None`).
        #[track_caller]
        fn check_backward(&self, what: &str, dev: &Device, g: &GradsIn, bwd: &ops::Backward) {
            let want =
                reference::backward(&self.spec, &self.inputs, &self.opts, &g.d_o, g.dht.as_ref())
                    .expect("reference backward");
            let mut bad = Vec::new();
            for input in &self.spec.inputs {
                let name = format!("d{}", input.name);
                let got = bwd.grad(input.role);
                assert_eq!(
                    got.map(|b| b.raw() as *const _),
                    bwd.grad_named(&input.name).map(|b| b.raw() as *const _),
                    "{what}: grad and grad_named agree"
                );
                if input.role == Role::DecayRate {
                    assert!(got.is_none(), "{what}: {name} is not computed on devices");
                    continue;
                }
                let got = got.unwrap_or_else(|| panic!("{what}: no {name}"));
                let want_t = want
                    .get(input.role)
                    .expect("the reference has every gradient");
                let expect_dtype = match input.role {
                    Role::Query | Role::Key | Role::Value => linrec::runtime::op::dtype(self.dtype),
                    _ => DType::F32,
                };
                assert_eq!(got.dtype(), expect_dtype, "{what}: {name}");
                let r = download(dev, got).rel_error(want_t);
                let tol = grad_tolerance(&self.spec, Some(input.role));
                eprintln!("{what}: ‖{name} − ref‖/‖ref‖ = {r:.2e} (< {tol})");
                if r.is_nan() || r >= tol {
                    bad.push(format!("{name} {r:.2e} (limit {tol})"));
                }
            }
            match (&bwd.dh0, &want.dh0) {
                (Some(got), Some(want_t)) => {
                    assert!(self.h0.is_some());
                    let r = download(dev, got).rel_error(want_t);
                    let tol = grad_tolerance(&self.spec, None);
                    eprintln!("{what}: ‖dh0 − ref‖/‖ref‖ = {r:.2e} (< {tol})");
                    if r.is_nan() || r >= tol {
                        bad.push(format!("dh0 {r:.2e} (limit {tol})"));
                    }
                    assert_eq!(
                        bwd.grad_named("h0").map(|b| b.raw() as *const _),
                        Some(got.raw() as *const _)
                    );
                }
                (None, None) => assert!(self.h0.is_none(), "{what}: dh0 missing"),
                (got, _) => panic!(
                    "{what}: dh0 {:?} but h0 {:?}",
                    got.is_some(),
                    self.h0.is_some()
                ),
            }
            let names: Vec<String> = bwd.named().into_iter().map(|(n, _)| n).collect();
            assert!(names.iter().all(|n| n.starts_with('d')), "{names:?}");
            assert!(bad.is_empty(), "{what}: {}", bad.join(", "));
        }

        /// Forward, then backward, through the untyped ops; both checked.
        fn forward_backward(&self, what: &str, dev: &Device, seed: u64) {
            let refs: Vec<(Role, &DeviceBuffer)> =
                self.buffers.iter().map(|(r, b)| (*r, b)).collect();
            let out = ops::forward(dev, &self.spec, &refs, &self.options())
                .unwrap_or_else(|e| panic!("{what}: forward: {e}"));
            assert_close(what, self.errors(dev, &out));
            let g = self.grads_in(dev, &out, seed);
            let bwd = ops::backward(dev, &out.saved, &g.grads(), &Default::default())
                .unwrap_or_else(|e| panic!("{what}: backward: {e}"));
            self.check_backward(what, dev, &g, &bwd);
        }
    }

    #[test]
    fn builtins_backward_matches_the_reference() {
        let Some(dev) = opencl("builtins_backward_matches_the_reference") else {
            return;
        };
        let mut seed = 10;
        for spec in [LinearAttn::spec(), Retention::spec(), SimpleGla::spec()] {
            for dtype in [ElementType::F32, ElementType::Bf16] {
                seed += 1;
                // Two batch rows, GVA (HV = 2 H), odd T over two chunks, h0 and dht.
                let p = Problem::new(
                    &dev,
                    spec,
                    Dims::new(2, 75, 2, 16, 8).with_value_heads(4),
                    dtype,
                    None,
                    true,
                    seed,
                );
                p.forward_backward(&format!("{} {dtype} GVA", spec.name), &dev, seed);
                // Varlen with an empty sequence, h0 per sequence and dht.
                let p = Problem::new(
                    &dev,
                    spec,
                    Dims::new(1, 90, 1, 8, 16),
                    dtype,
                    Some(vec![0, 0, 31, 90]),
                    true,
                    seed + 100,
                );
                p.forward_backward(&format!("{} {dtype} varlen", spec.name), &dev, seed);
            }
        }
        // No h0, no final state: no dh0, dht not given; chunk 32.
        let mut p = Problem::new(
            &dev,
            SimpleGla::spec(),
            Dims::new(1, 41, 1, 8, 8),
            ElementType::F32,
            None,
            false,
            30,
        );
        p.opts.output_final_state = false;
        let x = SimpleGlaInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = SimpleGla::forward(&dev, &x, &p.options().chunk(32)).expect("runs");
        let g = p.grads_in(&dev, &out, 30);
        assert!(g.dht_buf.is_none());
        let bwd = SimpleGla::backward(&dev, &out.saved, &g.grads()).expect("backward runs");
        assert!(bwd.dh0.is_none());
        p.check_backward("simple_gla chunk 32, no h0", &dev, &g, &bwd);
    }

    #[test]
    fn a_variant_declared_here_has_a_backward_that_matches_the_reference() {
        let Some(dev) = opencl("a_variant_declared_here_has_a_backward_that_matches_the_reference")
        else {
            return;
        };
        // Its own names and a fixed scale; bf16, GVA, h0 and dht, typed calls.
        let p = Problem::new(
            &dev,
            HalfScaleGate::spec(),
            Dims::new(2, 67, 1, 16, 16).with_value_heads(2),
            ElementType::Bf16,
            None,
            true,
            40,
        );
        let x = HalfScaleGateInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = HalfScaleGate::forward(&dev, &x, &p.options()).expect("forward runs");
        assert_eq!(out.saved.scale(), 0.5);
        assert_close("half_scale_gate", p.errors(&dev, &out));
        let g = p.grads_in(&dev, &out, 40);
        let bwd = HalfScaleGate::backward(&dev, &out.saved, &g.grads()).expect("backward runs");
        p.check_backward("half_scale_gate", &dev, &g, &bwd);
        let names: Vec<String> = bwd.named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["dr", "dkey", "dv", "dalpha", "dh0"]);

        // Varlen, f32, through backward_with and an explicit provider.
        let kernels = Kernels::builder()
            .no_disk_cache()
            .build()
            .expect("no sources to read");
        let p = Problem::new(
            &dev,
            HalfScaleGate::spec(),
            Dims::new(1, 50, 2, 8, 8),
            ElementType::F32,
            Some(vec![0, 20, 20, 50]),
            true,
            41,
        );
        let x = HalfScaleGateInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let out = HalfScaleGate::forward(&dev, &x, &p.options().kernels(&kernels)).expect("runs");
        let g = p.grads_in(&dev, &out, 41);
        let opts = BackwardOptions::new().kernels(&kernels);
        let bwd = HalfScaleGate::backward_with(&dev, &out.saved, &g.grads(), &opts)
            .expect("backward runs");
        assert!(
            matches!(
                bwd.kernel_source,
                KernelSource::Compiled { cached: None, .. }
            ),
            "{:?}",
            bwd.kernel_source
        );
        p.check_backward("half_scale_gate varlen", &dev, &g, &bwd);
        let again = HalfScaleGate::backward_with(&dev, &out.saved, &g.grads(), &opts)
            .expect("backward runs again");
        assert_eq!(again.kernel_source, KernelSource::Memory);

        // Lightning: the gradient of its decay-rate input `a` is not computed on devices.
        let p = Problem::new(
            &dev,
            Lightning::spec(),
            Dims::new(1, 33, 2, 8, 8),
            ElementType::F32,
            None,
            true,
            42,
        );
        p.forward_backward("lightning", &dev, 42);
    }

    // ---- saving the chunk states (split forwards) -----------------------------------------

    /// A provider whose JIT compiles forwards as `form` (`LINREC_FORWARD` is process-wide, so
    /// the tests say it per provider), without the disk cache.
    fn kernels_with(form: linrec_compiler::ForwardForm) -> Kernels {
        use linrec::runtime::kernels::JitCompiler;
        let options = linrec_compiler::CompileOptions::from_env()
            .with_forward(form)
            .with_amd_assembly(false);
        Kernels::builder()
            .no_disk_cache()
            .compiler(Arc::new(JitCompiler::with_options(options)))
            .build()
            .expect("no sources to read")
    }

    /// `‖a − b‖/‖b‖` over every gradient of two backwards of the same call, and dh0.
    fn disagreement(dev: &Device, a: &ops::Backward, b: &ops::Backward) -> Vec<(String, f64)> {
        let (a, b) = (a.named(), b.named());
        assert_eq!(
            a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            b.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        a.iter()
            .zip(&b)
            .map(|((name, x), (_, y))| {
                (name.clone(), download(dev, x).rel_error(&download(dev, y)))
            })
            .collect()
    }

    #[test]
    fn saved_chunk_states_give_the_gradients_of_recomputing_them() {
        let Some(dev) = opencl("saved_chunk_states_give_the_gradients_of_recomputing_them") else {
            return;
        };
        let split = kernels_with(linrec_compiler::ForwardForm::Split);
        let bopts = BackwardOptions::new().kernels(&split);
        let mut seed = 50;
        for spec in [SimpleGla::spec(), LinearAttn::spec()] {
            for dtype in [ElementType::F32, ElementType::Bf16] {
                seed += 1;
                // GVA (HV = 2 H), two batch rows, odd T over two chunks, h0 and dht; varlen
                // with an empty sequence, h0 per sequence and dht, chunk 16.
                let cases = [
                    (
                        "GVA",
                        Dims::new(2, 75, 2, 16, 8).with_value_heads(4),
                        None,
                        64,
                    ),
                    (
                        "varlen",
                        Dims::new(1, 90, 1, 8, 16),
                        Some(vec![0, 0, 31, 90]),
                        16,
                    ),
                ];
                for (case, dims, cu, chunk) in cases {
                    let what = format!("{} {dtype} {case}", spec.name);
                    let p = Problem::new(&dev, spec, dims, dtype, cu, true, seed);
                    let refs: Vec<(Role, &DeviceBuffer)> =
                        p.buffers.iter().map(|(r, b)| (*r, b)).collect();
                    let opts = p.options().kernels(&split).chunk(chunk);

                    // Saved: the split forward's chunk states go to the backward.
                    let kept = ops::forward(&dev, spec, &refs, &opts.save_chunk_states(true))
                        .unwrap_or_else(|e| panic!("{what}: forward: {e}"));
                    assert_close(&what, p.errors(&dev, &kept));
                    let states = kept.saved.chunk_states().expect("saved");
                    let n = p
                        .opts
                        .cu_seqlens
                        .as_ref()
                        .map_or(dims.batch, |c| c.len() - 1);
                    let slots = dims.batch * dims.seq_len / chunk + n;
                    assert_eq!(
                        states.shape(),
                        &[slots, dims.value_heads, dims.key_dim, dims.value_dim],
                        "{what}"
                    );
                    assert_eq!(states.dtype(), linrec::runtime::op::dtype(dtype), "{what}");
                    let g = p.grads_in(&dev, &kept, seed);
                    let saved = ops::backward(&dev, &kept.saved, &g.grads(), &bopts)
                        .unwrap_or_else(|e| panic!("{what}: backward: {e}"));
                    p.check_backward(&format!("{what} saved"), &dev, &g, &saved);

                    // Recomputed: the same forward without saving them.
                    let out = ops::forward(&dev, spec, &refs, &opts)
                        .unwrap_or_else(|e| panic!("{what}: forward: {e}"));
                    assert!(out.saved.chunk_states().is_none(), "{what}");
                    let recomputed = ops::backward(&dev, &out.saved, &g.grads(), &bopts)
                        .unwrap_or_else(|e| panic!("{what}: backward: {e}"));
                    p.check_backward(&format!("{what} recomputed"), &dev, &g, &recomputed);

                    // Both ways agree far more closely than with the reference.
                    let bound = if dtype == ElementType::F32 {
                        1e-5
                    } else {
                        1e-3
                    };
                    for (name, r) in disagreement(&dev, &saved, &recomputed) {
                        eprintln!("{what}: ‖{name} saved − recomputed‖/‖recomputed‖ = {r:.2e}");
                        assert!(
                            r < bound,
                            "{what}: {name} saved vs recomputed {r:.2e} (< {bound})"
                        );
                    }

                    // The backward does read them: zeroed, they give other gradients.
                    dev.fill(states, FillPattern::U32(0)).expect("zeros");
                    let wrong = ops::backward(&dev, &kept.saved, &g.grads(), &bopts)
                        .unwrap_or_else(|e| panic!("{what}: backward: {e}"));
                    let dq = disagreement(&dev, &wrong, &recomputed)
                        .into_iter()
                        .find(|(name, _)| name == "dq")
                        .map(|(_, r)| r);
                    eprintln!("{what}: dq from zeroed chunk states: {dq:?}");
                    assert!(
                        dq.is_some_and(|r| r > 0.01),
                        "{what}: dq from zeroed states {dq:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn saving_chunk_states_of_a_fused_forward_is_refused() {
        let Some(dev) = opencl("saving_chunk_states_of_a_fused_forward_is_refused") else {
            return;
        };
        let fused = kernels_with(linrec_compiler::ForwardForm::Fused);
        let p = Problem::new(
            &dev,
            SimpleGla::spec(),
            Dims::new(1, 20, 1, 8, 8),
            ElementType::F32,
            None,
            true,
            60,
        );
        let x = SimpleGlaInputs::try_from_fn(|_, role| p.buffer(role)).expect("all roles");
        let opts = p.options().kernels(&fused).save_chunk_states(true);
        let err = SimpleGla::forward(&dev, &x, &opts).expect_err("a fused forward");
        assert_eq!(err.argument(), Some("save_chunk_states"), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("option `save_chunk_states`") && msg.contains("LINREC_FORWARD=split"),
            "{msg}"
        );
        // Without the option the same kernels run, and the backward recomputes.
        let out = SimpleGla::forward(&dev, &x, &opts.save_chunk_states(false)).expect("runs");
        assert!(out.saved.chunk_states().is_none());
        let g = p.grads_in(&dev, &out, 60);
        let bwd = SimpleGla::backward_with(
            &dev,
            &out.saved,
            &g.grads(),
            &BackwardOptions::new().kernels(&fused),
        )
        .expect("backward runs");
        p.check_backward("simple_gla fused, recomputed", &dev, &g, &bwd);
    }
}
