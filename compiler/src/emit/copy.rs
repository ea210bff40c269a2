//! Token rows of q, k, v from global memory into 16-bit operand tiles, 16 bytes per access,
//! and — in a chunk loop — loaded one chunk ahead.
//!
//! Why: the generic node loop loads one 2-byte element per iteration and stores it before the
//! next load, so each thread waits a full global-memory latency per element — 80 serial loads
//! per thread and chunk for q, k, v at K = V = 128 with 256 threads, most of the forward's time
//! on Hopper (ncu: the stalls sit on the selects that consume those loads). Here a thread moves
//! 8 elements per `ld.global.v4`, issues all of a tile's loads before its stores, and in a
//! chunk loop issues the *next* chunk's loads at the top of the body: they travel while this
//! chunk computes, carried to the next iteration in registers (`scf.for` iteration values),
//! and are stored to shared memory where the load node stood.
//!
//! When: NVIDIA tensor-core kernels (operands in shared memory), 16-bit dtypes, rows whose
//! width, start column and operand-tile pitch are multiples of 8 elements (K, or V and the
//! value block) — known at compile time. A buffer whose base is not 16-byte aligned is read
//! element by element into the same vectors (one uniform branch per tile; the aligned loads
//! are an asm statement so that LLVM cannot merge the two branches, see
//! `TargetOps::global_load_16`). Prefetching keeps at most [`PREFETCH_REGISTERS`] registers
//! per thread in flight, and none in kernels whose f32 tiles are in global scratch (their
//! registers go to the unrolled scratch loops); otherwise the tiles are loaded in place.

use linrec_spec::Role;
use linrec_spec::launch::{ElementType, KernelParam};
use melior::ir::{Block, Type, Value};

use super::builder::{Cmp, R};
use super::kernel::{Env, Kernel};
use crate::lower::Vendor;
use crate::plan::{Op, Sink};
use crate::schedule::OperandTile;

/// Elements per access: 16 bytes of a 16-bit dtype.
pub(super) const LANES: usize = 8;

/// Registers per thread that prefetched rows may hold across a chunk (4 per vector): room left
/// under the 255-register cap for the matmul fragments of the D ≤ 128 kernels (~170 used).
const PREFETCH_REGISTERS: usize = 48;

/// One node's rows copied 16 bytes at a time.
#[derive(Clone, Debug)]
pub(super) struct RowCopy {
    /// The plan node (a load of q, k, v or dO).
    pub node: usize,
    tile: OperandTile,
    role: Role,
    param: KernelParam,
}

