//! Hopper's warpgroup MMA (sm_90a): the [`Matmul`] of [`super::mma`] as
//! `wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}` with both operands read from shared
//! memory through 64-bit matrix descriptors (`reference/mlir-lowering.md` §1c; the
//! descriptors are built here, not from TMA tensor maps, since the operand tiles are written
//! by the kernel's own threads).
//!
//! What it needs from the caller, beyond [`super::mma`]'s rules: operand tiles stored as core
//! matrices (`row_stride` 8, `col_step` the tile's padded rows:
//! [`crate::schedule::TileLayout::CoreMatrices`]) or with the 128-byte swizzle (`row_stride`
//! 64, [`crate::schedule::TileLayout::Swizzled`]), M a multiple of 64 and whole warpgroups
//! (the warps a multiple of 4). [`applies`] says whether a sum of matmuls qualifies;
//! [`Matmul::emit_sum`] calls [`emit_sum`] when it does and the target allows it.
//!
//! # Descriptors (PTX ISA "Matrix Descriptor Format")
//!
//! Bits 0–13: start address >> 4; 16–29: leading-dimension byte offset (LBO) >> 4; 32–45:
//! stride-dimension byte offset (SBO) >> 4; layout bits 62–63: 0 none, 1 the 128-byte swizzle
//! (then K-major: SBO 1024 bytes, LBO unused, the start moved along the row per k-step;
//! MN-major: LBO the next 64-column block, SBO 1024 bytes). A core matrix is 8 rows
//! of 16 contiguous bytes; LBO is the distance between core matrices along K, SBO along M
//! (or N), whether the operand is K-major (k along the stored row: A as stored, B stored
//! transposed) or MN-major (the layout flags tell wgmma which). In a tile of core matrices
//! an 8-row step is `16·row_stride` = 128 bytes and an 8-column step `16·col_step` bytes.
//! Measured on an H200 (2026-11-28) for all four transpose pairs, m64n64k16 bf16, exact
//! against a host product; the other assignment of LBO/SBO gave wrong sums or faults.
//!
//! # Work and the accumulators
//!
//! The `M × N` result is cut into units of 64 rows × `width` columns (`width` ≤ 128, a
//! multiple of 8, so a unit's `width / 2` f32 accumulators per thread fit next to the rest;
//! as few units as give every warpgroup one, evenly where the shape allows). Warpgroup `g`
//! takes units `g, g + G, …`. Within a unit, warp `w` of the group holds rows `16w..16w+16`
//! and, per 8-column block `j`, the four values of an `mma.sync` C fragment: registers
//! `4j..4j+4` are `C[16w+g][8j+2t]`, `C[16w+g][8j+2t+1]`, `C[16w+g+8][8j+2t]`,
//! `C[16w+g+8][8j+2t+1]` with `g = lane/4`, `t = lane%4` — so the epilogue gets the same
//! [`Fragment`]s as from `mma.sync`.
//!
//! # Ordering
//!
//! wgmma reads shared memory through the async proxy: the kernel's barriers on sm_90a
//! are preceded by `fence.proxy.async.shared::cta` ([`super::target`]), so what threads wrote
//! before a barrier is visible to the wgmma after it. Each unit issues `wgmma.fence`, every
//! k-step of every term back to back, one `commit_group` and `wait_group 0` before its
//! accumulators are read, so no operand read is outstanding when the next barrier lets
//! other threads overwrite the tiles.
//!
//! # Measured
//!
//! Correct on an H200 (the conformance rows, forward and backward). With core matrices only it
//! was slower than `mma.sync` (store bank conflicts of the scalar loops writing tiles along
//! rows); with 128-byte swizzled tiles, in the forward's chunk kernels only
//! (`crate::schedule::Part::wgmma_pays`), sm_90a is 0–22 % faster than sm_90 in the forward
//! and the default on 9.0 devices (`docs/performance.md`).

use melior::{
    Context,
    dialect::{arith, llvm},
    ir::{
        Block, Location, Type, Value,
        attribute::{DenseI64ArrayAttribute, FloatAttribute, IntegerAttribute},
        operation::OperationBuilder,
        r#type::IntegerType,
    },
};

