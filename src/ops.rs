//! Typed ops: run a variant's forward on a device.
//!
//! Every variant declared with [`recurrence!`](crate::recurrence) — the built-ins of
//! [`catalogue`](crate::catalogue) and your own — has
//!
//! ```text
//! Variant::forward(&device, &VariantInputs { q, k, v, ... }, &ForwardOptions) -> Result<Forward, linrec::Error>
//! ```
//!
//! which is [`forward`] with the variant's spec: one field per declared input, so a missing or
//! misspelt input does not compile. [`forward`] itself takes any spec and its inputs by role
//! ([`forward_named`]: by declared name).
//!
//! A call
//! 1. checks every tensor against the spec and the options — dtype, rank, shape, strides,
//!    device, head dims, GVA heads, varlen offsets — and reports the first mismatch as an
//!    [`Error`] naming the argument, before any kernel is fetched or launched;
//! 2. derives the kernel's [`KernelConfig`]: the dtype of `q` (bf16, f16 or f32), `K` from `q`,
//!    `V` from `v`, the chunk from the options (64 by default), and whether it reads `h0`,
//!    writes the final state and reads `cu_seqlens`;
//! 3. gets the kernel for the device's target from a [`Kernels`] provider — the options' one,
//!    else a process-wide one ([`default_kernels`]): artifacts from `LINREC_ARTIFACTS`, the disk
//!    cache, and with the `jit` feature (default) the compiler in process;
//! 4. launches it through [`linrec_runtime::op::forward`] and returns [`Forward`]: the output,
//!    the final state if asked for, and [`Saved`], what a backward will need.
//!
//! The launch is enqueued, not waited for; downloads wait.
//!
//! ```no_run
//! use linrec::catalogue::{SimpleGla, SimpleGlaInputs};
//! use linrec::ops::ForwardOptions;
//! use linrec::runtime::{DType, Device, DeviceKind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::new(DeviceKind::Auto)?; // CUDA, HIP, Level Zero, else OpenCL
//! let (b, t, h, k, v) = (2, 100, 4, 64, 64);
//! let inputs = SimpleGlaInputs {
//!     q: device.upload(&vec![0.1f32; b * t * h * k], &[b, t, h, k])?,
//!     k: device.upload(&vec![0.1f32; b * t * h * k], &[b, t, h, k])?,
//!     v: device.upload(&vec![1.0f32; b * t * h * v], &[b, t, h, v])?,
//!     g: device.upload(&vec![-0.05f32; b * t * h], &[b, t, h])?,
//! };
//! let h0 = device.alloc(DType::F32, &[b, h, k, v])?;
//! let options = ForwardOptions::new().initial_state(&h0).output_final_state(true);
//! let out = SimpleGla::forward(&device, &inputs, &options)?;
//! let o: Vec<f32> = device.download(&out.o)?; // [B, T, HV, V]
//! let ht = out.final_state.expect("asked for"); // [N, HV, K, V] f32
//! # Ok(()) }
//! ```

use std::sync::{Arc, OnceLock};

use linrec_runtime::kernels::{self, KernelRequest, KernelSource, Kernels};
use linrec_runtime::op::{self, ForwardArgs, role_name};
use linrec_runtime::{DType, Device, DeviceBuffer, RuntimeError};
use linrec_spec::launch::{ElementType, KernelConfig};
use linrec_spec::{Dims, Role, Sequences, Spec, SpecHash};

use crate::error::Error;

/// The chunk length when [`ForwardOptions::chunk`] is `None` (the kernels' best on every
/// target so far).
pub const DEFAULT_CHUNK: usize = 64;

/// The chunk lengths the kernels are compiled for.
pub const CHUNKS: [usize; 3] = [16, 32, 64];

/// The largest head dim (K or V) the kernels take.
pub const MAX_HEAD_DIM: usize = 256;

