//! The backward kernel: one kernel per (spec, config, target) that computes every input
//! gradient of a chunkwise forward (DESIGN §5). It runs the backward plan of
//! [`crate::plan::backward`], whose chunk needs the state entering the chunk, so it has two
//! phases:
//!
//! 1. **States.** The forward plan kept to its state ([`Plan::keep_sinks`]) walks the chunks
//!    forwards from `h0` (or 0), storing the state entering every chunk in
//!    [`KernelParam::ChunkStates`] — fla's `chunk_fwd_h` recomputation, in the same kernel.
//!    Skipped when [`KernelParam::ChunkStatesGiven`] says the caller passes the states a split
//!    forward wrote (saving them instead of recomputing).
//! 2. **Gradients.** The backward plan walks the chunks in reverse, reading the chunk's state
//!    from there into the state tile and carrying `dh` in a second `[K × V]` tile (from `dht`,
//!    or 0; `dh0` is what is left at the end). Each chunk stores its rows of every gradient.
//!
//! **Grid** `(1, N · H, 1)`: a workgroup owns one (sequence, q/k head) and all V columns —
//! the backward reduces over V (`dq = dO·hᵀ + …`), so V blocks would need a reduction across
//! workgroups — and walks the value heads of its GVA group one after the other (both phases
//! per value head). `dq` and `dk` sum over the group: with HV > H the running sum stays in f32
//! in [`KernelParam::GradAccumulator`] and the last value head of the group writes the total
//! in the input dtype; with HV = H they are written directly.
//!
//! **Memory** is the portable schedule's (f32 tiles in global scratch placed by liveness,
//! barriers by hazard) for both phases over the same scratch: the phases never overlap in time.
//! A `sum` over a tile reduces through [`BLOCK_THREADS`] slots at the end of scratch.
//!
//! Not yet: matmuls on tensor/matrix cores (every backward kernel runs the portable matmuls),
//! and the gradient of a constant decay rate read from an input (dropped, see
//! [`BackwardSchedule::dropped`]).

use linrec_spec::launch::{KernelConfig, KernelParam, SizeExpr, SizeSym};
use linrec_spec::{Role, Spec};

use super::{
    BLOCK_THREADS, MatmulChoice, MatmulPath, Schedule, ScheduleError, Tile, TileDims, alloc,
    barriers, check_config, check_plan, decay_param, entry_name, input_params, shared_memory_limit,
};
use crate::lower::{Target, Vendor};
use crate::plan::{Direction, Op, Plan, Sink, ValueId};

/// A backward kernel laid out for one target: what [`crate::emit::backward`] builds.
///
/// [`BLOCK_THREADS`] threads per workgroup on the portable path, eight warps
/// ([`super::TENSOR_CORE_THREADS`]) on tensor cores.
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardSchedule {
    /// Phase 1: the forward plan kept to the state (`output` and `state_out` are both its
    /// state sink). Its frame (entry, params, grid, scratch) is the kernel's.
    pub states: Schedule,
    /// Phase 2: the backward plan (`output` and `state_out` are both its `dh` sink).
    pub grads: Schedule,
    /// `dh`, carried across chunks in phase 2 (where `grad_in state_out` lives).
    pub dstate: Tile,
    /// [`BLOCK_THREADS`] slots through which a `sum` reduces.
    pub reduce: Tile,
    /// The phase-2 sinks the kernel stores: gradients by role and `dh`.
    pub sinks: Vec<(Sink, ValueId)>,
    /// Gradients the plan derives but the kernel does not write (a decay-rate input's).
    pub dropped: Vec<Role>,
}

impl BackwardSchedule {
    /// The launch metadata of the kernel.
    pub fn kernel_info(&self) -> linrec_spec::launch::KernelInfo {
        self.grads.kernel_info()
    }

    /// The kernel's entry point.
    pub fn entry(&self) -> &str {
        &self.grads.entry
    }
}

