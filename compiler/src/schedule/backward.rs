//! The backward: two kernels per (spec, config, target) that compute every input gradient
//! of a chunkwise forward (DESIGN §5), fla's structure (`chunk_bwd_dh`, then the
//! chunk-parallel `chunk_bwd_dqkwg` / `chunk_bwd_dv`) derived from the backward plan of
//! [`crate::plan::backward`]:
//!
//! 1. **`…_bwd_dh`**, grid `(⌈V / BV⌉, N · H, 1)`, per value block and value head of the
//!    workgroup's GVA group, two sequential phases:
//!    - **states:** the forward plan kept to its state ([`Plan::keep_sinks`]) walks the chunks
//!      forwards from `h0` (or 0), storing the state entering every chunk in
//!      [`KernelParam::ChunkStates`] (fla's `chunk_fwd_h` recomputation). Skipped when
//!      [`KernelParam::ChunkStatesGiven`] says the caller passes the states a split forward
//!      wrote (saving them instead of recomputing);
//!    - **dh:** the backward plan kept to the state gradient walks the chunks in reverse from
//!      `dht` (or 0), storing the gradient of the state leaving every chunk in
//!      [`KernelParam::ChunkStateGrads`]; `dh0` is what is left at the end.
//!
//!    Both phases are per value block (BV = 64 on tensor cores, [`MAX_BLOCK_V`] portable)
//!    when dh's plan never reduces over V — a state column evolves with its value column in
//!    the additive and delta families — else the block is all of V.
//! 2. **`…_bwd`**, grid `(⌈T / (C · P)⌉, N · H, 1)` with P = [`GRAD_CHUNKS_PER_WORKGROUP`]:
//!    every chunk independently — its state and dh read back into their tiles, the backward
//!    plan kept to the input gradients, the chunk's rows of every gradient stored. A
//!    workgroup owns all V columns (the plan reduces over V: `dq = dO·hᵀ + …`) and walks the
//!    value heads of its GVA group: `dq` and `dk` sum over the group, with HV > H the running
//!    sum in f32 in [`KernelParam::GradAccumulator`] and the last value head of the group
//!    writing the total in the input dtype; with HV = H they are written directly. P chunks a
//!    workgroup bound the scratch (f32 tiles a workgroup) while leaving ~⌈T / (C · P)⌉ · N · H
//!    workgroups for the GPU (the one-kernel backward had N · H, 16 at (1, 32768, 16, 128)).
//!
//! **Memory**: f32 tiles placed by liveness, barriers by hazard, as the forward's; both phases
//! of kernel 1 over one layout. A `sum` over a tile reduces through one slot a thread after
//! the kernel's tiles. On tensor cores a kernel's tiles go to shared memory after its operands
//! when they fit (kernel 1 with value blocks of 64), else to global scratch.
//!
//! Not yet: AMD matrix cores, and the gradient of a constant decay rate read from an input
//! (dropped, see [`BackwardSchedule::dropped`]).

use linrec_spec::launch::{KernelConfig, KernelParam, SizeExpr, SizeSym};
use linrec_spec::{Role, Spec};

use super::{
    BLOCK_THREADS, MAX_BLOCK_V, MatmulChoice, MatmulPath, Schedule, ScheduleError, Tile, TileDims,
    alloc, barriers, check_config, check_plan, decay_param, entry_name, input_params,
    shared_memory_limit,
};
use crate::lower::{Target, Vendor};
use crate::plan::{Direction, Op, Plan, Sink, ValueId};

/// Chunks a workgroup of the backward's gradient kernel walks (see the module docs).
pub const GRAD_CHUNKS_PER_WORKGROUP: usize = 8;

