//! [`backward`]: launching a backward kernel (`direction = "backward"`), which sweeps the
//! chunks in reverse and writes the gradients of the inputs and of `h0`. It needs the state
//! entering every chunk (the chunk states), which it gets one of two ways:
//!
//! - **recomputed** (the default, like fla): [`BackwardArgs::chunk_states`] is `None`, the
//!   runtime allocates the chunk states and passes [`KernelParam::ChunkStatesGiven`] = 0, and
//!   the kernel first walks the chunks forwards from `h0` (or 0) to fill them;
//! - **saved**: the caller passes the chunk states a forward of the same call wrote
//!   ([`super::ForwardOutputs::chunk_states`]: a forward compiled with
//!   `LINREC_FORWARD=split`, or a fused one whose call took its split-scan route,
//!   [`KernelInfo::instead`]);
//!   the runtime checks them (the kernel's dtype, exactly the shape it would allocate, this
//!   device, contiguous), passes them with `ChunkStatesGiven` = 1 and the kernel skips its
//!   recompute phase. That trades the memory of keeping them from the forward to the backward,
//!   `(⌊B·T / C⌋ + N) · HV · K · V` elements of the kernel's dtype, for the time of
//!   recomputing them.
//!
//! The kernels linrec compiles are a launch sequence ([`KernelInfo::then`]; the buffers are
//! shared as [`super`] describes): the first sweeps the chunks for the states (unless given)
//! and `dh`, which the runtime-allocated `chunk_dh` ([`KernelParam::ChunkStateGrads`]) carries
//! to the second, chunk-parallel one. The first launch may be one of
//! [`KernelInfo::narrower`] ([`KernelInfo::pick_first`]).
//!
//! ```no_run
//! # fn main() -> linrec_runtime::Result<()> {
//! use linrec_runtime::{Device, DeviceKind, op};
//! use linrec_spec::{Role, launch::KernelInfo};
//! # let (fwd_info, info): (KernelInfo, KernelInfo) = panic!("a split forward and a backward kernel");
//! # let binary: Vec<u8> = vec![];
//! let dev = Device::new(DeviceKind::Auto)?;
//! # let buf = || dev.alloc(linrec_runtime::DType::BF16, &[1]);
//! # let (q, k, v, d_o) = (buf()?, buf()?, buf()?, buf()?);
//! let inputs = [(Role::Query, &q), (Role::Key, &k), (Role::Value, &v)];
//! // Recompute the chunk states in the backward.
//! let mut args = op::BackwardArgs {
//!     inputs: &inputs,
//!     initial_state: None,
//!     cu_seqlens: None,
//!     scale: 0.125,
//!     d_o: &d_o,
//!     dht: None,
//!     chunk_states: None,
//! };
//! let grads = op::backward(&dev, &info, &binary, &args)?;
//! let dq = dev.download_bytes(grads.grad(Role::Query).expect("q has a gradient"))?;
//!
//! // Or read the ones the forward wrote, if it wrote any.
//! let fwd = op::forward(&dev, &fwd_info, &binary, &op::ForwardArgs {
//!     inputs: &inputs,
//!     initial_state: None,
//!     cu_seqlens: None,
//!     scale: 0.125,
//! })?;
//! args.chunk_states = fwd.chunk_states.as_ref(); // `None` from a fused forward: recompute
//! let grads = op::backward(&dev, &info, &binary, &args)?;
//! # Ok(()) }
//! ```

use linrec_spec::launch::{KernelInfo, KernelParam};
use linrec_spec::{Dims, Role};

use super::{
    Checked, Common, Given, all_params, check_call, check_reuse, chunk_states_shape, concrete,
    dtype, input_layout, launch, launch_error, role_name, takes,
};
use crate::backend::FillPattern;
use crate::buffer::DeviceBuffer;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;

