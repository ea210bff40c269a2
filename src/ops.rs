//! Typed ops: run a variant's forward and its backward on a device.
//!
//! Every variant declared with [`recurrence!`](crate::recurrence) — the built-ins of
//! [`catalogue`](crate::catalogue) and your own — has
//!
//! ```text
//! Variant::forward(&device, &VariantInputs { q, k, v, ... }, &ForwardOptions) -> Result<Forward, linrec::Error>
//! Variant::backward(&device, &forward.saved, &Grads { d_o, dht }) -> Result<Backward, linrec::Error>
//! Variant::backward_with(&device, &forward.saved, &Grads { d_o, dht }, &BackwardOptions) -> ...
//! ```
//!
//! which are [`forward`] and [`backward`] with the variant's spec: one field per declared input,
//! so a missing or misspelt input does not compile. [`forward`] itself takes any spec and its
//! inputs by role ([`forward_named`]: by declared name).
//!
//! A forward call
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
//! A backward call takes that [`Saved`] and the gradients flowing in ([`Grads`]): `dO`, the
//! gradient of `o` (`[B, T, HV, V]`, the dtype of `q`), and — when the forward returned the
//! final state — `dht`, its gradient (`[N, HV, K, V]` f32; `None` is zeros). It checks both
//! against the saved call, gets the backward kernel of the forward's config (same provider
//! rules) and returns [`Backward`]: the gradient of every input by role — `dq`, `dk` in the
//! dtype of `q`, `[B, T, H, K]`; `dv` `[B, T, HV, V]`; `dg`, `dβ` f32 `[B, T, HV]` — and `dh0`
//! (f32 `[N, HV, K, V]`) when the forward read an initial state. The gradient of a constant
//! decay-rate input (a `log_rate` such as `a` in `S = exp(a) * S + ...`) is not computed on
//! devices: [`Backward::grad`] returns `None` for it (the f64 reference,
//! [`reference::backward`](crate::reference::backward), has it).
//!
//! The backward needs the state entering every chunk. By default it recomputes those chunk
//! states from the inputs, like fla, so the forward keeps nothing but references to its
//! inputs. With [`ForwardOptions::save_chunk_states`] the forward keeps them in [`Saved`]
//! instead (`(⌊B·T / C⌋ + N) · HV · K · V` elements of the dtype of `q`) and the backward
//! reads them, skipping its recompute phase — memory for time. Only split forward kernels
//! write them (`LINREC_FORWARD=split` when compiling or JIT-compiling), and fused ones with
//! a split-scan over T for the calls that take it; both ways give the same gradients up to
//! rounding.
//!
//! Launches are enqueued, not waited for; downloads wait.
//!
//! ```no_run
//! use linrec::catalogue::{SimpleGla, SimpleGlaInputs};
//! use linrec::ops::{ForwardOptions, Grads};
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
//! let ht = out.final_state.as_ref().expect("asked for"); // [N, HV, K, V] f32
//!
//! // The backward of L = Σ o ⊙ dO + Σ ht ⊙ dht.
//! let d_o = device.upload(&vec![1.0f32; b * t * h * v], &[b, t, h, v])?;
//! let dht = device.upload(&vec![0.5f32; b * h * k * v], ht.shape())?;
//! let grads = SimpleGla::backward(&device, &out.saved, &Grads::new(&d_o).dht(&dht))?;
//! let dq: Vec<f32> = device.download(grads.grad_named("q").expect("always"))?;
//! let dg: Vec<f32> = device.download(grads.grad_named("g").expect("a gate input"))?;
//! let dh0: Vec<f32> = device.download(grads.dh0.as_ref().expect("the forward read h0"))?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, OnceLock};

