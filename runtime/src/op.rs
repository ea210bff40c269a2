//! Running compiled linrec kernels: [`forward`] launches a forward kernel and [`backward`] a
//! backward one, each described by its [`KernelInfo`] (the launch metadata the compiler
//! writes) and its binary, without LLVM.
//!
//! A [`KernelInfo`] may be a launch sequence: its own entry point (or one of its
//! [`KernelInfo::narrower`] variants, [`KernelInfo::pick_first`]), then every
//! [`KernelInfo::then`] launch of the same binary, in order, on the device's one stream (a
//! split forward is a states kernel then a chunk-parallel output kernel). A call whose sizes
//! [`KernelInfo::takes_instead`] picks makes the launches of [`KernelInfo::instead`] instead,
//! in order (a forward's split-scan over T segments). The parameters of a call are the union
//! over the launches it makes: a buffer the runtime allocates is allocated once and passed to
//! every launch that names it (the chunk states the first launch writes are the ones the
//! second reads; the split-scan's segment states and decays likewise), and the scratch is one
//! f32 buffer of the largest launch's `scratch × workgroups` elements, shared since the
//! launches run one after the other. Each launch's grid is evaluated for the call; an empty
//! one (T = 0) reaches the device, whose backends launch nothing for it
//! ([`LaunchConfig::is_empty`]). Both sequences must read and write the same caller's tensors
//! (which ones a call takes does not depend on its sizes); only the runtime's own buffers
//! differ.
//!
//! Before anything reaches the device, every buffer is checked against the kernel's
//! parameters (dtype, shape, contiguity, device), and every launch's parameters against what
//! the runtime knows; a mismatch is an error naming the argument, and no launch of the
//! sequence is enqueued. What the runtime allocates — outputs, final state, gradients, `dh0`,
//! chunk states, segment states and decays, the backward's gradient accumulators, the
//! kernels' scratch memory — is filled with NaN first, so an element a kernel forgets to
//! write shows up in any comparison.
//!
//! A backward recomputes the chunk states by default; given the ones a forward wrote (a split
//! forward, or a call that took a fused forward's split-scan: [`ForwardOutputs::chunk_states`]
//! → [`BackwardArgs::chunk_states`]) it reads them instead.
//!
//! ```no_run
//! # fn main() -> linrec_runtime::Result<()> {
//! use linrec_runtime::{Device, DeviceKind, op};
//! use linrec_spec::{Role, launch::KernelInfo};
//! # let info: KernelInfo = panic!("the metadata of a compiled kernel");
//! # let binary: Vec<u8> = vec![];
//! let dev = Device::new(DeviceKind::Auto)?;
//! # let (q, k, v) = (dev.alloc(linrec_runtime::DType::BF16, &[1])?, dev.alloc(linrec_runtime::DType::BF16, &[1])?, dev.alloc(linrec_runtime::DType::BF16, &[1])?);
//! let out = op::forward(&dev, &info, &binary, &op::ForwardArgs {
//!     inputs: &[(Role::Query, &q), (Role::Key, &k), (Role::Value, &v)],
//!     initial_state: None,
//!     cu_seqlens: None,
//!     scale: 0.125,
//! })?;
//! let o = dev.download_bytes(&out.o)?;
//! # Ok(()) }
//! ```

use linrec_spec::launch::{
    ElementType, KernelInfo, KernelParam, Launch, SEGMENT_CHUNKS, SizeExpr, TENSOR_MAP_BOX_COLUMNS,
};
use linrec_spec::reference::constant_log_decay;
use linrec_spec::{ConstantRate, Dims, Role};

use crate::backend::{LaunchConfig, ModuleFormat, TensorMapSpec};
use crate::buffer::DeviceBuffer;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Result, RuntimeError};
use crate::signature::{Bindings, Dim, KernelArg, KernelSignature, ScalarType};

mod backward;

pub use backward::{
    BackwardArgs, BackwardOutputs, BackwardWorkspace, backward, backward_into, backward_workspace,
};

/// What a forward launch takes besides the kernel.
#[derive(Debug, Clone, Copy)]
pub struct ForwardArgs<'a> {
    /// The spec's input tensors by role: q, k `[B, T, H, K]`; v `[B, T, HV, V]` (all in the
    /// kernel's dtype); a scalar gate or β `[B, T, HV]` f32; a constant log-decay input
    /// `[HV]` f32. Exactly the roles the kernel takes.
    pub inputs: &'a [(Role, &'a DeviceBuffer)],
    /// The initial state `[N, HV, K, V]` f32, for kernels compiled with one.
    pub initial_state: Option<&'a DeviceBuffer>,
    /// Varlen offsets `[N+1]` i32 (B must be 1), for kernels compiled for varlen. They are
    /// read on the device, so they are not checked beyond their shape: the caller guarantees
    /// `0 = cu[0] ≤ cu[1] ≤ ... ≤ cu[N] = T`.
    pub cu_seqlens: Option<&'a DeviceBuffer>,
    /// The output scale (the spec's, e.g. `K^-1/2`, or a call's override): positive, finite.
    pub scale: f32,
}

/// What a forward launch returns (the work is enqueued; downloads wait for it).
#[derive(Debug, Clone)]
pub struct ForwardOutputs {
    /// `o [B, T, HV, V]` in the kernel's dtype.
    pub o: DeviceBuffer,
    /// The final state `[N, HV, K, V]` f32, for kernels compiled with one.
    pub final_state: Option<DeviceBuffer>,
    /// The state entering every chunk, when a launch the call made has a
    /// [`KernelParam::ChunkStates`] parameter (a split forward's states kernel writes them,
    /// its output kernel reads them; so do the states and output kernels of a
    /// [`KernelInfo::instead`] split-scan, when the call takes it; a fused forward's own
    /// launch has none): `[⌊B·T / C⌋ + N, HV, K, V]` in the kernel's dtype (bf16 and f16 are
    /// rounded copies of the f32 states the kernels carry), C = the config's chunk; chunk `i`
    /// of sequence `n` (rows from `bos`) is slot `⌊bos / C⌋ + n + i`. The backward of the
    /// same call may read them instead of recomputing them ([`BackwardArgs::chunk_states`]).
    pub chunk_states: Option<DeviceBuffer>,
    /// The sizes of the call, read off the inputs.
    pub dims: Dims,
    /// N, the number of sequences.
    pub sequences: usize,
}