/// What a backward launch takes besides the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BackwardArgs<'a> {
    /// The spec's input tensors by role, as [`super::ForwardArgs::inputs`]: exactly the roles
    /// the kernel takes.
    pub inputs: &'a [(Role, &'a DeviceBuffer)],
    /// The initial state `[N, HV, K, V]` f32 the forward started from, for kernels compiled
    /// with one (the backward recomputes the states from it).
    pub initial_state: Option<&'a DeviceBuffer>,
    /// Varlen offsets `[N+1]` i32 (B must be 1), for kernels compiled for varlen; as
    /// [`super::ForwardArgs::cu_seqlens`].
    pub cu_seqlens: Option<&'a DeviceBuffer>,
    /// The forward's output scale: positive, finite.
    pub scale: f32,
    /// `dO [B, T, HV, V]`, the gradient of the output, in the kernel's dtype.
    pub d_o: &'a DeviceBuffer,
    /// `dht [N, HV, K, V]` f32, the gradient of the final state: only for kernels that take
    /// it (compiled with a final state); `None` there passes zeros.
    pub dht: Option<&'a DeviceBuffer>,
    /// The forward's chunk states, to read instead of recomputing them:
    /// [`super::ForwardOutputs::chunk_states`] of a forward of the same call and config that
    /// wrote them (a split one, compiled with `LINREC_FORWARD=split`, or a fused one whose
    /// call took its [`KernelInfo::instead`] split-scan) — `[⌊B·T / C⌋ + N, HV, K, V]` in
    /// the kernel's dtype, exactly the shape the runtime would allocate; anything else is an
    /// error naming `chunk_states` before anything launches. They are passed with
    /// [`KernelParam::ChunkStatesGiven`] = 1 and the kernel skips its recompute phase: the
    /// memory of keeping them from the forward, `(⌊B·T / C⌋ + N) · HV · K · V` elements, for
    /// the time of recomputing them. `None` recomputes them (the runtime allocates them and
    /// passes 0), like fla.
    ///
    /// The runtime cannot tell whether the buffer holds the states of *this* call's inputs
    /// and `h0`: chunk states of another call give wrong gradients, not an error.
    pub chunk_states: Option<&'a DeviceBuffer>,
}

impl<'a> BackwardArgs<'a> {
    fn given(&self) -> Given<'a> {
        Given {
            inputs: self.inputs,
            initial_state: self.initial_state,
            cu_seqlens: self.cu_seqlens,
            scale: self.scale,
            d_o: Some(self.d_o),
            dht: self.dht,
            chunk_states: self.chunk_states,
        }
    }
}

/// What a backward launch returns (the work is enqueued; downloads wait for it).
#[derive(Debug, Clone)]
pub struct BackwardOutputs {
    /// One gradient per `Grad(role)` parameter of the kernel, in parameter order, each with
    /// its input's shape and dtype: `dq`, `dk` `[B, T, H, K]` and `dv` `[B, T, HV, V]` in the
    /// kernel's dtype, `dg`, `dβ` `[B, T, HV]` f32.
    pub grads: Vec<(Role, DeviceBuffer)>,
    /// `dh0 [N, HV, K, V]` f32, for kernels compiled with an initial state.
    pub dh0: Option<DeviceBuffer>,
    /// The sizes of the call, read off the inputs.
    pub dims: Dims,
    /// N, the number of sequences.
    pub sequences: usize,
}

impl BackwardOutputs {
    /// The gradient of the input of `role`, if the kernel writes one.
    pub fn grad(&self, role: Role) -> Option<&DeviceBuffer> {
        find(&self.grads, role)
    }
}

/// The buffer of `role` in a list by role.
fn find(list: &[(Role, DeviceBuffer)], role: Role) -> Option<&DeviceBuffer> {
    list.iter().find(|(r, _)| *r == role).map(|(_, b)| b)
}

/// The buffers of one backward launch (gradients, `dh0`, chunk states, gradient accumulators,
/// scratch, decay rates, the zero `dht`), kept so the same kernel can be relaunched on the same
/// sizes without allocating ([`backward_into`]): what a benchmark times.
///
/// The chunk states: a workspace made without [`BackwardArgs::chunk_states`] holds its own, so
/// a relaunch may recompute them (no `chunk_states`) or read given ones (then its own go
/// unused). A workspace made with given chunk states allocates none, so every relaunch must
/// give them too; one without them is refused, naming `chunk_states`.
#[derive(Debug, Clone)]
pub struct BackwardWorkspace {
    /// The outputs the launches write.
    pub outputs: BackwardOutputs,
    /// Scratch, decay rates and chunk states.
    common: Common,
    accumulators: Vec<(Role, DeviceBuffer)>,
    /// `dh` per chunk ([`KernelParam::ChunkStateGrads`]), for kernels that take it: laid out
    /// as the chunk states.
    chunk_dh: Option<DeviceBuffer>,
    /// Zeros `[N, HV, K, V]`, passed as `dht` when the caller gives none.
    dht_zeros: Option<DeviceBuffer>,
}