impl<'c> Kernel<'_, 'c> {
    /// The node's rows as a 16-byte copy, if it loads token rows into an operand tile only and
    /// the layout allows it.
    pub(super) fn row_copy(&self, node: usize) -> Option<RowCopy> {
        let (role, param) = match self.s.plan.nodes[node].op {
            Op::Load(role) => (role, KernelParam::Input(role)),
            Op::GradIn(Sink::Output) => (Role::Value, KernelParam::GradOutput),
            _ => return None,
        };
        if self.s.values[node].tile().is_some() || self.tma_load(node).is_some() {
            return None;
        }
        let tile = self.s.operands.get(node).copied().flatten()?;
        let cfg = &self.s.config;
        let width_ok = match role {
            Role::Query | Role::Key => cfg.key_dim % LANES == 0,
            // The value block starts at a multiple of its width, so the valid columns
            // `min(BV, V − v0)` are a multiple of 8 too: a vector is all valid or all past V.
            Role::Value => cfg.value_dim % LANES == 0,
            _ => false,
        };
        let ok = self.s.target.vendor() == Vendor::Nvidia
            && self.s.matmul.operands_on_chip()
            && matches!(self.dtype(), ElementType::Bf16 | ElementType::F16)
            && width_ok
            && tile.cols % LANES == 0
            && tile.stride % LANES == 0
            && tile.offset % LANES as u64 == 0;
        ok.then_some(RowCopy {
            node,
            tile,
            role,
            param,
        })
    }

    /// The copies a chunk loop loads one chunk ahead: every [`Self::row_copy`] of the plan if
    /// their vectors fit in [`PREFETCH_REGISTERS`], else none.
    pub(super) fn prefetched(&self) -> Vec<RowCopy> {
        // With the f32 tiles in scratch the registers go to the unrolled scratch loops
        // (`strided_map`) instead: both together spill. The backward's gradient kernel needs
        // its registers for the gradients it stores from the accumulators (simple_gla at
        // K = V = 64 spilled 40 bytes with rows loaded ahead).
        if !self.s.tiles_shared || self.s.part == crate::schedule::Part::Grads {
            return Vec::new();
        }
        let copies: Vec<_> = (0..self.s.plan.nodes.len())
            .filter_map(|i| self.row_copy(i))
            .collect();
        let vectors: usize = copies.iter().map(|c| self.vectors_per_thread(c)).sum();
        if vectors * 4 <= PREFETCH_REGISTERS {
            copies
        } else {
            Vec::new()
        }
    }

    /// The vector type of one access.
    pub(super) fn row_vector(&self) -> R<Type<'c>> {
        Ok(Type::vector(&[LANES as u64], self.operand_type()?))
    }

    /// Vectors each thread moves for `copy`.
    pub(super) fn vectors_per_thread(&self, copy: &RowCopy) -> usize {
        let total = copy.tile.rows * copy.tile.cols / LANES;
        total.div_ceil(self.s.block_threads as usize)
    }

    /// Whether every buffer of `copies` starts 16-byte aligned (a uniform `i1`).
    pub(super) fn rows_aligned<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        copies: &[RowCopy],
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let mut all = None;
        for copy in copies {
            let ok = self.aligned_16(blk, env.arg(&copy.param)?)?;
            all = Some(match all {
                Some(prev) => b.bin(blk, "arith.andi", prev, ok)?,
                None => ok,
            });
        }
        all.ok_or_else(|| super::EmitError::Schedule("an alignment check of no buffer".into()))
    }

    /// Whether buffer `mem` starts 16-byte aligned (a uniform `i1`).
    pub(super) fn aligned_16<'a>(
        &self,
        blk: &'a Block<'c>,
        mem: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let ptr = b.base_address(blk, mem)?;
        let fifteen = b.ci(blk, 15)?;
        let low = b.bin(blk, "arith.andi", ptr, fifteen)?;
        let zero = b.ci(blk, 0)?;
        b.cmpi(blk, Cmp::Eq, low, zero)
    }

    /// Issues this thread's loads of rows `start ..` of the chunk (`len` valid, at least 1)
    /// for `copy`: [`Self::vectors_per_thread`] vectors, rows past `len` clamped to the last
    /// valid one (zeroed when stored). `aligned`: 16-byte loads, else element loads.
    pub(super) fn issue_rows<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        (start, len): (Value<'c, '_>, Value<'c, '_>),
        copy: &RowCopy,
        aligned: Value<'c, '_>,
    ) -> R<Vec<Value<'c, 'a>>> {
        let b = &self.b;
        let n = self.vectors_per_thread(copy);
        let mem = env.arg(&copy.param)?;
        let mut indices = Vec::with_capacity(n);
        for step in 0..n {
            let (e, _) = self.vector_slot(blk, env, copy, step, true)?;
            let (r, c) = self.vector_row_col(blk, e, copy.tile, copy.tile.cols / LANES)?;
            let lanes = b.ci(blk, LANES as i64)?;
            let c = b.muli(blk, c, lanes)?;
            let one = b.ci(blk, 1)?;
            let last_row = b.subi(blk, len, one)?;
            let r = b.bin(blk, "arith.minui", r, last_row)?;
            let row = b.addi(blk, start, r)?;
            let idx = match copy.role {
                Role::Query | Role::Key => {
                    let head = b.muli(blk, row, env.heads)?;
                    let head = b.addi(blk, head, env.h)?;
                    b.mad(blk, c, head, self.s.config.key_dim as i64)?
                }
                _ => {
                    // Columns past the valid ones read the block's first (in bounds).
                    let col_ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
                    let zero = b.ci(blk, 0)?;
                    let c = b.select(blk, col_ok, c, zero)?;
                    self.value_index(blk, env, row, c)?
                }
            };
            indices.push(idx);
        }
        self.load_vectors(blk, mem, aligned, &indices)
    }

    /// One row vector (8 elements of the dtype) of `mem` from each element index of
    /// `indices`: 16-byte loads when `aligned` (a uniform `i1`: the buffer starts 16-byte
    /// aligned), else element loads of the same vectors.
    pub(super) fn load_vectors<'a>(
        &self,
        blk: &'a Block<'c>,
        mem: Value<'c, '_>,
        aligned: Value<'c, '_>,
        indices: &[Value<'c, '_>],
    ) -> R<Vec<Value<'c, 'a>>> {
        let b = &self.b;
        let ty = self.row_vector()?;
        let types = vec![ty; indices.len()];
        b.if_values(
            blk,
            aligned,
            &types,
            |blk| {
                let base = b.base_address(blk, mem)?;
                let mut v = Vec::with_capacity(indices.len());
                for &idx in indices {
                    let addr = b.mad(blk, base, idx, 2)?;
                    let words = self.t.global_load_16(b, blk, addr)?;
                    v.push(b.cast(blk, "vector.bitcast", words, ty)?);
                }
                b.yield_(blk, &v)
            },
            |blk| {
                let mut v = Vec::with_capacity(indices.len());
                for &idx in indices {
                    let mut elems = Vec::with_capacity(LANES);
                    for l in 0..LANES {
                        let off = b.ci(blk, l as i64)?;
                        let at = b.addi(blk, idx, off)?;
                        elems.push(b.load(blk, mem, at)?);
                    }
                    v.push(
                        b.push(
                            blk,
                            b.op("vector.from_elements")
                                .add_operands(&elems)
                                .add_results(&[ty]),
                        )?,
                    );
                }
                b.yield_(blk, &v)
            },
        )
    }

    /// Stores vectors issued by [`Self::issue_rows`] into `copy`'s operand tile, rows past
    /// `len` and value columns past the block's valid ones as 0.
    pub(super) fn store_rows(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        len: Value<'c, '_>,
        copy: &RowCopy,
        vectors: &[Value<'c, '_>],
    ) -> R<()> {
        let b = &self.b;
        let smem = self.operand_mem(env)?;
        let zeros = self.zero_vector(blk, self.row_vector()?)?;
        for (step, &v) in vectors.iter().enumerate() {
            let (e, partial) = self.vector_slot(blk, env, copy, step, false)?;
            let (r, c) = self.vector_row_col(blk, e, copy.tile, copy.tile.cols / LANES)?;
            let lanes = b.ci(blk, LANES as i64)?;
            let c = b.muli(blk, c, lanes)?;
            let mut ok = b.cmpi(blk, Cmp::Ult, r, len)?;
            if copy.role == Role::Value {
                let col_ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
                ok = b.bin(blk, "arith.andi", ok, col_ok)?;
            }
            let v = b.select(blk, ok, v, zeros)?;
            let at = self.operand_index(blk, env, copy.tile, r, c)?;
            if partial {
                let total = b.ci(blk, (copy.tile.rows * copy.tile.cols / LANES) as i64)?;
                let inside = b.cmpi(blk, Cmp::Ult, e, total)?;
                b.if_(blk, inside, |blk| b.vector_store(blk, v, smem, at, 16))?;
            } else {
                b.vector_store(blk, v, smem, at, 16)?;
            }
        }
        if copy.tile.is_padded() {
            self.zero_padding(blk, env, copy.tile)?;
        }
        Ok(())
    }

    /// Rows `start ..` (`len` valid) of `copy` into its tile, loaded here (not prefetched).
    pub(super) fn copy_rows(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        (start, len): (Value<'c, '_>, Value<'c, '_>),
        copy: &RowCopy,
    ) -> R<()> {
        let aligned = self.rows_aligned(blk, env, std::slice::from_ref(copy))?;
        let v = self.issue_rows(blk, env, (start, len), copy, aligned)?;
        self.store_rows(blk, env, len, copy, &v)
    }

    /// The vector this thread moves at `step`: its flat index in the tile, and whether the step
    /// is the partial last one (some threads past the tile). `clamp`: a thread past the tile
    /// takes the last vector (a harmless repeated load); else it gets its own index and the
    /// caller skips it.
    fn vector_slot<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        copy: &RowCopy,
        step: usize,
        clamp: bool,
    ) -> R<(Value<'c, 'a>, bool)> {
        let b = &self.b;
        let threads = self.s.block_threads as usize;
        let total = copy.tile.rows * copy.tile.cols / LANES;
        let tid = self.thread_index(blk, env)?;
        let first = b.ci(blk, (step * threads) as i64)?;
        let e = b.addi(blk, tid, first)?;
        let partial = (step + 1) * threads > total;
        if partial && clamp {
            let last = b.ci(blk, total as i64 - 1)?;
            return Ok((b.bin(blk, "arith.minui", e, last)?, partial));
        }
        Ok((e, partial))
    }

    /// A vector of zeros of `ty`.
    pub(super) fn zero_vector<'a>(&self, blk: &'a Block<'c>, ty: Type<'c>) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let attr = b.attr(&format!("dense<0.0> : {ty}"))?;
        b.push(
            blk,
            b.op("arith.constant")
                .add_attributes(&[b.named("value", attr)])
                .add_results(&[ty]),
        )
    }
}