/// The runtime dtype of a kernel element type.
pub fn dtype(e: ElementType) -> DType {
    match e {
        ElementType::Bf16 => DType::BF16,
        ElementType::F16 => DType::F16,
        ElementType::F32 => DType::F32,
    }
}

/// The conventional argument name of an input role (`q`, `k`, `v`, `g`, `beta`, `u`,
/// `decay_rate`), used in error messages.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Query => "q",
        Role::Key => "k",
        Role::Value => "v",
        Role::Gate => "g",
        Role::Beta => "beta",
        Role::Bonus => "u",
        Role::DecayRate => "decay_rate",
    }
}

/// The module format a target's binary is in, if this runtime can load it.
fn target_format(target: &str) -> Option<ModuleFormat> {
    if target == "spirv" {
        Some(ModuleFormat::SpirV)
    } else if target.starts_with("sm_") {
        Some(ModuleFormat::Ptx)
    } else {
        None
    }
}

/// The in-memory cache key of a kernel binary: its entry point, length and a stable content
/// hash.
///
/// Every launch computes it over the whole binary (a few hundred KB of PTX), so it reads
/// 8 bytes a step: byte by byte (FNV-1a) it took ~0.3 ms a call, which an H200 spent idle
/// between back-to-back forwards shorter than that (docs/performance.md).
pub fn module_key(info: &KernelInfo, binary: &[u8]) -> String {
    // A multiply-rotate over 64-bit words (FxHash's step), then the tail: stable across
    // processes and Rust versions, and plenty for a per-process cache.
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = binary.chunks_exact(8);
    for w in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        h = step(h, u64::from_le_bytes(bytes));
    }
    for &b in words.remainder() {
        h = step(h, u64::from(b));
    }
    format!(
        "linrec:{}:{}:{}:{h:016x}",
        info.target,
        info.entry,
        binary.len()
    )
}

/// One launch of a kernel's sequence: the [`KernelInfo`] itself, one of its
/// [`KernelInfo::narrower`] or [`KernelInfo::then`] launches, or one of its
/// [`KernelInfo::instead`] route's.
struct Step<'a> {
    entry: &'a str,
    params: &'a [KernelParam],
    grid: &'a [SizeExpr; 3],
    block: [u32; 3],
    shared_bytes: u32,
    scratch: u64,
}

/// Which launch sequence of a [`KernelInfo`] a call makes: decided from its sizes by
/// [`check_call`] ([`Checked::launches`]), so the same call always makes the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launches {
    /// `info`'s own sequence: its first launch — 0 for its own, `k` for
    /// `info.narrower[k − 1]` ([`KernelInfo::pick_first`]) — then every [`KernelInfo::then`]
    /// one.
    Own { first: usize },
    /// The launches of [`KernelInfo::instead`], in order ([`KernelInfo::takes_instead`]).
    Instead,
}

impl Launches {
    /// `info`'s own sequence with its own first launch: what the caller's buffers are checked
    /// against before the sizes (and so the sequence) are known. The route takes the same
    /// ones ([`check_route`]), and the narrower launches the first one's parameters.
    const OWN: Launches = Launches::Own { first: 0 };
}

/// The launches of `info` that `launches` makes, in order: its own (or the `first`-th narrower
/// one) then every [`KernelInfo::then`] one, or the [`KernelInfo::instead`] route's.
fn steps(info: &KernelInfo, launches: Launches) -> Vec<Step<'_>> {
    let first = match launches {
        Launches::Own { first } => first,
        Launches::Instead => {
            return info
                .instead
                .iter()
                .flat_map(|route| route.launches.iter().map(Step::of))
                .collect();
        }
    };
    let main = match first.checked_sub(1).and_then(|k| info.narrower.get(k)) {
        Some(l) => Step::of(l),
        None => Step {
            entry: &info.entry,
            params: &info.params,
            grid: &info.grid,
            block: info.block,
            shared_bytes: info.shared_bytes,
            scratch: info.scratch,
        },
    };
    std::iter::once(main)
        .chain(info.then.iter().map(Step::of))
        .collect()
}

impl<'a> Step<'a> {
    fn of(l: &'a Launch) -> Self {
        Step {
            entry: &l.entry,
            params: &l.params,
            grid: &l.grid,
            block: l.block,
            shared_bytes: l.shared_bytes,
            scratch: l.scratch,
        }
    }
}

/// The parameters of every launch of `info` that `launches` makes, each once, in order of
/// first appearance.
fn all_params(info: &KernelInfo, launches: Launches) -> Vec<&KernelParam> {
    let mut all: Vec<&KernelParam> = Vec::new();
    for p in steps(info, launches).into_iter().flat_map(|s| s.params) {
        if !all.contains(&p) {
            all.push(p);
        }
    }
    all
}

/// Whether some launch of `info` that `launches` makes takes `p`.
fn takes(info: &KernelInfo, launches: Launches, p: &KernelParam) -> bool {
    steps(info, launches).iter().any(|s| s.params.contains(p))
}

/// Whether the caller gives or gets the buffer of `p` (an input, `h0`, `cu_seqlens`, `dO`,
/// `dht`, `o`, `ht`, a gradient, `dh0`), as opposed to the runtime's own buffers and scalars.
fn callers(p: &KernelParam) -> bool {
    matches!(
        p,
        KernelParam::Input(_)
            | KernelParam::InitialState
            | KernelParam::CuSeqlens
            | KernelParam::GradOutput
            | KernelParam::GradFinalState
            | KernelParam::Output
            | KernelParam::FinalState
            | KernelParam::Grad(_)
            | KernelParam::GradInitialState
    )
}