/// The options of a forward call; [`ForwardOptions::default`] (or [`ForwardOptions::new`]) is
/// the plain call: the spec's scale, zero initial state, no final state, one sequence per
/// batch row, chunk [`DEFAULT_CHUNK`], the process-wide kernel provider.
///
/// Build it with the methods, or as a struct with `..Default::default()`:
///
/// ```
/// # fn demo(h0: &linrec::runtime::DeviceBuffer) {
/// use linrec::ops::ForwardOptions;
/// let a = ForwardOptions::new().initial_state(h0).output_final_state(true).chunk(32);
/// let b = ForwardOptions { initial_state: Some(h0), output_final_state: true, chunk: Some(32), ..Default::default() };
/// assert_eq!(format!("{a:?}"), format!("{b:?}"));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions<'a> {
    /// The output scale; `None` is the spec's (`K^-1/2` unless the spec fixes one). Positive
    /// and finite as an f32.
    pub scale: Option<f64>,
    /// The initial state `h0 [N, HV, K, V]` f32 (N = B, or the number of sequences with
    /// `cu_seqlens`); `None` starts from zeros.
    pub initial_state: Option<&'a DeviceBuffer>,
    /// Varlen: sequence offsets `[N+1]` i32, `0 = cu[0] ≤ cu[1] ≤ ... ≤ cu[N] = T`, with the
    /// sequences packed along T of a batch of one (B = 1). Chunks never straddle sequences.
    pub cu_seqlens: Option<&'a DeviceBuffer>,
    /// Skip the check of `cu_seqlens`' values. The check downloads the N+1 offsets, which
    /// waits for the work enqueued before; set this only when they are known to be valid —
    /// offsets out of order or past T make the kernel read and write out of bounds.
    pub trusted_cu_seqlens: bool,
    /// Return the final state `[N, HV, K, V]` f32 ([`Forward::final_state`]).
    pub output_final_state: bool,
    /// The chunk length, one of [`CHUNKS`]; `None` is [`DEFAULT_CHUNK`].
    pub chunk: Option<usize>,
    /// Where kernels come from; `None` is [`default_kernels`].
    pub kernels: Option<&'a Kernels>,
}

impl<'a> ForwardOptions<'a> {
    /// The plain call (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`ForwardOptions::scale`].
    pub fn scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets [`ForwardOptions::initial_state`].
    pub fn initial_state(mut self, h0: &'a DeviceBuffer) -> Self {
        self.initial_state = Some(h0);
        self
    }

    /// Sets [`ForwardOptions::cu_seqlens`].
    pub fn cu_seqlens(mut self, cu_seqlens: &'a DeviceBuffer) -> Self {
        self.cu_seqlens = Some(cu_seqlens);
        self
    }

    /// Sets [`ForwardOptions::trusted_cu_seqlens`].
    pub fn trusted_cu_seqlens(mut self, trusted: bool) -> Self {
        self.trusted_cu_seqlens = trusted;
        self
    }

    /// Sets [`ForwardOptions::output_final_state`].
    pub fn output_final_state(mut self, on: bool) -> Self {
        self.output_final_state = on;
        self
    }

    /// Sets [`ForwardOptions::chunk`].
    pub fn chunk(mut self, chunk: usize) -> Self {
        self.chunk = Some(chunk);
        self
    }

    /// Sets [`ForwardOptions::kernels`].
    pub fn kernels(mut self, kernels: &'a Kernels) -> Self {
        self.kernels = Some(kernels);
        self
    }
}

/// What a forward call returns. The work is enqueued on the device; downloading `o` waits for
/// it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Forward {
    /// The output `o [B, T, HV, V]`, in the dtype of `q`.
    pub o: DeviceBuffer,
    /// The final state `[N, HV, K, V]` f32, when [`ForwardOptions::output_final_state`] asked
    /// for it.
    pub final_state: Option<DeviceBuffer>,
    /// What a backward of this call will need.
    pub saved: Saved,
    /// Where the kernel came from this time (memory, artifacts, the disk cache, compiled).
    pub kernel_source: KernelSource,
}

/// The saved-for-backward context of a forward call: the inputs (views of the same device
/// memory, not copies), the initial state and offsets, the resolved scale, the spec and the
/// kernel's config and target, and the sizes.
///
/// Opaque on purpose: the backward (linrec's next op) takes it whole, so what it holds can
/// change without breaking callers. It recomputes what it needs from the inputs — chunkwise
/// backwards recompute the chunk states instead of storing them — so it holds no
/// intermediate tensors, only references to the inputs: keep the inputs unchanged until the
/// backward has run. The accessors are for inspection and tests.
#[derive(Debug, Clone)]
pub struct Saved {
    device: Device,
    spec: Arc<Spec>,
    spec_hash: SpecHash,
    inputs: Vec<(Role, DeviceBuffer)>,
    initial_state: Option<DeviceBuffer>,
    cu_seqlens: Option<DeviceBuffer>,
    scale: f32,
    target: &'static str,
    config: KernelConfig,
    dims: Dims,
    sequences: usize,
}

