//! Matrix-core matmul for AMD: a cooperative, wave-level `C[M×N] (f32) = op(A)[M×K] ·
//! op(B)[K×N]` on bf16 or f16 tiles, built from `amdgpu.mfma` 16x16x16 on CDNA (gfx90a,
//! gfx942; wave64) and `amdgpu.wmma` 16x16x16 on RDNA3 (gfx1100; wave32), with melior's
//! builders (`reference/mlir-lowering.md` §4 3d; `gpu.subgroup_mma_*` does not lower on
//! ROCDL, so the kernel names the AMDGPU ops directly). Lowered by
//! `convert-amdgpu-to-rocdl{chipset=…}` to `v_mfma_f32_16x16x16_bf16` (gfx942),
//! `v_mfma_f32_16x16x16bf16_1k` (gfx90a), `v_mfma_f32_16x16x16_f16`, and
//! `v_wmma_f32_16x16x16_{bf16,f16}` (gfx1100).
//!
//! The same code also runs in [`Mode::Emulated`]: every lane computes, in plain scalar code,
//! exactly the accumulator elements the hardware would place in its registers, from the
//! operand elements the *kernel's own address math* would load into the lanes that the
//! hardware documentation says hold them. That form compiles for any target (the tests run it
//! as SPIR-V on Intel's CPU OpenCL runtime), and checks this file's index math end to end;
//! see "What the emulation proves" below.
//!
//! What the caller provides and guarantees (as for [`super::mma`]):
//!
//! * A and B as [`Tile`]s of a rank-1 memref: element `(r, c)` of the *stored* matrix is
//!   `mem[base + offset + r·row_stride + c]`. On the hardware, the memref holds bf16/f16 in
//!   workgroup memory (LDS), `base` is `None`, and `offset` and `row_stride` are multiples of 8
//!   elements (16 bytes) with the memref 16-byte aligned: the fragment loads are 8-byte
//!   (`vector<4×T>`, MFMA) or 32-byte (`vector<16×T>`, WMMA) vector loads with a declared
//!   alignment. Emulated, the memref holds the same values as f32 (already rounded to the
//!   dtype) anywhere, and `base` may add a dynamic element offset.
//! * Transpose flags: A stored M×K (`false`) or K×M (`true`); B stored K×N (`false`) or N×K
//!   (`true`); the plan's `Q·Kᵀ` is (false, true), `A·V` and `Q·h` (false, false), `Kᵀ·V`
//!   (true, false).
//! * M, N and K positive multiples of 16 (the caller zero-pads the tiles).
//! * The workgroup has `threads` threads (a multiple of the wave size) and `thread_id` is
//!   the flat thread index; every thread reaches the emitted code (waves without work skip it,
//!   wave-uniformly).
//! * Barriers are the caller's: the emitted code only reads A and B and hands the results to
//!   the epilogue.
//!
//! # Lane layout
//!
//! With `lo = lane % 16` and `hi = lane / 16`, one 16×16×16 step of either instruction reads a
//! 16×16 block of op(A) (rows `i`, depth `k`) and of op(B) (depth `k`, columns `j`) and adds to
//! a 16×16 block of C. Each lane passes `E` operand elements of A and of B and holds `R` f32
//! accumulators ([`MatrixCore::operand_coords`], [`MatrixCore::result_coords`]):
//!
//! | instruction | wave | `E` | A element `e` of a lane | B element `e` of a lane | `R` | accumulator `e` of a lane |
//! |---|---|---|---|---|---|---|
//! | `amdgpu.mfma 16x16x16` (`v_mfma_f32_16x16x16_{bf16,f16}`) | 64 | 4 | `A[lo][4·hi + e]` | `B[4·hi + e][lo]` | 4 | `C[4·hi + e][lo]` |
//! | `amdgpu.wmma 16x16x16` (`v_wmma_f32_16x16x16_{bf16,f16}`) | 32 | 16 | `A[lo][e]` | `B[e][lo]` | 8 | `C[2·e + hi][lo]` |
//!
//! These are AMD's documented register layouts (the CDNA3 ISA's MFMA operand layout, as AMD's
//! matrix instruction calculator prints it for `v_mfma_f32_16x16x16_bf16`; the RDNA3 ISA's
//! WMMA layout, where lanes 16–31 must repeat the operands of lanes 0–15, which the formula
//! does since it only depends on `lo`), and those the checked examples
//! `reference/mlir/3a_mfma_bf16_gfx942.mlir` and `3b_wmma_bf16_gfx1100.mlir` use. Inversely,
//! the documentation places operand element `(row or column m, depth k)` in lane
//! `m + 16·(k / E)`, element `k % E` ([`MatrixCore::operand_holder`]); the emulation
//! relies on that form, the kernel on the forward one.
//!
//! So a lane's A fragment is `E` consecutive-k elements of one row of op(A): one vector load
//! when the stored tile is M×K (`ta = false`, the row is contiguous), `E` scalar loads a row
//! stride apart when it is K×M. Likewise B: one vector load when stored N×K (`tb = true`),
//! scalar loads otherwise.
//!
//! # Work distribution
//!
//! C is cut into 16×16 tiles (`M/16 × N/16`). [`WaveLayout::new`] arranges the waves of the
//! workgroup (2 of 64 lanes on CDNA, 4 of 32 on RDNA3, for 128 threads) in a
//! `waves_m × waves_n` grid that uses as many waves as possible (the rest skip the matmul) and,
//! among those, minimises fragment loads per k-step; each wave owns a `tiles_m × tiles_n` block
//! of tiles and walks it in passes of at most [`WaveLayout::MAX_ACCUMULATORS`] f32
//! accumulators per lane, so they stay in VGPRs. A pass loops over K in steps of 16: one A
//! fragment per tile row, one B fragment per tile column, one instruction per tile, the
//! accumulators (`vector<R×f32>`) carried by the `scf.for`.
//!
//! # What the emulation proves
//!
//! [`Mode::Emulated`] keeps the work distribution, the passes, the k loop, the address
//! function of every fragment (evaluated for the lane that holds each element) and the
//! epilogue's coordinates, and replaces each instruction by its documented meaning in scalar
//! code. A kernel that passes emulated has correct tile addressing, transposes, padding,
//! wave split and result placement *if* the hardware places fragments as documented and
//! `amdgpu.mfma`/`amdgpu.wmma` pass vector element `e` as register element `e`. It does not
//! prove those two facts, nor anything about LDS, wave execution, register allocation or speed:
//! only a run on an AMD GPU does. Checked by mutation: swapping a transpose's steps makes the
//! emulated runs fail (errors ~1); a wrong k order inside a step that A and B share passes,
//! as it would on the hardware, where it changes nothing (the layout test
//! `matrix_core::lane_layouts_cover_every_element_once` still pins the documented order).