/// Errors unless `info`'s [`KernelInfo::instead`] route, if it has one, has launches and reads
/// and writes the same caller's buffers as its own sequence: which tensors a call takes and
/// returns must not depend on its sizes.
fn check_route(info: &KernelInfo) -> Result<()> {
    let Some(route) = &info.instead else {
        return Ok(());
    };
    let recompile = "recompile the kernel with this version of linrec";
    if route.launches.is_empty() {
        return Err(launch_error(
            info,
            format!("its `instead` route has no launches: {recompile}"),
        ));
    }
    let of = |launches| -> Vec<&KernelParam> {
        all_params(info, launches)
            .into_iter()
            .filter(|p| callers(p))
            .collect()
    };
    let (own, instead) = (of(Launches::OWN), of(Launches::Instead));
    // The first parameter of `a` that `b` lacks.
    let lacks = |a: &[&KernelParam], b: &[&KernelParam]| {
        a.iter().find(|p| !b.contains(p)).map(|p| format!("{p:?}"))
    };
    let differs = match (lacks(&own, &instead), lacks(&instead, &own)) {
        (Some(p), _) => format!("does not take {p}, which its own launches do"),
        (None, Some(p)) => format!("takes {p}, which its own launches do not"),
        (None, None) => return Ok(()),
    };
    Err(launch_error(
        info,
        format!(
            "its `instead` route {differs}: both must read and write the same tensors; \
             {recompile}"
        ),
    ))
}

/// The shape of the chunk states of a call: `⌊B·T / C⌋ + N` slots of `[HV, K, V]`
/// ([`KernelParam::ChunkStates`]).
fn chunk_states_shape(info: &KernelInfo, dims: &Dims, n: usize) -> Result<Vec<usize>> {
    let slots = dims
        .batch
        .checked_mul(dims.seq_len)
        .and_then(|bt| bt.checked_div(info.config.chunk))
        .and_then(|c| c.checked_add(n))
        .ok_or_else(|| launch_error(info, "the chunk states' size overflows".into()))?;
    Ok(vec![slots, dims.value_heads, dims.key_dim, dims.value_dim])
}

/// The slots of the segment states and decays of a call: `⌊B·T / (SEGMENT_CHUNKS·C)⌋ + N`
/// ([`KernelParam::SegmentStates`]).
fn segment_slots(info: &KernelInfo, dims: &Dims, n: usize) -> Result<usize> {
    SEGMENT_CHUNKS
        .checked_mul(info.config.chunk)
        .and_then(|segment| dims.batch.checked_mul(dims.seq_len)?.checked_div(segment))
        .and_then(|s| s.checked_add(n))
        .ok_or_else(|| launch_error(info, "the segment states' size overflows".into()))
}

/// The shape of the segment states of a call, `[slots, HV, K, V]` f32
/// ([`KernelParam::SegmentStates`]).
fn segment_states_shape(info: &KernelInfo, dims: &Dims, n: usize) -> Result<Vec<usize>> {
    let slots = segment_slots(info, dims, n)?;
    Ok(vec![slots, dims.value_heads, dims.key_dim, dims.value_dim])
}

/// The shape of the segment decays of a call, `[slots, HV]` f32
/// ([`KernelParam::SegmentDecays`]).
fn segment_decays_shape(info: &KernelInfo, dims: &Dims, n: usize) -> Result<Vec<usize>> {
    Ok(vec![segment_slots(info, dims, n)?, dims.value_heads])
}

/// Errors unless `states` can stand for the chunk states a backward kernel of `info` would
/// recompute for a call of `dims` with `n` sequences: the launches the call makes take them
/// ([`KernelParam::ChunkStates`] and [`KernelParam::ChunkStatesGiven`]), and they are a
/// contiguous buffer of this device in the kernel's dtype with exactly the shape the runtime
/// would allocate ([`chunk_states_shape`]).
fn check_chunk_states(
    device: &Device,
    info: &KernelInfo,
    launches: Launches,
    states: &DeviceBuffer,
    dims: &Dims,
    n: usize,
) -> Result<()> {
    const ARG: &str = "chunk_states";
    let kname = info.entry.as_str();
    // A route that needs the caller's chunk states only reads them; the other launches are
    // told by `chunk_states_given` not to recompute them.
    let reads_only = launches == Launches::Instead
        && info.instead.as_ref().is_some_and(|r| r.needs_chunk_states);
    if !takes(info, launches, &KernelParam::ChunkStates)
        || !(reads_only || takes(info, launches, &KernelParam::ChunkStatesGiven))
    {
        return Err(RuntimeError::ArgKind {
            arg: ARG.into(),
            expected: format!(
                "none: kernel `{kname}` cannot read given chunk states (it has no chunk_states_given parameter); \
                 leave them out, or recompile the kernel with this version of linrec"
            ),
            found: "a buffer".into(),
        });
    }
    let want_dtype = dtype(info.config.dtype);
    if states.dtype() != want_dtype {
        return Err(RuntimeError::DType {
            arg: ARG.into(),
            expected: want_dtype,
            found: states.dtype(),
        });
    }
    let want = chunk_states_shape(info, dims, n)?;
    if states.shape() != want.as_slice() {
        return Err(RuntimeError::Shape {
            arg: ARG.into(),
            expected: format!(
                "[⌊B·T / C⌋ + N, HV, K, V] = {want:?} (C = {}, N = {n} sequences): the chunk \
                 states a forward of the same call returns (`ForwardOutputs::chunk_states`)",
                info.config.chunk
            ),
            found: states.shape().to_vec(),
        });
    }
    if states.device_id() != device.backend().device_id() {
        return Err(RuntimeError::WrongDevice {
            what: format!("argument `{ARG}`"),
            expected: device.info().label(),
            found: "another device".into(),
        });
    }
    if !states.is_contiguous() {
        return Err(RuntimeError::Strides {
            arg: ARG.into(),
            expected: crate::buffer::contiguous_strides(states.shape()),
            layout: "contiguous, row-major",
            found: states.strides().to_vec(),
        });
    }
    Ok(())
}