/// The vectors a chunk loop carries into an iteration: the rows of its chunk for each
/// prefetched copy, loaded by the iteration before (or the loop's prologue).
#[derive(Default)]
pub(super) struct Carried<'c, 'a> {
    parts: Vec<(RowCopy, Vec<Value<'c, 'a>>)>,
    /// The iteration's TMA phase and next chunk, in kernels with TMA loads.
    pub tma: Option<super::tma::TmaStep<'c, 'a>>,
}

impl<'c, 'a> Carried<'c, 'a> {
    /// Splits `vectors` (the loop's iteration values, in the order of `copies`) per copy.
    pub fn new(copies: &[RowCopy], counts: &[usize], vectors: &[Value<'c, 'a>]) -> R<Self> {
        let mut parts = Vec::with_capacity(copies.len());
        let mut at = 0;
        for (copy, &n) in copies.iter().zip(counts) {
            let part = vectors.get(at..at + n).ok_or_else(|| {
                super::EmitError::Schedule(format!(
                    "the chunk loop carries {} vectors, the copies need more",
                    vectors.len()
                ))
            })?;
            parts.push((copy.clone(), part.to_vec()));
            at += n;
        }
        Ok(Carried { parts, tma: None })
    }

    /// The copy of `node` and its vectors, if `node` is prefetched.
    pub fn of(&self, node: usize) -> Option<(&RowCopy, &[Value<'c, 'a>])> {
        self.parts
            .iter()
            .find(|(c, _)| c.node == node)
            .map(|(c, v)| (c, v.as_slice()))
    }
}
