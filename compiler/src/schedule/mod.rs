//! The `schedule` stage: decides how a [`Plan`] runs as GPU kernels — how many kernels, the
//! launch grid and block, what lives in memory where, and where workgroups synchronise.
//!
//! One schedule, generic over any plan (the backward plans of a later stage reuse it): **one
//! kernel** per (spec, config, target). The *portable* form below runs everywhere; NVIDIA
//! kernels with 16-bit inputs run their matmuls on tensor cores, AMD ones on matrix cores
//! (next sections).
//!
//! * grid = `(ceil(V / BV), N · HV, 1)` with `BV = min(V, 32)` (tensor cores: 64 or 32,
//!   below): V columns never interact in a
//!   forward plan (no op reduces over V; [`forward`] checks that), so each workgroup owns one
//!   block of BV value columns of one (sequence, value head). Workgroup `(x, y)`: sequence
//!   `n = y / HV`, value head `hv = y % HV`, q/k head `h = hv / (HV / H)`, columns from
//!   `v0 = x · BV` (masked to the `V − v0` valid ones).
//! * Each workgroup carries the state tile `S [K × BV]` (f32) through a sequential loop over
//!   the chunks of its sequence and evaluates every plan node per chunk as a cooperative loop
//!   over the node's tile (threads stride over its elements). Barriers go only where a node
//!   reads a tile written since the last barrier or overwrites one that was touched since.
//! * Tiles live in an f32 scratch buffer in global memory, [`Schedule::scratch`] elements per
//!   workgroup; offsets are assigned by liveness, so tiles whose lifetimes do not overlap share
//!   memory ([`alloc`]). Scalar nodes (`param`, `const`, `last`, their arithmetic) are
//!   computed redundantly by every thread and never touch memory.
//!
//! # Tensor cores (NVIDIA, bf16/f16 inputs)
//!
//! On sm_80/sm_90/sm_90a with bf16 or f16 inputs every plan `matmul` runs on tensor cores
//! ([`MatmulPath::TensorCore`], built by [`crate::emit::mma`]: `ldmatrix` + `mma.sync`
//! m16n8k16, f32 accumulation). Everything else stays as above; what changes:
//!
//! * **Operand tiles.** A matmul reads its operands as 16-bit tiles (the input dtype) in
//!   dynamic shared memory ([`OperandTile`]): row-major, each dim padded to a multiple of 16
//!   (C already is; K and the BV block are rounded up) with zeros, so the padding adds
//!   nothing to any product, and rows `cols_padded + 8` elements apart (16-byte aligned
//!   `ldmatrix` rows in distinct banks). A value gets an operand tile when a matmul reads it.
//!   On sm_90a the tiles are stored as 8×8 core matrices instead (no skew,
//!   [`TileLayout::CoreMatrices`]), the layout wgmma reads ([`crate::emit::wgmma`]).
//! * **Who writes them.** q, k and v are loaded straight into their operand tiles (they are
//!   16-bit already: no f32 copy exists, and elementwise nodes that read them, such as
//!   `Q ⊙ 2^b`, read the operand tile, which is exact). A computed operand (`Q ⊙ 2^b`, the
//!   masked `A = QKᵀ ⊙ Γ`, `K ⊙ 2^(b_C − b)`) is rounded to the dtype (to nearest even) by
//!   the node that computes it, in the same loop, and keeps an f32 tile only if a non-matmul
//!   node or a sink also reads it. The state `S` stays f32 (it is carried across chunks);
//!   `state_in` rounds a copy of it into an operand tile when a matmul reads `h`. This is
//!   fla's precision: it casts `b_q * exp(b_g)`, `b_A` and `h` to bf16 before `tl.dot`.
//! * **Results.** The matmul's accumulators go straight from the registers to the f32 tile
//!   in scratch that the next nodes read (and to an operand tile if a matmul reads the
//!   result), through the epilogue of [`crate::emit::mma::Matmul::emit`].
//! * **Memory.** Operand tiles are placed by liveness like the f32 tiles, in their own arena
//!   (dynamic shared memory, [`Schedule::shared_bytes`], passed at launch; the runtime opts
//!   kernels above 48 KiB in). f32 tiles stay in global scratch: with them in shared memory
//!   too, K = V = 128 would already need more than an H100 has. Barriers treat the two
//!   arenas as separate memories.
//! * **BV** is 64 when that fits the target's shared memory per workgroup (227 KiB on
//!   sm_90/sm_90a, 163 KiB on sm_80), else 32; if even 32 does not fit, the kernel keeps
//!   the portable path and the schedule text says why. Every config of `HEAD_DIMS` fits
//!   (K = V = 256 at chunk 64: 177 KiB at BV 64 on sm_90, 157 KiB at BV 32 on sm_80).
//! * **Registers.** The kernel may use 255 registers per thread ([`TENSOR_CORE_REGISTERS`]),
//!   and each matmul reads the thread index afresh so that LLVM does not hoist its
//!   fragment addresses out of the chunk loop (`TargetOps::thread_id_per_use`): with both,
//!   ptxas spills in no config.
//!
//! The math is the plan's; only the operand precision changes (16-bit operands, f32
//! accumulation), within fla's criterion. [`MatmulChoice::Emulated`] lays a kernel out the
//! same way on any target but keeps the operand tiles in scratch (as f32 values rounded to
//! the dtype) and multiplies them with scalar loops: the tests run that on the CPU OpenCL
//! runtime to check this layout (placement, padding, barriers, precision) end to end.
//!
//! # Matrix cores (AMD, bf16/f16 inputs)
//!
//! On gfx90a and gfx942 (`amdgpu.mfma` 16x16x16, wave64) and gfx1100 (`amdgpu.wmma`
//! 16x16x16, wave32) with bf16 or f16 inputs every plan `matmul` runs on the matrix cores
//! ([`MatmulPath::MatrixCore`], built by [`crate::emit::mfma`], whose docs give the lane
//! layouts). The layout is the tensor-core one above (operand tiles padded to 16, rows
//! `cols_padded + 8` apart, placed by liveness, rounded by their writers, f32 tiles in
//! scratch, results from the registers through the epilogue), except:
//!
//! * **Memory.** The operand arena is LDS, a static workgroup attribution of the kernel
//!   (`.amdhsa_group_segment_fixed_size`; [`Schedule::shared_bytes`] stays 0, nothing is
//!   passed at launch), so the lowering's LDS guard (`LowerError::WorkgroupMemory`) sees it.
//!   The budget is 64 KiB per workgroup ([`LDS_LIMIT_BYTES`]) on all three chips.
//! * **In-place results.** To fit that, an elementwise node may write its operand tile over
//!   the same-shaped operand tile it reads for the last time (`Q ⊙ 2^b` over q, `K ⊙
//!   2^(b_C − b)` over k): each thread reads exactly the element it then writes.
//! * **BV** is the widest of 64, 32, 16 ([`MATRIX_CORE_BLOCK_V`]) whose operand tiles fit
//!   64 KiB: K = V = 64 at chunk 64 takes 45 KiB at BV 64, K = V = 128 at chunk 64 58 KiB at
//!   BV 32, K = V = 256 at chunk 32 58 KiB at BV 32. K = V ≥ 192 at chunk 64 does not fit at
//!   any BV (q and k alone take 66 KiB at K = 256): those configs keep the portable path and
//!   the schedule text says so in its `note` line.
//! * **Threads.** 128 per workgroup as everywhere: two waves of 64 on CDNA, four of 32 on
//!   RDNA3; `known_block_size` fixes it (no `gpu.block_dim`, which would need device
//!   libraries). Each matmul, and each cooperative loop of the kernel, reads the thread index
//!   through a volatile `v_mov_b32` (`TargetOps::thread_id_per_use`): otherwise LLVM hoists
//!   hundreds of addresses out of the chunk loop and the kernels spill VGPRs.
//!
//! [`MatmulChoice::EmulatedMatrixCore`] lays a kernel out as AMD would (same BV, placement,
//! padding, barriers) on any target, with the operand tiles in scratch as rounded f32 values,
//! and runs each matmul in `emit::mfma`'s emulated mode: every lane computes exactly its own
//! accumulators, reading each operand element where the kernel's address math puts the
//! element that the documented lane layout assigns to the lane holding it. The tests run it
//! on the CPU OpenCL runtime; `emit::mfma` says what that does and does not prove.

mod alloc;
mod backward;
mod order;
mod print;

pub use backward::{BackwardScan, BackwardSchedule, GRAD_CHUNKS_PER_WORKGROUP, backward};

use linrec_spec::launch::{
    ElementType, KernelConfig, KernelInfo, KernelParam, SEGMENT_CHUNKS, SizeExpr, SizeSym,
};
use linrec_spec::{ConstantRate, Decay, Role, Spec};

pub use crate::emit::mfma::MatrixCore;
use crate::lower::{LDS_LIMIT_BYTES, Target, Vendor};
use crate::plan::{Dim, Direction, Op, Plan, Sink, ValueId};

/// Threads per workgroup (1-D): four warps on NVIDIA, two wave64s on CDNA, four wave32s on RDNA.
pub const BLOCK_THREADS: u32 = 128;

/// Threads per workgroup on the tensor-core path (and its emulation): eight warps. Measured on
/// an H100 (docs/benchmarks.md), the four-warp kernels stalled on memory with one workgroup per
/// SM (their shared memory allows no second); twice the warps halve each thread's share of the
/// elementwise loops and hide twice the latency.
pub const TENSOR_CORE_THREADS: u32 = 256;