/// The shape and dtype a caller-provided buffer parameter must have (`None` for what the
/// runtime allocates itself and for scalars).
fn expected(info: &KernelInfo, p: &KernelParam) -> Option<(String, DType, Vec<Dim>)> {
    let c = &info.config;
    let (k, v) = (Dim::Fixed(c.key_dim), Dim::Fixed(c.value_dim));
    let s = Dim::sym;
    Some(match p {
        KernelParam::Input(role) => {
            let (dt, shape) = input_layout(info, *role);
            (role_name(*role).to_owned(), dt, shape)
        }
        KernelParam::InitialState => ("h0".into(), DType::F32, vec![s("N"), s("HV"), k, v]),
        KernelParam::CuSeqlens => ("cu_seqlens".into(), DType::I32, vec![Dim::Any]),
        KernelParam::GradOutput => (
            "do".into(),
            dtype(c.dtype),
            vec![s("B"), s("T"), s("HV"), v],
        ),
        KernelParam::GradFinalState => ("dht".into(), DType::F32, vec![s("N"), s("HV"), k, v]),
        _ => return None,
    })
}

/// The dtype and shape of the input of `role` (and of its gradient): q, k `[B, T, H, K]`,
/// v `[B, T, HV, V]` in the kernel's dtype; g, β `[B, T, HV]`, u `[HV, K]`, a log-decay
/// `[HV]` f32.
fn input_layout(info: &KernelInfo, role: Role) -> (DType, Vec<Dim>) {
    let c = &info.config;
    let (k, v) = (Dim::Fixed(c.key_dim), Dim::Fixed(c.value_dim));
    let s = Dim::sym;
    match role {
        Role::Query | Role::Key => (dtype(c.dtype), vec![s("B"), s("T"), s("H"), k]),
        Role::Value => (dtype(c.dtype), vec![s("B"), s("T"), s("HV"), v]),
        Role::Gate | Role::Beta => (DType::F32, vec![s("B"), s("T"), s("HV")]),
        Role::Bonus => (DType::F32, vec![s("HV"), k]),
        Role::DecayRate => (DType::F32, vec![s("HV")]),
    }
}

/// A shape with named dims made concrete for `dims` and `n` sequences (`None` for [`Dim::Any`]
/// or an unknown name).
fn concrete(shape: &[Dim], dims: &Dims, n: usize) -> Option<Vec<usize>> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(x) => Some(*x),
            Dim::Sym(name) => match name.as_str() {
                "B" => Some(dims.batch),
                "T" => Some(dims.seq_len),
                "H" => Some(dims.heads),
                "HV" => Some(dims.value_heads),
                "N" => Some(n),
                _ => None,
            },
            Dim::Any => None,
        })
        .collect()
}

/// The buffers and scale a caller gives a launch, whatever its direction.
#[derive(Clone, Copy)]
struct Given<'a> {
    inputs: &'a [(Role, &'a DeviceBuffer)],
    initial_state: Option<&'a DeviceBuffer>,
    cu_seqlens: Option<&'a DeviceBuffer>,
    scale: f32,
    /// `dO`, backward only.
    d_o: Option<&'a DeviceBuffer>,
    /// `dht`, backward only (optional even where the kernel takes it).
    dht: Option<&'a DeviceBuffer>,
    /// The forward's chunk states, backward only: passed as [`KernelParam::ChunkStates`] with
    /// [`KernelParam::ChunkStatesGiven`] = 1 instead of a buffer the runtime allocates.
    chunk_states: Option<&'a DeviceBuffer>,
}

impl<'a> Given<'a> {
    /// The caller's buffer for a parameter [`expected`] describes, if given.
    fn buffer(&self, p: &KernelParam) -> Option<&'a DeviceBuffer> {
        match p {
            KernelParam::Input(role) => self.inputs.iter().find(|(r, _)| r == role).map(|x| x.1),
            KernelParam::InitialState => self.initial_state,
            KernelParam::CuSeqlens => self.cu_seqlens,
            KernelParam::GradOutput => self.d_o,
            KernelParam::GradFinalState => self.dht,
            _ => None,
        }
    }
}

/// A call that passed every check: its sizes, the launches it makes, the grid of each (in
/// [`steps`] order) and the shared scratch size.
struct Checked {
    dims: Dims,
    sequences: usize,
    /// The launch sequence made: `info`'s own (with the first launch
    /// [`KernelInfo::pick_first`] picks) or its route ([`KernelInfo::takes_instead`]).
    launches: Launches,
    grids: Vec<[u32; 3]>,
    scratch_len: usize,
}

fn launch_error(info: &KernelInfo, detail: String) -> RuntimeError {
    step_error(&info.entry, detail)
}

fn step_error(entry: &str, detail: String) -> RuntimeError {
    RuntimeError::Launch {
        kernel: entry.to_owned(),
        detail,
    }
}