/// A backward laid out for one target: what [`crate::emit::backward`] builds, two kernels.
///
/// [`BLOCK_THREADS`] threads per workgroup on the portable path, eight warps
/// ([`super::TENSOR_CORE_THREADS`]) on tensor cores.
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardSchedule {
    /// Kernel 1, phase 1: the forward plan kept to the state (`output` and `state_out` are
    /// both its state sink). Its frame (entry, params, grid, scratch) is kernel 1's.
    pub states: Schedule,
    /// Kernel 1, phase 2: the backward plan kept to `dh` (`output` and `state_out` are both
    /// its `dh` sink).
    pub dstates: Schedule,
    /// Kernel 1 again with the narrower value blocks of [`super::narrower_widths`], widest
    /// first (`KernelInfo::narrower`), each a whole layout of its own whose kernel 2 is this
    /// one's (only its kernel 1 is emitted).
    pub narrower: Vec<BackwardSchedule>,
    /// Kernel 2: the backward plan kept to the input gradients.
    pub grads: Schedule,
    /// `dh` in kernel 1, carried across chunks (where `grad_in state_out` lives).
    pub dstate: Tile,
    /// `dh` in kernel 2, read from [`KernelParam::ChunkStateGrads`] per chunk.
    pub grads_dstate: Tile,
    /// The slots (one a thread) through which a `sum` reduces, in kernel 1 and kernel 2.
    pub reduce: [Tile; 2],
    /// Kernel 2's sinks: the gradients by role.
    pub sinks: Vec<(Sink, ValueId)>,
    /// Gradients the plan derives but the kernel does not write (a decay-rate input's).
    pub dropped: Vec<Role>,
    /// The split-scan of `dh` over T segments, where dh's update has the form
    /// `dh = d · dh' + U` ([`crate::plan::segment_plan`]): the runtime takes it instead of
    /// kernel 1 for long sequences on few heads when the caller gives the forward's chunk
    /// states (`Route::needs_chunk_states`).
    pub scan: Option<BackwardScan>,
}

/// The backward's split-scan of `dh` over T segments of
/// [`linrec_spec::launch::SEGMENT_CHUNKS`] chunks, kernel 1's dh phase three times over (the
/// forward's split-scan in reverse; [`super::forward_scan`]), then kernel 2.
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardScan {
    /// Every segment but a sequence's first walked in reverse from a zero `dh`: the `dh`
    /// entering it into [`KernelParam::SegmentStates`], its decays' product into
    /// [`KernelParam::SegmentDecays`] ([`super::Part::Segments`]).
    pub segments: Schedule,
    /// The segments from the last to the first, from `dht` (or 0): the `dh` leaving each
    /// ([`super::Part::Combine`]).
    pub combine: Schedule,
    /// Every segment walked in reverse from the `dh` leaving it, storing `chunk_dh`; the
    /// first writes `dh0` ([`super::Part::ScanStates`]).
    pub states: Schedule,
}

impl BackwardSchedule {
    /// The launch metadata: kernel 1, then kernel 2; the split-scan as the route instead.
    pub fn kernel_info(&self) -> linrec_spec::launch::KernelInfo {
        let mut info = self.states.kernel_info();
        info.narrower = self.narrower.iter().map(|n| n.states.launch()).collect();
        info.then.push(self.grads.launch());
        info.instead = self.scan.as_ref().map(|s| {
            Box::new(linrec_spec::launch::Route {
                launches: [&s.segments, &s.combine, &s.states, &self.grads]
                    .into_iter()
                    .map(Schedule::launch)
                    .collect(),
                needs_chunk_states: true,
            })
        });
        info
    }
}

/// Lays out the backward kernels of `spec` (forward plan `fwd`, backward plan `bwd`) for
/// `target` and `config`. The config is the forward's: `initial_state` reads `h0` and writes
/// `dh0`, `final_state` reads `dht`. `choice` picks tensor cores (or their emulation) as for
/// the forward; AMD backward kernels use the portable matmuls (the schedule text says so).
pub fn backward(
    fwd: &Plan,
    bwd: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
) -> Result<BackwardSchedule, ScheduleError> {
    let (mut first, separable) = blocked(fwd, bwd, spec, target, config, choice, None)?;
    // Kernel 1 again with narrower value blocks where dh's plan allows blocks at all.
    if separable {
        for w in super::narrower_widths(first.dstates.block_v) {
            let (v, _) = blocked(fwd, bwd, spec, target, config, choice, Some(w))?;
            first.narrower.push(v);
        }
    }
    let dh = bwd.keep_sinks(|s| s == Sink::StateGrad);
    if crate::plan::segment_plan(&dh).is_some() {
        first.scan = Some(backward_scan(&first.dstates));
    }
    Ok(first)
}