/// The widest block of value columns one workgroup owns on the portable path.
pub const MAX_BLOCK_V: usize = 32;

/// The blocks of value columns tried on the tensor-core path, widest first: a wider block
/// shares the `QKᵀ` work of a chunk among more columns.
pub const TENSOR_CORE_BLOCK_V: [usize; 2] = [64, 32];

/// The fused forward's wide value block on tensor cores, compiled where it fits and V is wider
/// than the default block, with the default as its narrower variant (`KernelInfo::narrower`,
/// [`forward_widths`]): one block of 128 columns does a chunk's `QKᵀ` and gate work once
/// instead of twice at V = 128, where the grid still has enough workgroups.
pub const WIDE_BLOCK_V: usize = 128;

/// The block of value columns of the sequential state kernels on the tensor-core path (a split
/// forward's states kernel, the backward's dh kernel): they exist for long sequences with few
/// (sequence, head) pairs, where narrower blocks give the GPU more workgroups (each chunk's
/// state update is per value column; only the key rows are loaded once per block).
pub const STATES_BLOCK_V: usize = 64;

/// The narrower value blocks a sequential state kernel is also compiled with, widest first
/// (`KernelInfo::narrower`: the runtime picks the widest that gives enough workgroups).
/// Measured on an H200 (docs/benchmarks.md): at (1, 32768, 16, 128) BV 16 took the split
/// forward from 2.0 to 1.15 ms; at (8, 2048, 16, 128), with 256 workgroups at BV 64, it was
/// slower (each block repeats the chunk's key loads and gate work).
pub const NARROWER_BLOCK_V: [usize; 2] = [32, 16];

/// The narrower widths of [`NARROWER_BLOCK_V`] below `block_v`.
pub fn narrower_widths(block_v: usize) -> Vec<usize> {
    NARROWER_BLOCK_V
        .into_iter()
        .filter(|&w| w < block_v)
        .collect()
}

/// The blocks of value columns tried on AMD matrix cores, widest first: the operand tiles
/// must fit 64 KiB of LDS ([`LDS_LIMIT_BYTES`]), so narrower blocks than on NVIDIA.
pub const MATRIX_CORE_BLOCK_V: [usize; 3] = [64, 32, 16];

/// Operand tiles pad every dim to a multiple of this (the `mma.sync` m16n8k16 tile, and the
/// AMD 16x16x16 one).
pub const OPERAND_PAD: usize = 16;

/// Extra elements per operand-tile row: a row pitch of `16 (mod 32)` bytes keeps the eight
/// 16-byte rows of every `ldmatrix` 8×8 matrix in distinct shared-memory banks.
pub const OPERAND_ROW_SKEW: usize = 8;

/// Head dims the kernels are compiled for.
pub const HEAD_DIMS: std::ops::RangeInclusive<usize> = 1..=256;

/// Chunk lengths the kernels are compiled for.
pub const CHUNKS: [usize; 3] = [16, 32, 64];

/// A kernel laid out for one target: what [`crate::emit`] turns into MLIR.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The spec's name.
    pub spec_name: String,
    /// The spec's canonical hash (hex).
    pub spec_hash: String,
    /// The target it is laid out for.
    pub target: Target,
    /// What the kernel is specialised for.
    pub config: KernelConfig,
    /// The kernel's entry-point symbol.
    pub entry: String,
    /// The kernel's direction. A backward is two kernels, three `Schedule`s (the first
    /// kernel's two phases share its frame; [`BackwardSchedule`]); their workgroups own one
    /// (sequence, q/k head) each and walk the value heads of its GVA group.
    pub direction: Direction,
    /// Which kernel of a forward it is; [`Part::Fused`] for the backward's first kernel,
    /// [`Part::Grads`] for its second.
    pub part: Part,
    /// The per-chunk program.
    pub plan: Plan,
    /// Threads per workgroup (x; y and z are 1).
    pub block_threads: u32,
    /// Value columns per workgroup (`BV`).
    pub block_v: usize,
    /// Workgroups along x, y, z.
    pub grid: [SizeExpr; 3],
    /// Kernel parameters in ABI order.
    pub params: Vec<KernelParam>,
    /// Where each plan value lives, indexed like [`Plan::nodes`].
    pub values: Vec<Placement>,
    /// Whether a workgroup barrier precedes each node, indexed like [`Plan::nodes`].
    pub barrier_before: Vec<bool>,
    /// Whether a barrier precedes the sink phase (storing o, copying the next state into `S`).
    pub barrier_before_sinks: bool,
    /// The carried state `S [K × BV]` in scratch.
    pub state: Tile,
    /// The value stored to the output rows.
    pub output: ValueId,
    /// The value that becomes the next chunk's state.
    pub state_out: ValueId,
    /// Where `constant_gate` reads its per-head log-decay, if the plan has one.
    pub decay: Option<KernelParam>,
    /// f32 scratch elements per workgroup (with [`MatmulPath::Emulated`], the operand arena
    /// is included, at [`Schedule::operand_base`]).
    pub scratch: u64,
    /// How the matmuls run.
    pub matmul: MatmulPath,
    /// The 16-bit operand tile of each value, indexed like [`Plan::nodes`] (all `None` on the
    /// portable path).
    pub operands: Vec<Option<OperandTile>>,
    /// Elements of the operand arena (the peak of live operand tiles).
    pub operand_arena: u64,
    /// Where the operand arena starts in the workgroup's scratch, in f32 elements
    /// ([`MatmulPath::Emulated`] only).
    pub operand_base: u64,
    /// Dynamic shared memory per workgroup, in bytes.
    pub shared_bytes: u32,
    /// The f32 tiles (the state included) live in dynamic shared memory at
    /// [`tiles_offset`] of the operand arena's bytes, not in global scratch (tensor cores,
    /// when both fit; [`Schedule::scratch`] is then 0).
    pub tiles_shared: bool,
    /// Why a kernel that could use tensor cores does not (shown in the schedule text).
    pub fallback: Option<String>,
    /// The register budget per thread (NVIDIA `.maxnreg`), on the tensor-core path:
    /// [`TENSOR_CORE_REGISTERS`].
    pub max_registers: Option<u32>,
    /// Matmuls whose M is a multiple of 64 run as Hopper's warpgroup MMA
    /// ([`crate::emit::wgmma`]; sm_90a tensor cores with core-matrix operand tiles).
    pub wgmma: bool,
    /// Token rows brought into their operand tiles by the Tensor Memory Accelerator
    /// (`emit/tma.rs`; sm_90a, swizzled tiles), in plan order; empty elsewhere.
    pub tma: Vec<TmaLoad>,
}

/// One load node whose rows arrive by TMA: one bulk tensor copy per 64-column block of its
/// swizzled operand tile, completing on an mbarrier of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmaLoad {
    /// The plan node (a load of q, k or v).
    pub node: usize,
    /// Whose rows: the kernel takes [`KernelParam::TensorMap`] of it.
    pub role: Role,
    /// The mbarrier's byte offset in dynamic shared memory (8-byte aligned, after
    /// everything else).
    pub barrier: u32,
}

/// The registers per thread a tensor-core kernel may use: all of them (255, two 4-warp
/// workgroups per SM). Without a budget, ptxas aims at its own occupancy target (as few as
/// 56 registers for some configs) and spills; with 168 (three workgroups per SM) it still
/// spills up to 16 bytes in hot configs (the matmuls' k-loops are unrolled and their
/// fragment loads scheduled early). With 255 no config spills, and the shared memory of the
/// K = V = 128 kernels already limits them to two workgroups per SM on an H100.
pub const TENSOR_CORE_REGISTERS: u32 = 255;

/// The registers per thread of a forward's sequential state kernels on tensor cores (a split
/// forward's states kernel, the split-scan's segment and states kernels): 128, so that two
/// 8-warp workgroups share an SM (ncu at (1, 32768, 16, 128): one a SM, they spent ~2.7 µs
/// per 64-column chunk on latency). They do one `[K × BV]` state update a chunk: ptxas
/// spills nothing at 128 for the built-ins at D = 64 and 128 (checked by the targets tests).
/// The backward's dh kernels keep [`TENSOR_CORE_REGISTERS`]: at 128 they spill 4–20 bytes.
pub const STATES_REGISTERS: u32 = 128;

/// How a schedule runs the plan's matmuls (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPath {
    /// f32 dot products in scalar loops over scratch tiles: every target and dtype.
    Portable,
    /// Tensor cores on 16-bit operand tiles in dynamic shared memory (NVIDIA, bf16/f16).
    TensorCore,
    /// AMD matrix cores (`amdgpu.mfma` on gfx90a/gfx942, `amdgpu.wmma` on gfx1100) on 16-bit
    /// operand tiles in LDS, a static workgroup allocation (AMD, bf16/f16).
    MatrixCore(MatrixCore),
    /// The tensor-core layout with the operand tiles in scratch (values rounded to the dtype,
    /// stored as f32) and scalar matmuls over them: a test of that layout on any target.
    Emulated,
    /// The AMD matrix-core layout (placement as on AMD, 64 KiB budget) with the operand tiles
    /// in scratch, and each lane computing its own accumulators in scalar code from the
    /// elements the documented lane layout gives it ([`crate::emit::mfma`], `Mode::Emulated`):
    /// a test of the AMD kernels' index math on any target.
    EmulatedMatrixCore(MatrixCore),
}

impl MatmulPath {
    /// True when matmuls read 16-bit operand tiles (matrix units or their emulations).
    pub fn uses_operand_tiles(self) -> bool {
        self != MatmulPath::Portable
    }