impl Saved {
    /// The device the forward ran on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The variant's spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The spec's canonical hash (what kernels are keyed by).
    pub fn spec_hash(&self) -> &SpecHash {
        &self.spec_hash
    }

    /// The input of `role`, as given to the forward.
    pub fn input(&self, role: Role) -> Option<&DeviceBuffer> {
        self.inputs.iter().find(|(r, _)| *r == role).map(|(_, b)| b)
    }

    /// The initial state, if the forward read one.
    pub fn initial_state(&self) -> Option<&DeviceBuffer> {
        self.initial_state.as_ref()
    }

    /// The varlen offsets, if the forward read them.
    pub fn cu_seqlens(&self) -> Option<&DeviceBuffer> {
        self.cu_seqlens.as_ref()
    }

    /// The scale the kernel applied.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The kernel target (`sm_90`, `spirv`, ...).
    pub fn target(&self) -> &'static str {
        self.target
    }

    /// The forward kernel's config (dtype, K, V, chunk, h0 / final state / varlen).
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// The sizes of the call.
    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// N, the number of sequences (B, or the number of `cu_seqlens` spans).
    pub fn sequences(&self) -> usize {
        self.sequences
    }
}

/// The process-wide kernel provider the ops use when [`ForwardOptions::kernels`] is `None`:
/// the artifact folder named by `LINREC_ARTIFACTS` (if set), the disk cache
/// (`LINREC_CACHE_DIR`, else the XDG cache folder) and, with the `jit` feature, the compiler in
/// process. Built on first use; an error (an unreadable artifact manifest) is returned, not
/// kept, so a fixed environment works on the next call.
pub fn default_kernels() -> Result<&'static Kernels, Error> {
    static DEFAULT: OnceLock<Kernels> = OnceLock::new();
    if let Some(k) = DEFAULT.get() {
        return Ok(k);
    }
    // Two threads may both build one; the first stored wins and the other is dropped before
    // it has loaded anything.
    let built = Kernels::builder().artifacts_from_env().build()?;
    Ok(DEFAULT.get_or_init(|| built))
}

/// Runs the forward of `spec` on `device` with `inputs` by role (each of the spec's inputs
/// exactly once). See the [module docs](self) for what it checks and does.
///
/// ```no_run
/// # fn demo(device: &linrec::runtime::Device, q: &linrec::runtime::DeviceBuffer,
/// #         k: &linrec::runtime::DeviceBuffer, v: &linrec::runtime::DeviceBuffer) -> Result<(), linrec::Error> {
/// use linrec::spec::Role;
/// let spec = linrec::catalogue::LinearAttn::spec();
/// let out = linrec::ops::forward(device, spec, &[(Role::Query, q), (Role::Key, k), (Role::Value, v)],
///     &Default::default())?;
/// # Ok(()) }
/// ```
pub fn forward(
    device: &Device,
    spec: &Spec,
    inputs: &[(Role, &DeviceBuffer)],
    options: &ForwardOptions<'_>,
) -> Result<Forward, Error> {
    spec.validate()?;
    let call = check(device, spec, inputs, options)?;
    let variant = || spec.name.clone();
    let target = kernels::device_target(device.info()).map_err(|detail| Error::Target {
        variant: variant(),
        detail,
    })?;
    let provider = match options.kernels {
        Some(k) => k,
        None => default_kernels()?,
    };
    let loaded = provider
        .get(&KernelRequest::forward(spec, target, call.config))
        .map_err(|e| kernel_error(spec, e))?;
    let args = ForwardArgs {
        inputs: &call.inputs,
        initial_state: options.initial_state,
        cu_seqlens: options.cu_seqlens,
        scale: call.scale,
    };
    let out =
        op::forward(device, &loaded.kernel.info, &loaded.kernel.binary, &args).map_err(|e| {
            Error::Runtime {
                variant: variant(),
                source: declared_names(spec, e),
            }
        })?;
    let saved = Saved {
        device: device.clone(),
        spec: Arc::new(spec.clone()),
        spec_hash: spec.hash(),
        inputs: call
            .inputs
            .iter()
            .map(|(r, b)| (*r, (*b).clone()))
            .collect(),
        initial_state: options.initial_state.cloned(),
        cu_seqlens: options.cu_seqlens.cloned(),
        scale: call.scale,
        target,
        config: call.config,
        dims: out.dims,
        sequences: out.sequences,
    };
    Ok(Forward {
        o: out.o,
        final_state: out.final_state,
        saved,
        kernel_source: loaded.source,
    })
}

