//! Running compiled linrec kernels: [`forward`] launches a forward kernel and [`backward`] a
//! backward one, each described by its [`KernelInfo`] (the launch metadata the compiler
//! writes) and its binary, without LLVM.
//!
//! Before anything reaches the device, every buffer is checked against the kernel's
//! parameters (dtype, shape, contiguity, device); a mismatch is an error naming the argument.
//! What the runtime allocates — outputs, final state, gradients, `dh0`, the backward's chunk
//! states and gradient accumulators, the kernel's scratch memory — is filled with NaN first,
//! so an element the kernel forgets to write shows up in any comparison.
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

use linrec_spec::launch::{ElementType, KernelInfo, KernelParam};
use linrec_spec::reference::constant_log_decay;
use linrec_spec::{ConstantRate, Dims, Role};

use crate::backend::{LaunchConfig, ModuleFormat};
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

/// The in-memory cache key of a kernel binary: its entry point and a stable content hash.
pub fn module_key(info: &KernelInfo, binary: &[u8]) -> String {
    // FNV-1a: stable across processes and Rust versions, and plenty for a per-process cache.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in binary {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("linrec:{}:{}:{h:016x}", info.target, info.entry)
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

/// A call that passed every check: its sizes, grid and scratch size.
struct Checked {
    dims: Dims,
    sequences: usize,
    grid: [u32; 3],
    scratch_len: usize,
}

fn launch_error(info: &KernelInfo, detail: String) -> RuntimeError {
    RuntimeError::Launch {
        kernel: info.entry.clone(),
        detail,
    }
}

/// Everything checked before a launch allocates anything: the direction, the module format,
/// the scale, which buffers are given, their dtypes, shapes, layouts and devices, the sizes
/// they imply, the grid and the scratch size.
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

    // Every given input must be a parameter, and every input parameter must be given.
    for (role, _) in given.inputs {
        if !info.params.contains(&KernelParam::Input(*role)) {
            return Err(RuntimeError::ArgKind {
                arg: role_name(*role).into(),
                expected: format!("no such input: kernel `{kname}` does not take a {role}"),
                found: "a buffer".into(),
            });
        }
    }
    let optional = |given: Option<&DeviceBuffer>, param: KernelParam, name: &str, required| {
        let wanted = info.params.contains(&param);
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
    for p in &info.params {
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

    let mut grid = [0u32; 3];
    for (g, e) in grid.iter_mut().zip(&info.grid) {
        let n = e
            .eval(&dims, sequences)
            .ok_or_else(|| launch_error(info, format!("the grid {e:?} overflows")))?;
        *g = u32::try_from(n)
            .map_err(|_| launch_error(info, format!("{n} workgroups do not fit u32")))?;
    }
    let workgroups: u64 = grid.iter().map(|&g| u64::from(g)).product();
    let scratch_len = workgroups
        .checked_mul(info.scratch)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| launch_error(info, "the scratch buffer's size overflows".into()))?;
    Ok(Checked {
        dims,
        sequences,
        grid,
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

/// The runtime-made buffers every direction has: scratch and the RetNet decay rates.
#[derive(Debug, Clone)]
struct Common {
    scratch: DeviceBuffer,
    decay_rates: Option<DeviceBuffer>,
}

impl Common {
    /// Allocates the scratch (NaN-poisoned) and uploads the decay rates.
    fn new(device: &Device, info: &KernelInfo, checked: &Checked) -> Result<Common> {
        let scratch = device.alloc_poisoned(DType::F32, &[checked.scratch_len])?;
        let decay_rates = if info.params.contains(&KernelParam::DecayRates) {
            // KernelParam::DecayRates is RetNet's schedule γ_h = 1 − 2^(−5−h), in log space.
            let hv = checked.dims.value_heads;
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
        })
    }

    /// Errors unless these buffers (of a workspace) fit the checked call of `info`.
    fn check(&self, info: &KernelInfo, checked: &Checked) -> Result<()> {
        if self.scratch.shape() != [checked.scratch_len] {
            return Err(launch_error(
                info,
                "the workspace's scratch has another size".into(),
            ));
        }
        if self.decay_rates.is_some() != info.params.contains(&KernelParam::DecayRates) {
            return Err(launch_error(
                info,
                "the workspace was made for a kernel with other parameters".into(),
            ));
        }
        Ok(())
    }

    fn buffer(&self, p: &KernelParam) -> Option<(String, &DeviceBuffer)> {
        match p {
            KernelParam::Scratch => Some(("scratch".into(), &self.scratch)),
            KernelParam::DecayRates => Some(("decay_rates".into(), self.decay_rates.as_ref()?)),
            _ => None,
        }
    }
}

/// Launches `info` with every parameter in ABI order: the caller's buffers from `given`, the
/// scalars, and what `made` returns for the rest (the runtime's buffers, by parameter). A
/// parameter nobody has is an error before anything reaches the device.
fn launch<'b>(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    given: &Given<'b>,
    checked: &Checked,
    made: impl Fn(&KernelParam) -> Option<(String, &'b DeviceBuffer)>,
) -> Result<()> {
    let kname = info.entry.as_str();
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

    let mut sig = KernelSignature::new(kname);
    let mut args: Vec<KernelArg<'b>> = Vec::new();
    for p in &info.params {
        if let Some((name, dt, shape)) = expected(info, p)
            && let Some(buf) = given.buffer(p)
        {
            args.push(buf.into());
            sig = sig.buffer(name, dt, shape);
            continue;
        }
        let (name, arg): (String, KernelArg<'b>) = match p {
            KernelParam::SeqLen => ("T".into(), t.into()),
            KernelParam::Heads => ("H".into(), h.into()),
            KernelParam::ValueHeads => ("HV".into(), hv.into()),
            KernelParam::Scale => ("scale".into(), given.scale.into()),
            _ => match made(p) {
                Some((name, buf)) => (name, buf.into()),
                None => {
                    return Err(launch_error(
                        info,
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

    let module = device.module(&module_key(info, binary), || Ok(binary.to_vec()))?;
    let kernel = device.kernel(&module, kname)?;
    let config = LaunchConfig {
        grid: checked.grid,
        block: info.block,
        shared_mem_bytes: info.shared_bytes,
    };
    device.launch_checked(&kernel, &sig, &config, &args)?;
    Ok(())
}

/// Launches the forward kernel `info` (binary `binary`, for this device's module format) on
/// `device`: checks `args`, allocates the outputs (NaN-poisoned), fills the RetNet decay
/// rates when the kernel takes them, loads the module through the device's cache and enqueues
/// the launch.
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

/// The buffers of one forward launch (outputs, scratch, decay rates), kept so the same
/// kernel can be relaunched on the same sizes without allocating ([`forward_into`]): what a
/// benchmark times.
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
    };
    let checked = check_call(device, info, "forward", &given)?;
    let (dims, sequences) = (checked.dims, checked.sequences);

    // Outputs, state and scratch: NaN until the kernel writes them.
    let allocated = match reuse {
        Some(ws) => {
            check_reuse(info, &checked, &ws.outputs.dims, ws.outputs.sequences)?;
            ws.common.check(info, &checked)?;
            if ws.outputs.final_state.is_some() != info.params.contains(&KernelParam::FinalState) {
                return Err(launch_error(
                    info,
                    "the workspace was made for a kernel with other parameters".into(),
                ));
            }
            None
        }
        None => {
            let o = device.alloc_poisoned(dtype(info.config.dtype), &dims.output_shape())?;
            let final_state = if info.params.contains(&KernelParam::FinalState) {
                Some(device.alloc_poisoned(DType::F32, &dims.state_shape(sequences))?)
            } else {
                None
            };
            Some(ForwardWorkspace {
                outputs: ForwardOutputs {
                    o,
                    final_state,
                    dims,
                    sequences,
                },
                common: Common::new(device, info, &checked)?,
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