    /// True when the operand tiles are 16-bit values in the GPU's workgroup memory (dynamic
    /// shared memory on NVIDIA, LDS on AMD); false when emulated (f32 in scratch) or portable.
    pub fn operands_on_chip(self) -> bool {
        matches!(self, MatmulPath::TensorCore | MatmulPath::MatrixCore(_))
    }

    /// True for the emulated layouts (operand tiles as rounded f32 values in scratch).
    pub fn is_emulated(self) -> bool {
        matches!(
            self,
            MatmulPath::Emulated | MatmulPath::EmulatedMatrixCore(_)
        )
    }

    /// The AMD instruction whose layout the matmuls use, hardware or emulated.
    pub fn matrix_core(self) -> Option<MatrixCore> {
        match self {
            MatmulPath::MatrixCore(c) | MatmulPath::EmulatedMatrixCore(c) => Some(c),
            _ => None,
        }
    }
}

/// What the caller asks for; [`forward`] uses [`MatmulChoice::Auto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MatmulChoice {
    /// Tensor cores where the target and dtype have them and the tiles fit, else portable.
    #[default]
    Auto,
    /// Always the portable path (e.g. to compare against tensor cores).
    Portable,
    /// [`MatmulPath::Emulated`] for bf16/f16 configs on any target (portable for f32).
    Emulated,
    /// [`MatmulPath::EmulatedMatrixCore`] with this instruction's layout, for bf16/f16
    /// configs on any target (portable for f32).
    EmulatedMatrixCore(MatrixCore),
    /// [`MatmulPath::Emulated`] with the operand tiles stored as sm_90a's core matrices
    /// ([`TileLayout::CoreMatrices`]): a test of that layout's index math on any target.
    EmulatedCoreMatrices,
    /// Tensor cores with `mma.sync` only and sm_90's row-major operand tiles, on every NVIDIA
    /// target (sm_90a too): for comparisons (`LINREC_TENSOR_CORES=mma-sync`).
    MmaSync,
    /// Tensor cores with `mma.sync` only, reading core-matrix operand tiles, on every NVIDIA
    /// target: sm_90a's layout without wgmma, for comparisons
    /// (`LINREC_TENSOR_CORES=mma-sync-core-matrices`).
    MmaSyncCoreMatrices,
    /// As [`MatmulChoice::Auto`], but sm_90a's kernels load their token rows with the
    /// threads' 16-byte copies instead of the Tensor Memory Accelerator: for comparisons
    /// (`LINREC_TENSOR_CORES=wgmma-without-tma`).
    WgmmaWithoutTma,
}

impl MatmulChoice {
    /// Whether operand tiles on `path` are stored in sm_90a's wgmma layouts (128-byte swizzled
    /// rows, else core matrices): by default in the kernels where wgmma pays on sm_90a
    /// (`pays`: [`Part::wgmma_pays`]), and wherever asked for.
    pub fn wgmma_layouts(self, target: Target, path: MatmulPath, pays: bool) -> bool {
        match (path, self) {
            (MatmulPath::TensorCore, MatmulChoice::Auto | MatmulChoice::WgmmaWithoutTma) => {
                target == Target::Sm90a && pays
            }
            (MatmulPath::TensorCore, MatmulChoice::MmaSyncCoreMatrices) => true,
            (MatmulPath::Emulated, MatmulChoice::EmulatedCoreMatrices) => true,
            _ => false,
        }
    }

    /// Whether matmuls on `path` may run as wgmma: tensor cores on sm_90a, by default, in the
    /// kernels where it pays (`pays`: [`Part::wgmma_pays`]).
    pub fn wgmma(self, target: Target, path: MatmulPath, pays: bool) -> bool {
        path == MatmulPath::TensorCore
            && target == Target::Sm90a
            && matches!(self, MatmulChoice::Auto | MatmulChoice::WgmmaWithoutTma)
            && pays
    }

    /// Whether token rows on `path` may arrive by the Tensor Memory Accelerator: by default
    /// wherever wgmma runs ([`Self::wgmma`]; its swizzled tiles are TMA's layout).
    pub fn tma(self, target: Target, path: MatmulPath, pays: bool) -> bool {
        self == MatmulChoice::Auto && self.wgmma(target, path, pays)
    }

    /// Whether this asks for tensor cores on NVIDIA (by default or explicitly).
    pub(crate) fn tensor_cores(self) -> bool {
        matches!(
            self,
            MatmulChoice::Auto
                | MatmulChoice::MmaSync
                | MatmulChoice::MmaSyncCoreMatrices
                | MatmulChoice::WgmmaWithoutTma
        )
    }
}

/// How an operand tile's elements lie in the arena ([`OperandTile::layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileLayout {
    /// Row-major: element `(r, c)` at `offset + r·stride + c`, rows skewed by 8 elements
    /// (`stride` = `cols_padded + 8`) so that `ldmatrix`'s eight rows hit eight bank groups.
    Rows,
    /// wgmma's 8×8 core matrices (sm_90a): every 8-column block of the tile is its own
    /// `rows_padded × 8` array, so each 8×8 core matrix is 128 contiguous bytes, the layout
    /// `wgmma` reads through a shared-memory descriptor without swizzling (both K-major and
    /// MN-major operands, so one tile serves as A or B, transposed or not): element `(r, c)` at
    /// `offset + ⌊c/8⌋·8·rows_padded + 8·r + c mod 8` (`stride` 8).
    CoreMatrices,
    /// wgmma's (and TMA's) 128-byte swizzle (sm_90a, where `cols_padded` is a multiple of 64):
    /// every 64-column block of the tile is its own `rows_padded × 64` array whose row `r`
    /// holds its eight 16-byte chunks in the order `chunk ⊕ (r mod 8)`, so element `(r, c)` is
    /// at `offset + ⌊c/64⌋·64·rows_padded + 64·r + 8·(⌊c/8⌋ mod 8 ⊕ r mod 8) + c mod 8`
    /// (`stride` 64). A row's elements are 128 contiguous bytes (scalar loops along rows
    /// and `ldmatrix` alike are free of bank conflicts), and the tile starts at a multiple of
    /// [`SWIZZLE_ALIGN`] elements, where the XOR matches the hardware's address bits.
    Swizzled,
}

/// A 16-bit matmul operand tile in the operand arena, laid out as [`OperandTile::layout`]
/// says. Rows `rows..rows_padded` and columns `cols..cols_padded` hold zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OperandTile {
    /// First element in the arena (a multiple of 8: 16-byte aligned).
    pub offset: u64,
    /// Rows with values.
    pub rows: usize,
    /// Columns with values.
    pub cols: usize,
    /// Rows including the zero padding (a multiple of 16).
    pub rows_padded: usize,
    /// Columns including the zero padding (a multiple of 16).
    pub cols_padded: usize,
    /// Elements from one row to the next (`cols_padded + 8` row-major; 8 with core matrices,
    /// 64 swizzled).
    pub stride: usize,
    /// How the elements lie.
    pub layout: TileLayout,
}

/// The alignment of a swizzled operand tile in the arena, in elements: 1024 bytes, one
/// 8-row swizzle atom.
pub const SWIZZLE_ALIGN: u64 = 512;

impl OperandTile {
    /// Elements the tile spans in the arena.
    pub fn len(&self) -> u64 {
        if self.layout != TileLayout::Rows {
            (self.rows_padded * self.cols_padded) as u64
        } else {
            (self.rows_padded * self.stride) as u64
        }
    }

    /// Where the tile may start in the arena: a multiple of this many elements
    /// ([`SWIZZLE_ALIGN`] when swizzled, else 8: 16 bytes).
    pub fn align(&self) -> u64 {
        match self.layout {
            TileLayout::Swizzled => SWIZZLE_ALIGN,
            _ => 8,
        }
    }

    /// Elements one column moves the address, for column offsets that are multiples of 8
    /// (`rows_padded` with core matrices, else 1); for a swizzled tile, where the address is
    /// not linear in the column, the rows of each 64-column block (`rows_padded`), as
    /// [`crate::emit::mma::SmemTile::col_step`] takes it.
    pub fn col_step(&self) -> usize {
        if self.layout != TileLayout::Rows {
            self.rows_padded
        } else {
            1
        }
    }

    /// True when the tile has no elements (never, for valid configs).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when there are padding rows or columns to zero.
    pub fn is_padded(&self) -> bool {
        self.rows_padded > self.rows || self.cols_padded > self.cols
    }
}

/// A tile in the workgroup's scratch: `rows × cols` f32 values, row-major, at `offset`.
/// A `[C]` tile has one column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Offset in f32 elements from the workgroup's scratch base.
    pub offset: u64,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl Tile {
    /// Number of elements.
    pub fn len(&self) -> u64 {
        (self.rows * self.cols) as u64
    }

    /// True when the tile has no elements (never, for valid configs).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a plan value lives while a chunk is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// A scalar computed by every thread (an SSA value, no memory).
    Uniform,
    /// An f32 tile in scratch (and maybe an operand tile, [`Schedule::operands`]).
    Tile(Tile),
    /// Only a 16-bit operand tile ([`Schedule::operands`]): q, k, v on the tensor-core path,
    /// and values that only matmuls read.
    Operand,
    /// No tile: the output sink, stored to `o` where it is computed (a fused node read by
    /// nothing else; on tensor cores, from the accumulators).
    Output,
}

