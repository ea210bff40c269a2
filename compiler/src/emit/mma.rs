//! Tensor-core matmul for NVIDIA (sm_80, sm_90): a cooperative, warp-level
//! `C[M×N] (f32) (+)= op(A)[M×K] · op(B)[K×N]` on bf16 or f16 tiles in workgroup memory,
//! built from `nvgpu.ldmatrix` and `nvvm.mma.sync` m16n8k16 (`reference/mlir-lowering.md` §2,
//! item 1b: `nvgpu.mma.sync` rejects bf16 and `gpu.subgroup_mma_*` has no bf16, so the MMA is
//! the NVVM op on i32-packed fragments).
//!
//! The kernel emitter calls this for every plan `Matmul` whose operands are bf16/f16 when the
//! target is NVIDIA; it emits ops into a block of a `gpu.func` being built, with melior's
//! builders (no MLIR text). What the caller provides and guarantees:
//!
//! * A and B in workgroup memory as [`SmemTile`]s: a rank-1 `memref<S × bf16|f16,
//!   #gpu.address_space<workgroup>>` (a workgroup attribution with `{llvm.align = 16 : i64}`,
//!   or a `memref.view` of dynamic shared memory: both start 16-byte aligned), an element
//!   offset and a row stride. Element `(r, c)` of the *stored* matrix is
//!   `mem[offset + r·stride + c]`. `ldmatrix` reads 16-byte rows, so offset and stride must be
//!   multiples of 8 elements; a stride of `cols + 8` (row pitch ≡ 16 mod 128 bytes) also keeps the eight rows
//!   of each 8×8 matrix in distinct banks.
//! * Transpose flags: A is stored M×K (`transposed = false`) or K×M (`true`, `op(A) = Aᵀ`); B is
//!   stored K×N (`false`) or N×K (`true`, `op(B) = Bᵀ`). The plan's `Q·Kᵀ` is (false, true),
//!   `A·V` and `Q·h` are (false, false), `Kᵀ·V` is (true, false).
//! * M and K multiples of 16, N a multiple of 8 (the caller pads).
//! * The workgroup has `num_warps` warps and `thread_id` is the flat thread index. Every thread
//!   of the workgroup reaches the emitted code (warps without work skip it, warp-uniformly).
//! * Barriers are the caller's: one after A and B are written, and one after the result tile
//!   is written if other warps read it. The emitted code only reads A and B.
//! * A tile may also be stored as core matrices ([`SmemTile::col_step`] > 1: each 8-column
//!   block a `rows × 8` array); every address above then moves `col_step` elements per column
//!   (column offsets here are multiples of 8), and with [`Matmul::wgmma`] a sum of matmuls
//!   whose M is a multiple of 64 runs as Hopper's warpgroup MMA instead ([`super::wgmma`]).
//!   The f32 result tiles are always row-major.
//!
//! # Work distribution
//!
//! C is cut into 16×8 fragments (`M/16 × N/8`). [`MmaLayout::new`] arranges the warps in a
//! `warps_m × warps_n` grid that uses as many warps as possible (warps beyond that skip the
//! matmul) and, among those, minimises `ldmatrix` instructions per k-step; each warp owns a
//! `frags_m × frags_n` block of fragments. A warp walks its block in passes of at most
//! [`MmaLayout::MAX_FRAGMENTS_PER_PASS`] fragments (4 f32 registers each), so the accumulators
//! stay in registers. Within a pass it loops over K in steps of 16: one `ldmatrix.x4` per A
//! fragment row, one `ldmatrix.x4` per pair of B fragment columns (`.x2` for an odd last one),
//! then one `mma.sync` per fragment, all accumulators carried by the `scf.for`.
//!
//! # Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16")
//!
//! With `g = lane / 4` and `t = lane % 4`, the 32-bit registers of one lane hold pairs of
//! consecutive-k elements: A (16×16, row-major): `a0 = A[g][2t..2t+2]`, `a1 = A[g+8][2t..]`,
//! `a2 = A[g][8+2t..]`, `a3 = A[g+8][8+2t..]`; B (16×8, "col"): `b0 = B[2t..2t+2][g]`,
//! `b1 = B[8+2t..][g]`; C (16×8 f32): `c0, c1 = C[g][2t], C[g][2t+1]`, `c2, c3` the same in row
//! `g+8`. `ldmatrix` loads 8×8 b16 matrices whose eight row addresses come from lanes 8i..8i+7
//! for matrix i, and gives lane `l` the pair `M_i[l/4][2(l%4)..]` in register i; with `.trans`
//! it gives `M_i[2(l%4)..][l/4]` (the pair down a column of the stored matrix). So:
//!
//! | operand | stored as | `.trans` | 8×8 matrices in register order | lane `l` points at (row, col) of the stored tile |
//! |---|---|---|---|---|
//! | A, `ta = false` | M×K | no | (m, k), (m+8, k), (m, k+8), (m+8, k+8) | (m + l%16, k + 8·(l/16)) |
//! | A, `ta = true` | K×M | yes | (k, m), (k, m+8), (k+8, m), (k+8, m+8) | (k + l%8 + 8·(l/16), m + 8·((l/8)%2)) |
//! | B, `tb = false` | K×N | yes | (k, n), (k+8, n), (k, n+8), (k+8, n+8) | (k + l%16, n + 8·(l/16)) |
//! | B, `tb = true` | N×K | no | (n, k), (n, k+8), (n+8, k), (n+8, k+8) | (n + l%8 + 8·(l/16), k + 8·((l/8)%2)) |
//!
//! An A `.x4` covers one 16×16 fragment; a B `.x4` covers two 16×8 fragments (n and n+8), its
//! registers 0–1 being `b0, b1` of the first. For a B `.x2` (an odd last fragment) lanes 0–15
//! matter and the `8·(l/16)` term is dropped so that lanes 16–31 also point inside the tile.
//!
//! bf16 fragments are bitcast from `vector<2xbf16>` to `i32` (what `nvvm.mma.sync` takes for
//! bf16); f16 fragments stay `vector<2xf16>` (what it takes for f16). Both accumulate in f32:
//! `mma.sync.aligned.m16n8k16.row.col.f32.{bf16.bf16,f16.f16}.f32`.

use std::{cell::RefCell, collections::HashMap};

use linrec_spec::launch::ElementType;
use melior::{
    Context,
    dialect::{
        arith::{self, CmpiPredicate},
        llvm, scf,
    },
    ir::{
        Attribute, Block, BlockLike, Identifier, Location, Operation, Region, RegionLike, Type,
        Value, ValueLike,
        attribute::{
            BoolAttribute, DenseI32ArrayAttribute, DenseI64ArrayAttribute, FloatAttribute,
            IntegerAttribute,
        },
        operation::{OperationBuilder, OperationLike},
        r#type::{DimSize, IntegerType, MemRefType, ShapedTypeLike, TypeLike},
    },
};

