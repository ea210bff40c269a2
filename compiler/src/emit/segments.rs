//! The split-scan over T segments (`schedule::forward_scan`): the segment kernel (each
//! segment but a sequence's last walked from a zero state, its leaving state and decay product
//! stored), the combine kernel (the segments' entering states, in order) and the states
//! kernel's frame (one segment walked from its entering state). Segment `z` of sequence `n`
//! is slot `⌊bos / (L·C)⌋ + n + z` of `segment_states` (`[slots, HV, K, V]` f32) and of
//! `segment_decays` (`[slots, HV]` f32), `L` = [`SEGMENT_CHUNKS`]; every sequence has at least
//! one slot, so an empty one still gets its final state.

use linrec_spec::launch::{KernelParam, SEGMENT_CHUNKS};
use melior::ir::{Block, Value};

use super::EmitError;
use super::builder::{Cmp, R};
use super::copy::Carried;
use super::kernel::{Env, Kernel, Phase, StateStart};
use crate::plan::Direction;

impl<'c> Kernel<'_, 'c> {
    /// This sequence's segments, `ceil(chunks / L)`, at least 0.
    fn sequence_segments<'a>(&self, blk: &'a Block<'c>, env: &Env<'c, '_>) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let chunks = self.sequence_chunks(blk, env)?;
        let zero = b.ci(blk, 0)?;
        let chunks = b.bin(blk, "arith.maxsi", chunks, zero)?;
        let l = SEGMENT_CHUNKS as i64;
        let round = b.ci(blk, l - 1)?;
        let up = b.addi(blk, chunks, round)?;
        let l = b.ci(blk, l)?;
        b.divui(blk, up, l)
    }

    /// The slot of this sequence's segment `z`.
    fn segment_slot<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        z: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.slot(blk, env, SEGMENT_CHUNKS * self.s.config.chunk, z)
    }

    /// The index of this value head's entry of slot `slot` in `segment_decays`.
    fn decay_index<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, '_>,
        slot: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let at = b.muli(blk, slot, env.vheads)?;
        b.addi(blk, at, env.hv)
    }

    /// The workgroup's segment `z` of a sequence of `chunks` chunks as the chunk loop's
    /// `(first chunk, chunks)`: `L` chunks from `z·L`, fewer in the sequence's last segment,
    /// none past it — and, when `skip_unread` (the segment kernel), none in the segment whose
    /// result nothing reads: a forward's last, a backward's first.
    pub(super) fn segment_chunks<'a>(
        &self,
        blk: &'a Block<'c>,
        (z, chunks): (Value<'c, '_>, Value<'c, '_>),
        skip_unread: bool,
    ) -> R<(Value<'c, 'a>, Value<'c, 'a>)> {
        let b = &self.b;
        let zero = b.ci(blk, 0)?;
        let l = b.ci(blk, SEGMENT_CHUNKS as i64)?;
        let first = b.muli(blk, z, l)?;
        let rest = b.subi(blk, chunks, first)?;
        let count = b.bin(blk, "arith.minsi", rest, l)?;
        let count = b.bin(blk, "arith.maxsi", count, zero)?;
        if !skip_unread {
            return Ok((first, count));
        }
        let read = match self.s.plan.direction {
            // Not the last segment: another chunk follows this one's `L`.
            Direction::Forward => {
                let next = b.addi(blk, first, l)?;
                b.cmpi(blk, Cmp::Slt, next, chunks)?
            }
            // Not the first.
            Direction::Backward => b.cmpi(blk, Cmp::Ult, zero, z)?,
        };
        Ok((first, b.select(blk, read, count, zero)?))
    }

    /// One chunk of the segment kernel: the plan, `S ←` the next state. Returns the scalar
    /// nodes' values (the decay among them).
    pub(super) fn segment_chunk<'a>(
        &self,
        blk: &'a Block<'c>,
        env: &Env<'c, 'a>,
        start: Value<'c, '_>,
        len: Value<'c, '_>,
        carried: &Carried<'c, 'a>,
    ) -> R<Vec<Option<Value<'c, 'a>>>> {
        let uniforms = self.nodes(blk, env, start, len, carried)?;
        let next = self.tile(self.s.state_out)?;
        self.copy_tile(blk, env, next, self.carried_tile()?)?;
        self.t.barrier(&self.b, blk)?;
        Ok(uniforms)
    }

    /// The segment kernel ([`crate::schedule::Part::Segments`]): S (a backward's `dh`, in
    /// reverse) from zero over the workgroup's segment, then, unless nothing reads it (a
    /// forward's last segment, a backward's first) or it is past the sequence,
    /// `segment_states[slot] ← S` and `segment_decays[slot] ←` the decays' product.
    pub(super) fn segment(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let z = self.segment_of(env)?;
        self.start_state(blk, env, StateStart::Zero)?;
        self.t.barrier(b, blk)?;
        let product = self.chunk_loop(blk, env, Phase::Segments)?;
        let chunks = self.sequence_chunks(blk, env)?;
        let (_, walked) = self.segment_chunks(blk, (z, chunks), true)?;
        let zero = b.ci(blk, 0)?;
        let walked = b.cmpi(blk, Cmp::Slt, zero, walked)?;
        b.if_(blk, walked, |blk| {
            let slot = self.segment_slot(blk, env, z)?;
            let states = env.arg(&KernelParam::SegmentStates)?;
            let state = self.carried_tile()?;
            // The chunk loop ended with a barrier: S is complete.
            self.strided(blk, env, state.len(), |blk, e| {
                let (k, c) = self.row_col(blk, e, state.cols)?;
                let ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
                b.if_(blk, ok, |blk| {
                    let x = self.load_tile(blk, env, state, e)?;
                    let idx = self.slot_state_index(blk, env, slot, k, c)?;
                    b.store(blk, x, states, idx)
                })
            })?;
            if let Some(p) = product {
                let decays = env.arg(&KernelParam::SegmentDecays)?;
                let tid = self.thread_index(blk, env)?;
                let first = b.cmpi(blk, Cmp::Eq, tid, zero)?;
                b.if_(blk, first, |blk| {
                    let at = self.decay_index(blk, env, slot)?;
                    b.store(blk, p, decays, at)
                })?;
            }
            Ok(())
        })
    }

    /// The split-scan's states kernel ([`crate::schedule::Part::ScanStates`]): for a segment
    /// of the sequence (an empty sequence has one, of no chunks), S from its entering state
    /// in `segment_states`, its chunks as a split forward's states kernel walks them, and the
    /// final state from the last segment. A backward's: `dh` from the `dh` leaving the
    /// segment, its chunks in reverse as kernel 1's dh phase walks them, `dh0` from the first.
    pub(super) fn scan_states(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let z = self.segment_of(env)?;
        let segments = self.sequence_segments(blk, env)?;
        let one = b.ci(blk, 1)?;
        let segments = b.bin(blk, "arith.maxui", segments, one)?;
        let inside = b.cmpi(blk, Cmp::Ult, z, segments)?;
        b.if_(blk, inside, |blk| {
            let slot = self.segment_slot(blk, env, z)?;
            self.start_state(blk, env, StateStart::Segment(slot))?;
            self.t.barrier(b, blk)?;
            if self.s.plan.direction == Direction::Backward {
                self.chunk_loop(blk, env, Phase::DStates)?;
                if self.s.config.initial_state {
                    let zero = b.ci(blk, 0)?;
                    let first = b.cmpi(blk, Cmp::Eq, z, zero)?;
                    b.if_(blk, first, |blk| self.store_dh0(blk, env))?;
                }
                return Ok(());
            }
            self.chunk_loop(blk, env, Phase::States)?;
            if self.s.config.final_state {
                let last = b.subi(blk, segments, one)?;
                let is_last = b.cmpi(blk, Cmp::Eq, z, last)?;
                b.if_(blk, is_last, |blk| self.final_state(blk, env))?;
            }
            Ok(())
        })
    }

    /// The combine kernel ([`crate::schedule::Part::Combine`]): each thread carries some
    /// elements of the workgroup's `[K × BV]` block of S through the sequence's segments in
    /// order, `S` from `h0` (or 0): for every segment, `U ← segment_states[z]`,
    /// `segment_states[z] ← S`, and but for the last, `S ← d_z · S + U`. A backward's walks
    /// them last to first from `dht`, leaving the `dh` leaving each segment. All of a
    /// segment's loads are issued before its stores (they may alias as far as the compiler
    /// knows), so each segment costs about one memory latency.
    pub(super) fn combine(&self, blk: &Block<'c>, env: &Env<'c, '_>) -> R<()> {
        let b = &self.b;
        let cfg = &self.s.config;
        let cols = self.s.block_v;
        let total = cfg.key_dim * cols;
        let threads = self.s.block_threads as usize;
        let states = env.arg(&KernelParam::SegmentStates)?;
        let decays = match self.s.params.contains(&KernelParam::SegmentDecays) {
            true => Some(env.arg(&KernelParam::SegmentDecays)?),
            false => None,
        };
        // A backward's combine walks the segments last to first, from dht.
        let reverse = self.s.plan.direction == Direction::Backward;
        let h0 = match (reverse, cfg.initial_state, cfg.final_state) {
            (false, true, _) => Some(env.arg(&KernelParam::InitialState)?),
            (true, _, true) => Some(env.arg(&KernelParam::GradFinalState)?),
            _ => None,
        };
        let tid = self.thread_index(blk, env)?;
        // The thread's elements: (row, column, whether it is one of the block's).
        let mut elements = Vec::new();
        for j in 0..total.div_ceil(threads) {
            let off = b.ci(blk, (j * threads) as i64)?;
            let e = b.addi(blk, tid, off)?;
            let (e, inside) = match (j + 1) * threads > total {
                true => {
                    let last = b.ci(blk, total as i64 - 1)?;
                    let count = b.ci(blk, total as i64)?;
                    let inside = b.cmpi(blk, Cmp::Ult, e, count)?;
                    (b.bin(blk, "arith.minui", e, last)?, Some(inside))
                }
                false => (e, None),
            };
            let (k, c) = self.row_col(blk, e, cols)?;
            let col_ok = b.cmpi(blk, Cmp::Ult, c, env.vvalid)?;
            let ok = match inside {
                Some(inside) => b.bin(blk, "arith.andi", inside, col_ok)?,
                None => col_ok,
            };
            elements.push((k, c, ok));
        }
        let mut init = Vec::with_capacity(elements.len());
        for &(k, c, _) in &elements {
            init.push(match h0 {
                Some(h0) => self.masked_column(blk, env, c, |blk, c| {
                    let idx = self.state_index(blk, env, k, c)?;
                    b.load(blk, h0, idx)
                })?,
                None => b.cf32(blk, 0.0)?,
            });
        }
        // Every segment, the last included (an empty sequence has one): its S is stored, and
        // the loop's results are never read (SPIR-V's lowering leaves those of a loop that
        // runs no iteration undefined). A trip takes COMBINE_BATCH segments and issues all
        // their loads before any store (the stores may alias them as far as the compiler
        // knows): one memory latency per batch, not per segment.
        let batch = crate::schedule::COMBINE_BATCH;
        let segments = self.sequence_segments(blk, env)?;
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let segments = b.bin(blk, "arith.maxui", segments, one)?;
        let last = b.subi(blk, segments, one)?;
        let step = b.ci(blk, batch as i64)?;
        b.for_values(blk, (zero, segments, step), &init, |blk, it0, mut s| {
            // Per segment of the batch: whether it exists, its slot (clamped to the last, so
            // the loads stay in bounds), U and d.
            let mut loaded = Vec::with_capacity(batch);
            for j in 0..batch {
                let off = b.ci(blk, j as i64)?;
                let it = b.addi(blk, it0, off)?;
                let exists = b.cmpi(blk, Cmp::Ult, it, segments)?;
                let it = b.bin(blk, "arith.minui", it, last)?;
                let z = match reverse {
                    true => b.subi(blk, last, it)?,
                    false => it,
                };
                let slot = self.segment_slot(blk, env, z)?;
                let mut u = Vec::with_capacity(elements.len());
                for &(k, c, _) in &elements {
                    u.push(self.masked_column(blk, env, c, |blk, c| {
                        let idx = self.slot_state_index(blk, env, slot, k, c)?;
                        b.load(blk, states, idx)
                    })?);
                }
                let d = match decays {
                    Some(mem) => {
                        let at = self.decay_index(blk, env, slot)?;
                        Some(b.load(blk, mem, at)?)
                    }
                    None => None,
                };
                // The last segment's U (a backward's first) was never written (the segment
                // kernel skips it).
                let more = b.cmpi(blk, Cmp::Ult, it, last)?;
                let more = b.bin(blk, "arith.andi", more, exists)?;
                loaded.push((exists, more, slot, u, d));
            }
            for (exists, more, slot, u, d) in loaded {
                for (&(k, c, ok), &s) in elements.iter().zip(&s) {
                    let store = b.bin(blk, "arith.andi", ok, exists)?;
                    b.if_(blk, store, |blk| {
                        let idx = self.slot_state_index(blk, env, slot, k, c)?;
                        b.store(blk, s, states, idx)
                    })?;
                }
                s = s
                    .iter()
                    .zip(&u)
                    .map(|(&s, &u)| {
                        let ds = match d {
                            Some(d) => b.mulf(blk, d, s)?,
                            None => s,
                        };
                        let next = b.addf(blk, ds, u)?;
                        b.select(blk, more, next, s)
                    })
                    .collect::<R<_>>()?;
            }
            Ok(s)
        })?;
        Ok(())
    }

    /// The workgroup's segment (block z).
    fn segment_of<'a>(&self, env: &Env<'c, 'a>) -> R<Value<'c, 'a>> {
        env.segment
            .ok_or_else(|| EmitError::Schedule("a split-scan kernel without a segment".into()))
    }
}