/// The split-scan of `dh` from kernel 1's dh phase: the same layout, with a frame per kernel
/// (segments along z; segment states for the chunk states and `dht`/`dh0` where they are
/// read and written).
fn backward_scan(dh: &Schedule) -> BackwardScan {
    use KernelParam as P;
    let grid = [
        dh.grid[0].clone(),
        dh.grid[1].clone(),
        super::segments_grid(&dh.config),
    ];
    // The frame's params without `drop`, with the segment buffers before the scratch.
    let params = |drop: &[P], segment: &[P]| -> Vec<P> {
        let mut out: Vec<P> = dh
            .params
            .iter()
            .filter(|p| !drop.contains(p))
            .cloned()
            .collect();
        let at = out
            .iter()
            .position(|p| *p == P::Scratch)
            .unwrap_or(out.len());
        out.splice(at..at, segment.iter().cloned());
        out
    };
    let decays = dh.plan.sinks.iter().any(|(s, _)| *s == Sink::StateDecay);
    let mut segment_params = vec![P::SegmentStates];
    if decays {
        segment_params.push(P::SegmentDecays);
    }
    let own = [P::ChunkStates, P::ChunkStatesGiven, P::ChunkStateGrads];
    // Kernel 1's register budget: at `STATES_REGISTERS` dh's plan spills (4–20 bytes).
    let segments = Schedule {
        entry: entry_name(&dh.spec_name, "bwd_dh_segments"),
        part: super::Part::Segments,
        grid: grid.clone(),
        params: params(
            &[&own[..], &[P::GradFinalState, P::GradInitialState]].concat(),
            &segment_params,
        ),
        ..dh.clone()
    };
    let states = Schedule {
        entry: entry_name(&dh.spec_name, "bwd_dh_scan"),
        part: super::Part::ScanStates,
        grid,
        params: params(
            &[P::GradFinalState, P::ChunkStates, P::ChunkStatesGiven],
            &[P::SegmentStates],
        ),
        ..dh.clone()
    };
    BackwardScan {
        combine: super::combine_kernel(&segments),
        segments,
        states,
    }
}