use super::EmitError;

/// Result of an emitter step.
type R<T> = Result<T, EmitError>;

/// Rows of the m16n8k16 instruction's A operand and of a C fragment.
const FRAG_M: i64 = 16;
/// Columns of a C fragment.
const FRAG_N: i64 = 8;
/// The instruction's K.
const FRAG_K: i64 = 16;
/// Threads per warp.
const WARP: i64 = 32;

/// The 16-bit input type of a tensor-core matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MmaType {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl MmaType {
    /// The tensor-core type for a plan dtype; `None` for f32 (no 16-bit MMA applies).
    pub fn from_element(dtype: ElementType) -> Option<Self> {
        match dtype {
            ElementType::Bf16 => Some(Self::Bf16),
            ElementType::F16 => Some(Self::F16),
            ElementType::F32 => None,
        }
    }

    /// The MLIR element type.
    pub fn mlir_type<'c>(self, ctx: &'c Context) -> Type<'c> {
        match self {
            Self::Bf16 => Type::bfloat16(ctx),
            Self::F16 => Type::float16(ctx),
        }
    }

    /// The spelling in `#nvvm.mma_type<…>` and in PTX.
    pub fn ptx_name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

/// A row-major tile in a rank-1 memref: element `(r, c)` is `memref[offset + r·row_stride + c]`.
///
/// For [`Matmul::a`] and [`Matmul::b`] the memref holds bf16/f16 in workgroup memory; for the
/// result ([`Matmul::emit_to_smem`], [`Init::Load`]) it holds f32 in workgroup memory.
#[derive(Debug, Clone, Copy)]
pub struct SmemTile<'c, 'v> {
    /// A rank-1 `memref<S × T, #gpu.address_space<workgroup>>` (static or dynamic `S`).
    pub memref: Value<'c, 'v>,
    /// First element of the tile, in elements.
    pub offset: i64,
    /// Elements from one stored row to the next.
    pub row_stride: i64,
    /// Elements one column moves the address, for column offsets that are multiples of 8:
    /// 1 for a row-major tile; `rows` for a tile of core matrices (each 8-column block a
    /// `rows × 8` array, `row_stride` 8: [`crate::schedule::TileLayout::CoreMatrices`]);
    /// for a swizzled tile, its `rows`.
    pub col_step: i64,
    /// Stored with the 128-byte swizzle ([`crate::schedule::TileLayout::Swizzled`]):
    /// `row_stride` 64, `col_step` the rows of each 64-column block, `offset` a multiple of
    /// 512; addresses are then not linear in the column and are computed per load.
    pub swizzled: bool,
}

/// One matmul operand: where it is stored and whether the stored matrix is used transposed.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'c, 'v> {
    /// The stored matrix.
    pub tile: SmemTile<'c, 'v>,
    /// `false`: stored as the operand is used (A: M×K, B: K×N); `true`: stored transposed
    /// (A: K×M, B: N×K) and used as its transpose.
    pub transposed: bool,
}

/// How the accumulators start.
#[derive(Debug, Clone, Copy)]
pub enum Init<'c, 'v> {
    /// At zero: `C = op(A)·op(B)`.
    Zero,
    /// From an f32 tile in workgroup memory (M×N, same layout rules as the result tile):
    /// `C = C₀ + op(A)·op(B)`.
    Load(SmemTile<'c, 'v>),
}

/// One 16×8 accumulator fragment as one lane holds it, handed to the epilogue.
///
/// `acc[0]` is `C[row][col]`, `acc[1]` is `C[row][col + 1]`, `acc[2]` is `C[row + 8][col]`,
/// `acc[3]` is `C[row + 8][col + 1]`; `row` and `col` are `index` values relative to C's
/// origin. Over the 32 lanes of a warp and all fragments of all warps, every element of C is
/// handed over exactly once.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'c, 'x> {
    /// Row of `acc[0]` and `acc[1]`.
    pub row: Value<'c, 'x>,
    /// `row + 8`: row of `acc[2]` and `acc[3]`.
    pub row8: Value<'c, 'x>,
    /// Column of `acc[0]` and `acc[2]` (even).
    pub col: Value<'c, 'x>,
    /// The four f32 accumulators.
    pub acc: [Value<'c, 'x>; 4],
}

/// The epilogue callback of [`Matmul::emit`]: called once per fragment (per pass), inside
/// the block the accumulators live in; may append any ops there.
pub type Epilogue<'e, 'c> =
    dyn for<'x> FnMut(&'x Block<'c>, &Fragment<'c, 'x>) -> Result<(), EmitError> + 'e;

/// How a matmul's fragments are spread over the warps (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmaLayout {
    /// Warps along M.
    pub warps_m: i64,
    /// Warps along N.
    pub warps_n: i64,
    /// Fragments (16 rows each) per warp along M.
    pub frags_m: i64,
    /// Fragments (8 columns each) per warp along N.
    pub frags_n: i64,
    /// Fragments per pass along M (divides `frags_m`).
    pub pass_m: i64,
    /// Fragments per pass along N (divides `frags_n`).
    pub pass_n: i64,
}

impl MmaLayout {
    /// The most fragments one pass keeps in registers: 128 f32 accumulators per lane, which
    /// with the operand fragments and addresses stays under the 255-register limit.
    pub const MAX_FRAGMENTS_PER_PASS: i64 = 32;