use super::EmitError;
use super::mma::{Fragment, Init, Matmul, Operand, Ops};

/// Result of an emitter step.
type R<T> = Result<T, EmitError>;

/// Rows of one wgmma (and of a unit of work).
const WG_M: i64 = 64;
/// Threads of a warpgroup.
const WG_THREADS: i64 = 128;
/// The widest unit: 64 accumulators per thread.
const MAX_WIDTH: i64 = 128;

/// Whether `terms` can run as wgmma: 16-bit operands in core-matrix tiles, `m` a multiple of
/// 64, `n` of 8, every `k` of 16, whole warpgroups.
pub fn applies(terms: &[Matmul<'_, '_>]) -> bool {
    let core = |o: &Operand| {
        (o.tile.swizzled && o.tile.row_stride == 64)
            || (!o.tile.swizzled && o.tile.row_stride == 8 && o.tile.col_step > 1)
    };
    !terms.is_empty()
        && terms.iter().all(|t| {
            t.m % WG_M == 0
                && t.n % 8 == 0
                && t.k % 16 == 0
                && t.k > 0
                && t.num_warps % 4 == 0
                && core(&t.a)
                && core(&t.b)
        })
}

/// The unit width for an `m × n` result on `groups` warpgroups: the widest that is a multiple
/// of 8, divides `n`, is at most 128 and gives every group a unit (evenly if any width does).
///
/// ```
/// use linrec_compiler::emit::wgmma::unit_width;
/// assert_eq!(unit_width(64, 64, 2), 32); // Q·Kᵀ at C = 64 on two warpgroups
/// assert_eq!(unit_width(128, 128, 2), 128); // a 128-row state update: a unit each
/// ```
pub fn unit_width(m: i64, n: i64, groups: i64) -> i64 {
    unit_width_of(m, n, groups, 8)
}

/// [`unit_width`] with units a multiple of `multiple` columns (64 where B is a swizzled
/// MN-major tile: a unit must start on a swizzle atom).
fn unit_width_of(m: i64, n: i64, groups: i64, multiple: i64) -> i64 {
    let blocks = m / WG_M;
    let widths: Vec<i64> = (1..=n / 8)
        .filter(|p| (n / 8) % p == 0)
        .map(|p| n / p)
        .filter(|&w| w <= MAX_WIDTH && w % multiple == 0)
        .collect();
    let units = |w: i64| blocks * (n / w);
    widths
        .iter()
        .copied()
        .find(|&w| units(w) >= groups && units(w) % groups == 0)
        .or_else(|| widths.iter().copied().find(|&w| units(w) >= groups))
        .or_else(|| widths.last().copied())
        .unwrap_or(8)
}

