//! Running compiled linrec kernels: [`forward`] launches a forward kernel described by its
//! [`KernelInfo`] (the launch metadata the compiler writes) and its binary, without LLVM.
//!
//! Before anything reaches the device, every buffer is checked against the kernel's
//! parameters (dtype, shape, contiguity, device); a mismatch is an error naming the argument.
//! The outputs, the final state and the kernel's scratch memory are allocated here and filled
//! with NaN first, so an element the kernel forgets to write shows up in any comparison.
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
            let name = role_name(*role).to_owned();
            match role {
                Role::Query | Role::Key => (name, dtype(c.dtype), vec![s("B"), s("T"), s("H"), k]),
                Role::Value => (name, dtype(c.dtype), vec![s("B"), s("T"), s("HV"), v]),
                Role::Gate | Role::Beta => (name, DType::F32, vec![s("B"), s("T"), s("HV")]),
                Role::Bonus => (name, DType::F32, vec![s("HV"), k]),
                Role::DecayRate => (name, DType::F32, vec![s("HV")]),
            }
        }
        KernelParam::InitialState => ("h0".into(), DType::F32, vec![s("N"), s("HV"), k, v]),
        KernelParam::CuSeqlens => ("cu_seqlens".into(), DType::I32, vec![Dim::Any]),
        _ => return None,
    })
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
    forward_inner(device, info, binary, args, None).map(|ws| ws.outputs)
}

/// The buffers of one forward launch (outputs, scratch, decay rates), kept so the same
/// kernel can be relaunched on the same sizes without allocating ([`forward_into`]): what a
/// benchmark times.
#[derive(Debug, Clone)]
pub struct ForwardWorkspace {
    /// The outputs the launches write.
    pub outputs: ForwardOutputs,
    scratch: DeviceBuffer,
    decay_rates: Option<DeviceBuffer>,
}