    /// The layout for an `m × n` result on `num_warps` warps.
    ///
    /// Uses as many warps as the fragment grid can be split into evenly, then minimises the
    /// `ldmatrix` count per k-step and warp (`frags_m` A loads plus `⌈frags_n / 2⌉` B loads,
    /// for `frags_m · frags_n` MMAs). Errors if `m` is not a positive multiple of 16, `n` of 8,
    /// or `num_warps` is 0.
    pub fn new(m: i64, n: i64, num_warps: u32) -> R<Self> {
        if m <= 0 || m % FRAG_M != 0 || n <= 0 || n % FRAG_N != 0 {
            return Err(invalid(format!(
                "the result is {m}×{n}; M must be a positive multiple of 16 and N of 8"
            )));
        }
        if num_warps == 0 || num_warps > 32 {
            return Err(invalid(format!(
                "{num_warps} warps; a workgroup has 1 to 32"
            )));
        }
        let (fm, fnn) = (m / FRAG_M, n / FRAG_N);
        let warps = i64::from(num_warps);
        let loads = |a: i64, b: i64| a + (b + 1) / 2;
        let mut best: Option<((i64, i64, i64), Self)> = None;
        for pm in divisors(fm).filter(|&p| p <= warps) {
            for pn in divisors(fnn).filter(|&p| pm * p <= warps) {
                let (a, b) = (fm / pm, fnn / pn);
                // More warps first, then fewer loads, then taller warp tiles (their A
                // fragments are the bigger loads, so reusing them across N pays more).
                let key = (-(pm * pn), loads(a, b), -a);
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((
                        key,
                        MmaLayout {
                            warps_m: pm,
                            warps_n: pn,
                            frags_m: a,
                            frags_n: b,
                            pass_m: a,
                            pass_n: b,
                        },
                    ));
                }
            }
        }
        // (1, 1) always qualifies, so there is a best.
        let mut layout = best
            .map(|(_, l)| l)
            .ok_or_else(|| invalid("no warp layout".into()))?;
        let mut pass: Option<((i64, i64), (i64, i64))> = None;
        for sa in divisors(layout.frags_m) {
            for sb in divisors(layout.frags_n) {
                if sa * sb > Self::MAX_FRAGMENTS_PER_PASS {
                    continue;
                }
                let key = (-(sa * sb), loads(sa, sb));
                if pass.as_ref().is_none_or(|(k, _)| key < *k) {
                    pass = Some((key, (sa, sb)));
                }
            }
        }
        let (sa, sb) = pass.map(|(_, p)| p).unwrap_or((1, 1));
        layout.pass_m = sa;
        layout.pass_n = sb;
        Ok(layout)
    }

    /// Warps that do work (the rest skip the matmul).
    pub fn warps_used(&self) -> i64 {
        self.warps_m * self.warps_n
    }

    /// Passes per warp.
    pub fn passes(&self) -> i64 {
        (self.frags_m / self.pass_m) * (self.frags_n / self.pass_n)
    }
}

/// The divisors of `n ≥ 1`, ascending.
fn divisors(n: i64) -> impl Iterator<Item = i64> {
    (1..=n).filter(move |d| n % d == 0)
}

fn invalid(detail: String) -> EmitError {
    EmitError::Schedule(format!("tensor-core matmul: {detail}"))
}

/// One cooperative tensor-core matmul `C[M×N] (+)= op(A)[M×K] · op(B)[K×N]` (see the module
/// docs for the rules on the operands).
#[derive(Debug, Clone, Copy)]
pub struct Matmul<'c, 'v> {
    /// Rows of C.
    pub m: i64,
    /// Columns of C.
    pub n: i64,
    /// The reduction length.
    pub k: i64,
    /// The element type of A and B.
    pub dtype: MmaType,
    /// Warps in the workgroup.
    pub num_warps: u32,
    /// The flat thread index in the workgroup (`index`).
    pub thread_id: Value<'c, 'v>,
    /// The left operand.
    pub a: Operand<'c, 'v>,
    /// The right operand.
    pub b: Operand<'c, 'v>,
    /// Issue Hopper's warpgroup MMA where the shape and tiles allow ([`super::wgmma`]; sm_90a
    /// only), else `mma.sync`.
    pub wgmma: bool,
}

impl<'c, 'v> Matmul<'c, 'v> {
    /// The warp layout this matmul will use.
    pub fn layout(&self) -> R<MmaLayout> {
        MmaLayout::new(self.m, self.n, self.num_warps)
    }

    /// Emits the matmul into `block` and stores C (f32) into the workgroup tile `c`
    /// (`c.offset` and `c.row_stride` even, for 8-byte stores). With `accumulate`, C is first
    /// read from the same tile: `c = c + op(A)·op(B)`; otherwise `c = op(A)·op(B)`. No barrier
    /// is emitted: put one after this before other warps read `c`.
    pub fn emit_to_smem(
        &self,
        ctx: &'c Context,
        loc: Location<'c>,
        block: &Block<'c>,
        c: SmemTile<'c, '_>,
        accumulate: bool,
    ) -> R<()> {
        let init = if accumulate {
            Init::Load(c)
        } else {
            Init::Zero
        };
        // Checked here too, so that the epilogue cannot fail half-way for a bad tile.
        check_f32_tile(ctx, &c, self.m, self.n, "the result tile")?;
        // Built once, ahead of the matmul, and used from whichever block the fragments are in.
        let ops = Ops { ctx, loc };
        let stride = ops.ci(block, c.row_stride)?;
        let offset = match c.offset {
            0 => None,
            k => Some(ops.ci(block, k)?),
        };
        let f32x2 = Type::vector(&[2], Type::float32(ctx));
        let mut store = |blk: &Block<'c>, f: &Fragment<'c, '_>| -> R<()> {
            for (row, pair) in [
                (f.row, [f.acc[0], f.acc[1]]),
                (f.row8, [f.acc[2], f.acc[3]]),
            ] {
                let idx = ops.mul(blk, row, stride)?;
                let mut idx = ops.add(blk, idx, f.col)?;
                if let Some(offset) = offset {
                    idx = ops.add(blk, idx, offset)?;
                }
                let v = ops.build(
                    blk,
                    OperationBuilder::new("vector.from_elements", loc)
                        .add_operands(&pair)
                        .add_results(&[f32x2]),
                )?;
                ops.build0(
                    blk,
                    OperationBuilder::new("vector.store", loc).add_operands(&[v, c.memref, idx]),
                )?;
            }
            Ok(())
        };
        self.emit(ctx, loc, block, init, &mut store)
    }

    /// Emits the matmul into `block` and hands every accumulator fragment to `epilogue`
    /// (for fused epilogues: scaling, masks, conversion, stores to global memory). The callback
    /// runs in the block the fragments live in, which is `block` itself or a block nested in
    /// it; values of `block` may be used there.
    pub fn emit(
        &self,
        ctx: &'c Context,
        loc: Location<'c>,
        block: &Block<'c>,
        init: Init<'c, '_>,
        epilogue: &mut Epilogue<'_, 'c>,
    ) -> R<()> {
        Self::emit_sum(std::slice::from_ref(self), ctx, loc, block, init, epilogue)
    }

    /// Like [`Matmul::emit`] for the sum of several matmuls of one result shape: each pass
    /// runs every term's k-loop on the same accumulators, so `C = Σ op(Aᵢ)·op(Bᵢ)` never
    /// leaves the registers. The terms must agree on `m`, `n`, `dtype`, `num_warps` and
    /// `thread_id` (their `k` and operands may differ).
    pub fn emit_sum(
        terms: &[Matmul<'c, 'v>],
        ctx: &'c Context,
        loc: Location<'c>,
        block: &Block<'c>,
        init: Init<'c, '_>,
        epilogue: &mut Epilogue<'_, 'c>,
    ) -> R<()> {
        let Some(this) = terms.first() else {
            return Err(invalid("a sum of no matmuls".into()));
        };
        let layout = this.layout()?;
        for t in terms {
            t.check(ctx, &init)?;
            if (t.m, t.n, t.dtype, t.num_warps) != (this.m, this.n, this.dtype, this.num_warps)
                || t.thread_id != this.thread_id
            {
                return Err(invalid(format!(
                    "summed matmuls disagree: {}×{} {:?} on {} warps and {}×{} {:?} on {} warps",
                    this.m, this.n, this.dtype, this.num_warps, t.m, t.n, t.dtype, t.num_warps
                )));
            }
        }
        if terms.iter().all(|t| t.wgmma) && super::wgmma::applies(terms) {
            return super::wgmma::emit_sum(terms, ctx, loc, block, init, epilogue);
        }
        let e = Emit {
            ops: Ops { ctx, loc },
            top: block,
            consts: RefCell::new(HashMap::new()),
            mm: this,
            terms,
            layout,
        };
        let warp_size = e.c(WARP)?;
        let warp = e.ops.div(block, this.thread_id, warp_size)?;
        let lane = e.ops.rem(block, this.thread_id, warp_size)?;
        if layout.warps_used() < i64::from(this.num_warps) {
            // Warp-uniform: whole warps skip, so `.aligned` ldmatrix/mma stay legal.
            let used = e.c(layout.warps_used())?;
            let cond = e
                .ops
                .push(block, arith::cmpi(ctx, CmpiPredicate::Ult, warp, used, loc))?;
            e.ops.if_then(block, cond, |then| {
                e.warp_body(then, warp, lane, &init, epilogue)
            })?;
        } else {
            e.warp_body(block, warp, lane, &init, epilogue)?;
        }
        Ok(())
    }

    /// Rejects operands the fragment loads cannot read correctly.
    fn check(&self, ctx: &'c Context, init: &Init<'c, '_>) -> R<()> {
        if self.k <= 0 || self.k % FRAG_K != 0 {
            return Err(invalid(format!(
                "K = {} must be a positive multiple of 16",
                self.k
            )));
        }
        let (a_rows, a_cols) = if self.a.transposed {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (b_rows, b_cols) = if self.b.transposed {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        let elem = self.dtype.mlir_type(ctx);
        check_tile(ctx, &self.a.tile, a_rows, a_cols, elem, 8, "A")?;
        check_tile(ctx, &self.b.tile, b_rows, b_cols, elem, 8, "B")?;
        if let Init::Load(c) = init {
            check_f32_tile(ctx, c, self.m, self.n, "the initial C tile")?;
        }
        if !self.thread_id.r#type().is_index() {
            return Err(invalid(format!(
                "the thread id must be an index, not {}",
                self.thread_id.r#type()
            )));
        }
        Ok(())
    }
}