use melior::{
    Context,
    ir::{
        Attribute, Block, BlockLike, Location, Region, RegionLike, Type, Value, ValueLike,
        attribute::{DenseI64ArrayAttribute, IntegerAttribute},
        r#type::{DimSize, MemRefType, ShapedTypeLike, TypeLike},
    },
};

use super::EmitError;
use super::builder::{Builder, Cmp};
use super::mma::MmaType;
use crate::lower::Target;

/// Result of an emitter step.
type R<T> = Result<T, EmitError>;

/// Rows, columns and depth of one matrix-core step.
pub const TILE: i64 = 16;

/// An AMD matrix-core instruction (with its wave size): what a target's kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatrixCore {
    /// `amdgpu.mfma 16x16x16` on CDNA (gfx90a, gfx942), wave64.
    Mfma16x16x16,
    /// `amdgpu.wmma 16x16x16` on RDNA3 (gfx1100), wave32.
    Wmma16x16x16,
}

/// `lo·(lane % 16) + hi·(lane / 16) + elem·e`: every coordinate of the lane layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Affine {
    lo: i64,
    hi: i64,
    elem: i64,
}

impl Affine {
    const LO: Affine = Affine {
        lo: 1,
        hi: 0,
        elem: 0,
    };

    fn at(self, lane: i64, e: i64) -> i64 {
        self.lo * (lane % TILE) + self.hi * (lane / TILE) + self.elem * e
    }
}

impl MatrixCore {
    /// The instruction a target's 16-bit matmuls use; `None` for non-AMD targets.
    pub fn for_target(target: Target) -> Option<Self> {
        match target {
            Target::Gfx90a | Target::Gfx942 => Some(Self::Mfma16x16x16),
            Target::Gfx1100 => Some(Self::Wmma16x16x16),
            _ => None,
        }
    }

    /// Lanes per wave.
    pub const fn wave_size(self) -> i64 {
        match self {
            Self::Mfma16x16x16 => 64,
            Self::Wmma16x16x16 => 32,
        }
    }

    /// Operand elements of A (and of B) per lane and step (`E`).
    pub const fn operand_elements(self) -> i64 {
        match self {
            Self::Mfma16x16x16 => 4,
            Self::Wmma16x16x16 => 16,
        }
    }

    /// f32 accumulators per lane and 16×16 tile (`R`).
    pub const fn accumulators(self) -> i64 {
        match self {
            Self::Mfma16x16x16 => 4,
            Self::Wmma16x16x16 => 8,
        }
    }