impl Placement {
    /// The f32 tile, if the value has one.
    pub fn tile(&self) -> Option<Tile> {
        match self {
            Placement::Uniform | Placement::Operand | Placement::Output => None,
            Placement::Tile(t) => Some(*t),
        }
    }
}

/// Why a plan cannot be scheduled with a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// A config field outside what the kernels support.
    #[error("config: {field} = {value} is not supported; allowed: {allowed}")]
    Config {
        /// The field of [`KernelConfig`].
        field: &'static str,
        /// Its value.
        value: usize,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A plan this schedule cannot run (a bug in the plan stage, or a plan from a later stage
    /// that needs another schedule).
    #[error("plan `{plan}` node %{node} ({op}): {why}")]
    Plan {
        /// The plan's name.
        plan: String,
        /// The node's index.
        node: usize,
        /// The node's op, as printed.
        op: String,
        /// What is wrong.
        why: String,
    },
}

/// Checks a config against what the kernels support, naming the field and the allowed values.
pub fn check_config(config: &KernelConfig) -> Result<(), ScheduleError> {
    for (field, value) in [("key_dim", config.key_dim), ("value_dim", config.value_dim)] {
        if !HEAD_DIMS.contains(&value) {
            return Err(ScheduleError::Config {
                field,
                value,
                allowed: "1..=256",
            });
        }
    }
    if !CHUNKS.contains(&config.chunk) {
        return Err(ScheduleError::Config {
            field: "chunk",
            value: config.chunk,
            allowed: "16, 32 or 64",
        });
    }
    Ok(())
}

/// Lays out the forward plan of `spec` as one kernel for `target` and `config`, with
/// tensor cores where the target has them ([`MatmulChoice::Auto`]).
pub fn forward(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
) -> Result<Schedule, ScheduleError> {
    forward_with(plan, spec, target, config, MatmulChoice::Auto)
}

/// The dynamic shared memory one workgroup may use on `target`, in bytes: the opt-in limit
/// per block (227 KiB on H100/H200, 163 KiB on A100). Targets without tensor-core kernels
/// get sm_90's, so that [`MatmulPath::Emulated`] lays kernels out as sm_90 would.
pub fn shared_memory_limit(target: Target) -> u64 {
    match target {
        Target::Sm80 => 163 * 1024,
        _ => 227 * 1024,
    }
}

/// [`forward`] with an explicit choice of matmul path.
pub fn forward_with(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
) -> Result<Schedule, ScheduleError> {
    forward_kernel(plan, spec, target, config, choice, Part::Fused, None)
}

/// The fused forward at its widths, widest first: at [`WIDE_BLOCK_V`] where that fits on tensor
/// cores and V is wider than the default block, then the default; the runtime launches the
/// widest whose grid has enough workgroups (`KernelInfo::narrower`).
#[derive(Clone, Debug, PartialEq)]
pub struct Widths {
    /// The widest kernel (`…_fwd`).
    pub first: Schedule,
    /// The narrower ones (`…_fwd_v64`), widest first.
    pub narrower: Vec<Schedule>,
}

impl Widths {
    /// Every kernel, the widest first.
    pub fn all(&self) -> Vec<&Schedule> {
        std::iter::once(&self.first).chain(&self.narrower).collect()
    }

    /// The launch metadata: the widest kernel, the others as its narrower variants.
    pub fn kernel_info(&self) -> KernelInfo {
        let mut info = self.first.kernel_info();
        info.narrower = self.narrower.iter().map(Schedule::launch).collect();
        info
    }
}

/// The fused forward of `spec` at its widths ([`Widths`]).
pub fn forward_widths(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
) -> Result<Widths, ScheduleError> {
    let base = forward_kernel(plan, spec, target, config, choice, Part::Fused, None)?;
    let wide = |w: usize| forward_kernel(plan, spec, target, config, choice, Part::Fused, Some(w));
    let tensor_cores = matches!(base.matmul, MatmulPath::TensorCore | MatmulPath::Emulated);
    if !tensor_cores || config.value_dim <= base.block_v {
        return Ok(Widths {
            first: base,
            narrower: Vec::new(),
        });
    }
    // Forced to one width, a kernel that does not fit falls back to portable matmuls.
    let wide = wide(WIDE_BLOCK_V)?;
    if wide.matmul != base.matmul {
        return Ok(Widths {
            first: base,
            narrower: Vec::new(),
        });
    }
    let narrower = Schedule {
        entry: format!("{}_v{}", base.entry, base.block_v),
        ..base
    };
    Ok(Widths {
        first: wide,
        narrower: vec![narrower],
    })
}

/// Which kernel of a forward a [`Schedule`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// The one-kernel forward: o and the state, chunk after chunk.
    Fused,
    /// A split forward's first kernel: the state entering every chunk into
    /// [`KernelParam::ChunkStates`] (and the final state), chunk after chunk.
    States,
    /// A split forward's second kernel: one workgroup per (chunk, value block) along x, o
    /// from the chunk's rows and its state read from [`KernelParam::ChunkStates`].
    Output,
    /// A backward's gradient kernel: one workgroup per (group of chunks, sequence and q/k
    /// head) along (x, y), each chunk's state and dh read back (see [`backward`]).
    Grads,
    /// The split-scan's first kernel ([`forward_scan`]): one workgroup per (value block,
    /// sequence and value head, segment of [`SEGMENT_CHUNKS`] chunks) walks its segment from a
    /// zero state and stores the state leaving it into [`KernelParam::SegmentStates`] and the
    /// product of its chunks' decays into [`KernelParam::SegmentDecays`]. The last segment of
    /// a sequence is skipped (nothing reads what it would store).
    Segments,
    /// The split-scan's combine kernel: per (value block, sequence and value head), the
    /// segments in order, replacing each segment's state with the state entering it
    /// (`S ← d · S + U` from `h0` or zero). No plan: an elementwise walk over segments.
    Combine,
    /// The split-scan's states kernel: as [`Part::States`] for one segment, from the state
    /// entering it; the last segment writes the final state.
    ScanStates,
}

impl Part {
    /// Whether the kernel walks chunks carrying the state and never writes o.
    pub fn states_only(self) -> bool {
        matches!(self, Part::States | Part::Segments | Part::ScanStates)
    }

    /// Whether a forward kernel of this part runs its matmuls as wgmma on sm_90a: the chunk
    /// kernels (fused, output). Measured on an H200 (`docs/performance.md`): there wgmma on
    /// swizzled tiles gains 2–10 %; the state walks (one small update a chunk, at 128
    /// registers) and the backward's kernels were slower with it, so they keep `mma.sync`.
    pub fn wgmma_pays(self) -> bool {
        matches!(self, Part::Fused | Part::Output)
    }
}

/// A forward as two kernels of one binary: [`Part::States`] then [`Part::Output`] (see
/// [`forward_split`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SplitForward {
    /// The states kernel (launched first).
    pub states: Schedule,
    /// The states kernel with the narrower value blocks of [`narrower_widths`], widest first
    /// (`KernelInfo::narrower`).
    pub narrower: Vec<Schedule>,
    /// The chunk-parallel output kernel.
    pub output: Schedule,
}

impl SplitForward {
    /// The launch metadata: the states kernel, then the output kernel.
    pub fn kernel_info(&self) -> KernelInfo {
        let mut info = self.states.kernel_info();
        info.narrower = self.narrower.iter().map(Schedule::launch).collect();
        info.then.push(self.output.launch());
        info
    }
}

/// Lays out the forward of `spec` as two kernels: the chunk states, computed sequentially per
/// (value block, sequence, value head) by the forward plan kept to its state, then the output,
/// one workgroup per (value block, sequence and value head, chunk), by the plan kept to its
/// output. The sequential part does only the state update; the output's matmuls (the bulk of
/// the work) run with a workgroup per chunk, as fla's `chunk_fwd_o` does.
pub fn forward_split(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
) -> Result<SplitForward, ScheduleError> {
    let states = plan.keep_sinks(|s| s == Sink::StateOut);
    let output = plan.keep_sinks(|s| s == Sink::Output);
    let first = forward_kernel(&states, spec, target, config, choice, Part::States, None)?;
    // Narrower states kernels where the block is the tensor cores' (or their emulation's).
    let widths = match first.matmul {
        MatmulPath::TensorCore | MatmulPath::Emulated => narrower_widths(first.block_v),
        _ => Vec::new(),
    };
    let narrower = widths
        .into_iter()
        .map(|w| forward_kernel(&states, spec, target, config, choice, Part::States, Some(w)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SplitForward {
        states: first,
        narrower,
        output: forward_kernel(&output, spec, target, config, choice, Part::Output, None)?,
    })
}

/// A forward as the split-scan over T segments (see [`forward_scan`]): four kernels of one
/// binary, launched in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanForward {
    /// The segments' states from zero ([`Part::Segments`]).
    pub segments: Schedule,
    /// The combine over segments ([`Part::Combine`]).
    pub combine: Schedule,
    /// The chunk states, segment by segment ([`Part::ScanStates`]).
    pub states: Schedule,
    /// The chunk-parallel output kernel ([`Part::Output`]).
    pub output: Schedule,
}

impl ScanForward {
    /// The four launches, in order.
    pub fn launches(&self) -> Vec<linrec_spec::launch::Launch> {
        [&self.segments, &self.combine, &self.states, &self.output]
            .into_iter()
            .map(Schedule::launch)
            .collect()
    }