fn check_f32_tile(ctx: &Context, t: &SmemTile, rows: i64, cols: i64, what: &str) -> R<()> {
    if t.col_step != 1 {
        return Err(invalid(format!(
            "{what}: an f32 tile must be row-major (column step 1, not {})",
            t.col_step
        )));
    }
    check_tile(ctx, t, rows, cols, Type::float32(ctx), 2, what)
}

/// Checks that `t` is a rank-1 workgroup memref of `elem`, holds a `rows × cols` tile, and that
/// offset and stride are multiples of `align` elements.
fn check_tile(
    ctx: &Context,
    t: &SmemTile,
    rows: i64,
    cols: i64,
    elem: Type,
    align: i64,
    what: &str,
) -> R<()> {
    let ty = t.memref.r#type();
    let bad = |why: String| Err(invalid(format!("{what} ({ty}): {why}")));
    let Ok(memref) = MemRefType::try_from(ty) else {
        return bad("not a memref".into());
    };
    if memref.rank() != 1 {
        return bad("must be a rank-1 memref (address it with offset and row stride)".into());
    }
    if memref.element() != elem {
        return bad(format!("elements must be {elem}"));
    }
    let workgroup = Attribute::parse(ctx, "#gpu.address_space<workgroup>");
    let space = memref.memory_space();
    let in_workgroup = space.is_some_and(|s| {
        Some(s) == workgroup || IntegerAttribute::try_from(s).is_ok_and(|i| i.value() == 3)
    });
    if !in_workgroup {
        return bad("must be in workgroup memory (#gpu.address_space<workgroup>)".into());
    }
    if t.offset < 0 || t.offset % align != 0 || t.row_stride % align != 0 {
        return bad(format!(
            "offset {} and row stride {} must be non-negative multiples of {align} elements \
             ({} bytes)",
            t.offset,
            t.row_stride,
            align * if align == 8 { 2 } else { 4 }
        ));
    }
    let end = if t.swizzled {
        if align != 8
            || t.row_stride != 64
            || t.col_step < rows
            || t.offset % 512 != 0
            || cols % 64 != 0
        {
            return bad(format!(
                "a swizzled tile needs 16-bit elements, row stride 64, blocks of at least the \
                 {rows} rows, an offset that is a multiple of 512 and whole 64-column blocks \
                 (got row stride {}, block rows {}, offset {}, {cols} columns)",
                t.row_stride, t.col_step, t.offset
            ));
        }
        t.offset + cols / 64 * 64 * t.col_step
    } else if t.col_step == 1 {
        if t.row_stride < cols {
            return bad(format!(
                "row stride {} is less than the {cols} columns",
                t.row_stride
            ));
        }
        t.offset + (rows - 1) * t.row_stride + cols
    } else {
        // Core matrices: 16-bit operands only, each 8-column block `col_step` rows deep.
        if align != 8 || t.row_stride != 8 || t.col_step < rows || t.col_step % 8 != 0 {
            return bad(format!(
                "a tile of core matrices needs 16-bit elements, row stride 8 and a column \
                 step of at least the {rows} rows, a multiple of 8 (got row stride {}, column \
                 step {})",
                t.row_stride, t.col_step
            ));
        }
        t.offset + ((cols + 7) / 8 - 1) * 8 * t.col_step + (rows - 1) * 8 + 8
    };
    if let Ok(DimSize::Static(size)) = memref.dim_size(0)
        && i64::try_from(size).unwrap_or(i64::MAX) < end
    {
        return bad(format!(
            "a {rows}×{cols} tile at offset {} with row stride {} needs {end} elements",
            t.offset, t.row_stride
        ));
    }
    Ok(())
}