/// Lays out the backward kernel of `spec` (forward plan `fwd`, backward plan `bwd`) for
/// `target` and `config`. The config is the forward's: `initial_state` reads `h0` and writes
/// `dh0`, `final_state` reads `dht`. `choice` is accepted for symmetry with the forward; every
/// backward kernel uses the portable matmuls for now (the schedule text says so).
pub fn backward(
    fwd: &Plan,
    bwd: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
) -> Result<BackwardSchedule, ScheduleError> {
    check_config(config)?;
    let err_in = |plan: &Plan| {
        let plan = plan.clone();
        move |node: usize, why: String| ScheduleError::Plan {
            plan: plan.name.clone(),
            node,
            op: plan
                .nodes
                .get(node)
                .map(|n| n.op.to_string())
                .unwrap_or_default(),
            why,
        }
    };
    if fwd.direction != Direction::Forward || bwd.direction != Direction::Backward {
        return Err(err_in(bwd)(
            0,
            "the backward kernel takes a forward and a backward plan".into(),
        ));
    }
    let states_plan = fwd.keep_sinks(|s| s == Sink::StateOut);
    check_plan(&states_plan, &err_in(&states_plan), true)?;
    check_plan(bwd, &err_in(bwd), true)?;
    // Both phases run their elementwise chains fused (plan::fuse; no matrix cores here).
    let fusing = crate::plan::FuseOptions { matmul_sums: true };
    let states_plan = super::order::by_level(&crate::plan::fuse(&states_plan, &fusing));

    let state_out = states_plan
        .sinks
        .first()
        .map(|(_, v)| *v)
        .ok_or_else(|| err_in(fwd)(0, "the plan has no state_out sink".into()))?;
    let dropped: Vec<Role> = bwd
        .sinks
        .iter()
        .filter_map(|(s, _)| match s {
            Sink::Grad(Role::DecayRate) => Some(Role::DecayRate),
            _ => None,
        })
        .collect();
    // The dropped gradients' nodes go too.
    let bwd = &super::order::by_level(&crate::plan::fuse(
        &bwd.keep_sinks(|s| s != Sink::Grad(Role::DecayRate)),
        &fusing,
    ));
    let sinks: Vec<(Sink, ValueId)> = bwd.sinks.clone();
    let state_grad = sinks
        .iter()
        .find(|(s, _)| *s == Sink::StateGrad)
        .map(|(_, v)| *v)
        .ok_or_else(|| err_in(bwd)(0, "the backward plan has no state_grad sink".into()))?;
    for (sink, v) in &sinks {
        let shape = &bwd.node(*v).shape.0;
        let ok = match sink {
            Sink::Grad(Role::Query | Role::Key) => {
                shape.as_slice() == [crate::plan::Dim::C, crate::plan::Dim::K]
            }
            Sink::Grad(Role::Value) => {
                shape.as_slice() == [crate::plan::Dim::C, crate::plan::Dim::V]
            }
            Sink::Grad(Role::Gate | Role::Beta) => shape.as_slice() == [crate::plan::Dim::C],
            Sink::StateGrad => shape.as_slice() == [crate::plan::Dim::K, crate::plan::Dim::V],
            _ => false,
        };
        if !ok {
            return Err(err_in(bwd)(
                v.0,
                format!("the kernel cannot store a {sink:?} sink of this shape"),
            ));
        }
    }

    // One workgroup owns all of V. Tensor cores (NVIDIA, 16-bit inputs; or that layout
    // emulated) when both phases' operand tiles fit in shared memory: the phases never run at
    // once, so they share the arena and it is the larger of the two.
    let dims = TileDims::new(config, config.value_dim);
    let sink_values: Vec<ValueId> = sinks.iter().map(|(_, v)| *v).collect();
    let sixteen_bit = config.dtype != linrec_spec::launch::ElementType::F32;
    let wanted = match choice {
        MatmulChoice::Auto if sixteen_bit && target.vendor() == Vendor::Nvidia => {
            MatmulPath::TensorCore
        }
        MatmulChoice::Emulated if sixteen_bit => MatmulPath::Emulated,
        _ => MatmulPath::Portable,
    };
    let layouts = |operands: bool, by_level: bool| {
        let placing = alloc::Placing {
            by_level,
            ..Default::default()
        };
        (
            alloc::place(
                &states_plan,
                &dims,
                &[state_out],
                operands,
                alloc::Reuse::Never,
                false,
                placing,
            ),
            alloc::place(
                bwd,
                &dims,
                &sink_values,
                operands,
                alloc::Reuse::Never,
                true,
                placing,
            ),
        )
    };
    let mut fallback = None;
    let (matmul, l1, l2) = if wanted == MatmulPath::Portable {
        let (l1, l2) = layouts(false, true);
        (MatmulPath::Portable, l1, l2)
    } else {
        // Tiles kept to their readers' level end (fewer barriers) if the operands still fit.
        let limit = shared_memory_limit(target);
        let arena =
            |l: &(alloc::Layout, alloc::Layout)| 2 * l.0.operand_arena.max(l.1.operand_arena);
        let leveled = layouts(true, true);
        let (l1, l2) = if arena(&leveled) <= limit {
            leveled
        } else {
            layouts(true, false)
        };
        let bytes = 2 * l1.operand_arena.max(l2.operand_arena);
        if bytes <= limit {
            (wanted, l1, l2)
        } else {
            fallback = Some(format!(
                "portable matmuls: the 16-bit operand tiles need {bytes} bytes of shared memory; {target} allows {limit} bytes per workgroup"
            ));
            let (l1, l2) = layouts(false, true);
            (MatmulPath::Portable, l1, l2)
        }
    };
    let arena = l1.operand_arena.max(l2.operand_arena);
    let dstate = Tile {
        offset: l2.state.offset + l2.state.len(),
        ..l2.state
    };
    // Eight warps on tensor cores (as the forward): each warp's share of a K × V product is
    // then small enough for the registers (four warps spilled at K = V = 128).
    let block_threads = match matmul {
        MatmulPath::TensorCore | MatmulPath::Emulated => super::TENSOR_CORE_THREADS,
        _ => BLOCK_THREADS,
    };
    let reduce = Tile {
        offset: l1.scratch.max(l2.scratch),
        rows: block_threads as usize,
        cols: 1,
    };
    // Emulated: the operand arena follows the f32 tiles in scratch.
    let (operand_base, scratch, shared_bytes) = match matmul {
        MatmulPath::TensorCore => (
            0,
            reduce.offset + reduce.len(),
            u32::try_from(2 * arena)
                .map_err(|_| err_in(bwd)(0, format!("{} bytes of shared memory", 2 * arena)))?,
        ),
        MatmulPath::Emulated => {
            let base = reduce.offset + reduce.len();
            (base, base + arena, 0)
        }
        _ => (0, reduce.offset + reduce.len(), 0),
    };

    let decay = decay_param(spec);
    let reads_decay = |p: &Plan| p.nodes.iter().any(|n| n.op == Op::ConstantGate);
    if (reads_decay(fwd) || reads_decay(bwd)) && decay.is_none() {
        return Err(err_in(fwd)(
            0,
            "the spec has no constant decay to read".into(),
        ));
    }

    let mut params = input_params(spec, config);
    params.push(KernelParam::GradOutput);
    if config.final_state {
        params.push(KernelParam::GradFinalState);
    }
    for (sink, _) in &sinks {
        if let Sink::Grad(role) = sink {
            params.push(KernelParam::Grad(*role));
        }
    }
    if config.initial_state {
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
    let grid = [
        SizeExpr::Const(1),
        SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::H)),
        SizeExpr::Const(1),
    ];
    if fallback.is_none() && wanted == MatmulPath::Portable && sixteen_bit {
        if let MatmulChoice::Auto | MatmulChoice::EmulatedMatrixCore(_) = choice {
            if target.vendor() == Vendor::Amd
                || matches!(choice, MatmulChoice::EmulatedMatrixCore(_))
            {
                fallback = Some(
                    "portable matmuls: backward kernels do not use AMD matrix cores yet".into(),
                );
            }
        }
    }

    let phase = |plan: &Plan, layout: alloc::Layout, carried: Tile, sinks: &[ValueId], out| {
        let (barrier_before, barrier_before_sinks) = barriers(
            plan,
            &layout.values,
            &layout.operands,
            matmul,
            (layout.state, carried),
            sinks,
        );
        Schedule {
            spec_name: spec.name.clone(),
            spec_hash: spec.hash().hex(),
            target,
            config: *config,
            entry: entry_name(&spec.name, "bwd"),
            direction: Direction::Backward,
            part: super::Part::Fused,
            plan: plan.clone(),
            block_threads,
            block_v: config.value_dim,
            grid: grid.clone(),
            params: params.clone(),
            values: layout.values,
            barrier_before,
            barrier_before_sinks,
            state: layout.state,
            output: out,
            state_out: out,
            decay: decay.clone(),
            scratch,
            matmul,
            operands: layout.operands,
            operand_arena: arena,
            operand_base,
            shared_bytes,
            tiles_shared: false,
            fallback: fallback.clone(),
            max_registers: (matmul == MatmulPath::TensorCore)
                .then_some(super::TENSOR_CORE_REGISTERS),
        }
    };
    let state_tile = l1.state;
    let states = phase(&states_plan, l1, state_tile, &[state_out], state_out);
    let grads = phase(bwd, l2, dstate, &sink_values, state_grad);
    Ok(BackwardSchedule {
        states,
        grads,
        dstate,
        reduce,
        sinks,
        dropped,
    })
}