    /// The launch metadata when the split-scan is the only way the binary runs: the segment
    /// kernel, then the other three.
    pub fn kernel_info(&self) -> KernelInfo {
        let mut info = self.segments.kernel_info();
        info.then = self.launches().split_off(1);
        info
    }
}

/// The longest value block of the combine kernel: `[K × 16]` elements a workgroup, so that
/// one sequence's heads still make many workgroups.
pub const COMBINE_BLOCK_V: usize = 16;

/// Segments a trip of the combine kernel's loop takes, all their loads issued before any of
/// their stores. One at a time, the loop waited on memory per segment: 0.44 ms for 33
/// segments at (1, 32768, 16, 128) on an H200 (ncu), more than the segment kernel itself.
pub const COMBINE_BATCH: usize = 8;

/// Lays out the forward of `spec` as the split-scan over T segments of [`SEGMENT_CHUNKS`]
/// chunks, for long sequences on few heads, where one workgroup walking a whole sequence
/// leaves the GPU idle: (1) every segment but a sequence's last walks its chunks from a zero
/// state, in parallel, keeping the state leaving it and the product of its chunks' decays;
/// (2) a combine walks each sequence's segments in order, turning those into the state
/// entering each segment (`S ← d · S + U`, from `h0`); (3) every segment walks its chunks
/// again from that state, storing each chunk's entering state (and the final state); (4) the
/// chunk-parallel output kernel of [`forward_split`]. The chunk work is done twice, but the
/// sequential depth is two segments and a combine step per segment instead of the sequence.
/// It needs a state update of the form `S' = d · S + U` ([`crate::plan::segment_plan`]).
pub fn forward_scan(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
) -> Result<ScanForward, ScheduleError> {
    let segment_plan = crate::plan::segment_plan(plan).ok_or_else(|| ScheduleError::Plan {
        plan: plan.name.clone(),
        node: 0,
        op: String::new(),
        why: "the split-scan over T needs a state update S' = d·S + U with a scalar decay d \
              (the additive family); compile the fused or split forward instead"
            .into(),
    })?;
    let states = plan.keep_sinks(|s| s == Sink::StateOut);
    let output = plan.keep_sinks(|s| s == Sink::Output);
    let kernel = |plan: &Plan, part| forward_kernel(plan, spec, target, config, choice, part, None);
    let segments = kernel(&segment_plan, Part::Segments)?;
    Ok(ScanForward {
        combine: combine_kernel(&segments),
        segments,
        states: kernel(&states, Part::ScanStates)?,
        output: kernel(&output, Part::Output)?,
    })
}

/// The split-scan kernels' workgroups along z: one per segment, ceil((T + 1) / (L·C)) of
/// them: every sequence's segments and at least one (an empty sequence's final state).
pub(crate) fn segments_grid(config: &KernelConfig) -> SizeExpr {
    SizeExpr::ceil_div(
        SizeExpr::sum(SizeExpr::Sym(SizeSym::T), SizeExpr::Const(1)),
        SizeExpr::Const((SEGMENT_CHUNKS * config.chunk) as u64),
    )
}

/// The combine kernel of a split-scan, from its segment kernel's schedule (whose plan and
/// layout it does not use: it has no plan work). A backward's combines `dh` from `dht` in
/// reverse; either way a workgroup owns one value head (no GVA group loop).
pub(crate) fn combine_kernel(segments: &Schedule) -> Schedule {
    let config = &segments.config;
    let mut params = vec![KernelParam::SegmentStates];
    if segments.params.contains(&KernelParam::SegmentDecays) {
        params.push(KernelParam::SegmentDecays);
    }
    match segments.plan.direction {
        Direction::Forward if config.initial_state => params.push(KernelParam::InitialState),
        Direction::Backward if config.final_state => params.push(KernelParam::GradFinalState),
        _ => {}
    }
    if config.varlen {
        params.push(KernelParam::CuSeqlens);
    }
    params.extend(scalar_params());
    let block_v = config.value_dim.min(COMBINE_BLOCK_V);
    let name = match segments.plan.direction {
        Direction::Forward => "fwd_combine",
        Direction::Backward => "bwd_dh_combine",
    };
    Schedule {
        entry: entry_name(&segments.spec_name, name),
        part: Part::Combine,
        // Eight warps: more of a segment's loads in flight at once.
        block_threads: TENSOR_CORE_THREADS,
        block_v,
        grid: [
            SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(block_v as u64)),
            SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
            SizeExpr::Const(1),
        ],
        params,
        decay: None,
        scratch: 0,
        matmul: MatmulPath::Portable,
        operands: vec![None; segments.plan.nodes.len()],
        operand_arena: 0,
        operand_base: 0,
        shared_bytes: 0,
        tiles_shared: false,
        fallback: None,
        max_registers: None,
        wgmma: false,
        tma: Vec::new(),
        ..segments.clone()
    }
}

/// The scalar parameters every forward kernel ends with, in ABI order.
fn scalar_params() -> [KernelParam; 4] {
    [
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ]
}

