//! Token rows of q, k, v brought into their swizzled operand tiles by Hopper's Tensor Memory
//! Accelerator (sm_90a), one `cp.async.bulk.tensor` per 64-column block.
//!
//! Why: the threads' 16-byte copies (`copy.rs`) cost each thread 12 vector loads, the
//! swizzle's index math and 12 shared stores per chunk at K = V = 128 (ncu: +16–23 %
//! instructions against sm_90's unswizzled tiles), and 48 registers to carry the next chunk's
//! rows across the chunk. One thread issues a TMA copy instead; the hardware writes the rows
//! in the 128-byte swizzle that the tiles already use ([`crate::schedule::TileLayout::Swizzled`]
//! is TMA's `CU_TENSOR_MAP_SWIZZLE_128B`) and zeros past the tensor's end.
//!
//! How: each load ([`TmaLoad`]) has an mbarrier after the kernel's shared memory. Thread 0
//! arms it with the tile's bytes (`mbarrier.arrive.expect_tx`) and issues the copies; every
//! thread waits for the phase of its chunk (`mbarrier.try_wait.parity`, parity = the loop's
//! iteration mod 2) just before the tile's first reader (the nodes before it run meanwhile),
//! then zeros the rows past the sequence (a partial last chunk: with varlen they hold the
//! next sequence's rows) and, only then, takes a barrier. In a chunk loop the
//! next chunk's copy is issued right after the barrier that follows the tile's last reader
//! (the schedule keeps these tiles for the whole chunk, `Placing::pin_rows`), so the rows
//! travel while the chunk's remaining matmuls run. The tensor maps are built by the runtime
//! ([`KernelParam::TensorMap`]: `[B·T, heads, width]`, box `[C, 1, 64]`).

use linrec_spec::Role;
use linrec_spec::launch::{KernelParam, TENSOR_MAP_BOX_COLUMNS};
use melior::ir::{Block, Region, RegionLike, Type, Value};

use super::EmitError;
use super::builder::{Builder, Cmp, R};
use super::kernel::{Env, Kernel};
use crate::schedule::{TileLayout, TmaLoad};

/// Where a chunk loop's iteration stands for the TMA loads (see [`Kernel::tma_wait`]).
#[derive(Clone, Copy)]
pub(super) struct TmaStep<'c, 'a> {
    /// The phase of this iteration's copies: the iteration mod 2 (`i32`).
    pub parity: Value<'c, 'a>,
    /// The next chunk's first row and whether there is one (`i1`): its copies are issued
    /// during this iteration. `None`: a single chunk.
    pub next: Option<(Value<'c, 'a>, Value<'c, 'a>)>,
}