/// Launches the backward kernel `info` (binary `binary`, for this device's module format) on
/// `device`: checks `args` as [`super::forward`] does, plus `do`, `dht` and `chunk_states`;
/// allocates the gradients, `dh0`, the chunk states (unless given) and `dh` per chunk, the
/// gradient accumulators and the scratch (all NaN-poisoned) and, without `dht`, a zero one; fills the RetNet decay rates when the kernel
/// takes them; loads the module through the device's cache and enqueues `info`'s launch and
/// then every [`KernelInfo::then`] one.
pub fn backward(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &BackwardArgs<'_>,
) -> Result<BackwardOutputs> {
    let ws = backward_inner(device, info, binary, args, Reuse::No { keep: false })?;
    ws.map(|ws| ws.outputs)
        .ok_or_else(|| launch_error(info, "no workspace was allocated".into()))
}

/// [`backward`], keeping the buffers for [`backward_into`] (with a zero `dht` for kernels that
/// take one, so a relaunch may omit it; with chunk states of its own unless `args` gives them:
/// see [`BackwardWorkspace`]).
pub fn backward_workspace(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &BackwardArgs<'_>,
) -> Result<BackwardWorkspace> {
    backward_inner(device, info, binary, args, Reuse::No { keep: true })?
        .ok_or_else(|| launch_error(info, "no workspace was allocated".into()))
}

/// Relaunches the backward kernel into the buffers of `ws` (from [`backward_workspace`] with
/// the same kernel and sizes): checks `args` as [`backward`] does, allocates and poisons
/// nothing. Given chunk states are read (flag 1) whether or not the workspace has its own;
/// without them the workspace's are recomputed, which one made with given states lacks (an
/// error naming `chunk_states`).
pub fn backward_into(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &BackwardArgs<'_>,
    ws: &BackwardWorkspace,
) -> Result<()> {
    backward_inner(device, info, binary, args, Reuse::Into(ws)).map(|_| ())
}

enum Reuse<'w> {
    /// Allocate; `keep`: for a workspace (a zero `dht` even when the caller gives one).
    No { keep: bool },
    /// The buffers of this workspace.
    Into(&'w BackwardWorkspace),
}

fn backward_inner(
    device: &Device,
    info: &KernelInfo,
    binary: &[u8],
    args: &BackwardArgs<'_>,
    reuse: Reuse<'_>,
) -> Result<Option<BackwardWorkspace>> {
    let given = args.given();
    let checked = check_call(device, info, "backward", &given)?;
    let (allocated, reused) = match reuse {
        Reuse::Into(ws) => {
            check_reuse(info, &checked, &ws.outputs.dims, ws.outputs.sequences)?;
            ws.common
                .check(info, &checked, args.chunk_states.is_some())?;
            check_fits(info, &checked, ws, args.dht.is_some())?;
            (None, Some(ws))
        }
        Reuse::No { keep } => {
            let zeros = args.dht.is_none() || keep;
            let states_given = args.chunk_states.is_some();
            (
                Some(allocate(device, info, &checked, zeros, states_given)?),
                None,
            )
        }
    };
    let Some(ws) = allocated.as_ref().or(reused) else {
        return Err(launch_error(info, "no workspace".into()));
    };

    let (dht, dht_zeros) = (args.dht, ws.dht_zeros.as_ref());
    launch(device, info, binary, &given, &checked, |p| {
        match p {
            KernelParam::Grad(role) => Some((
                format!("d{}", role_name(*role)),
                find(&ws.outputs.grads, *role)?,
            )),
            KernelParam::GradInitialState => Some(("dh0".into(), ws.outputs.dh0.as_ref()?)),
            KernelParam::GradAccumulator(role) => Some((
                format!("d{}_acc", role_name(*role)),
                find(&ws.accumulators, *role)?,
            )),
            KernelParam::ChunkStateGrads => Some(("chunk_dh".into(), ws.chunk_dh.as_ref()?)),
            // The caller's dht is passed as a checked buffer; these are the zeros.
            KernelParam::GradFinalState if dht.is_none() => Some(("dht".into(), dht_zeros?)),
            _ => ws.common.buffer(p),
        }
    })?;
    Ok(allocated)
}