fn forward_kernel(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
    choice: MatmulChoice,
    part: Part,
    width: Option<usize>,
) -> Result<Schedule, ScheduleError> {
    check_config(config)?;
    let err = |node: usize, why: String| ScheduleError::Plan {
        plan: plan.name.clone(),
        node,
        op: plan
            .nodes
            .get(node)
            .map(|n| n.op.to_string())
            .unwrap_or_default(),
        why,
    };
    if plan.direction != Direction::Forward || matches!(part, Part::Grads | Part::Combine) {
        return Err(err(0, "the portable schedule runs forward plans".into()));
    }
    check_plan(plan, &err, false)?;
    let sixteen_bit = config.dtype != ElementType::F32;
    let wanted = match choice {
        c if c.tensor_cores() && sixteen_bit && target.vendor() == Vendor::Nvidia => {
            MatmulPath::TensorCore
        }
        MatmulChoice::Auto if sixteen_bit => match MatrixCore::for_target(target) {
            Some(core) => MatmulPath::MatrixCore(core),
            None => MatmulPath::Portable,
        },
        MatmulChoice::Emulated | MatmulChoice::EmulatedCoreMatrices if sixteen_bit => {
            MatmulPath::Emulated
        }
        MatmulChoice::EmulatedMatrixCore(core) if sixteen_bit => {
            MatmulPath::EmulatedMatrixCore(core)
        }
        _ => MatmulPath::Portable,
    };
    // One loop or matmul epilogue per elementwise chain (plan::fuse). Not for AMD's matrix
    // cores: their 64 KiB of LDS fits K = V = 128 only with elementwise results written in
    // place over their operands, and fused matmuls keep their operands alive longer.
    // Then each node as early as its operands allow (order::by_level): fewer barriers.
    let fused = match wanted.matrix_core() {
        Some(_) => plan.clone(),
        None => order::by_level(&crate::plan::fuse(
            plan,
            &crate::plan::FuseOptions { matmul_sums: true },
        )),
    };
    let plan = &fused;

    let sink = |which: Sink| {
        plan.sinks
            .iter()
            .find(|(s, _)| *s == which)
            .map(|(_, v)| *v)
            .ok_or_else(|| err(0, format!("the plan has no {which:?} sink")))
    };
    let (output, state_out) = match part {
        Part::Fused | Part::Grads | Part::Combine => (sink(Sink::Output)?, sink(Sink::StateOut)?),
        Part::States | Part::Segments | Part::ScanStates => {
            let s = sink(Sink::StateOut)?;
            (s, s)
        }
        Part::Output => {
            let o = sink(Sink::Output)?;
            (o, o)
        }
    };
    let mut shaped = Vec::new();
    if !part.states_only() {
        shaped.push((output, [Dim::C, Dim::V]));
    }
    if part != Part::Output {
        shaped.push((state_out, [Dim::K, Dim::V]));
    }
    for (id, want) in shaped {
        if plan.node(id).shape.0 != want {
            return Err(err(
                id.0,
                format!(
                    "a sink must have shape {want:?}, not {}",
                    plan.node(id).shape
                ),
            ));
        }
    }

    let sinks: Vec<ValueId> = match part {
        Part::Fused | Part::Grads | Part::Combine => vec![output, state_out],
        Part::States | Part::Segments | Part::ScanStates => vec![state_out],
        Part::Output => vec![output],
    };
    // The fused and segment kernels' next state may overwrite S in place (the other kernels
    // read S around the nodes: the states kernels store it first).
    let in_place = matches!(part, Part::Fused | Part::Segments).then_some(state_out);
    // A fused output goes from its loop (or its matmuls' accumulators) to `o`.
    let direct =
        (!part.states_only() && matches!(plan.node(output).op, Op::Fused(_))).then_some(output);
    let placing = alloc::Placing {
        state_in_place: in_place,
        direct_output: direct,
        by_level: wanted.matrix_core().is_none(),
        // The output kernel reads each chunk's state from `chunk_states`.
        from_memory: part == Part::Output,
        direct_sinks: false,
        pin_rows: choice.tma(target, wanted, part.wgmma_pays()),
    };
    let mut fallback = None;
    let mut chosen = None;
    if wanted.uses_operand_tiles() {
        // AMD: 64 KiB of LDS, so narrower value blocks and in-place elementwise results
        // (K = V = 128 fits at BV 32 only with them); NVIDIA: the opt-in shared memory.
        let (limit, block_vs, reuse, memory): (u64, &[usize], _, _) = match wanted {
            MatmulPath::MatrixCore(_) | MatmulPath::EmulatedMatrixCore(_) => (
                LDS_LIMIT_BYTES,
                &MATRIX_CORE_BLOCK_V,
                alloc::Reuse::InPlace,
                "LDS",
            ),
            _ => (
                shared_memory_limit(target),
                match (part.states_only(), width.as_ref()) {
                    (true, w) => std::slice::from_ref(w.unwrap_or(&STATES_BLOCK_V)),
                    (false, Some(w)) => std::slice::from_ref(w),
                    (false, None) => &TENSOR_CORE_BLOCK_V,
                },
                alloc::Reuse::Never,
                "shared memory",
            ),
        };
        let tiles_too = matches!(wanted, MatmulPath::TensorCore | MatmulPath::Emulated);
        let mut tried = Vec::new();
        'blocks: for &bv in block_vs {
            let dims = TileDims::new(config, bv).with_wgmma_layouts(choice.wgmma_layouts(
                target,
                wanted,
                part.wgmma_pays(),
            ));
            // Keeping tiles to the end of their readers' level saves barriers but takes more
            // memory: only where the tiles then still fit on chip.
            let tries = if placing.by_level {
                vec![
                    placing,
                    alloc::Placing {
                        by_level: false,
                        ..placing
                    },
                ]
            } else {
                vec![placing]
            };
            for (t, how) in tries.iter().enumerate() {
                let layout = alloc::place(plan, &dims, &sinks, true, reuse, false, *how);
                let bytes = layout.operand_arena * 2;
                let with_tiles = tiles_offset(bytes) + 4 * layout.scratch;
                let last = t + 1 == tries.len();
                if bytes > limit || (tiles_too && with_tiles > limit && !last) {
                    if last {
                        tried.push(format!("{bytes} bytes at BV {}", dims.v));
                    }
                    continue;
                }
                // The widest block whose operands fit; its f32 tiles join them on chip if they
                // fit too. (Narrowing the block to fit them was measured slower: every value
                // block redoes the chunk's Q·Kᵀ and gate work.)
                chosen = Some((
                    wanted,
                    dims,
                    layout,
                    bytes,
                    tiles_too && with_tiles <= limit,
                ));
                break 'blocks;
            }
        }
        if chosen.is_none() {
            let whom = match wanted {
                MatmulPath::EmulatedMatrixCore(_) => "AMD".to_string(),
                _ => target.to_string(),
            };
            fallback = Some(format!(
                "portable matmuls: the 16-bit operand tiles need {} of {memory}; {whom} allows {limit} bytes per workgroup",
                tried.join(", ")
            ));
        }
    }
    let (matmul, dims, layout, arena_bytes, tiles_fit) = match chosen {
        Some(c) => c,
        None => {
            let dims = TileDims::new(config, MAX_BLOCK_V);
            let layout = alloc::place(
                plan,
                &dims,
                &sinks,
                false,
                alloc::Reuse::Never,
                false,
                placing,
            );
            (MatmulPath::Portable, dims, layout, 0, false)
        }
    };
    // The f32 tiles go to shared memory after the operand tiles (tensor cores only; the
    // emulation keeps them in scratch).
    let tiles_shared = tiles_fit && matmul == MatmulPath::TensorCore;
    let block_v = dims.v;
    let state = layout.state;
    let (operand_base, scratch, shared_bytes) = match matmul {
        // On AMD the arena is a static workgroup allocation: the code object carries its
        // size, nothing is passed at launch.
        MatmulPath::Portable | MatmulPath::MatrixCore(_) => (0, layout.scratch, 0),
        // The operand arena follows the f32 tiles in scratch; its f32 slots hold values
        // already rounded to the dtype.
        MatmulPath::Emulated | MatmulPath::EmulatedMatrixCore(_) => {
            (layout.scratch, layout.scratch + layout.operand_arena, 0)
        }
        MatmulPath::TensorCore => {
            let bytes = if tiles_shared {
                tiles_offset(arena_bytes) + 4 * layout.scratch
            } else {
                arena_bytes
            };
            (
                0,
                if tiles_shared { 0 } else { layout.scratch },
                u32::try_from(bytes).map_err(|_| {
                    err(0, format!("{bytes} bytes of shared memory do not fit u32"))
                })?,
            )
        }
    };
    let (barrier_before, barrier_before_sinks) = barriers(
        plan,
        &layout.values,
        &layout.operands,
        matmul,
        (state, state),
        &sinks,
        placing.from_memory,
    );
    let (tma, shared_bytes) = match placing.pin_rows && matmul == MatmulPath::TensorCore {
        true => tma_loads(
            plan,
            config,
            &layout,
            shared_bytes,
            shared_memory_limit(target),
        ),
        false => (Vec::new(), shared_bytes),
    };

    let decay = decay_param(spec);
    if plan.nodes.iter().any(|n| n.op == Op::ConstantGate) && decay.is_none() {
        let node = plan.nodes.iter().position(|n| n.op == Op::ConstantGate);
        return Err(err(
            node.unwrap_or(0),
            "the spec has no constant decay to read".into(),
        ));
    }

    let scan = matches!(part, Part::Segments | Part::ScanStates);
    let mut params = input_params(spec, config);
    if scan {
        // The combine kernel starts the first segment from h0.
        params.retain(|p| *p != KernelParam::InitialState);
    }
    if !matches!(part, Part::Fused | Part::Segments) {
        params.push(KernelParam::ChunkStates);
    }
    if scan {
        params.push(KernelParam::SegmentStates);
    }
    if part == Part::Segments && plan.sinks.iter().any(|(s, _)| *s == Sink::StateDecay) {
        params.push(KernelParam::SegmentDecays);
    }
    if !part.states_only() {
        params.push(KernelParam::Output);
    }
    if config.final_state && matches!(part, Part::Fused | Part::States | Part::ScanStates) {
        params.push(KernelParam::FinalState);
    }
    params.extend(tma.iter().map(|l| KernelParam::TensorMap(l.role)));
    params.push(KernelParam::Scratch);
    params.extend(scalar_params());

    // The output kernel's x is (chunk of the sequence, value block): ceil(T / C) chunks cover
    // every sequence of a batch; with varlen (B = 1, T the total) a workgroup past its
    // sequence's chunks returns at once.
    let blocks = SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(block_v as u64));
    let grid = [
        match part {
            Part::Output => SizeExpr::product(
                SizeExpr::ceil_div(
                    SizeExpr::Sym(SizeSym::T),
                    SizeExpr::Const(config.chunk as u64),
                ),
                blocks,
            ),
            _ => blocks,
        },
        SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
        match scan {
            true => segments_grid(config),
            false => SizeExpr::Const(1),
        },
    ];

    Ok(Schedule {
        spec_name: spec.name.clone(),
        spec_hash: spec.hash().hex(),
        target,
        config: *config,
        entry: entry_name(
            &spec.name,
            &match (part, width) {
                (Part::States, Some(w)) => format!("fwd_states_v{w}"),
                (Part::States, None) => "fwd_states".into(),
                (Part::Segments, _) => "fwd_segments".into(),
                (Part::ScanStates, _) => "fwd_scan_states".into(),
                (Part::Output, _) => "fwd_output".into(),
                _ => "fwd".into(),
            },
        ),
        direction: Direction::Forward,
        part,
        plan: plan.clone(),
        block_threads: match matmul {
            MatmulPath::TensorCore | MatmulPath::Emulated => TENSOR_CORE_THREADS,
            _ => BLOCK_THREADS,
        },
        block_v,
        grid,
        params,
        values: layout.values,
        barrier_before,
        barrier_before_sinks,
        state,
        output,
        state_out,
        decay,
        scratch,
        matmul,
        operands: layout.operands,
        operand_arena: layout.operand_arena,
        operand_base,
        shared_bytes,
        tiles_shared,
        fallback,
        max_registers: (matmul == MatmulPath::TensorCore).then_some(match part.states_only() {
            true => STATES_REGISTERS,
            false => TENSOR_CORE_REGISTERS,
        }),
        wgmma: choice.wgmma(target, matmul, part.wgmma_pays()),
        tma,
    })
}

/// The load nodes whose rows can arrive by TMA, each with an mbarrier placed after the
/// kernel's `shared_bytes`, and the shared bytes with those barriers (none when they would
/// pass `limit`). A node qualifies when its rows go to a swizzled operand tile alone,
/// without padding (TMA writes whole 64-column blocks of `chunk` rows, zero past the
/// tensor's end), the box fits TMA (at most 256 rows) and the input's rows are 16-byte
/// multiples (TMA's stride rule).
fn tma_loads(
    plan: &Plan,
    config: &KernelConfig,
    layout: &alloc::Layout,
    shared_bytes: u32,
    limit: u64,
) -> (Vec<TmaLoad>, u32) {
    let mut loads = Vec::new();
    let mut at = shared_bytes.next_multiple_of(8);
    for (node, n) in plan.nodes.iter().enumerate() {
        let (&Op::Load(role @ (Role::Query | Role::Key | Role::Value)), Some(Some(tile))) =
            (&n.op, layout.operands.get(node))
        else {
            continue;
        };
        let width = match role {
            Role::Value => config.value_dim,
            _ => config.key_dim,
        };
        let whole = tile.layout == TileLayout::Swizzled
            && tile.rows == tile.rows_padded
            && tile.cols == tile.cols_padded
            && tile.rows == config.chunk;
        if whole
            && !loads.iter().any(|l: &TmaLoad| l.role == role)
            && layout.values[node].tile().is_none()
            && config.chunk <= 256
            && width % 8 == 0
        {
            loads.push(TmaLoad {
                node,
                role,
                barrier: at,
            });
            at += 8;
        }
    }
    match u64::from(at) <= limit && !loads.is_empty() {
        true => (loads, at),
        false => (Vec::new(), shared_bytes),
    }
}