/// [`forward`] with the inputs by their declared names (`("q", &q)`, `("beta", &beta)`, ...),
/// e.g. tensors read from a file keyed by name. An unknown name is an error listing the
/// spec's inputs.
pub fn forward_named(
    device: &Device,
    spec: &Spec,
    inputs: &[(&str, &DeviceBuffer)],
    options: &ForwardOptions<'_>,
) -> Result<Forward, Error> {
    let mut by_role = Vec::with_capacity(inputs.len());
    for (name, buf) in inputs {
        let input = spec
            .inputs
            .iter()
            .find(|i| i.name == *name)
            .ok_or_else(|| Error::Argument {
                variant: spec.name.clone(),
                argument: (*name).to_owned(),
                detail: format!("no such input; `{}` takes {}", spec.name, input_list(spec)),
            })?;
        by_role.push((input.role, *buf));
    }
    forward(device, spec, &by_role, options)
}

/// A checked call: the inputs in the spec's order, the kernel config and the scale.
struct Call<'a> {
    inputs: Vec<(Role, &'a DeviceBuffer)>,
    config: KernelConfig,
    scale: f32,
}

/// The declared name of the input of `role` (the runtime's conventional name when the spec has
/// none, which only a check that already failed would ask for).
fn declared(spec: &Spec, role: Role) -> String {
    spec.inputs
        .iter()
        .find(|i| i.role == role)
        .map_or_else(|| role_name(role).to_owned(), |i| i.name.clone())
}