use linrec_runtime::kernels::{self, Direction, KernelRequest, KernelSource, Kernels};
use linrec_runtime::op::{self, BackwardArgs, ForwardArgs, role_name};
use linrec_runtime::{DType, Device, DeviceBuffer, RuntimeError};
use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, KernelParam};
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
    /// Keep the forward's chunk states (the state entering every chunk) in [`Saved`] for the
    /// backward to read, instead of recomputing them there. Default `false`: the backward
    /// recomputes them, like fla — the inputs are all a backward needs.
    ///
    /// Saving costs the memory of the chunk states from the forward until the `Saved` is
    /// dropped: `(⌊B·T / C⌋ + N) · HV · K · V` elements of the dtype of `q` (C the chunk, N
    /// the number of sequences) — for bf16 at B = 8, T = 2048, HV = 16, K = V = 128, C = 64,
    /// 264 slots of 16·128·128, 138 MB — and saves the backward the time of recomputing
    /// them. Only a *split* forward kernel writes them (kernels compiled with
    /// `LINREC_FORWARD=split`, by `linrec compile` or by the JIT, or a provider whose
    /// `JitCompiler` (feature `jit`) has
    /// `CompileOptions::forward = ForwardForm::Split`) — and a fused one with a split-scan
    /// over T (`KernelInfo::instead`) in the calls that take it (long sequences with few
    /// heads; the others keep none and the backward recomputes them); with a fused forward
    /// kernel that never writes them (the default) asking for them is an [`Error::Option`]
    /// naming `save_chunk_states`, before anything is launched.
    pub save_chunk_states: bool,
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

    /// Sets [`ForwardOptions::save_chunk_states`].
    pub fn save_chunk_states(mut self, on: bool) -> Self {
        self.save_chunk_states = on;
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
/// Opaque on purpose: [`backward`] (and `Variant::backward`) takes it whole, so what it holds
/// can change without breaking callers. By default the backward kernel recomputes what it
/// needs from the inputs — the chunk states included, like fla — so a `Saved` holds no
/// intermediate tensors, only references to the inputs: keep the inputs (and `h0`,
/// `cu_seqlens`) unchanged until the backward has run. With
/// [`ForwardOptions::save_chunk_states`] it also owns the forward's chunk states
/// ([`Saved::chunk_states`]), which the backward reads instead of recomputing them. The
/// accessors are for inspection and tests.
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
    chunk_states: Option<DeviceBuffer>,
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

    /// The forward's chunk states, kept for the backward when
    /// [`ForwardOptions::save_chunk_states`] asked for them and the forward's launches wrote
    /// them (`None` otherwise — a fused forward's call that did not take its split-scan writes
    /// none: the backward recomputes them): the state entering every chunk,
    /// `[⌊B·T / C⌋ + N, HV, K, V]` in the dtype of `q`; chunk `i` of sequence `n` (rows from
    /// `bos`) is slot `⌊bos / C⌋ + n + i`.
    pub fn chunk_states(&self) -> Option<&DeviceBuffer> {
        self.chunk_states.as_ref()
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
        .map_err(|e| kernel_error(spec, Direction::Forward, e))?;
    if options.save_chunk_states {
        check_save_chunk_states(spec, &loaded.kernel.info)?;
    }
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
        // Without the option they are dropped here (and freed once the launches are done);
        // with it, a fused forward's call that did not take its split-scan has none, and the
        // backward recomputes them.
        chunk_states: if options.save_chunk_states {
            out.chunk_states
        } else {
            None
        },
    };
    Ok(Forward {
        o: out.o,
        final_state: out.final_state,
        saved,
        kernel_source: loaded.source,
    })
}

/// Whether a forward kernel writes chunk states in some call (a [`KernelParam::ChunkStates`]
/// parameter in any of its launches, its [`KernelInfo::instead`] route's included): a split
/// forward does in every call, a fused one with a split-scan route in the calls that take
/// it ([`KernelInfo::takes_instead`]), a fused one without a route never.
pub fn writes_chunk_states(info: &KernelInfo) -> bool {
    std::iter::once(&info.params)
        .chain(info.then.iter().map(|l| &l.params))
        .chain(
            info.instead
                .iter()
                .flat_map(|r| r.launches.iter().map(|l| &l.params)),
        )
        .any(|params| params.contains(&KernelParam::ChunkStates))
}