/// Where the f32 tiles start in dynamic shared memory when they live there: after the
/// operand arena (`operand_bytes`), 16-byte aligned.
pub fn tiles_offset(operand_bytes: u64) -> u64 {
    operand_bytes.div_ceil(16) * 16
}

/// Where `constant_gate` reads the per-head log-decay, for specs with a constant decay.
fn decay_param(spec: &Spec) -> Option<KernelParam> {
    match spec.decay {
        Decay::Constant(ConstantRate::Retnet) => Some(KernelParam::DecayRates),
        Decay::Constant(ConstantRate::Input) => Some(KernelParam::Input(Role::DecayRate)),
        _ => None,
    }
}

/// The parameters every kernel of `spec` and `config` starts with, in ABI order: the spec's
/// inputs, the RetNet decay rates, `h0`, `cu_seqlens`.
fn input_params(spec: &Spec, config: &KernelConfig) -> Vec<KernelParam> {
    let mut params: Vec<KernelParam> = spec
        .required_roles()
        .into_iter()
        .map(KernelParam::Input)
        .collect();
    if decay_param(spec) == Some(KernelParam::DecayRates) {
        params.push(KernelParam::DecayRates);
    }
    if config.initial_state {
        params.push(KernelParam::InitialState);
    }
    if config.varlen {
        params.push(KernelParam::CuSeqlens);
    }
    params
}

/// A symbol-safe kernel name: the spec's name (snake_case by validation; anything else is
/// replaced) and the direction.
fn entry_name(spec: &str, direction: &str) -> String {
    let clean: String = spec
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("linrec_{clean}_{direction}")
}

impl Schedule {
    /// `(rows, cols)` of a value of `shape` in this kernel (a vector is one column; the value
    /// dim is the block's); `None` for a scalar.
    pub fn extent(&self, shape: &crate::plan::Shape) -> Option<(usize, usize)> {
        TileDims::new(&self.config, self.block_v).extent(&shape.0)
    }

    /// f32 elements of the tiles (in scratch, or in shared memory with
    /// [`Schedule::tiles_shared`]): the operand arena's emulated copy excluded.
    pub fn scratch_tiles(&self) -> u64 {
        if self.tiles_shared {
            // The TMA loads' mbarriers, if any, come after the tiles.
            let end = self.tma.first().map_or(self.shared_bytes, |l| l.barrier);
            (u64::from(end) - tiles_offset(self.operand_arena * 2)) / 4
        } else {
            self.scratch
        }
    }

    /// The launch metadata the runtime needs (what `manifest.json` holds per kernel).
    pub fn kernel_info(&self) -> KernelInfo {
        KernelInfo {
            entry: self.entry.clone(),
            spec_name: self.spec_name.clone(),
            spec_hash: self.spec_hash.clone(),
            direction: match self.direction {
                Direction::Forward => "forward",
                Direction::Backward => "backward",
            }
            .into(),
            target: self.target.name().into(),
            config: self.config,
            params: self.params.clone(),
            grid: self.grid.clone(),
            block: [self.block_threads, 1, 1],
            shared_bytes: self.shared_bytes,
            scratch: self.scratch,
            then: Vec::new(),
            narrower: Vec::new(),
            instead: None,
        }
    }

    /// Whether a node computing `op` has an f32 tile (a state or dh read per chunk from
    /// memory may have its operand tile alone, `alloc::Placing::from_memory`).
    pub fn in_tile(&self, op: &Op) -> bool {
        self.plan
            .nodes
            .iter()
            .zip(&self.values)
            .any(|(n, v)| n.op == *op && matches!(v, Placement::Tile(_)))
    }

    /// This kernel as a later launch of a sequence ([`KernelInfo::then`]).
    pub fn launch(&self) -> linrec_spec::launch::Launch {
        linrec_spec::launch::Launch {
            entry: self.entry.clone(),
            params: self.params.clone(),
            grid: self.grid.clone(),
            block: [self.block_threads, 1, 1],
            shared_bytes: self.shared_bytes,
            scratch: self.scratch,
        }
    }

    /// The element type of a buffer parameter as the kernel reads or writes it (`None` for
    /// scalars). q, k, v and o use the config's dtype; gates, β, states, decay rates and
    /// scratch are f32; `cu_seqlens` is i32 (see [`BufferType`]).
    pub fn buffer_type(&self, param: &KernelParam) -> Option<BufferType> {
        buffer_type(self.config.dtype, param)
    }
}

/// The element type of a buffer parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// A floating-point tensor.
    Float(ElementType),
    /// 32-bit integers (`cu_seqlens`).
    I32,
    /// 64-bit words: a [`KernelParam::TensorMap`] (its address is all the kernel uses).
    I64,
}

/// The element type of a buffer parameter for inputs of `dtype` (`None` for scalars).
pub fn buffer_type(dtype: ElementType, param: &KernelParam) -> Option<BufferType> {
    Some(match param {
        KernelParam::Input(Role::Query | Role::Key | Role::Value)
        | KernelParam::Grad(Role::Query | Role::Key | Role::Value)
        | KernelParam::Output
        | KernelParam::GradOutput
        | KernelParam::ChunkStates
        | KernelParam::ChunkStateGrads => BufferType::Float(dtype),
        KernelParam::Input(_)
        | KernelParam::Grad(_)
        | KernelParam::DecayRates
        | KernelParam::InitialState
        | KernelParam::FinalState
        | KernelParam::GradFinalState
        | KernelParam::GradInitialState
        | KernelParam::GradAccumulator(_)
        | KernelParam::SegmentStates
        | KernelParam::SegmentDecays
        | KernelParam::Scratch => BufferType::Float(ElementType::F32),
        KernelParam::CuSeqlens => BufferType::I32,
        KernelParam::TensorMap(_) => BufferType::I64,
        KernelParam::SeqLen
        | KernelParam::Heads
        | KernelParam::ValueHeads
        | KernelParam::Scale
        | KernelParam::ChunkStatesGiven => {
            return None;
        }
    })
}

/// Concrete sizes of the symbolic tile dims in one workgroup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileDims {
    c: usize,
    k: usize,
    v: usize,
    /// Operand tiles in sm_90a's layouts: swizzled where whole 64-column blocks exist, else
    /// core matrices ([`TileLayout::Swizzled`], [`TileLayout::CoreMatrices`]).
    wgmma_layouts: bool,
}

impl TileDims {
    /// The dims of `config` with value blocks of at most `max_block_v` columns.
    fn new(config: &KernelConfig, max_block_v: usize) -> Self {
        TileDims {
            c: config.chunk,
            k: config.key_dim,
            v: config.value_dim.min(max_block_v),
            wgmma_layouts: false,
        }
    }

    /// The same dims with operand tiles in sm_90a's layouts (`yes`) or row-major.
    fn with_wgmma_layouts(self, yes: bool) -> Self {
        TileDims {
            wgmma_layouts: yes,
            ..self
        }
    }

    fn of(&self, d: Dim) -> usize {
        match d {
            Dim::C => self.c,
            Dim::K => self.k,
            Dim::V => self.v,
        }
    }

    /// The operand tile of a matrix of `shape` at `offset` (dims padded to 16).
    fn operand(&self, shape: &[Dim], offset: u64) -> Option<OperandTile> {
        let (rows, cols) = match shape {
            [r, c] => (self.of(*r), self.of(*c)),
            _ => return None,
        };
        let pad = |x: usize| x.div_ceil(OPERAND_PAD) * OPERAND_PAD;
        // sm_90a's layout: swizzled where whole 64-column blocks exist, else core matrices.
        let swizzled = self.wgmma_layouts && pad(cols) % 64 == 0;
        Some(OperandTile {
            offset,
            rows,
            cols,
            rows_padded: pad(rows),
            cols_padded: pad(cols),
            // Neither needs a skew: `ldmatrix`'s eight rows are one 128-byte run of core
            // matrices, or eight rows' chunks permuted apart by the swizzle.
            stride: match (swizzled, self.wgmma_layouts) {
                (true, _) => 64,
                (false, true) => 8,
                (false, false) => pad(cols) + OPERAND_ROW_SKEW,
            },
            layout: match (swizzled, self.wgmma_layouts) {
                (true, _) => TileLayout::Swizzled,
                (false, true) => TileLayout::CoreMatrices,
                (false, false) => TileLayout::Rows,
            },
        })
    }

    /// `(rows, cols)` of a rank-1 or rank-2 shape; `None` for a scalar.
    fn extent(&self, shape: &[Dim]) -> Option<(usize, usize)> {
        match shape {
            [] => None,
            [r] => Some((self.of(*r), 1)),
            [r, c, ..] => Some((self.of(*r), self.of(*c))),
        }
    }
}