/// Everything checked before a launch allocates anything: the direction, the module format,
/// the scale, the route against the kernel's own launches, which buffers are given, their
/// dtypes, shapes, layouts and devices, the sizes they imply, which launches the call makes,
/// their grids and the scratch size (the largest launch's).
fn check_call(
    device: &Device,
    info: &KernelInfo,
    direction: &str,
    given: &Given<'_>,
) -> Result<Checked> {
    let kname = info.entry.as_str();
    if info.direction != direction {
        return Err(launch_error(
            info,
            format!("this is a {} kernel, not a {direction} one", info.direction),
        ));
    }
    match target_format(&info.target) {
        Some(f) if f == device.module_format() => {}
        Some(f) => {
            return Err(RuntimeError::InvalidModule {
                expected: device.module_format(),
                detail: format!(
                    "kernel `{kname}` was compiled for {} ({f}); compile it for this device's format",
                    info.target
                ),
            });
        }
        None => {
            return Err(RuntimeError::InvalidModule {
                expected: device.module_format(),
                detail: format!(
                    "kernel `{kname}` was compiled for {}, which this runtime cannot load yet",
                    info.target
                ),
            });
        }
    }
    if !(given.scale.is_finite() && given.scale > 0.0) {
        return Err(RuntimeError::ArgKind {
            arg: "scale".into(),
            expected: "a positive, finite f32".into(),
            found: given.scale.to_string(),
        });
    }
    check_route(info)?;

    // Every given input must be a parameter (of some launch), and every input parameter must
    // be given. Either sequence takes the same ones (`check_route`).
    let takes = |p: &KernelParam| takes(info, Launches::OWN, p);
    for (role, _) in given.inputs {
        if !takes(&KernelParam::Input(*role)) {
            return Err(RuntimeError::ArgKind {
                arg: role_name(*role).into(),
                expected: format!("no such input: kernel `{kname}` does not take a {role}"),
                found: "a buffer".into(),
            });
        }
    }
    let optional = |given: Option<&DeviceBuffer>, param: KernelParam, name: &str, required| {
        let wanted = takes(&param);
        match (wanted, given.is_some()) {
            (true, false) if required => Err(RuntimeError::ArgKind {
                arg: name.into(),
                expected: format!("a buffer: kernel `{kname}` was compiled to read {name}"),
                found: "none".into(),
            }),
            (false, true) => Err(RuntimeError::ArgKind {
                arg: name.into(),
                expected: format!("none: kernel `{kname}` was compiled without {name}"),
                found: "a buffer".into(),
            }),
            _ => Ok(()),
        }
    };
    optional(given.initial_state, KernelParam::InitialState, "h0", true)?;
    optional(given.cu_seqlens, KernelParam::CuSeqlens, "cu_seqlens", true)?;
    optional(given.d_o, KernelParam::GradOutput, "do", true)?;
    // Without dht the runtime passes zeros.
    optional(given.dht, KernelParam::GradFinalState, "dht", false)?;

    // Check what the caller gave (shapes with named dims) and read the sizes off it.
    let mut given_sig = KernelSignature::new(kname);
    let mut buffers: Vec<KernelArg<'_>> = Vec::new();
    for p in all_params(info, Launches::OWN) {
        let Some((name, dt, shape)) = expected(info, p) else {
            continue;
        };
        let buf = match (given.buffer(p), p) {
            (Some(buf), _) => buf,
            (None, KernelParam::GradFinalState) => continue,
            (None, KernelParam::Input(role)) => {
                return Err(RuntimeError::ArgKind {
                    arg: name,
                    expected: format!("a {dt} buffer: kernel `{kname}` reads the {role} input"),
                    found: "none".into(),
                });
            }
            (None, _) => return Err(missing(&name)),
        };
        given_sig = given_sig.buffer(name, dt, shape);
        buffers.push(buf.into());
    }
    let bindings = given_sig.check(&buffers)?;
    let (dims, sequences) = sizes(info, &bindings, given)?;

    // Which launches: from the sizes alone, so a workspace fits the same call again.
    let overflows = || launch_error(info, "a grid overflows".into());
    // A route that reads the caller's chunk states is taken only with them.
    let route_fits = info
        .instead
        .as_ref()
        .is_some_and(|r| !r.needs_chunk_states || given.chunk_states.is_some());
    let launches = if route_fits && info.takes_instead(&dims, sequences).ok_or_else(overflows)? {
        Launches::Instead
    } else {
        Launches::Own {
            first: info.pick_first(&dims, sequences).ok_or_else(overflows)?,
        }
    };
    if let Some(states) = given.chunk_states {
        check_chunk_states(device, info, launches, states, &dims, sequences)?;
    }

    // Every launch's grid; one scratch buffer serves them all, one after the other.
    let steps = steps(info, launches);
    let mut grids = Vec::with_capacity(steps.len());
    let mut scratch_len = 0usize;
    for step in steps {
        let mut grid = [0u32; 3];
        for (g, e) in grid.iter_mut().zip(step.grid) {
            let n = e
                .eval(&dims, sequences)
                .ok_or_else(|| step_error(step.entry, format!("the grid {e:?} overflows")))?;
            *g = u32::try_from(n)
                .map_err(|_| step_error(step.entry, format!("{n} workgroups do not fit u32")))?;
        }
        let workgroups: u64 = grid.iter().map(|&g| u64::from(g)).product();
        let len = workgroups
            .checked_mul(step.scratch)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| step_error(step.entry, "the scratch buffer's size overflows".into()))?;
        scratch_len = scratch_len.max(len);
        grids.push(grid);
    }
    Ok(Checked {
        dims,
        sequences,
        launches,
        grids,
        scratch_len,
    })
}

/// Errors unless a workspace made for `dims` and `sequences` fits the checked call.
fn check_reuse(info: &KernelInfo, checked: &Checked, dims: &Dims, sequences: usize) -> Result<()> {
    if *dims != checked.dims || sequences != checked.sequences {
        return Err(launch_error(
            info,
            format!(
                "the workspace was made for {dims:?} with {sequences} sequences, not {:?} with {}",
                checked.dims, checked.sequences
            ),
        ));
    }
    Ok(())
}

/// The runtime-made buffers either direction may have: the scratch, the RetNet decay rates,
/// the chunk states and a split-scan's segment states and decays — each only when a launch
/// the call makes ([`Checked::launches`]) takes it.
#[derive(Debug, Clone)]
struct Common {
    scratch: DeviceBuffer,
    decay_rates: Option<DeviceBuffer>,
    /// For calls whose launches take a [`KernelParam::ChunkStates`] parameter, unless the
    /// caller gave the chunk states when these buffers were made (`states_given`).
    chunk_states: Option<DeviceBuffer>,
    /// The caller gave the chunk states when these buffers were made, so there are none of
    /// the runtime's: every launch into them needs the caller's.
    states_given: bool,
    /// [`KernelParam::SegmentStates`] `[slots, HV, K, V]` f32, for calls whose launches take
    /// it (a forward's [`KernelInfo::instead`] split-scan).
    segment_states: Option<DeviceBuffer>,
    /// [`KernelParam::SegmentDecays`] `[slots, HV]` f32, likewise.
    segment_decays: Option<DeviceBuffer>,
}