/// Errors unless `ws` has a buffer for every parameter the runtime passes to the launches of
/// the checked call of `info`.
fn check_fits(
    info: &KernelInfo,
    checked: &Checked,
    ws: &BackwardWorkspace,
    dht_given: bool,
) -> Result<()> {
    let roles = |list: &[(Role, DeviceBuffer)]| list.iter().map(|(r, _)| *r).collect::<Vec<_>>();
    let wanted = |f: fn(&KernelParam) -> Option<Role>| {
        all_params(info, checked.launches)
            .into_iter()
            .filter_map(f)
            .collect::<Vec<_>>()
    };
    let grads = wanted(|p| match p {
        KernelParam::Grad(r) => Some(*r),
        _ => None,
    });
    let accumulators = wanted(|p| match p {
        KernelParam::GradAccumulator(r) => Some(*r),
        _ => None,
    });
    let takes = |p: KernelParam| takes(info, checked.launches, &p);
    let fits = roles(&ws.outputs.grads) == grads
        && roles(&ws.accumulators) == accumulators
        && ws.outputs.dh0.is_some() == takes(KernelParam::GradInitialState)
        && ws.chunk_dh.is_some() == takes(KernelParam::ChunkStateGrads)
        && (dht_given || ws.dht_zeros.is_some() || !takes(KernelParam::GradFinalState));
    if fits {
        Ok(())
    } else {
        Err(launch_error(
            info,
            "the workspace was made for a kernel with other parameters".into(),
        ))
    }
}

/// The workspace's buffers, NaN-poisoned; the zero `dht` with `zeros` when the kernel takes a
/// `dht`; no chunk states when the caller gives them (`states_given`).
fn allocate(
    device: &Device,
    info: &KernelInfo,
    checked: &Checked,
    zeros: bool,
    states_given: bool,
) -> Result<BackwardWorkspace> {
    let (dims, n) = (checked.dims, checked.sequences);
    let shape_of = |role: Role| {
        let (dt, shape) = input_layout(info, role);
        concrete(&shape, &dims, n)
            .map(|shape| (dt, shape))
            .ok_or_else(|| launch_error(info, format!("the {role} input has no fixed shape")))
    };

    let mut grads = Vec::new();
    let mut accumulators = Vec::new();
    for p in all_params(info, checked.launches) {
        match p {
            KernelParam::Grad(role) => {
                let (dt, shape) = shape_of(*role)?;
                grads.push((*role, device.alloc_poisoned(dt, &shape)?));
            }
            KernelParam::GradAccumulator(role) => {
                // Only GVA (HV > H) sums over value heads; otherwise the kernel never touches it.
                let shape = if dims.value_heads > dims.heads {
                    shape_of(*role)?.1
                } else {
                    vec![1]
                };
                accumulators.push((*role, device.alloc_poisoned(DType::F32, &shape)?));
            }
            _ => {}
        }
    }
    let takes = |p: KernelParam| takes(info, checked.launches, &p);
    let state = dims.state_shape(n);
    let dh0 = if takes(KernelParam::GradInitialState) {
        Some(device.alloc_poisoned(DType::F32, &state)?)
    } else {
        None
    };
    let chunk_dh = if takes(KernelParam::ChunkStateGrads) {
        let shape = chunk_states_shape(info, &dims, n)?;
        Some(device.alloc_poisoned(dtype(info.config.dtype), &shape)?)
    } else {
        None
    };
    let dht_zeros = if zeros && takes(KernelParam::GradFinalState) {
        let z = device.alloc(DType::F32, &state)?;
        device.fill(&z, FillPattern::U32(0))?;
        Some(z)
    } else {
        None
    };
    Ok(BackwardWorkspace {
        outputs: BackwardOutputs {
            grads,
            dh0,
            dims,
            sequences: n,
        },
        // Scratch, decay rates and the chunk states the backward recomputes into (unless the
        // caller gives the forward's).
        common: Common::new(device, info, checked, states_given)?,
        accumulators,
        chunk_dh,
        dht_zeros,
    })
}