/// Builds single ops at one location, turning MLIR failures into [`EmitError`]s.
#[derive(Clone, Copy)]
pub(super) struct Ops<'c> {
    pub(super) ctx: &'c Context,
    pub(super) loc: Location<'c>,
}

impl<'c> Ops<'c> {
    /// Builds `op`, appends it to `blk` and returns its first result.
    pub(super) fn build<'a>(
        &self,
        blk: &'a Block<'c>,
        op: OperationBuilder<'c>,
    ) -> R<Value<'c, 'a>> {
        let op = self.append(blk, op)?;
        let name = op.name().as_string_ref().as_str().unwrap_or("?").to_owned();
        op.result(0).map(Into::into).map_err(|e| EmitError::Build {
            op: name,
            detail: format!("no result: {e}"),
        })
    }

    /// Builds `op` (no results used) and appends it to `blk`.
    pub(super) fn build0(&self, blk: &Block<'c>, op: OperationBuilder<'c>) -> R<()> {
        self.append(blk, op).map(|_| ())
    }

    /// `scf.if cond { body }` with no results (a warp- or warpgroup-uniform skip).
    pub(super) fn if_then(
        &self,
        blk: &Block<'c>,
        cond: Value<'c, '_>,
        body: impl FnOnce(&Block<'c>) -> R<()>,
    ) -> R<()> {
        let b = super::builder::Builder {
            ctx: self.ctx,
            loc: self.loc,
        };
        b.if_(blk, cond, body)
    }

    fn append<'a>(
        &self,
        blk: &'a Block<'c>,
        op: OperationBuilder<'c>,
    ) -> R<melior::ir::OperationRef<'c, 'a>> {
        let op = op.build().map_err(|e| EmitError::Build {
            op: "operation".into(),
            detail: e.to_string(),
        })?;
        Ok(blk.append_operation(op))
    }

    /// Appends an op made by one of melior's dialect helpers and returns its result.
    pub(super) fn push<'a>(&self, blk: &'a Block<'c>, op: Operation<'c>) -> R<Value<'c, 'a>> {
        let op = blk.append_operation(op);
        let name = op.name().as_string_ref().as_str().unwrap_or("?").to_owned();
        op.result(0).map(Into::into).map_err(|e| EmitError::Build {
            op: name,
            detail: format!("no result: {e}"),
        })
    }

    pub(super) fn attr(&self, text: &str) -> R<Attribute<'c>> {
        Attribute::parse(self.ctx, text).ok_or_else(|| EmitError::Build {
            op: format!("attribute `{text}`"),
            detail: "MLIR could not parse it".into(),
        })
    }

    pub(super) fn named(&self, name: &str, a: Attribute<'c>) -> (Identifier<'c>, Attribute<'c>) {
        (Identifier::new(self.ctx, name), a)
    }

    /// An `index` constant.
    pub(super) fn ci<'a>(&self, blk: &'a Block<'c>, n: i64) -> R<Value<'c, 'a>> {
        let attr = IntegerAttribute::new(Type::index(self.ctx), n).into();
        self.push(blk, arith::constant(self.ctx, attr, self.loc))
    }

    pub(super) fn add<'a>(
        &self,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(blk, arith::addi(x, y, self.loc))
    }
    pub(super) fn mul<'a>(
        &self,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(blk, arith::muli(x, y, self.loc))
    }
    pub(super) fn div<'a>(
        &self,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(blk, arith::divui(x, y, self.loc))
    }
    pub(super) fn rem<'a>(
        &self,
        blk: &'a Block<'c>,
        x: Value<'c, '_>,
        y: Value<'c, '_>,
    ) -> R<Value<'c, 'a>> {
        self.push(blk, arith::remui(x, y, self.loc))
    }
}

/// The state of one [`Matmul::emit`] call.
struct Emit<'c, 't, 'm, 'v> {
    ops: Ops<'c>,
    /// The caller's block: constants go here, ahead of everything nested, so that one copy of
    /// each serves every region and the printed MLIR stays readable.
    top: &'t Block<'c>,
    consts: RefCell<HashMap<i64, Value<'c, 't>>>,
    /// The first term: the shape, type and warps of all.
    mm: &'m Matmul<'c, 'v>,
    /// Every term, summed into one set of accumulators.
    terms: &'m [Matmul<'c, 'v>],
    layout: MmaLayout,
}

/// One term's lane part of its fragment addresses and how an index moves them.
struct TermAddr<'c, 'x> {
    a_lane: Value<'c, 'x>,
    b_lane: Value<'c, 'x>,
    b_lane_x2: Option<Value<'c, 'x>>,
    /// For swizzled tiles: the lane's (row, column) of the stored tile at k = 0, before the
    /// fragment's offset (A, B, B's `.x2` form).
    a_rc: Option<(Value<'c, 'x>, Value<'c, 'x>)>,
    b_rc: Option<(Value<'c, 'x>, Value<'c, 'x>)>,
    b_rc_x2: Option<(Value<'c, 'x>, Value<'c, 'x>)>,
    a_m_step: i64,
    a_k_step: i64,
    b_n_step: i64,
    b_k_step: i64,
}

/// A fragment load: which tile, where (lane part included, k excluded), how.
struct Load<'c, 'x> {
    mem: Value<'c, 'x>,
    /// Element index at k = 0.
    base: Value<'c, 'x>,
    /// Elements per unit of k (1 when k runs along a stored row, the row stride otherwise).
    k_step: i64,
    tiles: i32,
    transpose: bool,
    /// A swizzled tile's load: its address comes from this instead of `base`.
    swizzled: Option<Swizzled<'c, 'x>>,
}

/// Where a lane's `ldmatrix` row lies in a swizzled tile.
struct Swizzled<'c, 'x> {
    /// Row and column at k = 0 (the column a multiple of 8).
    row: Value<'c, 'x>,
    col: Value<'c, 'x>,
    /// k runs down the rows (else along them).
    k_on_rows: bool,
    /// The tile's first element and its 64-column blocks' size (`64·rows`).
    offset: i64,
    block: i64,
}

impl<'c, 't> Emit<'c, 't, '_, '_> {
    /// An `index` constant in the top block.
    fn c(&self, n: i64) -> R<Value<'c, 't>> {
        if let Some(v) = self.consts.borrow().get(&n) {
            return Ok(*v);
        }
        let v = self.ops.ci(self.top, n)?;
        self.consts.borrow_mut().insert(n, v);
        Ok(v)
    }

