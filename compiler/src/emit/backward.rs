//! The backward's two kernels (layout in [`crate::schedule::backward`]), each walking the
//! value heads of its workgroup's GVA group: `…_bwd_dh` recomputes the state entering every
//! chunk into `chunk_states` (unless given), then sweeps the chunks in reverse carrying `dh`
//! and storing it per chunk into `chunk_dh`; `…_bwd` takes its group of chunks one at a
//! time, reads each one's state and `dh` back and stores the chunk's rows of every gradient.
//! The plans' nodes are emitted by the same [`Kernel::node`] as the forward's, each phase
//! with its own [`crate::schedule::Schedule`].

use linrec_spec::Role;
use linrec_spec::launch::{ElementType, KernelParam};
use melior::{
    Context,
    ir::{Block, BlockLike, Region, RegionLike, Value},
};

use super::EmitError;
use super::builder::{Builder, Cmp, R};
use super::copy::Carried;
use super::kernel::{Env, Kernel, Phase};
use super::target::TargetOps;
use crate::plan::{Op, Sink};
use crate::schedule::BackwardSchedule;

/// Builds the backward's `gpu.func`s of `bs` (kernel 1 and its narrower variants, kernel 2)
/// into the `gpu.module` body `module`.
pub(super) fn build<'c>(ctx: &'c Context, bs: &BackwardSchedule, module: &Block<'c>) -> R<()> {
    fn kernel<'s, 'c>(
        ctx: &'c Context,
        s: &'s crate::schedule::Schedule,
        bs: &'s BackwardSchedule,
    ) -> Kernel<'s, 'c> {
        Kernel {
            b: Builder::new(ctx),
            t: TargetOps::new(s.target).with_proxy_fence(s.wgmma),
            s,
            bwd: Some(bs),
        }
    }
    let grads = kernel(ctx, &bs.grads, bs);
    if bs.grads.matmul == crate::schedule::MatmulPath::TensorCore {
        grads.declare_smem(module)?;
    }
    // Kernel 1, then its narrower variants (each with its own layout).
    for one in std::iter::once(bs).chain(&bs.narrower) {
        let states = kernel(ctx, &one.states, one);
        let dstates = kernel(ctx, &one.dstates, one);
        dstates.func(module, None, |entry, args, _| {
            let env = dstates.prologue(entry, args, None)?;
            dstates.group_loop(entry, &env, |body, env| {
                dstates.dh_sweep(body, env, &states)
            })
        })?;
    }
    // The split-scan of dh: segments and scan walk the group's value heads as kernel 1 does;
    // the combine owns one value head.
    if let Some(scan) = &bs.scan {
        let segments = kernel(ctx, &scan.segments, bs);
        segments.func(module, None, |entry, args, _| {
            let env = segments.prologue(entry, args, None)?;
            segments.group_loop(entry, &env, |body, env| segments.segment(body, env))
        })?;
        kernel(ctx, &scan.combine, bs).build(module)?;
        let states = kernel(ctx, &scan.states, bs);
        states.func(module, None, |entry, args, _| {
            let env = states.prologue(entry, args, None)?;
            states.group_loop(entry, &env, |body, env| states.scan_states(body, env))
        })?;
    }
    grads.func(module, None, |entry, args, _| {
        let env = grads.prologue(entry, args, None)?;
        grads.group_loop(entry, &env, |body, env| {
            grads.chunk_loop(body, env, Phase::Grads).map(|_| ())
        })
    })
}

