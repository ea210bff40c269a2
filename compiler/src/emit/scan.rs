//! Prefix sums and row/column sums across threads with warp shuffles (NVIDIA).
//!
//! Why: the generic loops give each result element to one thread, which then walks its whole
//! row (a row sum of `[64, 128]`: 64 busy threads, 128 dependent loads each) or its prefix (a
//! cumulative sum over the chunk: up to 64 dependent loads); every other thread waits at the
//! next barrier. In the gated forward that chain was the cost of the gates; in the backward,
//! four row/column sums and two scans per chunk.
//!
//! Here a prefix sum of `N` values runs in one warp: each lane sums `⌈N/32⌉` consecutive
//! values, a 5-step `shfl.up` scan adds the lanes before it. A row sum gives each row `P`
//! adjacent lanes (a power of two, up to 32 and the threads per row) that sum every `P`-th
//! element and combine with `P`-lane `shfl.xor` butterflies. The sums associate differently
//! from the sequential loops (f32 rounding only).

use melior::ir::{Block, Value};

use super::builder::{Cmp, R};
use super::kernel::{Env, Kernel};
use crate::lower::Vendor;
use crate::schedule::Tile;

/// Lanes of an NVIDIA warp.
const WARP: usize = 32;

impl<'c> Kernel<'_, 'c> {
    /// Whether sums use warp shuffles (NVIDIA kernels with whole warps).
    pub(super) fn shuffled_sums(&self) -> bool {
        self.s.target.vendor() == Vendor::Nvidia && self.s.block_threads as usize % WARP == 0
    }

    /// `P`, the lanes that share one row of a `rows × len` sum, or `None` when one thread per
    /// row is all the workgroup has (the loop is then the sequential one). Every warp's lanes
    /// are then either all on rows or all past them, so the butterflies run in whole warps.
    pub(super) fn lanes_per_row(&self, rows: usize, len: usize) -> Option<usize> {
        if !self.shuffled_sums() {
            return None;
        }
        let threads = self.s.block_threads as usize;
        let mut p = 1;
        while p * 2 <= WARP && rows * p * 2 <= threads && p * 2 <= len {
            p *= 2;
        }
        (p > 1 && (rows * p) % WARP == 0).then_some(p)
    }

    /// `out[i] = Σ_{j ≤ i} src[j]` (or `Σ_{j ≥ i}` when `reverse`) over the `n` values of
    /// `src`, by warp 0; `store(block, i, value)` writes element `i`.
    pub(super) fn warp_cumsum(
        &self,
        blk: &Block<'c>,
        env: &Env<'c, '_>,
        src: Tile,
        reverse: bool,
        store: &dyn for<'x> Fn(&'x Block<'c>, Value<'c, 'x>, Value<'c, 'x>) -> R<()>,
    ) -> R<()> {
        let b = &self.b;
        let n = src.len() as usize;
        let per_lane = n.div_ceil(WARP);
        let tid = self.thread_index(blk, env)?;
        let warp = b.ci(blk, WARP as i64)?;
        let in_warp0 = b.cmpi(blk, Cmp::Ult, tid, warp)?;
        b.if_(blk, in_warp0, |blk| {
            let lane = tid;
            let zero = b.cf32(blk, 0.0)?;
            let mut local = Vec::with_capacity(per_lane);
            let mut acc = zero;
            for k in 0..per_lane {
                let (at, ok) = self.scan_slot(blk, lane, k, per_lane, n, reverse)?;
                let x = self.load_tile(blk, env, src, at)?;
                let x = b.select(blk, ok, x, zero)?;
                acc = b.addf(blk, acc, x)?;
                local.push(acc);
            }
            // Inclusive scan of the lane totals.
            let total = acc;
            let mut s = total;
            let mut off = 1;
            while off < WARP {
                let (y, _) = self.shuffle(blk, "up", s, off as i64)?;
                let offv = b.ci(blk, off as i64)?;
                let has = b.cmpi(blk, Cmp::Ule, offv, lane)?;
                let y = b.select(blk, has, y, zero)?;
                s = b.addf(blk, s, y)?;
                off *= 2;
            }
            let before = b.subf(blk, s, total)?;
            for (k, part) in local.into_iter().enumerate() {
                let (at, ok) = self.scan_slot(blk, lane, k, per_lane, n, reverse)?;
                let v = b.addf(blk, before, part)?;
                b.if_(blk, ok, |blk| store(blk, at, v))?;
            }
            Ok(())
        })
    }

    /// Lane `lane`'s `k`-th value of a scan over `n` (`per_lane` each): its element index
    /// (counted from the end when `reverse`; clamped in range) and whether it exists.
    fn scan_slot<'a>(
        &self,
        blk: &'a Block<'c>,
        lane: Value<'c, '_>,
        k: usize,
        per_lane: usize,
        n: usize,
        reverse: bool,
    ) -> R<(Value<'c, 'a>, Value<'c, 'a>)> {
        let b = &self.b;
        let kk = b.ci(blk, k as i64)?;
        let i = b.mad(blk, kk, lane, per_lane as i64)?;
        let nn = b.ci(blk, n as i64)?;
        let ok = b.cmpi(blk, Cmp::Ult, i, nn)?;
        let last = b.ci(blk, n as i64 - 1)?;
        let i = b.bin(blk, "arith.minui", i, last)?;
        let at = if reverse { b.subi(blk, last, i)? } else { i };
        Ok((at, ok))
    }

    /// Combines `x` across the `p` adjacent lanes of a row (`shfl.xor` butterflies): every
    /// lane of the group ends with the group's sum.
    pub(super) fn lane_group_sum<'a>(
        &self,
        blk: &'a Block<'c>,
        x: Value<'c, 'a>,
        p: usize,
    ) -> R<Value<'c, 'a>> {
        let b = &self.b;
        let mut s = x;
        let mut off = p / 2;
        while off >= 1 {
            let (y, _) = self.shuffle(blk, "xor", s, off as i64)?;
            s = b.addf(blk, s, y)?;
            off /= 2;
        }
        Ok(s)
    }

    /// `gpu.shuffle <mode> x, offset, 32`: the value and whether the source lane exists.
    fn shuffle<'a>(
        &self,
        blk: &'a Block<'c>,
        mode: &str,
        x: Value<'c, '_>,
        offset: i64,
    ) -> R<(Value<'c, 'a>, Value<'c, 'a>)> {
        let b = &self.b;
        let off = b.ci32(blk, offset)?;
        let width = b.ci32(blk, WARP as i64)?;
        let r = b.push_n(
            blk,
            b.op("gpu.shuffle")
                .add_attributes(&[b.named("mode", b.attr(&format!("#gpu<shuffle_mode {mode}>"))?)])
                .add_operands(&[x, off, width])
                .add_results(&[b.f32(), b.int(1)]),
        )?;
        match r.as_slice() {
            [v, ok] => Ok((*v, *ok)),
            _ => Err(super::EmitError::Build {
                op: "gpu.shuffle".into(),
                detail: "expected two results".into(),
            }),
        }
    }
}