    /// The MLIR op and its shape, as the schedule text names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Mfma16x16x16 => "amdgpu.mfma 16x16x16",
            Self::Wmma16x16x16 => "amdgpu.wmma 16x16x16",
        }
    }

    /// The operand's row (A) / column (B) `m` and depth `k`, and the result's row and column.
    fn affine(self) -> [Affine; 4] {
        let k = match self {
            Self::Mfma16x16x16 => Affine {
                lo: 0,
                hi: 4,
                elem: 1,
            },
            Self::Wmma16x16x16 => Affine {
                lo: 0,
                hi: 0,
                elem: 1,
            },
        };
        let row = match self {
            Self::Mfma16x16x16 => Affine {
                lo: 0,
                hi: 4,
                elem: 1,
            },
            Self::Wmma16x16x16 => Affine {
                lo: 0,
                hi: 1,
                elem: 2,
            },
        };
        [Affine::LO, k, row, Affine::LO]
    }

    /// Operand element `e` of `lane`, as `(m, k)`: A's row `m` and depth `k`, or B's depth
    /// `k` and column `m` (module docs, table).
    pub fn operand_coords(self, lane: i64, e: i64) -> (i64, i64) {
        let [m, k, ..] = self.affine();
        (m.at(lane, e), k.at(lane, e))
    }

    /// Accumulator `e` of `lane`, as `(row, column)` of the 16×16 result tile.
    pub fn result_coords(self, lane: i64, e: i64) -> (i64, i64) {
        let [.., row, col] = self.affine();
        (row.at(lane, e), col.at(lane, e))
    }

    /// The documented inverse of [`MatrixCore::operand_coords`]: the `(lane, element)` that
    /// holds operand row/column `m`, depth `k` (for WMMA, lanes 16–31 hold copies; this names
    /// the one in lanes 0–15).
    pub fn operand_holder(self, m: i64, k: i64) -> (i64, i64) {
        let e = self.operand_elements();
        (m + TILE * (k / e), k % e)
    }
}

/// How a matmul's 16×16 tiles are spread over the waves (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaveLayout {
    /// Waves along M.
    pub waves_m: i64,
    /// Waves along N.
    pub waves_n: i64,
    /// Tiles per wave along M.
    pub tiles_m: i64,
    /// Tiles per wave along N.
    pub tiles_n: i64,
    /// Tiles per pass along M (divides `tiles_m`).
    pub pass_m: i64,
    /// Tiles per pass along N (divides `tiles_n`).
    pub pass_n: i64,
}

impl WaveLayout {
    /// The most f32 accumulators a lane keeps across one pass's k loop: 64 of the 256 VGPRs a
    /// lane can address leaves room for the operand fragments (2 VGPRs per MFMA fragment,
    /// 8 per WMMA one, each possibly loaded a step ahead) and the addresses.
    pub const MAX_ACCUMULATORS: i64 = 64;

    /// The layout of an `m × n` result for `core` on a workgroup of `waves` waves.
    ///
    /// Uses as many waves as the tile grid splits into evenly, then minimises the fragment
    /// loads per k-step and wave (`tiles_m + tiles_n`), then prefers taller wave blocks.
    pub fn new(core: MatrixCore, m: i64, n: i64, waves: i64) -> R<Self> {
        if m <= 0 || m % TILE != 0 || n <= 0 || n % TILE != 0 {
            return Err(invalid(format!(
                "the result is {m}×{n}; M and N must be positive multiples of 16"
            )));
        }
        if !(1..=32).contains(&waves) {
            return Err(invalid(format!("{waves} waves; a workgroup has 1 to 32")));
        }
        let (tm, tn) = (m / TILE, n / TILE);
        let grids = divisors(tm)
            .flat_map(|wm| divisors(tn).map(move |wn| (wm, wn)))
            .filter(|&(wm, wn)| wm * wn <= waves);
        // (1, 1) always qualifies.
        let (waves_m, waves_n) = grids
            .min_by_key(|&(wm, wn)| {
                let (a, b) = (tm / wm, tn / wn);
                (-(wm * wn), a + b, -a)
            })
            .unwrap_or((1, 1));
        let (tiles_m, tiles_n) = (tm / waves_m, tn / waves_n);
        let max_tiles = (Self::MAX_ACCUMULATORS / core.accumulators()).max(1);
        let (pass_m, pass_n) = divisors(tiles_m)
            .flat_map(|sa| divisors(tiles_n).map(move |sb| (sa, sb)))
            .filter(|&(sa, sb)| sa * sb <= max_tiles)
            .min_by_key(|&(sa, sb)| (-(sa * sb), sa + sb))
            .unwrap_or((1, 1));
        Ok(WaveLayout {
            waves_m,
            waves_n,
            tiles_m,
            tiles_n,
            pass_m,
            pass_n,
        })
    }

    /// Waves that do work (the rest skip the matmul).
    pub fn waves_used(&self) -> i64 {
        self.waves_m * self.waves_n
    }

    /// Passes per wave.
    pub fn passes(&self) -> i64 {
        (self.tiles_m / self.pass_m) * (self.tiles_n / self.pass_n)
    }
}

/// The divisors of `n ≥ 1`, ascending.
fn divisors(n: i64) -> impl Iterator<Item = i64> {
    (1..=n).filter(move |d| n % d == 0)
}

fn invalid(detail: String) -> EmitError {
    EmitError::Schedule(format!("matrix-core matmul: {detail}"))
}

/// Whether the matmul runs on the matrix cores or is emulated lane by lane (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `amdgpu.mfma` / `amdgpu.wmma` on 16-bit operands in LDS.
    Hardware,
    /// Scalar code computing each lane's accumulators from f32 operands (values already
    /// rounded to the dtype), for any target.
    Emulated,
}