/// [`backward`] with kernel 1's value blocks `dh_width` wide (`None`: the default), and
/// whether dh's plan allows value blocks at all (else kernel 1 owns all of V).
fn blocked(
    fwd: &Plan,
    bwd: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
    dh_width: Option<usize>,
) -> Result<(BackwardSchedule, bool), ScheduleError> {
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
    let bwd = &bwd.keep_sinks(|s| s != Sink::Grad(Role::DecayRate));
    for (sink, v) in &bwd.sinks {
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

    // Kernel 1 walks the chunks per value block when dh's plan keeps the V columns apart
    // (the additive and delta families: a state column evolves with its value column);
    // kernel 2 owns all of V, whose sums (dq = dO·hᵀ + …) it reduces in place.
    // With its decay as a sink where dh's update is `d · dh' + U`, for the split-scan.
    let dh_base = bwd.keep_sinks(|s| s == Sink::StateGrad);
    let dh_base = crate::plan::segment_plan(&dh_base).unwrap_or(dh_base);
    let dh_plan = super::order::by_level(&crate::plan::fuse(&dh_base, &fusing));
    let grads_plan = super::order::by_level(&crate::plan::fuse(
        &bwd.keep_sinks(|s| matches!(s, Sink::Grad(_))),
        &fusing,
    ));
    let dh_sink = dh_plan
        .sinks
        .iter()
        .find(|(s, _)| *s == Sink::StateGrad)
        .map(|(_, v)| *v)
        .ok_or_else(|| err_in(bwd)(0, "the backward plan has no state_grad sink".into()))?;
    let grad_sinks: Vec<(Sink, ValueId)> = grads_plan.sinks.clone();
    let grad_values: Vec<ValueId> = grad_sinks.iter().map(|(_, v)| *v).collect();
    let separable = check_plan(&dh_plan, &err_in(&dh_plan), false).is_ok();

    let sixteen_bit = config.dtype != linrec_spec::launch::ElementType::F32;
    let wanted = match choice {
        c if c.tensor_cores() && sixteen_bit && target.vendor() == Vendor::Nvidia => {
            MatmulPath::TensorCore
        }
        MatmulChoice::Emulated | MatmulChoice::EmulatedCoreMatrices if sixteen_bit => {
            MatmulPath::Emulated
        }
        _ => MatmulPath::Portable,
    };
    let block_v = |path: MatmulPath| match (separable, path, dh_width) {
        (false, ..) => config.value_dim,
        (true, _, Some(w)) => w,
        (true, MatmulPath::Portable, None) => MAX_BLOCK_V,
        (true, _, None) => super::STATES_BLOCK_V,
    };
    // (states, dh, grads) laid out for `path`; `by_level` keeps tiles to their readers' level
    // end (fewer barriers).
    let layouts = |path: MatmulPath, by_level: bool| {
        let operands = path != MatmulPath::Portable;
        let placing = alloc::Placing {
            by_level,
            ..Default::default()
        };
        // The backward keeps mma.sync on sm_90a (`Part::wgmma_pays`).
        let core = choice.wgmma_layouts(target, path, false);
        let blocked = TileDims::new(config, block_v(path)).with_wgmma_layouts(core);
        let whole = TileDims::new(config, config.value_dim).with_wgmma_layouts(core);
        let place = |plan: &Plan,
                     dims: &TileDims,
                     sinks: &[ValueId],
                     carried: bool,
                     how: alloc::Placing| {
            alloc::place(
                plan,
                dims,
                sinks,
                operands,
                alloc::Reuse::Never,
                carried,
                how,
            )
        };
        let from_memory = alloc::Placing {
            from_memory: true,
            direct_sinks: true,
            ..placing
        };
        [
            place(&states_plan, &blocked, &[state_out], false, placing),
            place(&dh_plan, &blocked, &[dh_sink], true, placing),
            place(&grads_plan, &whole, &grad_values, true, from_memory),
        ]
    };
    // Each kernel's operand arena: kernel 1's phases never run at once, so they share theirs.
    let arenas = |l: &[alloc::Layout; 3]| {
        [
            2 * l[0].operand_arena.max(l[1].operand_arena),
            2 * l[2].operand_arena,
        ]
    };
    let mut fallback = None;
    let (matmul, l) = if wanted == MatmulPath::Portable {
        (MatmulPath::Portable, layouts(wanted, true))
    } else {
        let limit = shared_memory_limit(target);
        let fits = |l: &[alloc::Layout; 3]| arenas(l).iter().all(|b| *b <= limit);
        let leveled = layouts(wanted, true);
        let l = if fits(&leveled) {
            leveled
        } else {
            layouts(wanted, false)
        };
        if fits(&l) {
            (wanted, l)
        } else {
            let bytes = arenas(&l).into_iter().max().unwrap_or(0);
            fallback = Some(format!(
                "portable matmuls: the 16-bit operand tiles need {bytes} bytes of shared memory; {target} allows {limit} bytes per workgroup"
            ));
            (MatmulPath::Portable, layouts(MatmulPath::Portable, true))
        }
    };
    let [l1, l2, l3] = l;
    let arena = [l1.operand_arena.max(l2.operand_arena), l3.operand_arena];
    let carried = |state: Tile| Tile {
        offset: state.offset + state.len(),
        ..state
    };
    let (dstate, grads_dstate) = (carried(l2.state), carried(l3.state));
    // Eight warps on tensor cores (as the forward): each warp's share of a K × V product is
    // then small enough for the registers (four warps spilled at K = V = 128).
    let block_threads = match matmul {
        MatmulPath::TensorCore | MatmulPath::Emulated => super::TENSOR_CORE_THREADS,
        _ => BLOCK_THREADS,
    };
    // Each kernel's sum slots follow its phases' tiles.
    let slots = |offset: u64| Tile {
        offset,
        rows: block_threads as usize,
        cols: 1,
    };
    let reduce = [slots(l1.scratch.max(l2.scratch)), slots(l3.scratch)];
    // (operand base, scratch, shared bytes, tiles on chip) of a kernel with this operand arena
    // and sum slots. Tensor cores: the f32 tiles join the operands in shared memory when they
    // fit (kernel 1 at BV 64: ~100 KB); emulated: the operand arena follows the f32 tiles in
    // scratch.
    let frame = |arena: u64, reduce: Tile| -> Result<(u64, u64, u32, bool), ScheduleError> {
        let tiles_end = reduce.offset + reduce.len();
        let bytes = |b: u64| {
            u32::try_from(b).map_err(|_| err_in(bwd)(0, format!("{b} bytes of shared memory")))
        };
        Ok(match matmul {
            MatmulPath::TensorCore => {
                let on_chip = super::tiles_offset(2 * arena) + 4 * tiles_end;
                if on_chip <= shared_memory_limit(target) {
                    (0, 0, bytes(on_chip)?, true)
                } else {
                    (0, tiles_end, bytes(2 * arena)?, false)
                }
            }
            MatmulPath::Emulated => (tiles_end, tiles_end + arena, 0, false),
            _ => (0, tiles_end, 0, false),
        })
    };
    let frames = [frame(arena[0], reduce[0])?, frame(arena[1], reduce[1])?];

    let decay = decay_param(spec);
    let reads_decay = |p: &Plan| p.nodes.iter().any(|n| n.op == Op::ConstantGate);
    if (reads_decay(fwd) || reads_decay(bwd)) && decay.is_none() {
        return Err(err_in(fwd)(
            0,
            "the spec has no constant decay to read".into(),
        ));
    }

    // Kernel 1: the states (unless given) and dh; kernel 2: the input gradients.
    let common = input_params(spec, config);
    let mut dh_params = common.clone();
    dh_params.push(KernelParam::GradOutput);
    if config.final_state {
        dh_params.push(KernelParam::GradFinalState);
    }
    if config.initial_state {
        dh_params.push(KernelParam::GradInitialState);
    }
    dh_params.extend([
        KernelParam::ChunkStates,
        KernelParam::ChunkStatesGiven,
        KernelParam::ChunkStateGrads,
    ]);
    let mut grad_params = common;
    grad_params.push(KernelParam::GradOutput);
    for (sink, _) in &grad_sinks {
        if let Sink::Grad(role) = sink {
            grad_params.push(KernelParam::Grad(*role));
        }
    }
    grad_params.extend([
        KernelParam::ChunkStates,
        KernelParam::ChunkStateGrads,
        KernelParam::GradAccumulator(Role::Query),
        KernelParam::GradAccumulator(Role::Key),
    ]);
    let scalars = [
        KernelParam::Scratch,
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ];
    dh_params.extend(scalars.clone());
    grad_params.extend(scalars);

    let dh_block_v = block_v(matmul);
    let pairs = SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::H));
    let dh_grid = [
        SizeExpr::ceil_div(
            SizeExpr::Sym(SizeSym::V),
            SizeExpr::Const(dh_block_v as u64),
        ),
        pairs.clone(),
        SizeExpr::Const(1),
    ];
    let grads_grid = [
        SizeExpr::ceil_div(
            SizeExpr::Sym(SizeSym::T),
            SizeExpr::Const((config.chunk * GRAD_CHUNKS_PER_WORKGROUP) as u64),
        ),
        pairs,
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

    struct Frame<'p> {
        entry: String,
        part: super::Part,
        block_v: usize,
        grid: &'p [SizeExpr; 3],
        params: &'p [KernelParam],
        arena: u64,
        frame: (u64, u64, u32, bool),
    }
    let phase = |plan: &Plan,
                 layout: alloc::Layout,
                 carried: Tile,
                 sinks: &[ValueId],
                 out,
                 k: &Frame<'_>| {
        let (barrier_before, barrier_before_sinks) = barriers(
            plan,
            &layout.values,
            &layout.operands,
            matmul,
            (layout.state, carried),
            sinks,
            k.part == super::Part::Grads,
        );
        let (operand_base, scratch, shared_bytes, tiles_shared) = k.frame;
        Schedule {
            spec_name: spec.name.clone(),
            spec_hash: spec.hash().hex(),
            target,
            config: *config,
            entry: k.entry.clone(),
            direction: Direction::Backward,
            part: k.part,
            plan: plan.clone(),
            block_threads,
            block_v: k.block_v,
            grid: k.grid.clone(),
            params: k.params.to_vec(),
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
            operand_arena: k.arena,
            operand_base,
            shared_bytes,
            tiles_shared,
            fallback: fallback.clone(),
            max_registers: (matmul == MatmulPath::TensorCore)
                .then_some(super::TENSOR_CORE_REGISTERS),
            wgmma: choice.wgmma(target, matmul, false),
            tma: Vec::new(),
        }
    };
    let dh_frame = Frame {
        entry: entry_name(
            &spec.name,
            &match dh_width {
                Some(w) => format!("bwd_dh_v{w}"),
                None => "bwd_dh".into(),
            },
        ),
        part: super::Part::Fused,
        block_v: dh_block_v,
        grid: &dh_grid,
        params: &dh_params,
        arena: arena[0],
        frame: frames[0],
    };
    let grads_frame = Frame {
        entry: entry_name(&spec.name, "bwd"),
        part: super::Part::Grads,
        block_v: config.value_dim,
        grid: &grads_grid,
        params: &grad_params,
        arena: arena[1],
        frame: frames[1],
    };
    let s1 = l1.state;
    let states = phase(&states_plan, l1, s1, &[state_out], state_out, &dh_frame);
    let dstates = phase(&dh_plan, l2, dstate, &[dh_sink], dh_sink, &dh_frame);
    let last = grad_values.first().copied().unwrap_or(ValueId(0));
    let grads = phase(
        &grads_plan,
        l3,
        grads_dstate,
        &grad_values,
        last,
        &grads_frame,
    );
    let schedule = BackwardSchedule {
        states,
        dstates,
        narrower: Vec::new(),
        grads,
        dstate,
        grads_dstate,
        reduce,
        sinks: grad_sinks,
        dropped,
        scan: None,
    };
    Ok((schedule, separable))
}