impl Common {
    /// Allocates the scratch, the segment states and decays and, unless the caller gives them
    /// (`states_given`), the chunk states (NaN-poisoned), and uploads the decay rates: those
    /// that the launches of the checked call take.
    fn new(
        device: &Device,
        info: &KernelInfo,
        checked: &Checked,
        states_given: bool,
    ) -> Result<Common> {
        let takes = |p: KernelParam| takes(info, checked.launches, &p);
        let (dims, n) = (&checked.dims, checked.sequences);
        let scratch = device.alloc_poisoned(DType::F32, &[checked.scratch_len])?;
        let chunk_states = if takes(KernelParam::ChunkStates) && !states_given {
            let shape = chunk_states_shape(info, dims, n)?;
            // In the kernel's dtype: bf16 and f16 kernels keep rounded copies.
            Some(device.alloc_poisoned(dtype(info.config.dtype), &shape)?)
        } else {
            None
        };
        let segment_states = if takes(KernelParam::SegmentStates) {
            let shape = segment_states_shape(info, dims, n)?;
            Some(device.alloc_poisoned(DType::F32, &shape)?)
        } else {
            None
        };
        let segment_decays = if takes(KernelParam::SegmentDecays) {
            let shape = segment_decays_shape(info, dims, n)?;
            Some(device.alloc_poisoned(DType::F32, &shape)?)
        } else {
            None
        };
        let decay_rates = if takes(KernelParam::DecayRates) {
            // KernelParam::DecayRates is RetNet's schedule γ_h = 1 − 2^(−5−h), in log space.
            let hv = dims.value_heads;
            let rates: Vec<f32> = (0..hv)
                .map(|h| constant_log_decay(ConstantRate::Retnet, None, h) as f32)
                .collect();
            Some(device.upload(&rates, &[hv])?)
        } else {
            None
        };
        Ok(Common {
            scratch,
            decay_rates,
            chunk_states,
            states_given,
            segment_states,
            segment_decays,
        })
    }

    /// Errors unless these buffers (of a workspace) fit the checked call of `info`, whose
    /// caller gives the chunk states or not (`states_given`).
    fn check(&self, info: &KernelInfo, checked: &Checked, states_given: bool) -> Result<()> {
        if self.scratch.shape() != [checked.scratch_len] {
            return Err(launch_error(
                info,
                "the workspace's scratch has another size".into(),
            ));
        }
        let takes = |p: KernelParam| takes(info, checked.launches, &p);
        let (dims, n) = (&checked.dims, checked.sequences);
        let wants_states = takes(KernelParam::ChunkStates);
        let chunk_states_fit = match &self.chunk_states {
            Some(states) => {
                let shape = chunk_states_shape(info, dims, n)?;
                wants_states
                    && states.shape() == shape.as_slice()
                    && states.dtype() == dtype(info.config.dtype)
            }
            None if wants_states && self.states_given && !states_given => {
                return Err(RuntimeError::ArgKind {
                    arg: "chunk_states".into(),
                    expected: "the forward's chunk states: the workspace was made with the \
                               caller's chunk states and holds none of its own to recompute \
                               them into; pass them again, or make the workspace without them"
                        .into(),
                    found: "none".into(),
                });
            }
            None => !wants_states || states_given,
        };
        // An f32 buffer of exactly `shape` where the launches take `p`, none where they do not.
        let fits = |buf: &Option<DeviceBuffer>, p: KernelParam, shape: Vec<usize>| match buf {
            Some(b) => takes(p) && b.dtype() == DType::F32 && b.shape() == shape.as_slice(),
            None => !takes(p),
        };
        let segments_fit = fits(
            &self.segment_states,
            KernelParam::SegmentStates,
            segment_states_shape(info, dims, n)?,
        ) && fits(
            &self.segment_decays,
            KernelParam::SegmentDecays,
            segment_decays_shape(info, dims, n)?,
        );
        if self.decay_rates.is_some() != takes(KernelParam::DecayRates)
            || !chunk_states_fit
            || !segments_fit
        {
            return Err(launch_error(
                info,
                "the workspace was made for a kernel with other parameters".into(),
            ));
        }
        Ok(())
    }

    fn buffer(&self, p: &KernelParam) -> Option<(String, &DeviceBuffer)> {
        let (name, buf) = match p {
            KernelParam::Scratch => ("scratch", &self.scratch),
            KernelParam::DecayRates => ("decay_rates", self.decay_rates.as_ref()?),
            KernelParam::ChunkStates => ("chunk_states", self.chunk_states.as_ref()?),
            KernelParam::SegmentStates => ("segment_states", self.segment_states.as_ref()?),
            KernelParam::SegmentDecays => ("segment_decays", self.segment_decays.as_ref()?),
            _ => return None,
        };
        Some((name.into(), buf))
    }
}

