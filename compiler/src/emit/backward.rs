//! The backward kernel's frame (layout in [`crate::schedule::backward`]): per value head of the
//! workgroup's GVA group, phase 1 recomputes the state entering every chunk into
//! `chunk_states`, phase 2 sweeps the chunks in reverse with the backward plan, carrying `dh`,
//! and stores each chunk's rows of every gradient. The plan's nodes are emitted by the same
//! [`Kernel::node`] as the forward's, each phase with its own [`crate::schedule::Schedule`].

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
use crate::plan::Sink;
use crate::schedule::BackwardSchedule;

/// Builds the backward `gpu.func` of `bs` into the `gpu.module` body `module`.
pub(super) fn build<'c>(ctx: &'c Context, bs: &BackwardSchedule, module: &Block<'c>) -> R<()> {
    let kernel = |s| Kernel {
        b: Builder::new(ctx),
        t: TargetOps::new(bs.grads.target),
        s,
        bwd: Some(bs),
    };
    let states = kernel(&bs.states);
    let grads = kernel(&bs.grads);
    if bs.grads.matmul == crate::schedule::MatmulPath::TensorCore {
        grads.declare_smem(module)?;
    }
    grads.func(module, None, |entry, args, _| {
        let env = grads.prologue(entry, args, None)?;
        grads.group_loop(entry, &env, &states)
    })
}