fn input_list(spec: &Spec) -> String {
    spec.inputs
        .iter()
        .map(|i| format!("`{}`", i.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every check that needs no kernel: what the kernel would refuse, and what it could not
/// check itself (head-dim range, offsets).
fn check<'a>(
    device: &Device,
    spec: &Spec,
    inputs: &[(Role, &'a DeviceBuffer)],
    options: &ForwardOptions<'_>,
) -> Result<Call<'a>, Error> {
    let arg_err = |argument: String, detail: String| Error::Argument {
        variant: spec.name.clone(),
        argument,
        detail,
    };
    let opt_err = |option: &'static str, detail: String| Error::Option {
        variant: spec.name.clone(),
        option,
        detail,
    };

    // Exactly the spec's inputs, each once, put in the spec's order.
    for (i, (role, _)) in inputs.iter().enumerate() {
        if !spec.inputs.iter().any(|x| x.role == *role) {
            return Err(arg_err(
                role_name(*role).to_owned(),
                format!(
                    "`{}` has no {role} input; it takes {}",
                    spec.name,
                    input_list(spec)
                ),
            ));
        }
        if inputs[..i].iter().any(|(r, _)| r == role) {
            return Err(arg_err(
                declared(spec, *role),
                "given twice; give each input once".into(),
            ));
        }
    }
    let mut ordered = Vec::with_capacity(spec.inputs.len());
    for input in &spec.inputs {
        let buf = inputs
            .iter()
            .find(|(r, _)| *r == input.role)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                arg_err(
                    input.name.clone(),
                    format!(
                        "missing: `{}` takes {} (the {} input, {})",
                        spec.name,
                        input_list(spec),
                        input.role,
                        input.role.shape_text(&spec.decay)
                    ),
                )
            })?;
        ordered.push((input.role, buf));
    }
    let get = |role: Role| ordered.iter().find(|(r, _)| *r == role).map(|(_, b)| *b);

    // Every buffer: this device's, contiguous.
    let own = device.backend().device_id();
    let extra = [
        ("h0".to_owned(), options.initial_state),
        ("cu_seqlens".to_owned(), options.cu_seqlens),
    ];
    let all = ordered
        .iter()
        .map(|(r, b)| (declared(spec, *r), Some(*b)))
        .chain(extra);
    for (name, buf) in all {
        let Some(buf) = buf else { continue };
        if buf.device_id() != own {
            return Err(arg_err(
                name,
                format!(
                    "belongs to another device, not to {}; allocate or upload it on the device that runs the op",
                    device.info().label()
                ),
            ));
        }
        if !buf.is_contiguous() {
            return Err(arg_err(
                name,
                format!(
                    "strides {:?} are not contiguous (row-major {:?}); copy it into a contiguous buffer first",
                    buf.strides(),
                    linrec_runtime::contiguous_strides(buf.shape())
                ),
            ));
        }
    }

    // q fixes the dtype, B, T, H and K; v fixes HV and V.
    let (Some(q), Some(v)) = (get(Role::Query), get(Role::Value)) else {
        // validate() guarantees both; a spec that got here without them is a linrec bug.
        return Err(arg_err(
            "q".into(),
            "the spec declares no query or value input".into(),
        ));
    };
    let q_name = declared(spec, Role::Query);
    let v_name = declared(spec, Role::Value);
    let dtype = match q.dtype() {
        DType::BF16 => ElementType::Bf16,
        DType::F16 => ElementType::F16,
        DType::F32 => ElementType::F32,
        other => {
            return Err(arg_err(
                q_name,
                format!("dtype {other} is not allowed: use bf16, f16 or f32"),
            ));
        }
    };
    let rank4 = |name: &str, buf: &DeviceBuffer, text: &str| match *buf.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(arg_err(
            name.to_owned(),
            format!(
                "expected rank 4 {text}, found rank {} {:?}",
                buf.shape().len(),
                buf.shape()
            ),
        )),
    };
    let [batch, seq_len, heads, key_dim] = rank4(&q_name, q, "[B, T, H, K]")?;
    let [_, _, value_heads, value_dim] = rank4(&v_name, v, "[B, T, HV, V]")?;
    for (name, dim, what, value) in [
        (&q_name, "K", "key", key_dim),
        (&v_name, "V", "value", value_dim),
    ] {
        if !(1..=MAX_HEAD_DIM).contains(&value) {
            return Err(arg_err(
                name.clone(),
                format!(
                    "{what} head dim {dim} = {value} is not supported: linrec's kernels take 1..={MAX_HEAD_DIM}"
                ),
            ));
        }
    }
    for (name, dim, value) in [(&q_name, "B", batch), (&q_name, "H", heads)] {
        if value == 0 {
            return Err(arg_err(
                name.clone(),
                format!("{dim} = 0 in {:?}: it must be at least 1", q.shape()),
            ));
        }
    }
    if value_heads == 0 || value_heads % heads != 0 {
        return Err(arg_err(
            v_name,
            format!(
                "HV = {value_heads} (in {:?}) is not a non-zero multiple of H = {heads} (from `{q_name}`): values share query/key heads in equal groups (GVA), HV = H without GVA",
                v.shape()
            ),
        ));
    }
    let dims = Dims {
        batch,
        seq_len,
        heads,
        value_heads,
        key_dim,
        value_dim,
    };

    // Varlen: B = 1, offsets well formed.
    let sequences = match options.cu_seqlens {
        None => batch,
        Some(cu) => {
            if batch != 1 {
                return Err(arg_err(
                    "cu_seqlens".into(),
                    format!(
                        "given with B = {batch} (`{q_name}` {:?}): with cu_seqlens the sequences are packed along T into B = 1",
                        q.shape()
                    ),
                ));
            }
            let n = match (cu.dtype(), cu.shape()) {
                (DType::I32, &[n]) if n >= 2 => n - 1,
                _ => {
                    return Err(arg_err(
                        "cu_seqlens".into(),
                        format!(
                            "expected i32 [N+1] with N >= 1 sequences, found {} {:?}",
                            cu.dtype(),
                            cu.shape()
                        ),
                    ));
                }
            };
            if !options.trusted_cu_seqlens {
                let offsets: Vec<i64> = device
                    .download::<i32>(cu)
                    .map_err(|e| Error::Runtime {
                        variant: spec.name.clone(),
                        source: e,
                    })?
                    .into_iter()
                    .map(i64::from)
                    .collect();
                Sequences::new(&dims, Some(&offsets))
                    .map_err(|e| arg_err("cu_seqlens".into(), e.to_string()))?;
            }
            n
        }
    };

    // Every input's dtype and shape, as the spec's forms fix them.
    for (role, buf) in &ordered {
        let want_dtype = match role {
            Role::Query | Role::Key | Role::Value => q.dtype(),
            _ => DType::F32,
        };
        let want_shape = dims.input_shape(*role, &spec.decay);
        if buf.dtype() != want_dtype || buf.shape() != want_shape.as_slice() {
            let why = if matches!(role, Role::Key | Role::Value) && buf.dtype() != want_dtype {
                format!(" (the dtype of `{q_name}`)")
            } else {
                String::new()
            };
            return Err(arg_err(
                declared(spec, *role),
                format!(
                    "expected {want_dtype}{why} {} = {want_shape:?}, found {} {:?}",
                    role.shape_text(&spec.decay),
                    buf.dtype(),
                    buf.shape()
                ),
            ));
        }
    }
    if let Some(h0) = options.initial_state {
        let want = dims.state_shape(sequences);
        if h0.dtype() != DType::F32 || h0.shape() != want.as_slice() {
            return Err(arg_err(
                "h0".into(),
                format!(
                    "expected f32 [N, HV, K, V] = {want:?} (N = {sequences} sequences), found {} {:?}",
                    h0.dtype(),
                    h0.shape()
                ),
            ));
        }
    }

    let scale = options.scale.unwrap_or_else(|| spec.scale.resolve(key_dim));
    let scale32 = scale as f32;
    if !(scale32.is_finite() && scale32 > 0.0) {
        return Err(opt_err(
            "scale",
            format!("{scale} is not a positive number that is finite as an f32"),
        ));
    }
    let chunk = options.chunk.unwrap_or(DEFAULT_CHUNK);
    if !CHUNKS.contains(&chunk) {
        return Err(opt_err(
            "chunk",
            format!("{chunk} is not allowed: use one of {CHUNKS:?}"),
        ));
    }

    Ok(Call {
        inputs: ordered,
        config: KernelConfig {
            dtype,
            key_dim,
            value_dim,
            chunk,
            initial_state: options.initial_state.is_some(),
            final_state: options.output_final_state,
            varlen: options.cu_seqlens.is_some(),
        },
        scale: scale32,
    })
}