/// Makes the launches of the checked call ([`Checked::launches`]: `info`'s first launch or a
/// narrower one, then every [`KernelInfo::then`] launch; or the [`KernelInfo::instead`]
/// route's), in order, each with its parameters in ABI order: the caller's buffers from
/// `given`, the scalars, and what `made` returns for the rest (the runtime's buffers, by
/// parameter, the same for every launch). The arguments of every launch are assembled and
/// checked, and every entry point looked up, before the first launch is enqueued: a parameter
/// nobody has, in any launch, is an error with nothing launched.
fn launch<'b>(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    given: &Given<'b>,
    checked: &Checked,
    made: impl Fn(&KernelParam) -> Option<(String, &'b DeviceBuffer)>,
) -> Result<()> {
    let scalar = |value: usize, name: &str| {
        i32::try_from(value).map_err(|_| RuntimeError::ArgKind {
            arg: name.into(),
            expected: "a size that fits i32".into(),
            found: value.to_string(),
        })
    };
    let dims = &checked.dims;
    let (t, h, hv) = (
        scalar(dims.seq_len, "T")?,
        scalar(dims.heads, "H")?,
        scalar(dims.value_heads, "HV")?,
    );

    let steps = steps(info, checked.launches);
    if steps.len() != checked.grids.len() {
        return Err(launch_error(
            info,
            "the launches changed since the call was checked".into(),
        ));
    }
    // The TMA maps of the caller's q, k, v that any launch takes (sm_90a), built first.
    let mut maps: Vec<(Role, crate::device::TensorMapArg)> = Vec::new();
    for step in &steps {
        for p in step.params {
            if let KernelParam::TensorMap(role) = p
                && !maps.iter().any(|(r, _)| r == role)
            {
                maps.push((*role, tensor_map(device, info, given, dims, *role)?));
            }
        }
    }
    let mut prepared = Vec::with_capacity(steps.len());
    for (step, grid) in steps.iter().zip(&checked.grids) {
        let mut sig = KernelSignature::new(step.entry);
        let mut args: Vec<KernelArg<'_>> = Vec::new();
        for p in step.params {
            if let KernelParam::TensorMap(role) = p
                && let Some((_, map)) = maps.iter().find(|(r, _)| r == role)
            {
                args.push((&map.map).into());
                sig = sig.buffer(format!("{role}_map"), DType::I64, vec![16]);
                continue;
            }
            if let Some((name, dt, shape)) = expected(info, p)
                && let Some(buf) = given.buffer(p)
            {
                args.push(buf.into());
                sig = sig.buffer(name, dt, shape);
                continue;
            }
            // The caller's chunk states (a backward reading a forward's), checked by
            // `check_call`; without them the runtime's, from `made`.
            if *p == KernelParam::ChunkStates
                && let Some(states) = given.chunk_states
            {
                args.push(states.into());
                sig = sig.buffer("chunk_states", states.dtype(), states.shape().to_vec());
                continue;
            }
            let (name, arg): (String, KernelArg<'b>) = match p {
                KernelParam::SeqLen => ("T".into(), t.into()),
                KernelParam::Heads => ("H".into(), h.into()),
                KernelParam::ValueHeads => ("HV".into(), hv.into()),
                KernelParam::Scale => ("scale".into(), given.scale.into()),
                // 1: the kernel reads the given chunk states; 0: it recomputes them.
                KernelParam::ChunkStatesGiven => (
                    "chunk_states_given".into(),
                    i32::from(given.chunk_states.is_some()).into(),
                ),
                _ => match made(p) {
                    Some((name, buf)) => (name, buf.into()),
                    None => {
                        return Err(step_error(
                            step.entry,
                            format!("unexpected parameter {p:?} in a {} kernel", info.direction),
                        ));
                    }
                },
            };
            sig = match arg {
                KernelArg::Buffer(b) => sig.buffer(name, b.dtype(), b.shape().to_vec()),
                KernelArg::F32(_) => sig.scalar(name, ScalarType::F32),
                _ => sig.scalar(name, ScalarType::I32),
            };
            args.push(arg);
        }
        // What `launch_checked` checks again, here for every launch before the first.
        sig.check(&args)?;
        let config = LaunchConfig {
            grid: *grid,
            block: step.block,
            shared_mem_bytes: step.shared_bytes,
        };
        prepared.push((step.entry, sig, config, args));
    }

    // One module holds every entry point.
    let module = device.module(&module_key(info, binary), || Ok(binary.to_vec()))?;
    let kernels = prepared
        .iter()
        .map(|(entry, ..)| device.kernel(&module, entry))
        .collect::<Result<Vec<_>>>()?;
    for (kernel, (_, sig, config, args)) in kernels.iter().zip(&prepared) {
        device.launch_checked(kernel, sig, config, args)?;
    }
    Ok(())
}

/// The TMA map of the caller's `role` input (q, k: `[B·T, H, K]`; v: `[B·T, HV, V]`) in the
/// geometry [`KernelParam::TensorMap`] fixes: box `[chunk rows, 1 head, 64 columns]`.
fn tensor_map(
    device: &Device,
    info: &KernelInfo,
    given: &Given<'_>,
    dims: &Dims,
    role: Role,
) -> Result<crate::device::TensorMapArg> {
    let tensor = given.buffer(&KernelParam::Input(role)).ok_or_else(|| {
        launch_error(
            info,
            format!("a TMA map of `{role}`, which the call does not give"),
        )
    })?;
    device.tensor_map(tensor, &tensor_map_spec(info, dims, role)?)
}

/// The geometry of the TMA map of input `role` (q, k or v) that a kernel of `info` reads on
/// `dims` ([`KernelParam::TensorMap`]), for [`Device::tensor_map`]: what [`forward`] builds
/// for each call; for launching such a kernel by hand.
pub fn tensor_map_spec(info: &KernelInfo, dims: &Dims, role: Role) -> Result<TensorMapSpec> {
    let (heads, width) = match role {
        Role::Query | Role::Key => (dims.heads, dims.key_dim),
        Role::Value => (dims.value_heads, dims.value_dim),
        other => {
            return Err(launch_error(
                info,
                format!("a TMA map of `{other}` (q, k and v only)"),
            ));
        }
    };
    let dtype = dtype(info.config.dtype);
    let size = dtype.size_bytes();
    let rows = dims.batch * dims.seq_len;
    let box_rows = u32::try_from(info.config.chunk)
        .ok()
        .filter(|&c| (1..=256).contains(&c))
        .ok_or_else(|| {
            launch_error(
                info,
                format!("a TMA box of {} rows (1 to 256)", info.config.chunk),
            )
        })?;
    if size != 2 || (width * size) % 16 != 0 {
        return Err(launch_error(
            info,
            format!("a TMA map of {width} {dtype} columns (16-bit, rows a multiple of 16 bytes)"),
        ));
    }
    Ok(TensorMapSpec {
        dtype,
        dims: [width as u64, heads as u64, rows as u64],
        strides: [(width * size) as u64, (heads * width * size) as u64],
        boxes: [TENSOR_MAP_BOX_COLUMNS as u32, 1, box_rows],
    })
}

/// Launches the forward kernel `info` (binary `binary`, for this device's module format) on
/// `device`: checks `args`, allocates the outputs, the scratch and whatever the launches the
/// call makes take of the chunk states and the segment states and decays (NaN-poisoned),
/// fills the RetNet decay rates when they take them, loads the module through the device's
/// cache and enqueues `info`'s launch and then every [`KernelInfo::then`] one — or, when
/// [`KernelInfo::takes_instead`] says so for the call's sizes, the [`KernelInfo::instead`]
/// route's launches.
pub fn forward(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &ForwardArgs<'_>,
) -> Result<ForwardOutputs> {
    let ws = forward_inner(device, info, binary, args, None)?;
    ws.map(|ws| ws.outputs)
        .ok_or_else(|| launch_error(info, "no workspace was allocated".into()))
}