    /// `x·k`, with `k` from the constant pool (no op for `k = 1`).
    fn mul_c<'x>(&self, blk: &'x Block<'c>, x: Value<'c, 'x>, k: i64) -> R<Value<'c, 'x>> {
        if k == 1 {
            return Ok(x);
        }
        let k = self.c(k)?;
        self.ops.mul(blk, x, k)
    }

    /// `x·k + y`.
    fn mad<'x>(
        &self,
        blk: &'x Block<'c>,
        x: Value<'c, 'x>,
        k: i64,
        y: Value<'c, 'x>,
    ) -> R<Value<'c, 'x>> {
        let xk = self.mul_c(blk, x, k)?;
        self.ops.add(blk, xk, y)
    }

    /// `x + k` (no op for `k = 0`).
    fn add_c<'x>(&self, blk: &'x Block<'c>, x: Value<'c, 'x>, k: i64) -> R<Value<'c, 'x>> {
        if k == 0 {
            return Ok(x);
        }
        let k = self.c(k)?;
        self.ops.add(blk, x, k)
    }

    /// Everything a working warp does: address set-up, then each pass.
    fn warp_body<'x>(
        &self,
        blk: &'x Block<'c>,
        warp: Value<'c, '_>,
        lane: Value<'c, '_>,
        init: &Init<'c, '_>,
        epilogue: &mut Epilogue<'_, 'c>,
    ) -> R<()> {
        let (lay, o) = (self.layout, &self.ops);
        let wn = self.c(lay.warps_n)?;
        let warp_m = o.div(blk, warp, wn)?;
        let warp_n = o.rem(blk, warp, wn)?;
        // First row / column of this warp's block of C.
        let m_w = self.mul_c(blk, warp_m, lay.frags_m * FRAG_M)?;
        let n_w = self.mul_c(blk, warp_n, lay.frags_n * FRAG_N)?;

        // Lane terms of the row addresses (module docs, table).
        let l16 = o.rem(blk, lane, self.c(16)?)?;
        let l8 = o.rem(blk, lane, self.c(8)?)?;
        let h = o.div(blk, lane, self.c(16)?)?;
        let q = o.rem(blk, o.div(blk, lane, self.c(8)?)?, self.c(2)?)?;
        // Row s = row stride, column step cs (column offsets here are multiples of 8).
        // (l % 16)·s + 8·(l / 16)·cs: rows from l%16, column block from l/16.
        let pat1 = |t: &SmemTile| -> R<Value<'c, 'x>> {
            let c = self.mul_c(blk, h, 8 * t.col_step)?;
            self.mad(blk, l16, t.row_stride, c)
        };
        // (l % 8 + 8·(l / 16))·s + 8·((l / 8) % 2)·cs.
        let pat2 = |t: &SmemTile| -> R<Value<'c, 'x>> {
            let r = self.mad(blk, h, 8, l8)?;
            let c = self.mul_c(blk, q, 8 * t.col_step)?;
            self.mad(blk, r, t.row_stride, c)
        };
        // .x2 forms for B (lanes 0–15 only): (l % 16)·s and (l % 8)·s + 8·((l / 8) % 2)·cs.
        let pat1_x2 = |t: &SmemTile| -> R<Value<'c, 'x>> { self.mul_c(blk, l16, t.row_stride) };
        let pat2_x2 = |t: &SmemTile| -> R<Value<'c, 'x>> {
            let c = self.mul_c(blk, q, 8 * t.col_step)?;
            self.mad(blk, l8, t.row_stride, c)
        };

        // Swizzled tiles: the same lane patterns as (row, column) pairs.
        let rc1 = || -> R<(Value<'c, 'x>, Value<'c, 'x>)> { Ok((l16, self.mul_c(blk, h, 8)?)) };
        let rc2 = || -> R<(Value<'c, 'x>, Value<'c, 'x>)> {
            Ok((self.mad(blk, h, 8, l8)?, self.mul_c(blk, q, 8)?))
        };
        let rc1_x2 = || -> R<(Value<'c, 'x>, Value<'c, 'x>)> { Ok((l16, o.ci(blk, 0)?)) };
        let rc2_x2 = || -> R<(Value<'c, 'x>, Value<'c, 'x>)> { Ok((l8, self.mul_c(blk, q, 8)?)) };

        let mut addrs = Vec::with_capacity(self.terms.len());
        for t in self.terms {
            let (at, bt) = (&t.a.tile, &t.b.tile);
            let a_lane = if t.a.transposed { pat2(at)? } else { pat1(at)? };
            let b_lane = if t.b.transposed { pat2(bt)? } else { pat1(bt)? };
            let b_lane_x2 = if lay.pass_n % 2 == 1 {
                let v = if t.b.transposed {
                    pat2_x2(bt)?
                } else {
                    pat1_x2(bt)?
                };
                Some(self.add_c(blk, v, bt.offset)?)
            } else {
                None
            };
            // Where a fragment row (A) / column (B) index moves the address: along the stored
            // row when the matrix is stored transposed relative to k-major, else by whole rows.
            let (a_m_step, a_k_step) = match t.a.transposed {
                true => (at.col_step, at.row_stride),
                false => (at.row_stride, at.col_step),
            };
            let (b_n_step, b_k_step) = match t.b.transposed {
                true => (bt.row_stride, bt.col_step),
                false => (bt.col_step, bt.row_stride),
            };
            let a_rc = match (at.swizzled, t.a.transposed) {
                (false, _) => None,
                (true, false) => Some(rc1()?),
                (true, true) => Some(rc2()?),
            };
            let b_rc = match (bt.swizzled, t.b.transposed) {
                (false, _) => None,
                (true, false) => Some(rc1()?),
                (true, true) => Some(rc2()?),
            };
            let b_rc_x2 = match (bt.swizzled && lay.pass_n % 2 == 1, t.b.transposed) {
                (false, _) => None,
                (true, false) => Some(rc1_x2()?),
                (true, true) => Some(rc2_x2()?),
            };
            addrs.push(TermAddr {
                a_lane: self.add_c(blk, a_lane, at.offset)?,
                b_lane: self.add_c(blk, b_lane, bt.offset)?,
                b_lane_x2,
                a_rc,
                b_rc,
                b_rc_x2,
                a_m_step,
                a_k_step,
                b_n_step,
                b_k_step,
            });
        }

        // Accumulator coordinates of this lane inside a fragment.
        let g = o.div(blk, lane, self.c(4)?)?;
        let t2 = self.mul_c(blk, o.rem(blk, lane, self.c(4)?)?, 2)?;

        for pi in 0..lay.frags_m / lay.pass_m {
            for pj in 0..lay.frags_n / lay.pass_n {
                let m0 = self.add_c(blk, m_w, pi * lay.pass_m * FRAG_M)?;
                let n0 = self.add_c(blk, n_w, pj * lay.pass_n * FRAG_N)?;
                let mut acc = self.init_acc(blk, init, m0, n0, g, t2)?;
                for (t, ad) in self.terms.iter().zip(&addrs) {
                    let mut loads_a = Vec::new();
                    for i in 0..lay.pass_m {
                        let m = self.add_c(blk, m0, i * FRAG_M)?;
                        // A: m moves the row (stored M×K) or the column (stored K×M).
                        let swizzled = match ad.a_rc {
                            Some((r, c)) => {
                                Some(self.swizzled(&t.a, (r, c), m, t.a.transposed, blk)?)
                            }
                            None => None,
                        };
                        loads_a.push(Load {
                            mem: t.a.tile.memref,
                            base: self.mad(blk, m, ad.a_m_step, ad.a_lane)?,
                            k_step: ad.a_k_step,
                            tiles: 4,
                            transpose: t.a.transposed,
                            swizzled,
                        });
                    }
                    let mut loads_b = Vec::new();
                    for j in (0..lay.pass_n).step_by(2) {
                        let n = self.add_c(blk, n0, j * FRAG_N)?;
                        let pair = j + 1 < lay.pass_n;
                        let lane_part = match (pair, ad.b_lane_x2) {
                            (false, Some(x2)) => x2,
                            _ => ad.b_lane,
                        };
                        // B: n moves the column (stored K×N) or the row (stored N×K).
                        let rc = match (pair, ad.b_rc_x2) {
                            (false, Some(x2)) => Some(x2),
                            _ => ad.b_rc,
                        };
                        let swizzled = match rc {
                            Some((r, c)) => {
                                Some(self.swizzled(&t.b, (r, c), n, !t.b.transposed, blk)?)
                            }
                            None => None,
                        };
                        loads_b.push(Load {
                            mem: t.b.tile.memref,
                            base: self.mad(blk, n, ad.b_n_step, lane_part)?,
                            k_step: ad.b_k_step,
                            tiles: if pair { 4 } else { 2 },
                            transpose: !t.b.transposed,
                            swizzled,
                        });
                    }
                    acc = self.k_loop(blk, t.k, &loads_a, &loads_b, &acc)?;
                }
                for i in 0..lay.pass_m {
                    let row = self.add_c(blk, m0, i * FRAG_M)?;
                    let row = o.add(blk, row, g)?;
                    let row8 = self.add_c(blk, row, 8)?;
                    for j in 0..lay.pass_n {
                        let col = self.add_c(blk, n0, j * FRAG_N)?;
                        let col = o.add(blk, col, t2)?;
                        let f = (i * lay.pass_n + j) as usize * 4;
                        let frag = Fragment {
                            row,
                            row8,
                            col,
                            acc: [acc[f], acc[f + 1], acc[f + 2], acc[f + 3]],
                        };
                        epilogue(blk, &frag)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The initial accumulators of one pass, fragment-major (4 per fragment).
    fn init_acc<'x>(
        &self,
        blk: &'x Block<'c>,
        init: &Init<'c, '_>,
        m0: Value<'c, '_>,
        n0: Value<'c, '_>,
        g: Value<'c, '_>,
        t2: Value<'c, '_>,
    ) -> R<Vec<Value<'c, 'x>>> {
        let (lay, o) = (self.layout, &self.ops);
        let frags = (lay.pass_m * lay.pass_n) as usize;
        let c = match init {
            Init::Zero => {
                let attr = FloatAttribute::new(o.ctx, Type::float32(o.ctx), 0.0).into();
                let z = o.push(blk, arith::constant(o.ctx, attr, o.loc))?;
                return Ok(vec![z; 4 * frags]);
            }
            Init::Load(c) => c,
        };
        let f32x2 = Type::vector(&[2], Type::float32(o.ctx));
        let mut acc = Vec::with_capacity(4 * frags);
        for i in 0..lay.pass_m {
            let row = self.add_c(blk, m0, i * FRAG_M)?;
            let row = o.add(blk, row, g)?;
            for j in 0..lay.pass_n {
                let col = self.add_c(blk, n0, j * FRAG_N)?;
                let col = o.add(blk, col, t2)?;
                for dr in [0, 8] {
                    let r = self.add_c(blk, row, dr)?;
                    let idx = self.mad(blk, r, c.row_stride, col)?;
                    let idx = self.add_c(blk, idx, c.offset)?;
                    let v = o.build(
                        blk,
                        OperationBuilder::new("vector.load", o.loc)
                            .add_operands(&[c.memref, idx])
                            .add_results(&[f32x2]),
                    )?;
                    for e in 0..2 {
                        acc.push(self.extract(blk, v, e, Type::float32(o.ctx))?);
                    }
                }
            }
        }
        Ok(acc)
    }

    /// `vector.extract v[pos]` with a static position.
    fn extract<'x>(
        &self,
        blk: &'x Block<'c>,
        v: Value<'c, '_>,
        pos: i64,
        ty: Type<'c>,
    ) -> R<Value<'c, 'x>> {
        let o = &self.ops;
        o.build(
            blk,
            OperationBuilder::new("vector.extract", o.loc)
                .add_attributes(&[o.named(
                    "static_position",
                    DenseI64ArrayAttribute::new(o.ctx, &[pos]).into(),
                )])
                .add_operands(&[v])
                .add_results(&[ty]),
        )
    }

    /// A swizzled load's place: the lane's `(r, c)` with the fragment's offset `mn` added to
    /// the column when k runs down the rows (A stored K×M, B stored K×N), else to the row.
    fn swizzled<'x>(
        &self,
        op: &Operand<'c, '_>,
        (r, c): (Value<'c, 'x>, Value<'c, 'x>),
        mn: Value<'c, 'x>,
        k_on_rows: bool,
        blk: &'x Block<'c>,
    ) -> R<Swizzled<'c, 'x>> {
        let o = &self.ops;
        let (row, col) = match k_on_rows {
            true => (r, o.add(blk, c, mn)?),
            false => (o.add(blk, r, mn)?, c),
        };
        Ok(Swizzled {
            row,
            col,
            k_on_rows,
            offset: op.tile.offset,
            block: 64 * op.tile.col_step,
        })
    }

    /// The loop over K in steps of 16, carrying the accumulators; returns their final values.
    fn k_loop<'x>(
        &self,
        blk: &'x Block<'c>,
        k: i64,
        loads_a: &[Load<'c, '_>],
        loads_b: &[Load<'c, '_>],
        acc0: &[Value<'c, '_>],
    ) -> R<Vec<Value<'c, 'x>>> {
        let o = &self.ops;
        let f32t = Type::float32(o.ctx);
        let mut args = vec![(Type::index(o.ctx), o.loc)];
        args.extend(acc0.iter().map(|_| (f32t, o.loc)));
        let body = Block::new(&args);
        {
            let arg = |i: usize| -> R<Value<'c, '_>> {
                body.argument(i)
                    .map(Into::into)
                    .map_err(|e| EmitError::Build {
                        op: "scf.for block argument".into(),
                        detail: e.to_string(),
                    })
            };
            let kk = arg(0)?;
            let a_regs = loads_a
                .iter()
                .map(|l| self.ldmatrix(&body, l, kk))
                .collect::<R<Vec<_>>>()?;
            // One B fragment per two registers: a .x4 load yields two fragments.
            let mut b_regs = Vec::new();
            for l in loads_b {
                let regs = self.ldmatrix(&body, l, kk)?;
                for pair in regs.chunks(2) {
                    b_regs.push([pair[0], pair[1]]);
                }
            }
            let mut next = Vec::with_capacity(acc0.len());
            for (i, a) in a_regs.iter().enumerate() {
                for (j, b) in b_regs.iter().enumerate() {
                    let f = (i * b_regs.len() + j) * 4;
                    let c = [arg(f + 1)?, arg(f + 2)?, arg(f + 3)?, arg(f + 4)?];
                    next.extend(self.mma(&body, a, b, &c)?);
                }
            }
            body.append_operation(scf::r#yield(&next, o.loc));
        }
        let region = Region::new();
        region.append_block(body);
        let mut operands = vec![self.c(0)?, self.c(k)?, self.c(FRAG_K)?];
        operands.extend_from_slice(acc0);
        let op = o.append(
            blk,
            OperationBuilder::new("scf.for", o.loc)
                .add_operands(&operands)
                .add_results(&vec![f32t; acc0.len()])
                .add_regions([region]),
        )?;
        (0..acc0.len())
            .map(|i| {
                op.result(i).map(Into::into).map_err(|e| EmitError::Build {
                    op: "scf.for".into(),
                    detail: format!("no result {i}: {e}"),
                })
            })
            .collect()
    }

    /// One `nvgpu.ldmatrix` at k offset `kk`, split into the registers `nvvm.mma.sync` takes
    /// (i32 for bf16, `vector<2xf16>` for f16).
    fn ldmatrix<'x>(
        &self,
        blk: &'x Block<'c>,
        l: &Load<'c, '_>,
        kk: Value<'c, '_>,
    ) -> R<Vec<Value<'c, 'x>>> {
        let o = &self.ops;
        let idx = match &l.swizzled {
            None => self.mad(blk, kk, l.k_step, l.base)?,
            Some(s) => {
                let (r, c) = match s.k_on_rows {
                    true => (o.add(blk, s.row, kk)?, s.col),
                    false => (s.row, o.add(blk, s.col, kk)?),
                };
                // ⌊c/64⌋·block + 64·r + 8·(⌊c/8⌋ mod 8 ⊕ r mod 8) (c is a multiple of 8).
                let block = o.div(blk, c, self.c(64)?)?;
                let chunk = o.rem(blk, o.div(blk, c, self.c(8)?)?, self.c(8)?)?;
                let phase = o.rem(blk, r, self.c(8)?)?;
                let chunk = o.push(blk, arith::xori(chunk, phase, o.loc))?;
                let at = self.mul_c(blk, chunk, 8)?;
                let at = self.mad(blk, r, 64, at)?;
                let at = self.mad(blk, block, s.block, at)?;
                self.add_c(blk, at, s.offset)?
            }
        };
        let elem = self.mm.dtype.mlir_type(o.ctx);
        let pair = Type::vector(&[2], elem);
        let result = Type::vector(&[l.tiles as u64, 2], elem);
        let frag = o.build(
            blk,
            OperationBuilder::new("nvgpu.ldmatrix", o.loc)
                .add_attributes(&[
                    o.named(
                        "numTiles",
                        IntegerAttribute::new(IntegerType::new(o.ctx, 32).into(), l.tiles.into())
                            .into(),
                    ),
                    o.named("transpose", BoolAttribute::new(o.ctx, l.transpose).into()),
                ])
                .add_operands(&[l.mem, idx])
                .add_results(&[result]),
        )?;
        (0..i64::from(l.tiles))
            .map(|r| {
                let v = self.extract(blk, frag, r, pair)?;
                match self.mm.dtype {
                    MmaType::Bf16 => o.push(
                        blk,
                        llvm::bitcast(v, IntegerType::new(o.ctx, 32).into(), o.loc),
                    ),
                    MmaType::F16 => Ok(v),
                }
            })
            .collect()
    }

    /// `D = A·B + C` on one fragment; returns D's four f32 values.
    fn mma<'x>(
        &self,
        blk: &'x Block<'c>,
        a: &[Value<'c, '_>],
        b: &[Value<'c, '_>; 2],
        c: &[Value<'c, '_>; 4],
    ) -> R<Vec<Value<'c, 'x>>> {
        let o = &self.ops;
        let f32t = Type::float32(o.ctx);
        let ty = format!("#nvvm.mma_type<{}>", self.mm.dtype.ptx_name());
        let result = llvm::r#type::r#struct(o.ctx, &[f32t; 4], false);
        let mut operands = a.to_vec();
        operands.extend_from_slice(b);
        operands.extend_from_slice(c);
        let d = o.build(
            blk,
            OperationBuilder::new("nvvm.mma.sync", o.loc)
                .add_attributes(&[
                    o.named("shape", o.attr("#nvvm.shape<m = 16, n = 8, k = 16>")?),
                    o.named("layoutA", o.attr("#nvvm.mma_layout<row>")?),
                    o.named("layoutB", o.attr("#nvvm.mma_layout<col>")?),
                    o.named("multiplicandAPtxType", o.attr(&ty)?),
                    o.named("multiplicandBPtxType", o.attr(&ty)?),
                    o.named(
                        "operandSegmentSizes",
                        DenseI32ArrayAttribute::new(o.ctx, &[a.len() as i32, 2, 4]).into(),
                    ),
                ])
                .add_operands(&operands)
                .add_results(&[result]),
        )?;
        (0..4)
            .map(|i| {
                o.push(
                    blk,
                    llvm::extract_value(
                        o.ctx,
                        d,
                        DenseI64ArrayAttribute::new(o.ctx, &[i]),
                        f32t,
                        o.loc,
                    ),
                )
            })
            .collect()
    }
}