/// A kernel error, or — when the compiler is linked and says so — the form the compiler does
/// not derive yet (more useful than "no artifact holds it": none could).
fn kernel_error(spec: &Spec, e: kernels::KernelError) -> Error {
    #[cfg(feature = "jit")]
    if let Err(plan @ linrec_compiler::plan::PlanError::NotYetSupported { .. }) =
        linrec_compiler::plan::forward(spec)
    {
        return Error::NotYetSupported {
            variant: spec.name.clone(),
            detail: plan.to_string(),
        };
    }
    #[cfg(not(feature = "jit"))]
    let _ = spec;
    Error::from(e)
}

/// The runtime names inputs by role (`q`, `g`, ...); the user declared their own names
/// (`r`, `w`, ...).
fn declared_names(spec: &Spec, e: RuntimeError) -> RuntimeError {
    let rename = |arg: String| {
        spec.inputs
            .iter()
            .find(|i| role_name(i.role) == arg)
            .map_or(arg, |i| i.name.clone())
    };
    match e {
        RuntimeError::DType {
            arg,
            expected,
            found,
        } => RuntimeError::DType {
            arg: rename(arg),
            expected,
            found,
        },
        RuntimeError::Shape {
            arg,
            expected,
            found,
        } => RuntimeError::Shape {
            arg: rename(arg),
            expected,
            found,
        },
        RuntimeError::Strides {
            arg,
            expected,
            layout,
            found,
        } => RuntimeError::Strides {
            arg: rename(arg),
            expected,
            layout,
            found,
        },
        RuntimeError::DimConflict {
            arg,
            dim,
            found,
            bound,
            bound_by,
        } => RuntimeError::DimConflict {
            arg: rename(arg),
            dim,
            found,
            bound,
            bound_by: rename(bound_by),
        },
        RuntimeError::ArgKind {
            arg,
            expected,
            found,
        } => RuntimeError::ArgKind {
            arg: rename(arg),
            expected,
            found,
        },
        other => other,
    }
}

// A forward's results go to other threads (a data loader, a backward on another thread).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Forward>();
    send_sync::<Saved>();
    send_sync::<ForwardOptions<'static>>();
};