impl<'c> Kernel<'_, 'c> {
    /// The TMA load of plan node `node`, if its rows arrive by TMA.
    pub(super) fn tma_load(&self, node: usize) -> Option<TmaLoad> {
        self.s.tma.iter().find(|l| l.node == node).copied()
    }

    /// The point of the chunk where the next chunk's copy of `load` is issued: right after
    /// the barrier before node `j` (`j` = the number of nodes: the sinks' barrier), the first
    /// barrier after every reader of the tile; `None`: after the chunk's closing barrier.
    pub(super) fn tma_issue_point(&self, load: &TmaLoad) -> Option<usize> {
        let nodes = &self.s.plan.nodes;
        let me = crate::plan::ValueId(load.node);
        let last = (0..nodes.len())
            .rev()
            .find(|&i| nodes[i].op.operands().contains(&me))
            .unwrap_or(load.node);
        ((last + 1)..nodes.len())
            .find(|&j| self.s.barrier_before[j])
            .or((self.s.barrier_before_sinks).then_some(nodes.len()))
    }

    /// In a chunk loop's iteration with a next chunk: issues the next chunk's copies of the
    /// loads whose [`Self::tma_issue_point`] is `point` (just after that barrier).
    pub(super) fn tma_next(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        carried: &super::copy::Carried<'c, '_>,
        point: Option<usize>,
    ) -> R<()> {
        let Some((start, go)) = carried.tma.and_then(|t| t.next) else {
            return Ok(());
        };
        for load in &self.s.tma {
            if self.tma_issue_point(load) == point {
                self.tma_issue(blk, env, load, start, Some(go))?;
            }
        }
        Ok(())
    }

    /// Before node `node`: waits for the rows of the loads it is the first reader of (so
    /// they travel while the nodes before run).
    pub(super) fn tma_await(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        carried: &super::copy::Carried<'c, '_>,
        node: usize,
        len: Value<'c, '_>,
    ) -> R<()> {
        let first = |l: &TmaLoad| {
            let v = crate::plan::ValueId(l.node);
            self.s
                .plan
                .nodes
                .iter()
                .position(|n| n.op.operands().contains(&v))
        };
        for load in &self.s.tma {
            if first(load) != Some(node) {
                continue;
            }
            let step = carried.tma.ok_or_else(|| {
                EmitError::Schedule(format!(
                    "the TMA load %{} outside a chunk with TMA",
                    load.node
                ))
            })?;
            self.tma_wait(blk, env, load, len, step.parity)?;
        }
        Ok(())
    }

    /// Before a kernel's first chunk (rows from `start`): the mbarriers ([`Self::tma_init`])
    /// and every load's copy of that chunk (when `go`, an `i1`, holds).
    pub(super) fn tma_start(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        go: Option<Value<'c, '_>>,
    ) -> R<()> {
        self.tma_init(blk, env)?;
        for load in &self.s.tma {
            self.tma_issue(blk, env, load, start, go)?;
        }
        Ok(())
    }

    /// Thread 0 initialises every load's mbarrier (one arrival a phase) and prefetches the
    /// tensor maps; a barrier then publishes the mbarriers to all threads and the async proxy.
    fn tma_init(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let zero = b.ci(blk, 0)?;
        let first = b.cmpi(blk, Cmp::Eq, env.tid, zero)?;
        b.if_(blk, first, |blk| {
            for load in &self.s.tma {
                let bar = self.smem_address(blk, env, u64::from(load.barrier))?;
                asm(
                    b,
                    blk,
                    "mbarrier.init.shared::cta.b64 [$0], 1;",
                    "r,~{memory}",
                    &[bar],
                    None,
                )?;
                let map = b.base_address(blk, env.arg(&KernelParam::TensorMap(load.role))?)?;
                let map = b.cast(blk, "arith.index_cast", map, b.int(64))?;
                asm(b, blk, "prefetch.tensormap [$0];", "l", &[map], None)?;
            }
            asm(
                b,
                blk,
                "fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;",
                "~{memory}",
                &[],
                None,
            )
            .map(|_| ())
        })?;
        self.t.barrier(b, blk)
    }

    /// Thread 0 (when `go`, an `i1`, holds) arms `load`'s mbarrier with the tile's bytes and
    /// copies rows `start ..` of the chunk into the tile, one box per 64-column block.
    pub(super) fn tma_issue(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        load: &TmaLoad,
        start: Value<'c, '_>,
        go: Option<Value<'c, '_>>,
    ) -> R<()> {
        let b = &self.b;
        let tile = self.tma_tile(load)?;
        let zero = b.ci(blk, 0)?;
        let mut cond = b.cmpi(blk, Cmp::Eq, env.tid, zero)?;
        if let Some(go) = go {
            cond = b.bin(blk, "arith.andi", cond, go)?;
        }
        b.if_(blk, cond, |blk| {
            let bar = self.smem_address(blk, env, u64::from(load.barrier))?;
            let bytes = b.ci32(blk, (tile.rows * tile.cols * 2) as i64)?;
            asm(
                b,
                blk,
                "mbarrier.arrive.expect_tx.shared::cta.b64 _, [$0], $1;",
                "r,r,~{memory}",
                &[bar, bytes],
                None,
            )?;
            let map = b.base_address(blk, env.arg(&KernelParam::TensorMap(load.role))?)?;
            let map = b.cast(blk, "arith.index_cast", map, b.int(64))?;
            let (col0, head) = match load.role {
                Role::Value => (env.v0, env.hv),
                _ => (zero, env.h),
            };
            let i32 = |v: Value<'c, '_>| b.cast(blk, "arith.index_cast", v, b.int(32));
            let (head, row) = (i32(head)?, i32(start)?);
            for block in 0..tile.cols / TENSOR_MAP_BOX_COLUMNS {
                let dst = tile.offset + (block * TENSOR_MAP_BOX_COLUMNS * tile.rows_padded) as u64;
                let dst = self.smem_address(blk, env, 2 * dst)?;
                let shift = b.ci(blk, (block * TENSOR_MAP_BOX_COLUMNS) as i64)?;
                let col = i32(b.addi(blk, col0, shift)?)?;
                asm(
                    b,
                    blk,
                    "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [$0], [$1, {$2, $3, $4}], [$5];",
                    "r,l,r,r,r,r,~{memory}",
                    &[dst, map, col, head, row, bar],
                    None,
                )?;
            }
            Ok(())
        })
    }

    /// Every thread waits for phase `parity` (`i32`) of `load`'s mbarrier (its rows have
    /// landed); in a partial chunk the rows from `len` on are then zeroed, and a barrier
    /// publishes the zeros to the other threads (the reader comes next).
    pub(super) fn tma_wait(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        load: &TmaLoad,
        len: Value<'c, '_>,
        parity: Value<'c, '_>,
    ) -> R<()> {
        let b = &self.b;
        let tile = self.tma_tile(load)?;
        // scf.while: spin on `mbarrier.try_wait.parity` (which itself suspends a while).
        let before = Block::new(&[]);
        {
            let bar = self.smem_address(&before, env, u64::from(load.barrier))?;
            let done = asm(
                b,
                &before,
                "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [$1], $2;\n\tselp.u32 $0, 1, 0, p;\n\t}",
                "=r,r,r,~{memory}",
                &[bar, parity],
                Some(b.int(32)),
            )?
            .ok_or_else(|| EmitError::Schedule("an mbarrier wait without a result".into()))?;
            let zero = b.ci32(&before, 0)?;
            let again = b.cmpi(&before, Cmp::Eq, done, zero)?;
            b.push0(&before, b.op("scf.condition").add_operands(&[again]))?;
        }
        let after = Block::new(&[]);
        b.yield_(&after, &[])?;
        let (r0, r1) = (Region::new(), Region::new());
        r0.append_block(before);
        r1.append_block(after);
        b.push0(blk, b.op("scf.while").add_regions([r0, r1]))?;

        // A partial chunk: rows len.. hold the next sequence's tokens (or TMA's zeros).
        let c = b.ci(blk, tile.rows as i64)?;
        let partial = b.cmpi(blk, Cmp::Slt, len, c)?;
        b.if_(blk, partial, |blk| {
            let smem = self.operand_mem(env)?;
            let zeros = self.zero_vector(blk, self.row_vector()?)?;
            let per_row = tile.cols / super::copy::LANES;
            let rest = b.subi(blk, c, len)?;
            let count = b.muli(blk, rest, b.ci(blk, per_row as i64)?)?;
            let step = b.ci(blk, i64::from(self.s.block_threads))?;
            b.for_(blk, env.tid, count, step, |blk, e| {
                // A zeroed row is all zeros whatever its swizzle: vector v of row r is at
                // the row's 128 bytes in its 64-column block.
                let (r, v) = self.row_col(blk, e, per_row)?;
                let r = b.addi(blk, r, len)?;
                let per_block = TENSOR_MAP_BOX_COLUMNS / super::copy::LANES;
                let block = b.divui(blk, v, b.ci(blk, per_block as i64)?)?;
                let within = b.remui(blk, v, b.ci(blk, per_block as i64)?)?;
                let at = b.ci(blk, tile.offset as i64)?;
                let at = b.mad(
                    blk,
                    at,
                    block,
                    (TENSOR_MAP_BOX_COLUMNS * tile.rows_padded) as i64,
                )?;
                let at = b.mad(blk, at, r, TENSOR_MAP_BOX_COLUMNS as i64)?;
                let at = b.mad(blk, at, within, super::copy::LANES as i64)?;
                b.vector_store(blk, zeros, smem, at, 16)
            })?;
            // `partial` is uniform: every thread of the workgroup takes this barrier.
            self.t.barrier(b, blk)
        })
    }

    /// The operand tile of `load` (a whole swizzled tile, checked by the schedule).
    fn tma_tile(&self, load: &TmaLoad) -> R<crate::schedule::OperandTile> {
        self.s
            .operands
            .get(load.node)
            .copied()
            .flatten()
            .filter(|t| t.layout == TileLayout::Swizzled && t.cols % TENSOR_MAP_BOX_COLUMNS == 0)
            .ok_or_else(|| {
                EmitError::Schedule(format!(
                    "the TMA load %{} has no whole swizzled operand tile",
                    load.node
                ))
            })
    }

    /// The 32-bit shared-memory address of byte `bytes` of the dynamic shared memory (the
    /// operand arena starts it on the tensor-core path).
    fn smem_address<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        bytes: u64,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let base = b.base_address(blk, self.operand_mem(env)?)?;
        let at = b.addi(blk, base, b.ci(blk, bytes as i64)?)?;
        b.cast(blk, "arith.index_cast", at, b.int(32))
    }
}

/// An `llvm.inline_asm` with side effects ([`Builder::inline_asm`]): PTX `text` over
/// `operands`, returning one value of `result` when given.
fn asm<'c, 'a>(
    b: &Builder<'c>,
    blk: &'a Block<'c>,
    text: &str,
    constraints: &str,
    operands: &[Value<'c, '_>],
    result: Option<Type<'c>>,
) -> R<Option<Value<'c, 'a>>> {
    let op = b.inline_asm(text, constraints, true).add_operands(operands);
    match result {
        Some(ty) => Ok(Some(b.push(blk, op.add_results(&[ty]))?)),
        None => b.push0(blk, op).map(|()| None),
    }
}