/// [`ForwardOptions::save_chunk_states`] with the forward kernel `info` of `spec`: an
/// [`Error::Option`] naming `save_chunk_states` when the kernel writes none in any call
/// ([`writes_chunk_states`]), saying how to get split kernels. (`linrec run
/// --save-chunk-states` reports the same.)
#[doc(hidden)]
pub fn check_save_chunk_states(spec: &Spec, info: &KernelInfo) -> Result<(), Error> {
    if writes_chunk_states(info) {
        return Ok(());
    }
    Err(Error::Option {
        variant: spec.name.clone(),
        option: "save_chunk_states",
        detail: format!(
            "the forward kernel `{}` is one fused kernel, which keeps the chunk states to itself: \
             only a split forward writes them. Compile split forwards: `LINREC_FORWARD=split` when \
             compiling (`linrec compile`) or JIT-compiling (in Rust, a provider whose \
             `JitCompiler::with_options` has `ForwardForm::Split`); or leave `save_chunk_states` \
             off and the backward recomputes them",
            info.entry
        ),
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

/// The gradients flowing into a backward: `dO`, the gradient of the output, and `dht`, the
/// gradient of the final state — the backward computes the gradients of
/// `L = Σ o ⊙ dO + Σ ht ⊙ dht`.
///
/// ```
/// # fn demo(d_o: &linrec::runtime::DeviceBuffer, dht: &linrec::runtime::DeviceBuffer) {
/// use linrec::ops::Grads;
/// let a = Grads::new(d_o).dht(dht);
/// let b = Grads { d_o, dht: Some(dht) };
/// assert_eq!(format!("{a:?}"), format!("{b:?}"));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Grads<'a> {
    /// `dO [B, T, HV, V]`, in the dtype of the forward's `q` (the kernel's). The argument is
    /// called `do` in errors, as in `linrec run --inputs` files.
    pub d_o: &'a DeviceBuffer,
    /// `dht [N, HV, K, V]` f32, the gradient of the final state; only when the forward
    /// returned one ([`ForwardOptions::output_final_state`]). `None` is zeros.
    pub dht: Option<&'a DeviceBuffer>,
}

impl<'a> Grads<'a> {
    /// `dO` alone (`dht` zero).
    pub fn new(d_o: &'a DeviceBuffer) -> Self {
        Grads { d_o, dht: None }
    }

    /// Sets [`Grads::dht`].
    pub fn dht(mut self, dht: &'a DeviceBuffer) -> Self {
        self.dht = Some(dht);
        self
    }
}

/// The options of a backward call; [`BackwardOptions::default`] (or [`BackwardOptions::new`])
/// takes kernels from the process-wide provider. Everything else — dtype, sizes, chunk, scale,
/// `h0`, varlen — is the forward's, from [`Saved`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardOptions<'a> {
    /// Where kernels come from; `None` is [`default_kernels`].
    pub kernels: Option<&'a Kernels>,
}

impl<'a> BackwardOptions<'a> {
    /// The plain call (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`BackwardOptions::kernels`].
    pub fn kernels(mut self, kernels: &'a Kernels) -> Self {
        self.kernels = Some(kernels);
        self
    }
}

/// What a backward call returns: the gradient of every input the devices compute, and of
/// `h0`. The work is enqueued on the device; downloading a gradient waits for it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Backward {
    /// The gradients by role, in the spec's input order: `dq`, `dk` `[B, T, H, K]` in the dtype
    /// of `q`; `dv` `[B, T, HV, V]` in the same dtype; a scalar gate's or β's `[B, T, HV]` f32.
    /// A constant decay-rate input has none (not computed on devices).
    pub grads: Vec<(Role, DeviceBuffer)>,
    /// `dh0 [N, HV, K, V]` f32, when the forward read an initial state.
    pub dh0: Option<DeviceBuffer>,
    /// Where the backward kernel came from this time.
    pub kernel_source: KernelSource,
    spec: Arc<Spec>,
}

impl Backward {
    /// The gradient of the input of `role`; `None` when the spec has no such input or the
    /// devices do not compute its gradient (a constant decay-rate input).
    pub fn grad(&self, role: Role) -> Option<&DeviceBuffer> {
        self.grads.iter().find(|(r, _)| *r == role).map(|(_, b)| b)
    }