/// The buffers of one forward call (outputs, chunk states, segment states and decays,
/// scratch, decay rates), kept so the same kernel can be relaunched on the same sizes without
/// allocating ([`forward_into`]): what a benchmark times. The same sizes make the same
/// launches, so the workspace fits them.
#[derive(Debug, Clone)]
pub struct ForwardWorkspace {
    /// The outputs the launches write.
    pub outputs: ForwardOutputs,
    common: Common,
}

/// [`forward`], keeping the buffers for [`forward_into`].
pub fn forward_workspace(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &ForwardArgs<'_>,
) -> Result<ForwardWorkspace> {
    forward_inner(device, info, binary, args, None)?
        .ok_or_else(|| launch_error(info, "no workspace was allocated".into()))
}

/// Relaunches the forward kernel into the buffers of `ws` (from [`forward_workspace`] with the
/// same kernel and sizes): checks `args` as [`forward`] does, allocates and poisons nothing.
pub fn forward_into(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &ForwardArgs<'_>,
    ws: &ForwardWorkspace,
) -> Result<()> {
    forward_inner(device, info, binary, args, Some(ws)).map(|_| ())
}

/// Checks, allocates unless `reuse` has the buffers (then returns `None`), launches.
fn forward_inner(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &ForwardArgs<'_>,
    reuse: Option<&ForwardWorkspace>,
) -> Result<Option<ForwardWorkspace>> {
    let given = Given {
        inputs: args.inputs,
        initial_state: args.initial_state,
        cu_seqlens: args.cu_seqlens,
        scale: args.scale,
        d_o: None,
        dht: None,
        chunk_states: None,
    };
    let checked = check_call(device, info, "forward", &given)?;
    let (dims, sequences) = (checked.dims, checked.sequences);

    // Outputs, state and scratch: NaN until the kernel writes them.
    let allocated = match reuse {
        Some(ws) => {
            check_reuse(info, &checked, &ws.outputs.dims, ws.outputs.sequences)?;
            ws.common.check(info, &checked, false)?;
            if ws.outputs.final_state.is_some()
                != takes(info, checked.launches, &KernelParam::FinalState)
            {
                return Err(launch_error(
                    info,
                    "the workspace was made for a kernel with other parameters".into(),
                ));
            }
            None
        }
        None => {
            let o = device.alloc_poisoned(dtype(info.config.dtype), &dims.output_shape())?;
            let final_state = if takes(info, checked.launches, &KernelParam::FinalState) {
                Some(device.alloc_poisoned(DType::F32, &dims.state_shape(sequences))?)
            } else {
                None
            };
            let common = Common::new(device, info, &checked, false)?;
            Some(ForwardWorkspace {
                outputs: ForwardOutputs {
                    o,
                    final_state,
                    // A view of the buffer the launches get (none when they take none).
                    chunk_states: common.chunk_states.clone(),
                    dims,
                    sequences,
                },
                common,
            })
        }
    };
    let Some(ws) = allocated.as_ref().or(reuse) else {
        return Err(launch_error(info, "no workspace".into()));
    };

    launch(device, info, binary, &given, &checked, |p| match p {
        KernelParam::Output => Some(("o".into(), &ws.outputs.o)),
        KernelParam::FinalState => Some(("ht".into(), ws.outputs.final_state.as_ref()?)),
        _ => ws.common.buffer(p),
    })?;
    Ok(allocated)
}

fn missing(name: &str) -> RuntimeError {
    RuntimeError::ArgKind {
        arg: name.into(),
        expected: "a buffer".into(),
        found: "none".into(),
    }
}

/// Dims and N from the checked bindings; the varlen rules (B = 1, at least one sequence); the
/// state-shaped buffers (h0, dht) against N.
fn sizes(info: &KernelInfo, bindings: &Bindings, given: &Given<'_>) -> Result<(Dims, usize)> {
    let get = |name: &str| -> Result<usize> {
        bindings
            .get(name)
            .copied()
            .ok_or_else(|| launch_error(info, format!("no input fixes the size {name}")))
    };
    let c = &info.config;
    let dims = Dims {
        batch: get("B")?,
        seq_len: get("T")?,
        heads: get("H")?,
        value_heads: get("HV")?,
        key_dim: c.key_dim,
        value_dim: c.value_dim,
    };
    if dims.heads == 0 || dims.value_heads % dims.heads != 0 {
        return Err(RuntimeError::Shape {
            arg: "v".into(),
            expected: format!(
                "[B, T, HV, V] with HV a non-zero multiple of H = {} (GVA)",
                dims.heads
            ),
            found: vec![dims.batch, dims.seq_len, dims.value_heads, dims.value_dim],
        });
    }
    let sequences = match given.cu_seqlens {
        Some(cu) => {
            if dims.batch != 1 {
                return Err(RuntimeError::Shape {
                    arg: "q".into(),
                    expected: "[1, T, H, K]: with cu_seqlens the sequences are packed into B = 1"
                        .into(),
                    found: vec![dims.batch, dims.seq_len, dims.heads, dims.key_dim],
                });
            }
            let n = cu.shape().first().copied().unwrap_or(0);
            if n < 2 {
                return Err(RuntimeError::Shape {
                    arg: "cu_seqlens".into(),
                    expected: "[N+1] with N >= 1".into(),
                    found: cu.shape().to_vec(),
                });
            }
            n - 1
        }
        None => dims.batch,
    };
    // The named dims checked N against itself only; N is the number of sequences.
    let want = dims.state_shape(sequences);
    for (name, state) in [("h0", given.initial_state), ("dht", given.dht)] {
        if let Some(state) = state
            && state.shape() != want.as_slice()
        {
            return Err(RuntimeError::Shape {
                arg: name.into(),
                expected: format!("[N, HV, K, V] = {want:?}"),
                found: state.shape().to_vec(),
            });
        }
    }
    Ok((dims, sequences))
}