/// A row-major tile: element `(r, c)` is `memref[base + offset + r·row_stride + c]`.
#[derive(Debug, Clone, Copy)]
pub struct Tile<'c, 'v> {
    /// A rank-1 memref: bf16/f16 in workgroup memory ([`Mode::Hardware`]) or f32
    /// ([`Mode::Emulated`]).
    pub memref: Value<'c, 'v>,
    /// A dynamic element offset (`index`), emulated only.
    pub base: Option<Value<'c, 'v>>,
    /// The static element offset of the tile.
    pub offset: i64,
    /// Elements from one stored row to the next.
    pub row_stride: i64,
}

/// One operand: where it is stored and whether it is used transposed.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'c, 'v> {
    /// The stored matrix.
    pub tile: Tile<'c, 'v>,
    /// `false`: stored as used (A: M×K, B: K×N); `true`: stored transposed (A: K×M, B: N×K).
    pub transposed: bool,
}

/// One 16×16 accumulator tile as one lane holds it, handed to the epilogue: `acc[e]` is
/// `C[rows[e]][col]` (`index` values relative to C's origin). Over the lanes of a wave and the
/// tiles of all waves, every element of C is handed over exactly once. On the hardware a
/// fragment holds all `R` accumulators of the lane; emulated, one at a time.
#[derive(Debug, Clone)]
pub struct Fragment<'c, 'x> {
    /// The column of every accumulator.
    pub col: Value<'c, 'x>,
    /// The row of each accumulator.
    pub rows: Vec<Value<'c, 'x>>,
    /// The f32 accumulators.
    pub acc: Vec<Value<'c, 'x>>,
}

/// The epilogue callback of [`Matmul::emit`]: called once per tile and pass, in the block the
/// accumulators live in; may append any ops there.
pub type Epilogue<'e, 'c> =
    dyn for<'x> FnMut(&'x Block<'c>, &Fragment<'c, 'x>) -> Result<(), EmitError> + 'e;

/// One cooperative matmul `C[M×N] = op(A)[M×K] · op(B)[K×N]` (module docs).
#[derive(Debug, Clone, Copy)]
pub struct Matmul<'c, 'v> {
    /// Rows of C.
    pub m: i64,
    /// Columns of C.
    pub n: i64,
    /// The reduction length.
    pub k: i64,
    /// The 16-bit type of A and B (on the hardware, the memrefs' element type).
    pub dtype: MmaType,
    /// The instruction and wave size.
    pub core: MatrixCore,
    /// On the matrix cores or emulated.
    pub mode: Mode,
    /// Threads in the workgroup.
    pub threads: u32,
    /// The flat thread index in the workgroup (`index`).
    pub thread_id: Value<'c, 'v>,
    /// The left operand.
    pub a: Operand<'c, 'v>,
    /// The right operand.
    pub b: Operand<'c, 'v>,
}

impl<'c, 'v> Matmul<'c, 'v> {
    /// The wave layout this matmul will use.
    pub fn layout(&self) -> R<WaveLayout> {
        let wave = self.core.wave_size();
        let threads = i64::from(self.threads);
        if threads == 0 || threads % wave != 0 {
            return Err(invalid(format!(
                "{threads} threads are not a whole number of {wave}-lane waves"
            )));
        }
        WaveLayout::new(self.core, self.m, self.n, threads / wave)
    }

    /// Emits the matmul into `block` and hands every accumulator tile to `epilogue` (which
    /// stores, converts or scales them). The callback runs in `block` or a block nested in it.
    pub fn emit(
        &self,
        ctx: &'c Context,
        loc: Location<'c>,
        block: &Block<'c>,
        epilogue: &mut Epilogue<'_, 'c>,
    ) -> R<()> {
        let layout = self.layout()?;
        self.check(ctx)?;
        let e = Emit {
            b: Builder { ctx, loc },
            mm: self,
            layout,
        };
        let b = &e.b;
        let wave_size = b.ci(block, self.core.wave_size())?;
        let wave = b.divui(block, self.thread_id, wave_size)?;
        let lane = b.remui(block, self.thread_id, wave_size)?;
        let waves = i64::from(self.threads) / self.core.wave_size();
        if layout.waves_used() < waves {
            // Wave-uniform: whole waves skip, so every matrix instruction runs on a full wave.
            let used = b.ci(block, layout.waves_used())?;
            let cond = b.cmpi(block, Cmp::Ult, wave, used)?;
            b.if_(block, cond, |then| e.wave_body(then, wave, lane, epilogue))
        } else {
            e.wave_body(block, wave, lane, epilogue)
        }
    }