impl<'c> Kernel<'_, 'c> {
    fn layout(&self) -> R<&BackwardSchedule> {
        self.bwd
            .ok_or_else(|| EmitError::Schedule("a backward step in a forward kernel".into()))
    }

    /// `for g in 0..HV/H`: both phases for value head `h · group + g`.
    fn group_loop(&self, blk: &Block<'c>, env: &Env<'c, '_>, states: &Kernel<'_, 'c>) -> R<()> {
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
            // Phase 1 unless the caller passed the forward's chunk states.
            let given = b.to_index(&body, env.arg(&KernelParam::ChunkStatesGiven)?)?;
            let recompute = b.cmpi(&body, Cmp::Ule, given, zero)?;
            b.if_(&body, recompute, |blk| {
                states.init_state(blk, &env)?;
                self.t.barrier(b, blk)?;
                states.chunk_loop(blk, &env, Phase::States)?;
                self.t.barrier(b, blk)
            })?;
            self.init_dstate(&body, &env)?;
            self.t.barrier(b, &body)?;
            self.chunk_loop(&body, &env, Phase::Grads)?;
            if self.s.config.initial_state {
                self.store_dh0(&body, &env)?;
            }
            self.t.barrier(b, &body)?;
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

    /// Phase 2, one chunk: `S ← chunk_states[i]`, the backward plan, the chunk's gradient
    /// rows, `dh ← the state gradient`.
    pub(super) fn grads_chunk<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        i: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<()> {
        let b = &self.b;
        let bs = self.layout()?;
        let scratch = self.tile_mem(env)?;
        self.load_chunk_state(blk, env, i)?;
        self.nodes(blk, env, start, len, carried)?;
        for (sink, v) in &bs.sinks {
            match sink {
                Sink::Grad(role) => self.store_grad(blk, env, start, len, *role, *v)?,
                Sink::StateGrad => {
                    let from = self.tile(*v)?;
                    let to = bs.dstate;
                    if from != to {
                        self.strided_map(
                            blk,
                            env,
                            to.len(),
                            |blk, e| self.load_tile(blk, env, from, e),
                            |blk, e, x| {
                                let at = self.addr(blk, env, to, e)?;
                                b.store(blk, x, scratch, at)
                            },
                        )?;
                    }
                }
                other => {
                    return Err(EmitError::Schedule(format!(
                        "the backward kernel cannot store a {other:?} sink"
                    )));
                }
            }
        }
        self.t.barrier(b, blk)
    }

    /// The chunk's valid rows of the gradient of `role` from tile `v`: dq, dk at the q/k head
    /// (summed over the group's value heads through the f32 accumulator when HV > H), dv at
    /// the value head, dg and dβ (f32) at the value head.
    fn store_grad(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        role: Role,
        v: crate::plan::ValueId,
    ) -> R<()> {
        let b = &self.b;
        let tile = self.tile(v)?;
        let out = env.arg(&KernelParam::Grad(role))?;
        let dtype = self.dtype();
        let kd = self.s.config.key_dim as i64;
        match role {
            Role::Query | Role::Key => {
                let acc = env.arg(&KernelParam::GradAccumulator(role))?;
                // g = 0 starts the sum, the last value head of the group writes it out.
                let zero = b.ci(blk, 0)?;
                let one = b.ci(blk, 1)?;
                let g = env.g.ok_or_else(|| {
                    EmitError::Schedule("a gradient store outside the group loop".into())
                })?;
                let last_g = b.subi(blk, env.group, one)?;
                let later = b.cmpi(blk, Cmp::Ult, zero, g)?;
                let more = b.cmpi(blk, Cmp::Ult, g, last_g)?;
                let last = b.cmpi(blk, Cmp::Ule, last_g, g)?;
                self.valid_rows_of(blk, env, tile, len, |blk, r, c, x| {
                    let row = b.addi(blk, start, r)?;
                    let head = b.muli(blk, row, env.heads)?;
                    let head = b.addi(blk, head, env.h)?;
                    let idx = b.mad(blk, c, head, kd)?;
                    // The running sum: 0 for the first value head, which reads element 0
                    // instead (with HV = H the accumulator has only that one).
                    let zero_idx = b.ci(blk, 0)?;
                    let at = b.select(blk, later, idx, zero_idx)?;
                    let prev = b.load(blk, acc, at)?;
                    let zero = b.cf32(blk, 0.0)?;
                    let prev = b.select(blk, later, prev, zero)?;
                    let sum = b.addf(blk, prev, x)?;
                    b.if_(blk, last, |blk| {
                        self.t.store_f32(b, blk, sum, out, idx, dtype)
                    })?;
                    b.if_(blk, more, |blk| b.store(blk, sum, acc, idx))
                })
            }
            Role::Value => self.valid_rows_of(blk, env, tile, len, |blk, r, c, x| {
                let row = b.addi(blk, start, r)?;
                let idx = self.value_index(blk, env, row, c)?;
                self.t.store_f32(b, blk, x, out, idx, dtype)
            }),
            _ => self.strided(blk, env, tile.len(), |blk, r| {
                let ok = b.cmpi(blk, Cmp::Ult, r, len)?;
                b.if_(blk, ok, |blk| {
                    let x = self.load_tile(blk, env, tile, r)?;
                    let row = b.addi(blk, start, r)?;
                    let head = b.muli(blk, row, env.vheads)?;
                    let idx = b.addi(blk, head, env.hv)?;
                    self.t.store_f32(b, blk, x, out, idx, ElementType::F32)
                })
            }),
        }
    }

    /// `store(block, row, col, x)` for each element `x` of `tile` in the chunk's `len` valid
    /// rows (the tile's elements read in unrolled trips, [`Kernel::strided_map`]).
    fn valid_rows_of(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        tile: crate::schedule::Tile,
        len: Value<'c, '_>,
        store: impl for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>, Value<'c, 'x>) -> R<()>,
    ) -> R<()> {
        let b = &self.b;
        self.strided_map(
            blk,
            env,
            tile.len(),
            |blk, e| self.load_tile(blk, env, tile, e),
            |blk, e, x| {
                let (r, c) = self.row_col(blk, e, tile.cols)?;
                let ok = b.cmpi(blk, Cmp::Ult, r, len)?;
                b.if_(blk, ok, |blk| store(blk, r, c, x))
            },
        )
    }

    /// `dh ← dht` (or 0) for this (sequence, value head).
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
                    let idx = self.state_index(blk, env, k, c)?;
                    b.load(blk, dht, idx)?
                }
                None => b.cf32(blk, 0.0)?,
            };
            let at = self.addr(blk, env, dstate, e)?;
            b.store(blk, x, scratch, at)
        })
    }

    /// `dh0 ← dh` for this (sequence, value head).
    fn store_dh0(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let dstate = self.layout()?.dstate;
        let dh0 = env.arg(&KernelParam::GradInitialState)?;
        self.strided(blk, env, dstate.len(), |blk, e| {
            let x = self.load_tile(blk, env, dstate, e)?;
            let (k, c) = self.row_col(blk, e, dstate.cols)?;
            let idx = self.state_index(blk, env, k, c)?;
            b.store(blk, x, dh0, idx)
        })
    }
}
