//! The chunk states (`KernelParam::ChunkStates`, `[slots, HV, K, V]` in the kernel dtype):
//! the sequential kernels store the state entering every chunk there (a split forward's states
//! kernel, the backward's first phase), and the kernels that work on one chunk at a time read
//! it back (a split forward's output kernel, the backward's gradient kernel). The backward's
//! `dh` per chunk (`KernelParam::ChunkStateGrads`) has the same layout. Chunk `i` of
//! sequence `n` is slot `⌊bos / C⌋ + n + i`; a workgroup touches its value head and its block
//! of value columns.

use linrec_spec::launch::KernelParam;
use melior::ir::{Block, Value};

use super::builder::{Cmp, R};
use super::copy::{Carried, LANES};
use super::kernel::{Env, Kernel};
use super::tile::Dest;
use crate::lower::Vendor;
use crate::schedule::{OperandTile, Tile};

impl<'c> Kernel<'_, 'c> {
    /// Index of state element `(k, v0 + c)` of chunk `i` in `chunk_states`.
    fn chunk_state_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        i: Value<'c, '_>,
        k: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let slot = self.slot(blk, env, self.s.config.chunk, i)?;
        self.slot_state_index(blk, env, slot, k, c)
    }

    /// Slot `⌊bos / rows⌋ + n + i` of a per-sequence buffer whose slots cover `rows` tokens
    /// each (a chunk's, a segment's): every sequence has its own slots, at least one.
    pub(super) fn slot<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        rows: usize,
        i: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let rows = b.ci(blk, rows as i64)?;
        let first = b.divui(blk, env.bos, rows)?;
        let slot = b.addi(blk, first, env.n)?;
        b.addi(blk, slot, i)
    }

    /// Index of state element `(k, v0 + c)` of slot `slot` of a `[slots, HV, K, V]` buffer
    /// (the chunk states, dh, the segment states).
    pub(super) fn slot_state_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        slot: Value<'c, '_>,
        k: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let cfg = &self.s.config;
        let head = b.muli(blk, slot, env.vheads)?;
        let head = b.addi(blk, head, env.hv)?;
        let row = b.mad(blk, k, head, cfg.key_dim as i64)?;
        let col = b.addi(blk, env.v0, c)?;
        b.mad(blk, col, row, cfg.value_dim as i64)
    }

    /// `chunk_states[i] ← S` for the block's valid columns (see [`Self::store_chunk_tile`]).
    pub(super) fn store_chunk_state(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        i: Value<'c, '_>,
    ) -> R<()> {
        self.store_chunk_tile(blk, env, i, &KernelParam::ChunkStates, self.s.state)
    }

    /// `param[i] ← tile` (a `[K × BV]` tile; `param` laid out as the chunk states) for the
    /// block's valid columns. Each thread copies the elements it later overwrites when the
    /// next value is copied into `tile`, so no barrier is needed.
    pub(super) fn store_chunk_tile(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        i: Value<'c, '_>,
        param: &KernelParam,
        tile: Tile,
    ) -> R<()> {
        let b = &self.b;
        let states = env.arg(param)?;
        self.strided_map(
            blk,
            env,
            tile.len(),
            |blk, e| self.load_tile(blk, env, tile, e),
            |blk, e, x| {
                let (k, c) = self.row_col(blk, e, tile.cols)?;
                let ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
                b.if_(blk, ok, |blk| {
                    let idx = self.chunk_state_index(blk, env, i, k, c)?;
                    self.t.store_f32(b, blk, x, states, idx, self.dtype())
                })
            },
        )
    }

    /// `S ← chunk_states[i]`, columns past the block's valid ones as 0, then a barrier.
    pub(super) fn load_chunk_state(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        i: Value<'c, '_>,
    ) -> R<()> {
        self.load_chunk_tile(blk, env, i, &KernelParam::ChunkStates, self.s.state)?;
        self.t.barrier(&self.b, blk)
    }

    /// `tile ← param[i]` (as [`Self::store_chunk_tile`]), columns past the block's valid ones
    /// as 0; no barrier.
    pub(super) fn load_chunk_tile(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        i: Value<'c, '_>,
        param: &KernelParam,
        tile: Tile,
    ) -> R<()> {
        let b = &self.b;
        let states = env.arg(param)?;
        let scratch = self.tile_mem(env)?;
        self.strided_map(
            blk,
            env,
            tile.len(),
            |blk, e| {
                let (k, c) = self.row_col(blk, e, tile.cols)?;
                self.masked_column(blk, env, c, |blk, c| {
                    let idx = self.chunk_state_index(blk, env, i, k, c)?;
                    self.t.load_f32(b, blk, states, idx, self.dtype())
                })
            },
            |blk, e, x| {
                let at = self.addr(blk, env, tile, e)?;
                b.store(blk, x, scratch, at)
            },
        )
    }

    /// The operand tile `to` (`[K × BV]`) ← `param`'s entry for the chunk whose rows start at
    /// `start` (the chunk states or dh, already in the dtype), columns past the block's valid
    /// ones as 0; no barrier. On NVIDIA tensor cores with V a multiple of 8 each thread moves
    /// 16 bytes at a time (a row of the block is contiguous in `param`; a misaligned buffer
    /// takes the element loads of the same vectors), else one element at a time.
    pub(super) fn copy_chunk_operand(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        start: Value<'c, '_>,
        param: &KernelParam,
        to: OperandTile,
    ) -> R<()> {
        let b = &self.b;
        let cfg = &self.s.config;
        let mem = env.arg(param)?;
        let chunk = b.ci(blk, cfg.chunk as i64)?;
        let rows_before = b.subi(blk, start, env.bos)?;
        let i = b.divui(blk, rows_before, chunk)?;
        let vectors = self.s.target.vendor() == Vendor::Nvidia
            && self.s.matmul.operands_on_chip()
            && cfg.value_dim % LANES == 0
            && to.cols % LANES == 0;
        if !vectors {
            let dest = Dest {
                f32: None,
                operand: Some(to),
            };
            return self.elementwise(blk, env, dest, |blk, k, c, _| {
                self.masked_column(blk, env, c, |blk, c| {
                    let idx = self.chunk_state_index(blk, env, i, k, c)?;
                    self.t.load_f32(b, blk, mem, idx, self.dtype())
                })
            });
        }
        let ty = self.row_vector()?;
        let per_row = to.cols / LANES;
        let total = to.rows * per_row;
        let threads = self.s.block_threads as usize;
        let aligned = self.aligned_16(blk, mem)?;
        let zero = b.ci(blk, 0)?;
        let smem = self.operand_mem(env)?;
        let zeros = self.zero_vector(blk, ty)?;
        let tid = self.thread_index(blk, env)?;
        // Every load before any store, as `copy.rs` does for token rows.
        let (mut slots, mut indices) = (Vec::new(), Vec::new());
        for step in 0..total.div_ceil(threads) {
            let first = b.ci(blk, (step * threads) as i64)?;
            let e = b.addi(blk, tid, first)?;
            let partial = (step + 1) * threads > total;
            let last = b.ci(blk, total as i64 - 1)?;
            let ec = if partial {
                b.bin(blk, "arith.minui", e, last)?
            } else {
                e
            };
            let (k, c) = self.vector_row_col(blk, ec, to, per_row)?;
            let lanes = b.ci(blk, LANES as i64)?;
            let c = b.muli(blk, c, lanes)?;
            // Columns past the valid ones read the block's first (in bounds), stored as 0.
            let col_ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
            let cc = b.select(blk, col_ok, c, zero)?;
            let idx = self.chunk_state_index(blk, env, i, k, cc)?;
            slots.push((e, partial, k, c, col_ok));
            indices.push(idx);
        }
        let loaded = self.load_vectors(blk, mem, aligned, &indices)?;
        for (&(e, partial, k, c, col_ok), &v) in slots.iter().zip(&loaded) {
            let v = b.select(blk, col_ok, v, zeros)?;
            let at = self.operand_index(blk, env, to, k, c)?;
            if partial {
                let total = b.ci(blk, total as i64)?;
                let inside = b.cmpi(blk, Cmp::Ult, e, total)?;
                b.if_(blk, inside, |blk| b.vector_store(blk, v, smem, at, 16))?;
            } else {
                b.vector_store(blk, v, smem, at, 16)?;
            }
        }
        if to.is_padded() {
            self.zero_padding(blk, env, to)?;
        }
        Ok(())
    }

    /// One chunk of a sequential states kernel: `chunk_states[i] ← S`, the plan, `S ← the
    /// next state`.
    pub(super) fn states_chunk<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        i: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<()> {
        self.store_chunk_state(blk, env, i)?;
        self.nodes(blk, env, start, len, carried)?;
        self.copy_state(blk, env)?;
        self.t.barrier(&self.b, blk)
    }

    /// Every plan node with the schedule's barriers, then the sinks' barrier. Returns the
    /// scalar nodes' values (indexed like the plan's nodes).
    pub(super) fn nodes<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<Vec<Option<Value<'c, 'a>>>> {
        let n = self.s.plan.nodes.len();
        let mut uniforms = vec![None; n];
        for i in 0..n {
            if self.s.barrier_before[i] {
                self.t.barrier(&self.b, blk)?;
                self.tma_next(blk, env, carried, Some(i))?;
            }
            self.tma_await(blk, env, carried, i, len)?;
            self.node(blk, env, start, len, i, &mut uniforms, carried)?;
        }
        if self.s.barrier_before_sinks {
            self.t.barrier(&self.b, blk)?;
            self.tma_next(blk, env, carried, Some(n))?;
        }
        Ok(uniforms)
    }

    /// Element `e` of a scratch tile.
    pub(super) fn load_tile<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        tile: Tile,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let scratch = self.tile_mem(env)?;
        let at = self.addr(blk, env, tile, e)?;
        self.b.load(blk, scratch, at)
    }

    /// The chunk-parallel output kernel ([`crate::schedule::Part::Output`]): the workgroup's
    /// chunk of its sequence, if the sequence has it: its state from `chunk_states`, the plan,
    /// o.
    pub(super) fn output_chunk(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let c = self.s.config.chunk as i64;
        let i = env
            .chunk
            .ok_or_else(|| super::EmitError::Schedule("an output kernel without a chunk".into()))?;
        // Clamped at 0 before the unsigned compare: a malformed cu_seqlens runs no chunk.
        let chunks = self.sequence_chunks(blk, env)?;
        let zero = b.ci(blk, 0)?;
        let chunks = b.bin(blk, "arith.maxsi", chunks, zero)?;
        let inside = b.cmpi(blk, Cmp::Ult, i, chunks)?;
        b.if_(blk, inside, |blk| {
            let start = b.mad(blk, env.bos, i, c)?;
            let rest = b.subi(blk, env.eos, start)?;
            let cc = b.ci(blk, c)?;
            let len = b.bin(blk, "arith.minsi", rest, cc)?;
            let mut carried = Carried::default();
            if !self.s.tma.is_empty() {
                // One chunk: its copies fly while the chunk's state is read.
                self.tma_start(blk, env, start, None)?;
                carried.tma = Some(super::tma::TmaStep {
                    parity: b.ci32(blk, 0)?,
                    next: None,
                });
            }
            if self.s.in_tile(&crate::plan::Op::StateIn) {
                self.load_chunk_state(blk, env, i)?;
            }
            self.nodes(blk, env, start, len, &carried)?;
            self.store_output(blk, env, start, len)
        })
    }
}