    /// The gradient of the input declared as `name` (`"q"`, `"r"`, `"beta"`, ...), or `dh0`
    /// for `"h0"`.
    pub fn grad_named(&self, name: &str) -> Option<&DeviceBuffer> {
        if name == "h0" {
            return self.dh0.as_ref();
        }
        let input = self.spec.inputs.iter().find(|i| i.name == name)?;
        self.grad(input.role)
    }

    /// Every gradient with its name — `d` + the declared input name (`dq`, `dr`, `dbeta`, ...),
    /// then `dh0` — in the spec's input order: how `linrec run --outputs` names them.
    pub fn named(&self) -> Vec<(String, &DeviceBuffer)> {
        self.spec
            .inputs
            .iter()
            .filter_map(|i| Some((format!("d{}", i.name), self.grad(i.role)?)))
            .chain(self.dh0.as_ref().map(|b| ("dh0".to_owned(), b)))
            .collect()
    }
}

/// Runs the backward of the forward call that returned `saved`, on `device` (the forward's),
/// with the gradients flowing in (`grads`). See the [module docs](self) for what it returns.
///
/// `grads.d_o` must be `[B, T, HV, V]` in the dtype of the forward's `q`; `grads.dht`, if
/// given, `[N, HV, K, V]` f32, and only when the forward returned the final state. Both must
/// be contiguous buffers of `device`. Every mismatch is an [`Error`] naming `do` or `dht`
/// before any kernel is fetched.
///
/// ```no_run
/// # fn demo(device: &linrec::runtime::Device, x: &linrec::runtime::DeviceBuffer,
/// #         d_o: &linrec::runtime::DeviceBuffer) -> Result<(), linrec::Error> {
/// use linrec::ops::{self, Grads};
/// use linrec::spec::Role;
/// let spec = linrec::catalogue::LinearAttn::spec();
/// let out = ops::forward(device, spec, &[(Role::Query, x), (Role::Key, x), (Role::Value, x)],
///     &Default::default())?;
/// let grads = ops::backward(device, &out.saved, &Grads::new(d_o), &Default::default())?;
/// let dv = grads.grad(Role::Value).expect("every spec has a value input");
/// # Ok(()) }
/// ```
pub fn backward(
    device: &Device,
    saved: &Saved,
    grads: &Grads<'_>,
    options: &BackwardOptions<'_>,
) -> Result<Backward, Error> {
    let spec = saved.spec();
    let arg_err = |argument: &str, detail: String| Error::Argument {
        variant: spec.name.clone(),
        argument: argument.to_owned(),
        detail,
    };
    let own = device.backend().device_id();
    if saved.device.backend().device_id() != own {
        return Err(arg_err(
            "device",
            format!(
                "the forward ran on {}, not on {}: run the backward on the forward's device (`saved.device()`)",
                saved.device.info().label(),
                device.info().label(),
            ),
        ));
    }
    let dims = &saved.dims;
    let want_dtype = op::dtype(saved.config.dtype);
    let want = dims.output_shape();
    let d_o = grads.d_o;
    if d_o.dtype() != want_dtype || d_o.shape() != want.as_slice() {
        return Err(arg_err(
            "do",
            format!(
                "expected {want_dtype} (the dtype of `{}`) [B, T, HV, V] = {want:?} (the shape of `o`), found {} {:?}",
                declared(spec, Role::Query),
                d_o.dtype(),
                d_o.shape()
            ),
        ));
    }
    check_buffer(device, d_o).map_err(|d| arg_err("do", d))?;
    if let Some(dht) = grads.dht {
        if !saved.config.final_state {
            return Err(arg_err(
                "dht",
                "given, but the forward returned no final state, so nothing depends on it: drop it, or run the forward with `output_final_state(true)`".into(),
            ));
        }
        let want = dims.state_shape(saved.sequences);
        if dht.dtype() != DType::F32 || dht.shape() != want.as_slice() {
            return Err(arg_err(
                "dht",
                format!(
                    "expected f32 [N, HV, K, V] = {want:?} (the shape of the final state, N = {} sequences), found {} {:?}",
                    saved.sequences,
                    dht.dtype(),
                    dht.shape()
                ),
            ));
        }
        check_buffer(device, dht).map_err(|d| arg_err("dht", d))?;
    }

    let provider = match options.kernels {
        Some(k) => k,
        None => default_kernels()?,
    };
    let loaded = provider
        .get(&KernelRequest::backward(spec, saved.target, saved.config))
        .map_err(|e| kernel_error(spec, Direction::Backward, e))?;
    let inputs: Vec<(Role, &DeviceBuffer)> = saved.inputs.iter().map(|(r, b)| (*r, b)).collect();
    let args = BackwardArgs {
        inputs: &inputs,
        initial_state: saved.initial_state.as_ref(),
        cu_seqlens: saved.cu_seqlens.as_ref(),
        scale: saved.scale,
        d_o,
        dht: grads.dht,
        // Saved by the forward (`save_chunk_states`), else recomputed by the kernel.
        chunk_states: saved.chunk_states.as_ref(),
    };
    let out =
        op::backward(device, &loaded.kernel.info, &loaded.kernel.binary, &args).map_err(|e| {
            Error::Runtime {
                variant: spec.name.clone(),
                source: declared_names(spec, e),
            }
        })?;
    // The spec's input order, whatever order the runtime returns them in.
    let mut grads = Vec::with_capacity(out.grads.len());
    for input in &spec.inputs {
        if let Some(b) = out.grad(input.role) {
            grads.push((input.role, b.clone()));
        }
    }
    Ok(Backward {
        grads,
        dh0: out.dh0,
        kernel_source: loaded.source,
        spec: Arc::clone(&saved.spec),
    })
}