/// Checks that every node is something this schedule knows how to run, with the shapes the
/// emitter assumes, and — unless one workgroup owns all of V (`whole_v`, the backward
/// kernels) — that no node reduces over V (which would couple the V blocks).
fn check_plan(
    plan: &Plan,
    err: &impl Fn(usize, String) -> ScheduleError,
    whole_v: bool,
) -> Result<(), ScheduleError> {
    use Dim::{C, K, V};
    for (i, node) in plan.nodes.iter().enumerate() {
        let shape = &node.shape.0;
        let of = |v: &ValueId| -> Result<&[Dim], ScheduleError> {
            if v.0 >= i {
                return Err(err(i, format!("operand {v} is not defined before its use")));
            }
            Ok(&plan.node(*v).shape.0)
        };
        let expect = |want: &[Dim]| -> Result<(), ScheduleError> {
            if shape.as_slice() == want {
                Ok(())
            } else {
                Err(err(
                    i,
                    format!("expected shape {want:?}, the node has {}", node.shape),
                ))
            }
        };
        if shape.len() > 2 {
            return Err(err(i, "tiles have rank 0, 1 or 2".into()));
        }
        match &node.op {
            Op::Load(Role::Query | Role::Key) => expect(&[C, K])?,
            Op::Load(Role::Value) => expect(&[C, V])?,
            Op::Load(Role::Gate | Role::Beta) => expect(&[C])?,
            Op::Load(role) => {
                return Err(err(
                    i,
                    format!("a per-token load of the {role} input is not supported"),
                ));
            }
            Op::ConstantGate => expect(&[C])?,
            Op::StateIn => expect(&[K, V])?,
            Op::Param(_) | Op::Const(_) => expect(&[])?,
            Op::L2NormRows(x) => {
                if !whole_v && of(x)?.get(1) == Some(&V) {
                    return Err(err(i, "an L2 norm over V would couple the V blocks".into()));
                }
                if of(x)? != shape.as_slice() || shape.len() != 2 {
                    return Err(err(i, "l2norm_rows maps a matrix to its own shape".into()));
                }
            }
            Op::CumSum(x) | Op::PairDiff(x) => {
                if of(x)? != [C] {
                    return Err(err(i, "the operand must be a [C] tile".into()));
                }
                expect(if matches!(node.op, Op::CumSum(_)) {
                    &[C]
                } else {
                    &[C, C]
                })?;
            }
            Op::Last(x) => {
                if of(x)? != [C] {
                    return Err(err(i, "the operand must be a [C] tile".into()));
                }
                expect(&[])?;
            }
            Op::MaskCausal { x, .. } => {
                if of(x)? != [C, C] {
                    return Err(err(i, "the operand must be a [C, C] tile".into()));
                }
                expect(&[C, C])?;
            }
            Op::Exp2(x) => {
                if of(x)? != shape.as_slice() {
                    return Err(err(i, "exp2 keeps its operand's shape".into()));
                }
            }
            Op::Mul(a, b) | Op::Add(a, b) | Op::Sub(a, b) => {
                for x in [a, b] {
                    let s = of(x)?;
                    let fits = s.is_empty()
                        || s == shape.as_slice()
                        || (s.len() == 1 && shape.len() == 2 && s[0] == shape[0]);
                    if !fits {
                        return Err(err(
                            i,
                            format!(
                                "operand {x} of shape {} does not broadcast to {}",
                                plan.node(*x).shape,
                                node.shape
                            ),
                        ));
                    }
                }
            }
            Op::Matmul { a, b, ta, tb } => {
                let (sa, sb) = (of(a)?, of(b)?);
                if sa.len() != 2 || sb.len() != 2 {
                    return Err(err(i, "matmul operands are matrices".into()));
                }
                let (m, ka) = if *ta { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
                let (kb, n) = if *tb { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
                if ka != kb || shape.as_slice() != [m, n] {
                    return Err(err(i, "the matmul's shapes do not agree".into()));
                }
                if ka == V && !whole_v {
                    return Err(err(
                        i,
                        "a matmul reducing over V would couple the V blocks".into(),
                    ));
                }
            }
            Op::Fused(f) => {
                for v in f.operands() {
                    of(&v)?;
                }
            }
            _ if plan.direction != Direction::Backward => {
                return Err(err(i, "a backward-plan op in a forward plan".into()));
            }
            Op::GradIn(Sink::Output) => expect(&[C, V])?,
            Op::GradIn(Sink::StateOut) => expect(&[K, V])?,
            Op::GradIn(other) => {
                return Err(err(i, format!("no gradient arrives at a {other:?} sink")));
            }
            Op::ValidRows => expect(&[C])?,
            Op::ReverseCumSum(x) => {
                if of(x)? != [C] {
                    return Err(err(i, "the operand must be a [C] tile".into()));
                }
                expect(&[C])?;
            }
            Op::RowSum(x) | Op::ColSum(x) => {
                let s = of(x)?;
                if s.len() != 2 {
                    return Err(err(i, "the operand must be a matrix".into()));
                }
                let keep = if matches!(node.op, Op::RowSum(_)) {
                    s[0]
                } else {
                    s[1]
                };
                expect(&[keep])?;
            }
            Op::SumAll(x) => {
                if of(x)?.is_empty() {
                    return Err(err(i, "the operand must be a tile".into()));
                }
                expect(&[])?;
            }
            Op::ScatterLast(x) => {
                if !of(x)?.is_empty() {
                    return Err(err(i, "the operand must be a scalar".into()));
                }
                expect(&[C])?;
            }
            Op::L2NormRowsVjp { x, dy } => {
                if of(x)? != shape.as_slice() || of(dy)? != shape.as_slice() || shape.len() != 2 {
                    return Err(err(
                        i,
                        "l2norm_rows_vjp maps two same-shaped matrices to their shape".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The tiles a node reads (its tile operands; a uniform `last` reads its operand's tile too).
pub(crate) fn tile_operands(op: &Op) -> Vec<ValueId> {
    op.operands()
}

/// A span of one memory: scratch (`operand == false`, f32 elements) or the operand arena
/// (16-bit elements). Spans of different memories never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    operand: bool,
    start: u64,
    end: u64,
}

impl Span {
    fn of_tile(t: Tile) -> Self {
        Span {
            operand: false,
            start: t.offset,
            end: t.offset + t.len(),
        }
    }

    fn of_operand(t: OperandTile) -> Self {
        Span {
            operand: true,
            start: t.offset,
            end: t.offset + t.len(),
        }
    }

    fn overlaps(&self, other: &Span) -> bool {
        self.operand == other.operand && self.start < other.end && other.start < self.end
    }
}

/// Where barriers go: before a node that reads a tile written since the last barrier, or
/// writes a tile that overlaps one read or written since (tiles are reused by liveness).
/// The sink phase reads the output and next-state tiles and overwrites `S`.
/// `(state, carried)`: where `state_in` lives, and the tile the sink phase overwrites (the same
/// in a forward; `dh`, where `grad_in state_out` lives, in a backward). With `from_memory`
/// (`alloc::Placing::from_memory`) neither exists: the nodes copy them from memory.
fn barriers(
    plan: &Plan,
    values: &[Placement],
    operands: &[Option<OperandTile>],
    matmul: MatmulPath,
    (state, carried): (Tile, Tile),
    sinks: &[ValueId],
    from_memory: bool,
) -> (Vec<bool>, bool) {
    // Spans written / read since the last barrier. The chunk loop starts after a barrier.
    let mut written: Vec<Span> = Vec::new();
    let mut read: Vec<Span> = Vec::new();
    let mut before = Vec::with_capacity(plan.nodes.len());
    let hazard = |reads: &[Span], writes: &[Span], written: &[Span], read: &[Span]| {
        reads.iter().any(|r| written.iter().any(|w| w.overlaps(r)))
            || writes
                .iter()
                .any(|w| written.iter().chain(read).any(|x| x.overlaps(w)))
    };
    let with_operands = matmul.uses_operand_tiles();
    for (i, node) in plan.nodes.iter().enumerate() {
        let operand = operands.get(i).copied().flatten().map(Span::of_operand);
        let (reads, writes): (Vec<Span>, Vec<Span>) = match node.op {
            // The state tile is not written by its node; it is just where S lives. With an
            // operand tile, the node rounds S into it.
            Op::StateIn => match operand {
                // Copied from memory (`alloc::Placing::from_memory`): no tile read.
                Some(o) if from_memory => (vec![], vec![o]),
                Some(o) => (vec![Span::of_tile(state)], vec![o]),
                None => (vec![], vec![]),
            },
            // Backward: `dh'` is the carried tile, written only by the sink phase; with an
            // operand tile, the node rounds it into that.
            Op::GradIn(Sink::StateOut) => match operand {
                Some(o) if from_memory => (vec![], vec![o]),
                Some(o) => (vec![Span::of_tile(carried)], vec![o]),
                None => (vec![], vec![]),
            },
            _ => (
                alloc::reads(plan, i, with_operands, from_memory)
                    .into_iter()
                    .filter_map(|(v, copy)| match copy {
                        alloc::Copy::F32 => values[v.0].tile().map(Span::of_tile),
                        alloc::Copy::Operand => {
                            operands.get(v.0).copied().flatten().map(Span::of_operand)
                        }
                    })
                    .collect(),
                values[i]
                    .tile()
                    .map(Span::of_tile)
                    .into_iter()
                    .chain(operand)
                    .collect(),
            ),
        };
        let barrier = hazard(&reads, &writes, &written, &read);
        if barrier {
            written.clear();
            read.clear();
        }
        before.push(barrier);
        written.extend(writes);
        read.extend(reads);
    }
    let reads: Vec<Span> = sinks
        .iter()
        .filter_map(|v| values[v.0].tile().map(Span::of_tile))
        .collect();
    // The sink phase writes the carried tile (S or dh), except in kernels that read them
    // from memory per chunk.
    let carried_write = if from_memory {
        Vec::new()
    } else {
        vec![Span::of_tile(carried)]
    };
    let sinks_barrier = hazard(&reads, &carried_write, &written, &read);
    (before, sinks_barrier)
}