/// Emits `Σ op(Aᵢ)·op(Bᵢ)` (+ `init`) as wgmma (the caller checked [`applies`]) and hands
/// every accumulator fragment to `epilogue`.
pub fn emit_sum<'c>(
    terms: &[Matmul<'c, '_>],
    ctx: &'c Context,
    loc: Location<'c>,
    block: &Block<'c>,
    init: Init<'c, '_>,
    epilogue: &mut super::mma::Epilogue<'_, 'c>,
) -> R<()> {
    let Some(first) = terms.first() else {
        return Err(EmitError::Schedule("wgmma: a sum of no matmuls".into()));
    };
    let o = Ops { ctx, loc };
    let (m, n) = (first.m, first.n);
    let groups = i64::from(first.num_warps) / 4;
    // A swizzled B stored K×N (MN-major) is read from whole 64-column atoms.
    let atoms = terms.iter().any(|t| t.b.tile.swizzled && !t.b.transposed);
    let width = unit_width_of(m, n, groups, if atoms { 64 } else { 8 });
    let per_row = n / width;
    let units = (m / WG_M) * per_row;
    let i64t: Type<'c> = IntegerType::new(ctx, 64).into();
    let f32t = Type::float32(ctx);
    let acc_t = llvm::r#type::r#struct(ctx, &vec![f32t; (width / 2) as usize], false);

    let tid = first.thread_id;
    let group = o.div(block, tid, o.ci(block, WG_THREADS)?)?;
    let in_group = o.rem(block, tid, o.ci(block, WG_THREADS)?)?;
    let warp = o.div(block, in_group, o.ci(block, 32)?)?;
    let lane = o.rem(block, in_group, o.ci(block, 32)?)?;
    let g = o.div(block, lane, o.ci(block, 4)?)?;
    let t2 = o.mul(block, o.rem(block, lane, o.ci(block, 4)?)?, o.ci(block, 2)?)?;
    // This lane's first row in a unit.
    let lane_row = o.add(block, o.mul(block, warp, o.ci(block, 16)?)?, g)?;

    // Each operand memref's shared address (i64); CSE folds the repeats.
    let base_of = |mem: Value<'c, '_>| -> R<Value<'c, '_>> {
        let ptr = o.build(
            block,
            OperationBuilder::new("memref.extract_aligned_pointer_as_index", loc)
                .add_operands(&[mem])
                .add_results(&[Type::index(ctx)]),
        )?;
        o.push(block, arith::index_cast(ptr, i64t, loc))
    };
    let mut descs = Vec::with_capacity(terms.len());
    for t in terms {
        descs.push((
            Side::new(&t.a, true),
            Side::new(&t.b, false),
            base_of(t.a.tile.memref)?,
            base_of(t.b.tile.memref)?,
        ));
    }

    for round in 0..(units + groups - 1) / groups {
        let unit = o.add(block, group, o.ci(block, round * groups)?)?;
        let mut body = |blk: &Block<'c>| -> R<()> {
            let mb = o.div(blk, unit, o.ci(blk, per_row)?)?;
            let nb = o.rem(blk, unit, o.ci(blk, per_row)?)?;
            let m0 = o.mul(blk, mb, o.ci(blk, WG_M)?)?;
            let n0 = o.mul(blk, nb, o.ci(blk, width)?)?;
            let row = o.add(blk, m0, lane_row)?;
            let row8 = o.add(blk, row, o.ci(blk, 8)?)?;
            let col = |j: i64| -> R<Value<'c, '_>> {
                let c = o.add(blk, n0, o.ci(blk, 8 * j)?)?;
                o.add(blk, c, t2)
            };
            // The accumulators: undefined from zero (below), else C's values fragment by
            // fragment.
            let mut acc = o.build(
                blk,
                OperationBuilder::new("llvm.mlir.undef", loc).add_results(&[acc_t]),
            )?;
            let zero = o.push(
                blk,
                arith::constant(ctx, FloatAttribute::new(ctx, f32t, 0.0).into(), loc),
            )?;
            // From zero: the first wgmma ignores the (undefined) accumulators (scale-d 0), so
            // no register is set to zero ahead of it.
            let from_zero = matches!(init, Init::Zero);
            for j in 0..width / 8 {
                let vals = match init {
                    Init::Zero => break,
                    Init::Load(c) => {
                        let cj = col(j)?;
                        let mut v = [zero; 4];
                        for (i, r) in [row, row8].into_iter().enumerate() {
                            for e in 0..2 {
                                let idx = o.mul(blk, r, o.ci(blk, c.row_stride)?)?;
                                let idx = o.add(blk, idx, cj)?;
                                let idx = o.add(blk, idx, o.ci(blk, c.offset + e)?)?;
                                v[2 * i + e as usize] = o.build(
                                    blk,
                                    OperationBuilder::new("memref.load", loc)
                                        .add_operands(&[c.memref, idx])
                                        .add_results(&[f32t]),
                                )?;
                            }
                        }
                        v
                    }
                };
                for (e, v) in vals.into_iter().enumerate() {
                    acc = o.push(
                        blk,
                        llvm::insert_value(
                            ctx,
                            acc,
                            DenseI64ArrayAttribute::new(ctx, &[4 * j + e as i64]),
                            v,
                            loc,
                        ),
                    )?;
                }
            }
            o.build0(blk, OperationBuilder::new("nvvm.wgmma.fence.aligned", loc))?;
            for (t, (a, b, base_a, base_b)) in terms.iter().zip(&descs) {
                // One descriptor per operand; each k-step adds a constant to its address
                // field (no carry out of it: see `Side::descriptor`), so no register holds
                // a descriptor per step.
                let (da0, db0) = (
                    a.descriptor(&o, blk, *base_a, m0)?,
                    b.descriptor(&o, blk, *base_b, n0)?,
                );
                for ks in 0..t.k / 16 {
                    let first_step = std::ptr::eq(t, first) && ks == 0;
                    let da = a.step(&o, blk, da0, ks * 16)?;
                    let db = b.step(&o, blk, db0, ks * 16)?;
                    acc = o.build(
                        blk,
                        OperationBuilder::new("nvvm.wgmma.mma_async", loc)
                            .add_attributes(&[
                                o.named(
                                    "shape",
                                    o.attr(&format!("#nvvm.shape<m = 64, n = {width}, k = 16>"))?,
                                ),
                                o.named(
                                    "typeA",
                                    o.attr(&format!(
                                        "#nvvm.wgmma_type<{}>",
                                        first.dtype.ptx_name()
                                    ))?,
                                ),
                                o.named(
                                    "typeB",
                                    o.attr(&format!(
                                        "#nvvm.wgmma_type<{}>",
                                        first.dtype.ptx_name()
                                    ))?,
                                ),
                                o.named("typeD", o.attr("#nvvm.wgmma_type<f32>")?),
                                o.named(
                                    "scaleD",
                                    o.attr(if from_zero && first_step {
                                        "#nvvm.wgmma_scale_out<zero>"
                                    } else {
                                        "#nvvm.wgmma_scale_out<one>"
                                    })?,
                                ),
                                o.named("scaleA", o.attr("#nvvm.wgmma_scale_in<one>")?),
                                o.named("scaleB", o.attr("#nvvm.wgmma_scale_in<one>")?),
                                o.named("layoutA", o.attr(a.layout())?),
                                o.named("layoutB", o.attr(b.layout())?),
                            ])
                            .add_operands(&[acc, da, db])
                            .add_results(&[acc_t]),
                    )?;
                }
            }
            o.build0(
                blk,
                OperationBuilder::new("nvvm.wgmma.commit.group.sync.aligned", loc),
            )?;
            o.build0(
                blk,
                OperationBuilder::new("nvvm.wgmma.wait.group.sync.aligned", loc).add_attributes(&[
                    o.named(
                        "group",
                        IntegerAttribute::new(IntegerType::new(ctx, 64).into(), 0).into(),
                    ),
                ]),
            )?;
            for j in 0..width / 8 {
                let mut v = [zero; 4];
                for (e, x) in v.iter_mut().enumerate() {
                    *x = o.push(
                        blk,
                        llvm::extract_value(
                            ctx,
                            acc,
                            DenseI64ArrayAttribute::new(ctx, &[4 * j + e as i64]),
                            f32t,
                            loc,
                        ),
                    )?;
                }
                let frag = Fragment {
                    row,
                    row8,
                    col: col(j)?,
                    acc: v,
                };
                epilogue(blk, &frag)?;
            }
            Ok(())
        };
        if (round + 1) * groups > units {
            // Warpgroup-uniform: the groups past the last unit skip it whole.
            let cond = o.push(
                block,
                arith::cmpi(
                    ctx,
                    arith::CmpiPredicate::Ult,
                    unit,
                    o.ci(block, units)?,
                    loc,
                ),
            )?;
            o.if_then(block, cond, &mut body)?;
        } else {
            body(block)?;
        }
    }
    Ok(())
}