/// [`forward`], keeping the buffers for [`forward_into`].
pub fn forward_workspace(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &ForwardArgs<'_>,
) -> Result<ForwardWorkspace> {
    forward_inner(device, info, binary, args, None)
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

fn forward_inner(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &ForwardArgs<'_>,
    reuse: Option<&ForwardWorkspace>,
) -> Result<ForwardWorkspace> {
    let kname = info.entry.as_str();
    let launch_err = |detail: String| RuntimeError::Launch {
        kernel: kname.to_owned(),
        detail,
    };
    if info.direction != "forward" {
        return Err(launch_err(format!(
            "this is a {} kernel, not a forward one",
            info.direction
        )));
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
    if !(args.scale.is_finite() && args.scale > 0.0) {
        return Err(RuntimeError::ArgKind {
            arg: "scale".into(),
            expected: "a positive, finite f32".into(),
            found: args.scale.to_string(),
        });
    }

    // Every given input must be a parameter, and every input parameter must be given.
    for (role, _) in args.inputs {
        if !info.params.contains(&KernelParam::Input(*role)) {
            return Err(RuntimeError::ArgKind {
                arg: role_name(*role).into(),
                expected: format!("no such input: kernel `{kname}` does not take a {role}"),
                found: "a buffer".into(),
            });
        }
    }
    let optional = |given: Option<&DeviceBuffer>, param: KernelParam, name: &str| {
        let wanted = info.params.contains(&param);
        match (wanted, given.is_some()) {
            (true, false) => Err(RuntimeError::ArgKind {
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
    optional(args.initial_state, KernelParam::InitialState, "h0")?;
    optional(args.cu_seqlens, KernelParam::CuSeqlens, "cu_seqlens")?;

    // Check what the caller gave (shapes with named dims) and read the sizes off it.
    let mut given_sig = KernelSignature::new(kname);
    let mut given: Vec<KernelArg<'_>> = Vec::new();
    for p in &info.params {
        let Some((name, dt, shape)) = expected(info, p) else {
            continue;
        };
        let buf = match p {
            KernelParam::Input(role) => args
                .inputs
                .iter()
                .find(|(r, _)| r == role)
                .map(|(_, b)| *b)
                .ok_or_else(|| RuntimeError::ArgKind {
                    arg: name.clone(),
                    expected: format!("a {dt} buffer: kernel `{kname}` reads the {role} input"),
                    found: "none".into(),
                })?,
            KernelParam::InitialState => args.initial_state.ok_or_else(|| missing(&name))?,
            KernelParam::CuSeqlens => args.cu_seqlens.ok_or_else(|| missing(&name))?,
            _ => continue,
        };
        given_sig = given_sig.buffer(name, dt, shape);
        given.push(buf.into());
    }
    let bindings = given_sig.check(&given)?;
    let (dims, sequences) = sizes(info, &bindings, args)?;

    // Outputs, state and scratch: NaN until the kernel writes them.
    let c = &info.config;
    if let Some(ws) = reuse
        && (ws.outputs.dims != dims || ws.outputs.sequences != sequences)
    {
        return Err(launch_err(format!(
            "the workspace was made for {:?} with {} sequences, not {dims:?} with {sequences}",
            ws.outputs.dims, ws.outputs.sequences
        )));
    }
    let o = match reuse {
        Some(ws) => ws.outputs.o.clone(),
        None => device.alloc_poisoned(dtype(c.dtype), &dims.output_shape())?,
    };
    let final_state = match reuse {
        Some(ws) => ws.outputs.final_state.clone(),
        None if info.params.contains(&KernelParam::FinalState) => {
            Some(device.alloc_poisoned(DType::F32, &dims.state_shape(sequences))?)
        }
        None => None,
    };
    let mut grid = [0u32; 3];
    for (g, e) in grid.iter_mut().zip(&info.grid) {
        let n = e
            .eval(&dims, sequences)
            .ok_or_else(|| launch_err(format!("the grid {e:?} overflows")))?;
        *g = u32::try_from(n).map_err(|_| launch_err(format!("{n} workgroups do not fit u32")))?;
    }
    let workgroups: u64 = grid.iter().map(|&g| u64::from(g)).product();
    let scratch_len = workgroups
        .checked_mul(info.scratch)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| launch_err("the scratch buffer's size overflows".into()))?;
    let scratch = match reuse {
        Some(ws) if ws.scratch.shape() == [scratch_len] => ws.scratch.clone(),
        Some(_) => {
            return Err(launch_err(
                "the workspace's scratch has another size".into(),
            ));
        }
        None => device.alloc_poisoned(DType::F32, &[scratch_len])?,
    };
    let decay_rates = if let Some(ws) = reuse {
        ws.decay_rates.clone()
    } else if info.params.contains(&KernelParam::DecayRates) {
        // KernelParam::DecayRates is RetNet's schedule γ_h = 1 − 2^(−5−h), in log space.
        let rates: Vec<f32> = (0..dims.value_heads)
            .map(|hv| constant_log_decay(ConstantRate::Retnet, None, hv) as f32)
            .collect();
        Some(device.upload(&rates, &[dims.value_heads])?)
    } else {
        None
    };

    let scalar = |value: usize, name: &str| {
        i32::try_from(value).map_err(|_| RuntimeError::ArgKind {
            arg: name.into(),
            expected: "a size that fits i32".into(),
            found: value.to_string(),
        })
    };
    let (t, h, hv) = (
        scalar(dims.seq_len, "T")?,
        scalar(dims.heads, "H")?,
        scalar(dims.value_heads, "HV")?,
    );

    // The full launch, in ABI order.
    let mut sig = KernelSignature::new(kname);
    let mut launch: Vec<KernelArg<'_>> = Vec::new();
    for p in &info.params {
        if let Some((name, dt, shape)) = expected(info, p) {
            let buf = match p {
                KernelParam::Input(role) => {
                    args.inputs.iter().find(|(r, _)| r == role).map(|x| x.1)
                }
                KernelParam::InitialState => args.initial_state,
                _ => args.cu_seqlens,
            };
            launch.push(buf.ok_or_else(|| missing(&name))?.into());
            sig = sig.buffer(name, dt, shape);
            continue;
        }
        let (name, arg): (&str, KernelArg<'_>) = match p {
            KernelParam::DecayRates => (
                "decay_rates",
                decay_rates
                    .as_ref()
                    .ok_or_else(|| missing("decay_rates"))?
                    .into(),
            ),
            KernelParam::Output => ("o", (&o).into()),
            KernelParam::FinalState => (
                "ht",
                final_state.as_ref().ok_or_else(|| missing("ht"))?.into(),
            ),
            KernelParam::Scratch => ("scratch", (&scratch).into()),
            KernelParam::SeqLen => ("T", t.into()),
            KernelParam::Heads => ("H", h.into()),
            KernelParam::ValueHeads => ("HV", hv.into()),
            KernelParam::Scale => ("scale", args.scale.into()),
            _ => return Err(launch_err(format!("unexpected parameter {p:?}"))),
        };
        sig = match arg {
            KernelArg::Buffer(b) => sig.buffer(name, b.dtype(), b.shape().to_vec()),
            KernelArg::F32(_) => sig.scalar(name, ScalarType::F32),
            _ => sig.scalar(name, ScalarType::I32),
        };
        launch.push(arg);
    }

    let module = device.module(&module_key(info, binary), || Ok(binary.to_vec()))?;
    let kernel = device.kernel(&module, kname)?;
    let config = LaunchConfig {
        grid,
        block: info.block,
        shared_mem_bytes: info.shared_bytes,
    };
    device.launch_checked(&kernel, &sig, &config, &launch)?;
    Ok(ForwardWorkspace {
        outputs: ForwardOutputs {
            o,
            final_state,
            dims,
            sequences,
        },
        scratch,
        decay_rates,
    })
}

fn missing(name: &str) -> RuntimeError {
    RuntimeError::ArgKind {
        arg: name.into(),
        expected: "a buffer".into(),
        found: "none".into(),
    }
}

/// Dims and N from the checked bindings; the varlen rules (B = 1, at least one sequence).
fn sizes(info: &KernelInfo, bindings: &Bindings, args: &ForwardArgs<'_>) -> Result<(Dims, usize)> {
    let get = |name: &str| -> Result<usize> {
        bindings
            .get(name)
            .copied()
            .ok_or_else(|| RuntimeError::Launch {
                kernel: info.entry.clone(),
                detail: format!("no input fixes the size {name}"),
            })
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
    let sequences = match args.cu_seqlens {
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
    if let Some(h0) = args.initial_state {
        // The named dims checked N against itself only; N is the number of sequences.
        let want = dims.state_shape(sequences);
        if h0.shape() != want.as_slice() {
            return Err(RuntimeError::Shape {
                arg: "h0".into(),
                expected: format!("[N, HV, K, V] = {want:?}"),
                found: h0.shape().to_vec(),
            });
        }
    }
    Ok((dims, sequences))
}