    /// Rejects operands the fragment loads cannot read correctly.
    fn check(&self, ctx: &'c Context) -> R<()> {
        if self.k <= 0 || self.k % TILE != 0 {
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
        let hardware = self.mode == Mode::Hardware;
        let elem = if hardware {
            self.dtype.mlir_type(ctx)
        } else {
            Type::float32(ctx)
        };
        check_tile(ctx, &self.a.tile, a_rows, a_cols, elem, hardware, "A")?;
        check_tile(ctx, &self.b.tile, b_rows, b_cols, elem, hardware, "B")?;
        if !self.thread_id.r#type().is_index() {
            return Err(invalid(format!(
                "the thread id must be an index, not {}",
                self.thread_id.r#type()
            )));
        }
        Ok(())
    }
}

/// Checks that `t` is a rank-1 memref of `elem` that holds a `rows × cols` tile; on the
/// hardware also that it is in workgroup memory with 16-byte aligned rows.
fn check_tile(
    ctx: &Context,
    t: &Tile,
    rows: i64,
    cols: i64,
    elem: Type,
    hardware: bool,
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
    if t.offset < 0 || t.row_stride < cols {
        return bad(format!(
            "offset {} must be non-negative and row stride {} at least the {cols} columns",
            t.offset, t.row_stride
        ));
    }
    if hardware {
        let workgroup = Attribute::parse(ctx, "#gpu.address_space<workgroup>");
        let in_workgroup = memref.memory_space().is_some_and(|s| {
            Some(s) == workgroup || IntegerAttribute::try_from(s).is_ok_and(|i| i.value() == 3)
        });
        if !in_workgroup {
            return bad("must be in workgroup memory (#gpu.address_space<workgroup>)".into());
        }
        if t.base.is_some() || t.offset % 8 != 0 || t.row_stride % 8 != 0 {
            return bad(format!(
                "static offset {} and row stride {} must be multiples of 8 elements (16 bytes)",
                t.offset, t.row_stride
            ));
        }
        let end = t.offset + (rows - 1) * t.row_stride + cols;
        if let Ok(DimSize::Static(size)) = memref.dim_size(0)
            && i64::try_from(size).unwrap_or(i64::MAX) < end
        {
            return bad(format!(
                "a {rows}×{cols} tile at offset {} with row stride {} needs {end} elements",
                t.offset, t.row_stride
            ));
        }
    }
    Ok(())
}

/// The state of one [`Matmul::emit`] call.
struct Emit<'c, 'm, 'v> {
    b: Builder<'c>,
    mm: &'m Matmul<'c, 'v>,
    layout: WaveLayout,
}

/// How one operand's elements are addressed: element `(m, k)` of op(X) is at
/// `base + offset + m·m_step + k·k_step`.
#[derive(Clone, Copy)]
struct Side<'c, 'v> {
    op: Operand<'c, 'v>,
    m_step: i64,
    k_step: i64,
}

impl<'c, 'v> Side<'c, 'v> {
    /// A: stored M×K (row m is contiguous in k) or K×M.
    fn a(op: Operand<'c, 'v>) -> Self {
        let s = op.tile.row_stride;
        let (m_step, k_step) = if op.transposed { (1, s) } else { (s, 1) };
        Side { op, m_step, k_step }
    }

    /// B: stored K×N, or N×K (column n of B is contiguous in k).
    fn b(op: Operand<'c, 'v>) -> Self {
        let s = op.tile.row_stride;
        let (m_step, k_step) = if op.transposed { (s, 1) } else { (1, s) };
        Side { op, m_step, k_step }
    }
}

/// The lane's two parts, `lane % 16` and `lane / 16`.
#[derive(Clone, Copy)]
struct Lane<'c, 'x> {
    lo: Value<'c, 'x>,
    hi: Value<'c, 'x>,
}