/// One operand's descriptor rule.
struct Side {
    /// k runs along the stored row (A as stored, B stored transposed).
    k_major: bool,
    /// Whether this is A (its layout flag reads the other way round from B's).
    is_a: bool,
    offset: i64,
    row_stride: i64,
    col_step: i64,
    /// 128-byte swizzle (`col_step` the rows of a 64-column block).
    swizzled: bool,
}

impl Side {
    fn new(op: &Operand, is_a: bool) -> Self {
        Side {
            k_major: op.transposed != is_a,
            is_a,
            offset: op.tile.offset,
            row_stride: op.tile.row_stride,
            col_step: op.tile.col_step,
            swizzled: op.tile.swizzled,
        }
    }

    /// `#nvvm.mma_layout`: `row` is K-major for A, `col` K-major for B.
    fn layout(&self) -> &'static str {
        match (self.is_a, self.k_major) {
            (true, true) | (false, false) => "#nvvm.mma_layout<row>",
            _ => "#nvvm.mma_layout<col>",
        }
    }

    /// Element steps per unit of MN and of k, and the core-matrix strides in bytes along k
    /// (LBO) and along MN (SBO).
    fn steps(&self) -> (i64, i64, i64, i64) {
        if self.swizzled {
            // 128-byte swizzle (measured on an H200 like the core matrices): SBO is an 8-row
            // atom (1024 bytes); K-major needs no LBO (a k-step stays inside a 64-column
            // block; its k-step is not linear, see `step`), MN-major's LBO is the next
            // 64-column block along M/N.
            return if self.k_major {
                (64, 1, 16, 1024)
            } else {
                (self.col_step, 64, 128 * self.col_step, 1024)
            };
        }
        let (row_bytes, col_bytes) = (16 * self.row_stride, 16 * self.col_step);
        if self.k_major {
            (self.row_stride, self.col_step, col_bytes, row_bytes)
        } else {
            (self.col_step, self.row_stride, row_bytes, col_bytes)
        }
    }

    /// `desc` moved `k0` (a multiple of 8) along k: its address field (bytes >> 4) grows by
    /// `2·k0·k_step / 16`. The tiles lie below 256 KiB, so the field does not carry.
    fn step<'c, 'a>(
        &self,
        o: &Ops<'c>,
        blk: &'a Block<'c>,
        desc: Value<'c, 'a>,
        k0: i64,
    ) -> R<Value<'c, 'a>> {
        if k0 == 0 {
            return Ok(desc);
        }
        let (_, k_step, _, _) = self.steps();
        // A swizzled K-major tile: k0 elements into the row of its 64-column block.
        let elems = match (self.swizzled, self.k_major) {
            (true, true) => k0 / 64 * 64 * self.col_step + k0 % 64,
            _ => k0 * k_step,
        };
        let i64t: Type<'c> = IntegerType::new(o.ctx, 64).into();
        let add = o.push(
            blk,
            arith::constant(
                o.ctx,
                IntegerAttribute::new(i64t, 2 * elems / 16).into(),
                o.loc,
            ),
        )?;
        o.push(blk, arith::addi(desc, add, o.loc))
    }

    /// The descriptor of the 64-row (A) or unit-wide (B) slab at M/N offset `mn0` (a
    /// multiple of 8), k = 0.
    fn descriptor<'c, 'a>(
        &self,
        o: &Ops<'c>,
        blk: &'a Block<'c>,
        base: Value<'c, '_>,
        mn0: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        let (mn_step, _, lbo, sbo) = self.steps();
        let ctx = o.ctx;
        let i64t: Type<'c> = IntegerType::new(ctx, 64).into();
        let elem = o.mul(blk, mn0, o.ci(blk, mn_step)?)?;
        let elem = o.add(blk, elem, o.ci(blk, self.offset)?)?;
        let elem = o.push(blk, arith::index_cast(elem, i64t, o.loc))?;
        let c64 = |v: i64| -> R<Value<'c, 'a>> {
            o.push(
                blk,
                arith::constant(ctx, IntegerAttribute::new(i64t, v).into(), o.loc),
            )
        };
        // (base + 2·elem) >> 4, 14 bits: shared addresses are below 256 KiB.
        let bytes = o.push(blk, arith::shli(elem, c64(1)?, o.loc))?;
        let addr = o.push(blk, arith::addi(base, bytes, o.loc))?;
        let addr = o.push(blk, arith::shrui(addr, c64(4)?, o.loc))?;
        let addr = o.push(blk, arith::andi(addr, c64(0x3FFF)?, o.loc))?;
        // Layout type (bits 62–63): 1 is the 128-byte swizzle, 0 none.
        let swizzle = if self.swizzled { 1 << 62 } else { 0 };
        let high = ((lbo >> 4) & 0x3FFF) << 16 | ((sbo >> 4) & 0x3FFF) << 32 | swizzle;
        o.push(blk, arith::ori(addr, c64(high)?, o.loc))
    }
}