/// [`backward`] for the generated `Variant::backward`: `saved` must come from a forward of
/// `spec` (the same math; the name may differ).
#[doc(hidden)]
pub fn backward_of(
    spec: &Spec,
    device: &Device,
    saved: &Saved,
    grads: &Grads<'_>,
    options: &BackwardOptions<'_>,
) -> Result<Backward, Error> {
    if saved.spec_hash != spec.hash() {
        return Err(Error::Argument {
            variant: spec.name.clone(),
            argument: "saved".into(),
            detail: format!(
                "comes from a forward of `{}`, not of `{}`: run the backward of the variant whose forward saved it (or `linrec::ops::backward`)",
                saved.spec.name, spec.name
            ),
        });
    }
    let mut out = backward(device, saved, grads, options)?;
    // The same math under other names: `grad_named` and `named` use this variant's.
    if out.spec.inputs != spec.inputs {
        out.spec = Arc::new(spec.clone());
    }
    Ok(out)
}

/// Whether `buf` belongs to `device` and is contiguous (what every kernel argument must be);
/// the error text says what to do.
fn check_buffer(device: &Device, buf: &DeviceBuffer) -> Result<(), String> {
    if buf.device_id() != device.backend().device_id() {
        return Err(format!(
            "belongs to another device, not to {}; allocate or upload it on the device that runs the op",
            device.info().label()
        ));
    }
    if !buf.is_contiguous() {
        return Err(format!(
            "strides {:?} are not contiguous (row-major {:?}); copy it into a contiguous buffer first",
            buf.strides(),
            linrec_runtime::contiguous_strides(buf.shape())
        ));
    }
    Ok(())
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
        if let Err(detail) = check_buffer(device, buf) {
            return Err(arg_err(name, detail));
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
fn kernel_error(spec: &Spec, direction: Direction, e: kernels::KernelError) -> Error {
    #[cfg(feature = "jit")]
    if let Err(plan @ linrec_compiler::plan::PlanError::NotYetSupported { .. }) =
        linrec_compiler::plan::forward(spec).and_then(|_| match direction {
            Direction::Forward => Ok(()),
            Direction::Backward => linrec_compiler::plan::backward(spec).map(|_| ()),
        })
    {
        return Error::NotYetSupported {
            variant: spec.name.clone(),
            detail: plan.to_string(),
        };
    }
    #[cfg(not(feature = "jit"))]
    let _ = (spec, direction);
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

// A forward's results go to other threads (a data loader, a backward on another thread), and
// so do a backward's.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Forward>();
    send_sync::<Saved>();
    send_sync::<ForwardOptions<'static>>();
    send_sync::<Backward>();
    send_sync::<Grads<'static>>();
    send_sync::<BackwardOptions<'static>>();
};