impl<'c> Emit<'c, '_, '_> {
    /// `lo·c.lo + hi·c.hi + e·c.elem`.
    fn affine<'x>(
        &self,
        blk: &'x Block<'c>,
        c: Affine,
        lane: Lane<'c, '_>,
        e: Value<'c, '_>,
    ) -> R<Value<'c, 'x>> {
        let b = &self.b;
        let mut sum = b.ci(blk, 0)?;
        for (coef, x) in [(c.lo, lane.lo), (c.hi, lane.hi), (c.elem, e)] {
            if coef != 0 {
                sum = b.mad(blk, sum, x, coef)?;
            }
        }
        Ok(sum)
    }

    /// The element index of operand element `e` of `lane`, for the tile whose first row (A)
    /// or column (B) of op(X) is `origin`, in the k-step starting at `kk`. The one address
    /// function of both modes: the hardware loads evaluate it for their own lane, the
    /// emulation for the lane the documentation says holds each element.
    fn operand_index<'x>(
        &self,
        blk: &'x Block<'c>,
        side: &Side<'c, '_>,
        origin: Value<'c, '_>,
        lane: Lane<'c, '_>,
        e: Value<'c, '_>,
        kk: Value<'c, '_>,
    ) -> R<Value<'c, 'x>> {
        let b = &self.b;
        let [m_of, k_of, ..] = self.mm.core.affine();
        let m = self.affine(blk, m_of, lane, e)?;
        let m = b.addi(blk, origin, m)?;
        let k = self.affine(blk, k_of, lane, e)?;
        let k = b.addi(blk, kk, k)?;
        let tile = &side.op.tile;
        let mut at = b.ci(blk, tile.offset)?;
        if let Some(base) = tile.base {
            at = b.addi(blk, base, at)?;
        }
        let at = b.mad(blk, at, m, side.m_step)?;
        b.mad(blk, at, k, side.k_step)
    }

    /// Everything a working wave does: its block of tiles, pass by pass.
    fn wave_body(
        &self,
        blk: &Block<'c>,
        wave: Value<'c, '_>,
        lane: Value<'c, '_>,
        epilogue: &mut Epilogue<'_, 'c>,
    ) -> R<()> {
        let (b, lay, mm) = (&self.b, self.layout, self.mm);
        let wn = b.ci(blk, lay.waves_n)?;
        let wave_m = b.divui(blk, wave, wn)?;
        let wave_n = b.remui(blk, wave, wn)?;
        let zero = b.ci(blk, 0)?;
        let m_w = b.mad(blk, zero, wave_m, lay.tiles_m * TILE)?;
        let n_w = b.mad(blk, zero, wave_n, lay.tiles_n * TILE)?;
        let sixteen = b.ci(blk, TILE)?;
        let lane = Lane {
            lo: b.remui(blk, lane, sixteen)?,
            hi: b.divui(blk, lane, sixteen)?,
        };
        let (sa, sb) = (Side::a(mm.a), Side::b(mm.b));
        let [.., row_of, col_of] = mm.core.affine();
        for pi in 0..lay.tiles_m / lay.pass_m {
            for pj in 0..lay.tiles_n / lay.pass_n {
                // The pass's first row and column.
                let m0 = b.ci(blk, pi * lay.pass_m * TILE)?;
                let m0 = b.addi(blk, m_w, m0)?;
                let n0 = b.ci(blk, pj * lay.pass_n * TILE)?;
                let n0 = b.addi(blk, n_w, n0)?;
                if mm.mode == Mode::Emulated {
                    self.emulated_pass(blk, &sa, &sb, lane, m0, n0, epilogue)?;
                    continue;
                }
                let mut rows0 = Vec::new();
                for i in 0..lay.pass_m {
                    let off = b.ci(blk, i * TILE)?;
                    rows0.push(b.addi(blk, m0, off)?);
                }
                let mut cols0 = Vec::new();
                for j in 0..lay.pass_n {
                    let off = b.ci(blk, j * TILE)?;
                    cols0.push(b.addi(blk, n0, off)?);
                }
                let acc = self.hardware_pass(blk, &sa, &sb, lane, &rows0, &cols0)?;
                let r = mm.core.accumulators();
                for (i, row0) in rows0.iter().enumerate() {
                    for (j, col0) in cols0.iter().enumerate() {
                        let t = i * cols0.len() + j;
                        let mut rows = Vec::new();
                        for e in 0..r {
                            let e = b.ci(blk, e)?;
                            let row = self.affine(blk, row_of, lane, e)?;
                            rows.push(b.addi(blk, *row0, row)?);
                        }
                        let col = self.affine(blk, col_of, lane, zero)?;
                        let frag = Fragment {
                            col: b.addi(blk, *col0, col)?,
                            rows,
                            acc: acc[t].clone(),
                        };
                        epilogue(blk, &frag)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One pass on the matrix cores: the accumulators of each tile (row-major over the pass),
    /// as f32 scalars.
    fn hardware_pass<'x>(
        &self,
        blk: &'x Block<'c>,
        sa: &Side<'c, '_>,
        sb: &Side<'c, '_>,
        lane: Lane<'c, '_>,
        rows0: &[Value<'c, '_>],
        cols0: &[Value<'c, '_>],
    ) -> R<Vec<Vec<Value<'c, 'x>>>> {
        let (b, mm) = (&self.b, self.mm);
        let zero = b.ci(blk, 0)?;
        // Each fragment's address at k = 0, element 0 (hoisted out of the k loop); the step's
        // elements follow `k_step` apart, since k grows by one per element (`elem = 1`).
        let mut a_base = Vec::new();
        for o in rows0 {
            a_base.push(self.operand_index(blk, sa, *o, lane, zero, zero)?);
        }
        let mut b_base = Vec::new();
        for o in cols0 {
            b_base.push(self.operand_index(blk, sb, *o, lane, zero, zero)?);
        }
        let r = mm.core.accumulators();
        let acc_ty = Type::vector(&[r as u64], Type::float32(b.ctx));
        let zeros = b.push(
            blk,
            b.op("arith.constant")
                .add_attributes(&[b.named("value", b.attr(&format!("dense<0.0> : {acc_ty}"))?)])
                .add_results(&[acc_ty]),
        )?;
        let init = vec![zeros; rows0.len() * cols0.len()];
        let out = self.k_loop(blk, &init, |body, kk, acc| {
            let mut fa = Vec::new();
            for base in &a_base {
                fa.push(self.fragment(body, sa, *base, kk)?);
            }
            let mut fb = Vec::new();
            for base in &b_base {
                fb.push(self.fragment(body, sb, *base, kk)?);
            }
            let mut next = Vec::new();
            for x in &fa {
                for y in &fb {
                    let c = acc[next.len()];
                    next.push(self.instruction(body, *x, *y, c)?);
                }
            }
            b.yield_(body, &next)
        })?;
        let mut tiles = Vec::new();
        for v in out {
            let mut scalars = Vec::new();
            for e in 0..r {
                scalars.push(
                    b.push(
                        blk,
                        b.op("vector.extract")
                            .add_attributes(&[b.named(
                                "static_position",
                                DenseI64ArrayAttribute::new(b.ctx, &[e]).into(),
                            )])
                            .add_operands(&[v])
                            .add_results(&[Type::float32(b.ctx)]),
                    )?,
                );
            }
            tiles.push(scalars);
        }
        Ok(tiles)
    }

    /// One lane's `E` operand elements at k-step `kk`: a vector load where k runs along the
    /// stored row, `E` scalar loads a row stride apart where it runs down a column.
    fn fragment<'x>(
        &self,
        blk: &'x Block<'c>,
        side: &Side<'c, '_>,
        base: Value<'c, '_>,
        kk: Value<'c, '_>,
    ) -> R<Value<'c, 'x>> {
        let (b, mm) = (&self.b, self.mm);
        let n = mm.core.operand_elements();
        let elem = mm.dtype.mlir_type(b.ctx);
        let ty = Type::vector(&[n as u64], elem);
        let at = b.mad(blk, base, kk, side.k_step)?;
        let mem = side.op.tile.memref;
        if side.k_step == 1 {
            // Rows start 16-byte aligned and each fragment starts at a multiple of E
            // elements: 8-byte (E = 4) or 16-byte (E = 16) aligned.
            let align = (2 * n).min(16);
            return b.push(
                blk,
                b.op("vector.load")
                    .add_attributes(&[
                        b.named("alignment", IntegerAttribute::new(b.int(64), align).into())
                    ])
                    .add_operands(&[mem, at])
                    .add_results(&[ty]),
            );
        }
        let mut elems = Vec::new();
        for e in 0..n {
            let off = b.ci(blk, e * side.k_step)?;
            let idx = b.addi(blk, at, off)?;
            elems.push(b.load(blk, mem, idx)?);
        }
        b.push(
            blk,
            b.op("vector.from_elements")
                .add_operands(&elems)
                .add_results(&[ty]),
        )
    }

    /// `D = A·B + C` on one 16×16×16 step.
    fn instruction<'x>(
        &self,
        blk: &'x Block<'c>,
        a: Value<'c, '_>,
        bv: Value<'c, '_>,
        c: Value<'c, '_>,
    ) -> R<Value<'c, 'x>> {
        let b = &self.b;
        let i32t = b.int(32);
        let int = |v: i64| IntegerAttribute::new(i32t, v).into();
        let mut attrs = vec![
            b.named("m", int(TILE)),
            b.named("n", int(TILE)),
            b.named("k", int(TILE)),
        ];
        let name = match self.mm.core {
            MatrixCore::Mfma16x16x16 => {
                attrs.extend([
                    b.named("blocks", int(1)),
                    b.named("cbsz", int(0)),
                    b.named("abid", int(0)),
                    b.named("blgp", b.attr("#amdgpu<mfma_perm_b none>")?),
                ]);
                "amdgpu.mfma"
            }
            MatrixCore::Wmma16x16x16 => {
                attrs.push(b.named("subwordOffset", int(0)));
                "amdgpu.wmma"
            }
        };
        b.push(
            blk,
            b.op(name)
                .add_attributes(&attrs)
                .add_operands(&[a, bv, c])
                .add_results(&[c.r#type()]),
        )
    }

    /// One pass emulated: each lane computes its own accumulators, `C[row][col] = Σ_k
    /// A[row][k]·B[k][col]` over the k-steps, reading operand element `(m, k)` of a step
    /// where the kernel's address function puts the element that the documented holder lane
    /// passes ([`MatrixCore::operand_holder`]), and hands each accumulator over on its own.
    /// Tiles and accumulators are runtime loops (not unrolled as on the hardware): the
    /// coordinates are the same, and the code stays small enough for a CPU OpenCL runtime to
    /// build quickly.
    #[allow(clippy::too_many_arguments)]
    fn emulated_pass(
        &self,
        blk: &Block<'c>,
        sa: &Side<'c, '_>,
        sb: &Side<'c, '_>,
        lane: Lane<'c, '_>,
        m0: Value<'c, '_>,
        n0: Value<'c, '_>,
        epilogue: &mut Epilogue<'_, 'c>,
    ) -> R<()> {
        let (b, mm, lay) = (&self.b, self.mm, self.layout);
        let [.., row_of, col_of] = mm.core.affine();
        let zero = b.ci(blk, 0)?;
        let one = b.ci(blk, 1)?;
        let tiles = b.ci(blk, lay.pass_m * lay.pass_n)?;
        b.for_(blk, zero, tiles, one, |body, t| {
            // Tile (i, j) of the pass, row-major as on the hardware.
            let pn = b.ci(body, lay.pass_n)?;
            let i = b.divui(body, t, pn)?;
            let j = b.remui(body, t, pn)?;
            let row0 = b.mad(body, m0, i, TILE)?;
            let col0 = b.mad(body, n0, j, TILE)?;
            let (zero, one) = (b.ci(body, 0)?, b.ci(body, 1)?);
            let accs = b.ci(body, mm.core.accumulators())?;
            b.for_(body, zero, accs, one, |inner, e| {
                let row = self.affine(inner, row_of, lane, e)?;
                let col = self.affine(inner, col_of, lane, e)?;
                let zero = b.ci(inner, 0)?;
                let (depth, step) = (b.ci(inner, mm.k)?, b.ci(inner, TILE)?);
                let init = b.cf32(inner, 0.0)?;
                let acc = b.for_acc(inner, zero, depth, step, init, |steps, kk, acc| {
                    let (zero, one) = (b.ci(steps, 0)?, b.ci(steps, 1)?);
                    let sixteen = b.ci(steps, TILE)?;
                    let sum = b.for_acc(steps, zero, sixteen, one, acc, |dot, k, sum| {
                        let x = self.held(dot, sa, row0, row, k, kk)?;
                        let y = self.held(dot, sb, col0, col, k, kk)?;
                        let xy = b.mulf(dot, x, y)?;
                        let s = b.addf(dot, sum, xy)?;
                        b.yield_(dot, &[s])
                    })?;
                    b.yield_(steps, &[sum])
                })?;
                let frag = Fragment {
                    col: b.addi(inner, col0, col)?,
                    rows: vec![b.addi(inner, row0, row)?],
                    acc: vec![acc],
                };
                epilogue(inner, &frag)
            })
        })
    }

    /// Operand element `(m, k)` of a step (`m` the row of A or column of B in the tile), read
    /// where the kernel would load it: from the holder lane `m + 16·(k / E)`, element `k % E`.
    fn held<'x>(
        &self,
        blk: &'x Block<'c>,
        side: &Side<'c, '_>,
        origin: Value<'c, '_>,
        m: Value<'c, '_>,
        k: Value<'c, '_>,
        kk: Value<'c, '_>,
    ) -> R<Value<'c, 'x>> {
        let b = &self.b;
        let n = b.ci(blk, self.mm.core.operand_elements())?;
        let sixteen = b.ci(blk, TILE)?;
        let group = b.divui(blk, k, n)?;
        let holder = b.mad(blk, m, group, TILE)?;
        let e = b.remui(blk, k, n)?;
        let lane = Lane {
            lo: b.remui(blk, holder, sixteen)?,
            hi: b.divui(blk, holder, sixteen)?,
        };
        let idx = self.operand_index(blk, side, origin, lane, e, kk)?;
        b.load(blk, side.op.tile.memref, idx)
    }

    /// The loop over K in steps of 16 carrying `init`; `body(block, kk, accumulators)` must
    /// end with a yield of the next ones. Returns the final accumulators.
    fn k_loop<'x>(
        &self,
        blk: &'x Block<'c>,
        init: &[Value<'c, '_>],
        body: impl for<'y> FnOnce(&'y Block<'c>, Value<'c, 'y>, &[Value<'c, 'y>]) -> R<()>,
    ) -> R<Vec<Value<'c, 'x>>> {
        let b = &self.b;
        let mut args = vec![(b.index(), b.loc)];
        args.extend(init.iter().map(|v| (v.r#type(), b.loc)));
        let inner = Block::new(&args);
        {
            let mut vals = Vec::with_capacity(args.len());
            for i in 0..args.len() {
                vals.push(
                    inner
                        .argument(i)
                        .map_err(|e| EmitError::Build {
                            op: "scf.for block argument".into(),
                            detail: e.to_string(),
                        })?
                        .into(),
                );
            }
            body(&inner, vals[0], &vals[1..])?;
        }
        let region = Region::new();
        region.append_block(inner);
        let mut operands = vec![b.ci(blk, 0)?, b.ci(blk, self.mm.k)?, b.ci(blk, TILE)?];
        operands.extend_from_slice(init);
        let types: Vec<Type<'c>> = init.iter().map(|v| v.r#type()).collect();
        let op = blk.append_operation(
            b.op("scf.for")
                .add_operands(&operands)
                .add_results(&types)
                .add_regions([region])
                .build()
                .map_err(|e| EmitError::Build {
                    op: "scf.for".into(),
                    detail: e.to_string(),
                })?,
        );
        (0..init.len())
            .map(|i| {
                op.result(i).map(Into::into).map_err(|e| EmitError::Build {
                    op: "scf.for".into(),
                    detail: format!("no result {i}: {e}"),
                })
            })
            .collect()
    }
}