impl<'c> Kernel<'_, 'c> {
    fn layout(&self) -> R<&BackwardSchedule> {
        self.bwd
            .ok_or_else(|| EmitError::Schedule("a backward step in a forward kernel".into()))
    }

    /// `for g in 0..HV/H`: `per_head` for value head `h · group + g`.
    fn group_loop(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        per_head: impl for<'x> Fn(&'x Block<'c>, &Env<'c, 'x>) -> R<()>,
    ) -> R<()> {
        let b = &self.b;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let body = Block::new(&[(b.index(), b.loc)]);
        {
            let g: Value = body
                .argument(0)
                .map_err(|e| EmitError::Build {
                    op: "scf.for argument".into(),
                    detail: e.to_string(),
                })?
                .into();
            let first = b.muli(&body, env.h, env.group)?;
            let hv = b.addi(&body, first, g)?;
            let decay = match &self.s.decay {
                Some(p) => Some(b.load(&body, env.arg(p)?, hv)?),
                None => None,
            };
            let env = Env {
                hv,
                g: Some(g),
                decay,
                ..env.clone()
            };
            per_head(&body, &env)?;
            b.yield_(&body, &[])?;
        }
        let region = Region::new();
        region.append_block(body);
        b.push0(
            blk,
            b.op("scf.for")
                .add_operands(&[zero, env.group, one])
                .add_regions([region]),
        )
    }

    /// Kernel 1 for one value head: the chunk states (unless the caller passed the forward's),
    /// then `dh` from the last chunk to the first, then `dh0`.
    fn dh_sweep(&self, blk: &Block<'c>, env: &Env<'c, '_>, states: &Kernel<'_, 'c>) -> R<()> {
        let b = &self.b;
        let zero = b.ci(blk, 0)?;
        let given = b.to_index(blk, env.arg(&KernelParam::ChunkStatesGiven)?)?;
        let recompute = b.cmpi(blk, Cmp::Ule, given, zero)?;
        b.if_(blk, recompute, |blk| {
            states.init_state(blk, env)?;
            self.t.barrier(b, blk)?;
            states.chunk_loop(blk, env, Phase::States)?;
            self.t.barrier(b, blk)
        })?;
        self.init_dstate(blk, env)?;
        self.t.barrier(b, blk)?;
        self.chunk_loop(blk, env, Phase::DStates)?;
        if self.s.config.initial_state {
            self.store_dh0(blk, env)?;
        }
        self.t.barrier(b, blk)
    }

    /// Kernel 1, one chunk in reverse: `chunk_dh[i] ← dh`, dh's plan, `dh ← its sink`.
    pub(super) fn dstates_chunk<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        i: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<()> {
        let b = &self.b;
        let dstate = self.layout()?.dstate;
        self.store_chunk_tile(blk, env, i, &KernelParam::ChunkStateGrads, dstate)?;
        self.nodes(blk, env, start, len, carried)?;
        self.copy_tile(blk, env, self.tile(self.s.state_out)?, dstate)?;
        self.t.barrier(b, blk)
    }

    /// Kernel 2, one chunk: `S ← chunk_states[i]` and `dh ← chunk_dh[i]` (those the plan
    /// reads in f32; a matmul operand alone is copied by its node), the plan, the chunk's
    /// gradient rows.
    pub(super) fn grads_chunk<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        i: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<()> {
        let bs = self.layout()?;
        if self.s.in_tile(&Op::StateIn) {
            self.load_chunk_tile(blk, env, i, &KernelParam::ChunkStates, self.s.state)?;
        }
        if self.s.in_tile(&Op::GradIn(Sink::StateOut)) {
            let dstate = bs.grads_dstate;
            self.load_chunk_tile(blk, env, i, &KernelParam::ChunkStateGrads, dstate)?;
        }
        self.t.barrier(&self.b, blk)?;
        self.nodes(blk, env, start, len, carried)?;
        for (sink, v) in &bs.sinks {
            match sink {
                // Stored by its node already.
                _ if self.s.values[v.0] == crate::schedule::Placement::Output => {}
                Sink::Grad(role) => self.store_grad(blk, env, start, len, *role, *v)?,
                other => {
                    return Err(EmitError::Schedule(format!(
                        "the gradient kernel cannot store a {other:?} sink"
                    )));
                }
            }
        }
        self.t.barrier(&self.b, blk)
    }

    /// The chunk's valid rows of the gradient of `role` from tile `v` ([`Self::store_grad_at`]
    /// per element).
    fn store_grad(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        role: Role,
        v: crate::plan::ValueId,
    ) -> R<()> {
        let tile = self.tile(v)?;
        self.strided_map(
            blk,
            env,
            tile.len(),
            |blk, e| self.load_tile(blk, env, tile, e),
            |blk, e, x| {
                let (r, c) = self.row_col(blk, e, tile.cols)?;
                self.store_grad_at(blk, env, (start, len), role, (r, c), x)
            },
        )
    }

    /// Element `(r, c)` = `x` of the gradient of `role` in the chunk whose rows start at
    /// `start` (`len` valid; columns past the gradient's skipped, as are rows past `len`): dq,
    /// dk at the q/k head (summed over the group's value heads through the f32 accumulator
    /// when HV > H), dv at the value head, dg and dβ (f32, column 0) at the value head.
    pub(super) fn store_grad_at(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        (start, len): (Value<'c, '_>, Value<'c, '_>),
        role: Role,
        (r, c): (Value<'c, '_>, Value<'c, '_>),
        x: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        let out = env.arg(&KernelParam::Grad(role))?;
        let dtype = self.dtype();
        let kd = self.s.config.key_dim as i64;
        let cols = match role {
            Role::Query | Role::Key => b.ci(blk, kd)?,
            Role::Value => env.vvalid,
            _ => b.ci(blk, 1)?,
        };
        let row_ok = b.cmpi(blk, Cmp::Ult, r, len)?;
        let col_ok = b.cmpi(blk, Cmp::Ult, c, cols)?;
        let ok = b.bin(blk, "arith.andi", row_ok, col_ok)?;
        b.if_(blk, ok, |blk| {
            let row = b.addi(blk, start, r)?;
            match role {
                Role::Query | Role::Key => {
                    let head = b.muli(blk, row, env.heads)?;
                    let head = b.addi(blk, head, env.h)?;
                    let idx = b.mad(blk, c, head, kd)?;
                    // Without GVA (a uniform branch) the gradient is stored as it is.
                    let one = b.ci(blk, 1)?;
                    let single = b.cmpi(blk, Cmp::Ule, env.group, one)?;
                    b.if_(blk, single, |blk| {
                        self.t.store_f32(b, blk, x, out, idx, dtype)
                    })?;
                    let grouped = b.cmpi(blk, Cmp::Ult, one, env.group)?;
                    b.if_(blk, grouped, |blk| {
                        self.grad_group_sum(blk, env, role, idx, x)
                    })
                }
                Role::Value => {
                    let idx = self.value_index(blk, env, row, c)?;
                    self.t.store_f32(b, blk, x, out, idx, dtype)
                }
                _ => {
                    let head = b.muli(blk, row, env.vheads)?;
                    let idx = b.addi(blk, head, env.hv)?;
                    self.t.store_f32(b, blk, x, out, idx, ElementType::F32)
                }
            }
        })
    }

    /// dq or dk element `idx` = `x` from value head `g` of a GVA group (HV > H): value head 0
    /// starts the sum in the f32 accumulator, the next ones add to it, the last writes the
    /// total in the input dtype.
    fn grad_group_sum(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        role: Role,
        idx: Value<'c, '_>,
        x: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        let out = env.arg(&KernelParam::Grad(role))?;
        let dtype = self.dtype();
        let acc = env.arg(&KernelParam::GradAccumulator(role))?;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let g = env
            .g
            .ok_or_else(|| EmitError::Schedule("a gradient store outside the group loop".into()))?;
        let last_g = b.subi(blk, env.group, one)?;
        let later = b.cmpi(blk, Cmp::Ult, zero, g)?;
        let more = b.cmpi(blk, Cmp::Ult, g, last_g)?;
        let last = b.cmpi(blk, Cmp::Ule, last_g, g)?;
        // The running sum: 0 for the first value head, which reads element 0 instead (in
        // bounds).
        let at = b.select(blk, later, idx, zero)?;
        let prev = b.load(blk, acc, at)?;
        let fzero = b.cf32(blk, 0.0)?;
        let prev = b.select(blk, later, prev, fzero)?;
        let sum = b.addf(blk, prev, x)?;
        b.if_(blk, last, |blk| {
            self.t.store_f32(b, blk, sum, out, idx, dtype)
        })?;
        b.if_(blk, more, |blk| b.store(blk, sum, acc, idx))
    }

    /// Element `(r, c)` = `x` of sink `v`, stored by its node (no tile,
    /// [`crate::schedule::Placement::Output`]): a gradient in the gradient kernel, else `o`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_sink(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        rows: (Value<'c, '_>, Value<'c, '_>),
        v: crate::plan::ValueId,
        r: Value<'c, '_>,
        c: Value<'c, '_>,
        x: Value<'c, '_>,
    ) -> R<()> {
        if self.s.part != crate::schedule::Part::Grads {
            return self.store_o(blk, env, rows, r, c, x);
        }
        let role = self
            .layout()?
            .sinks
            .iter()
            .find_map(|(sink, s)| match sink {
                Sink::Grad(role) if *s == v => Some(*role),
                _ => None,
            })
            .ok_or_else(|| EmitError::Schedule(format!("%{} is not a gradient sink", v.0)))?;
        self.store_grad_at(blk, env, rows, role, (r, c), x)
    }

    /// `dh ← dht` (or 0) for this (sequence, value head, value block).
    fn init_dstate(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let dstate = self.layout()?.dstate;
        let dht = if self.s.config.final_state {
            Some(env.arg(&KernelParam::GradFinalState)?)
        } else {
            None
        };
        let scratch = self.tile_mem(env)?;
        self.strided(blk, env, dstate.len(), |blk, e| {
            let x = match dht {
                Some(dht) => {
                    let (k, c) = self.row_col(blk, e, dstate.cols)?;
                    self.masked_column(blk, env, c, |blk, c| {
                        let idx = self.state_index(blk, env, k, c)?;
                        b.load(blk, dht, idx)
                    })?
                }
                None => b.cf32(blk, 0.0)?,
            };
            let at = self.addr(blk, env, dstate, e)?;
            b.store(blk, x, scratch, at)
        })
    }

    /// `dh0 ← dh` for this (sequence, value head, value block).
    pub(super) fn store_dh0(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let dstate = self.layout()?.dstate;
        let dh0 = env.arg(&KernelParam::GradInitialState)?;
        self.strided(blk, env, dstate.len(), |blk, e| {
            let x = self.load_tile(blk, env, dstate, e)?;
            let (k, c) = self.row_col(blk, e, dstate.cols)?;
            let ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
            b.if_(blk, ok, |blk| {
                let idx = self.state_index(blk, env, k, c)?;
                b.store(blk, x, dh0, idx)
            })
        })
    }
}
