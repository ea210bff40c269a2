//! Launch metadata: what the compiler records about each kernel it writes and what the runtime
//! needs to launch it without LLVM — entry point, parameter layout, grid and block formulas,
//! memory needs. It lives here, in the crate both sides depend on, and is plain serde data (it
//! is the `manifest.json` of an artifact folder).

use serde::{Deserialize, Serialize};

use crate::dims::Dims;
use crate::forms::Role;

/// Element type of the input/output tensors a kernel was compiled for. Accumulation, gates and
/// states are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementType {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl ElementType {
    /// All element types.
    pub const ALL: [ElementType; 3] = [ElementType::Bf16, ElementType::F16, ElementType::F32];

    /// `bf16`, `f16`, `f32`.
    pub fn name(self) -> &'static str {
        match self {
            ElementType::Bf16 => "bf16",
            ElementType::F16 => "f16",
            ElementType::F32 => "f32",
        }
    }

    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            ElementType::Bf16 | ElementType::F16 => 2,
            ElementType::F32 => 4,
        }
    }
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ElementType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ElementType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}`; expected one of: bf16, f16, f32"))
    }
}

/// What a kernel is specialised for. Part of the cache key and of the artifact's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelConfig {
    /// Element type of q, k, v (and o).
    pub dtype: ElementType,
    /// K, fixed at compile time (1..=256).
    pub key_dim: usize,
    /// V, fixed at compile time (1..=256).
    pub value_dim: usize,
    /// Chunk length C (16, 32 or 64).
    pub chunk: usize,
    /// An initial state is read.
    pub initial_state: bool,
    /// The final state is written.
    pub final_state: bool,
    /// Sequences come from `cu_seqlens` (i32 offsets) instead of batch rows.
    pub varlen: bool,
}

impl KernelConfig {
    /// A short, file-name-safe description, e.g. `bf16-k64-v32-c64-h0-varlen`: part of cache
    /// keys and artifact file names, so the compiler and the runtime must agree on it.
    ///
    /// ```
    /// use linrec_spec::launch::{ElementType, KernelConfig};
    /// let c = KernelConfig { dtype: ElementType::Bf16, key_dim: 64, value_dim: 32, chunk: 64,
    ///     initial_state: true, final_state: false, varlen: true };
    /// assert_eq!(c.tag(), "bf16-k64-v32-c64-h0-varlen");
    /// ```
    pub fn tag(&self) -> String {
        let config = self;
        format!(
            "{}-k{}-v{}-c{}{}{}{}",
            config.dtype,
            config.key_dim,
            config.value_dim,
            config.chunk,
            if config.initial_state { "-h0" } else { "" },
            if config.final_state { "-ht" } else { "" },
            if config.varlen { "-varlen" } else { "" },
        )
    }
}

/// An integer formula over the problem's sizes, for grids and buffer sizes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeExpr {
    /// A constant.
    Const(u64),
    /// A problem size.
    Sym(SizeSym),
    /// Product.
    Mul(Box<SizeExpr>, Box<SizeExpr>),
    /// `ceil(a / b)`.
    CeilDiv(Box<SizeExpr>, Box<SizeExpr>),
    /// Sum.
    Add(Box<SizeExpr>, Box<SizeExpr>),
}

/// The problem sizes a [`SizeExpr`] may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeSym {
    /// Batch rows.
    B,
    /// Tokens per row (total with varlen).
    T,
    /// Query/key heads.
    H,
    /// Value heads.
    Hv,
    /// Key dim.
    K,
    /// Value dim.
    V,
    /// Sequences (B, or the number of `cu_seqlens` segments).
    N,
}

impl SizeExpr {
    /// `a · b`.
    pub fn product(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::Mul(Box::new(a), Box::new(b))
    }

    /// `ceil(a / b)`.
    pub fn ceil_div(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::CeilDiv(Box::new(a), Box::new(b))
    }

    /// `a + b`.
    pub fn sum(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::Add(Box::new(a), Box::new(b))
    }

    /// Evaluates for `dims` with `n` sequences; `None` on overflow or division by zero.
    ///
    /// ```
    /// use linrec_spec::{Dims, launch::{SizeExpr, SizeSym}};
    /// let e = SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(32)));
    /// assert_eq!(e.eval(&Dims::new(2, 10, 4, 64, 100), 2), Some(8));
    /// ```
    pub fn eval(&self, dims: &Dims, n: usize) -> Option<u64> {
        match self {
            SizeExpr::Const(c) => Some(*c),
            SizeExpr::Sym(s) => Some(match s {
                SizeSym::B => dims.batch,
                SizeSym::T => dims.seq_len,
                SizeSym::H => dims.heads,
                SizeSym::Hv => dims.value_heads,
                SizeSym::K => dims.key_dim,
                SizeSym::V => dims.value_dim,
                SizeSym::N => n,
            } as u64),
            SizeExpr::Mul(a, b) => a.eval(dims, n)?.checked_mul(b.eval(dims, n)?),
            SizeExpr::Add(a, b) => a.eval(dims, n)?.checked_add(b.eval(dims, n)?),
            SizeExpr::CeilDiv(a, b) => {
                let (a, b) = (a.eval(dims, n)?, b.eval(dims, n)?);
                (b != 0).then(|| a.div_ceil(b))
            }
        }
    }
}

/// One kernel parameter, in ABI order. Buffers are passed as one bare device pointer each,
/// scalars by value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelParam {
    /// A declared input of the spec (its dtype: [`KernelConfig::dtype`] for q/k/v, f32 for
    /// gates, β, bonus).
    Input(Role),
    /// Per-value-head constant log-decay `[HV]` f32 (for the RetNet schedule the runtime computes
    /// it on the host).
    DecayRates,
    /// Initial state `[N, HV, K, V]` f32.
    InitialState,
    /// Output `[B, T, HV, V]` in the input dtype.
    Output,
    /// Final state `[N, HV, K, V]` f32.
    FinalState,
    /// `cu_seqlens` `[N+1]` i32.
    CuSeqlens,
    /// Scratch memory, f32, [`KernelInfo::scratch`] elements per workgroup.
    Scratch,
    /// i32 scalar T.
    SeqLen,
    /// i32 scalar H.
    Heads,
    /// i32 scalar HV.
    ValueHeads,
    /// f32 scalar output scale.
    Scale,
    // Backward kernels (`direction = "backward"`): a workgroup owns one (sequence, q/k head)
    // and walks the value heads of its GVA group in turn.
    /// `dO [B, T, HV, V]` in the input dtype.
    GradOutput,
    /// `dht [N, HV, K, V]` f32, the gradient of the final state ([`KernelConfig::final_state`]
    /// in a backward config: the forward returned `ht`; zeros when the caller has none).
    GradFinalState,
    /// The gradient of the input of a role, written by the kernel: `dq`, `dk` `[B, T, H, K]`
    /// and `dv` `[B, T, HV, V]` in the input dtype, `dg`, `dβ` `[B, T, HV]` f32.
    Grad(Role),
    /// `dh0 [N, HV, K, V]` f32 ([`KernelConfig::initial_state`] in a backward config).
    GradInitialState,
    /// The state entering every chunk, `[⌊B·T / C⌋ + N, HV, K, V]` in the config's dtype
    /// (bf16 and f16 states are rounded copies; the kernels carry f32): chunk `i` of sequence
    /// `n` (rows from `bos`) is slot `⌊bos / C⌋ + n + i`. Written by a forward's states kernel
    /// (read by its output kernel) and by the backward's first kernel when it recomputes
    /// the states (read by its gradient kernel).
    ChunkStates,
    /// i32 scalar, backward kernels: nonzero when [`KernelParam::ChunkStates`] already holds
    /// the forward's chunk states (a split forward wrote them and the caller kept them), so the
    /// kernel skips recomputing them; 0 to recompute.
    ChunkStatesGiven,
    /// The gradient of the state leaving every chunk (`dh`), backward kernels: laid out as
    /// [`KernelParam::ChunkStates`] (same slots and dtype). The backward's first kernel writes
    /// it in its reverse sweep, the chunk-parallel gradient kernel reads it.
    ChunkStateGrads,
    /// f32 `[B, T, H, K]`: the running sum of the q or k gradient over the value heads of a
    /// GVA group (read and written only when HV > H; any 1-element buffer otherwise).
    GradAccumulator(Role),
    /// The split-scan over T segments of [`SEGMENT_CHUNKS`] chunks (a [`KernelInfo::instead`]
    /// forward): f32 `[⌊B·T / (SEGMENT_CHUNKS·C)⌋ + N, HV, K, V]`, segment `z` of sequence `n`
    /// (rows from `bos`) in slot `⌊bos / (SEGMENT_CHUNKS·C)⌋ + n + z`. The segment kernel
    /// writes the state leaving each segment when it starts from zero; the combine kernel
    /// replaces it with the true state entering the segment, which the states kernel starts
    /// from.
    SegmentStates,
    /// f32 `[slots, HV]`, slots as [`KernelParam::SegmentStates`]: the factor by which the
    /// state is scaled across each segment (the product of its chunks' decays), written by the
    /// segment kernel, read by the combine kernel. Only plans whose state decays have it.
    SegmentDecays,
    /// The Tensor Memory Accelerator's map of the q, k or v input (`CUtensorMap`, 128 bytes,
    /// in device memory, 64-byte aligned), built by the runtime for each call (sm_90a kernels
    /// whose token rows arrive by TMA). Its geometry is fixed by the config: a 3-D tiled map
    /// over the input's `[B·T, heads, width]` (width innermost: K for q and k, V for v; heads
    /// H or HV), bf16/f16 elements, box `[config.chunk rows, 1 head,`
    /// [`TENSOR_MAP_BOX_COLUMNS`] `columns]`, 128-byte swizzle, zeros out of bounds.
    TensorMap(Role),
}

/// Columns of one box of a [`KernelParam::TensorMap`]: 128 bytes of a 16-bit dtype, the
/// widest row the 128-byte swizzle takes.
pub const TENSOR_MAP_BOX_COLUMNS: usize = 64;

/// Everything needed to launch one compiled kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Entry-point symbol in the binary.
    pub entry: String,
    /// Name of the spec and its canonical hash (hex).
    pub spec_name: String,
    /// Canonical hash of the spec (hex).
    pub spec_hash: String,
    /// `forward` or `backward`.
    pub direction: String,
    /// Target name (`sm_90`, `gfx942`, `spirv`).
    pub target: String,
    /// What the kernel is specialised for.
    pub config: KernelConfig,
    /// Parameters in ABI order.
    pub params: Vec<KernelParam>,
    /// Workgroups along x, y, z.
    pub grid: [SizeExpr; 3],
    /// Threads per workgroup along x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    /// f32 scratch elements each workgroup needs (0: no scratch parameter).
    pub scratch: u64,
    /// More kernels of the same binary, launched after this one, in order, on the same
    /// stream. Buffers with the same [`KernelParam`] are the same buffer in every launch; the
    /// scratch buffer is shared (each launch needs `scratch × its workgroups` elements).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<Launch>,
    /// This (first) launch again with narrower blocks of value columns, so more workgroups,
    /// widest first: a sequential kernel (the backward's dh sweep, a split forward's states)
    /// with few (sequence, head) pairs leaves most of a GPU idle. The runtime launches the
    /// widest of this launch and these whose grid has at least [`ENOUGH_WORKGROUPS`]
    /// workgroups, else the narrowest ([`KernelInfo::pick_first`]). Each has this launch's
    /// parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub narrower: Vec<Launch>,
    /// Another launch sequence of the same binary computing the same outputs, which the
    /// runtime makes instead of this launch, its `then` and `narrower` ones when
    /// [`KernelInfo::takes_instead`] says so: a forward's split-scan over T segments (segment
    /// states from zero in parallel, a combine over segments, the chunk states from the
    /// segments' true states, then the chunk-parallel output), for long sequences that this
    /// launch's grid cannot spread over the GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead: Option<Box<Route>>,
}

/// A launch sequence, in order (see [`KernelInfo::instead`]). Buffers with the same
/// [`KernelParam`] are the same buffer in every launch, as with [`KernelInfo::then`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The launches, in order.
    pub launches: Vec<Launch>,
    /// Taken only when the caller gives the chunk states ([`KernelParam::ChunkStates`]): a
    /// backward's split-scan reads the forward's instead of recomputing them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_chunk_states: bool,
}

/// Chunks per segment of the split-scan over T ([`KernelParam::SegmentStates`]): its
/// sequential depth is two walks of this many chunks plus a combine step per segment.
pub const SEGMENT_CHUNKS: usize = 16;

/// Workgroups that keep an H100/H200 (132 SMs) busy with one workgroup per SM: see
/// [`KernelInfo::narrower`].
pub const ENOUGH_WORKGROUPS: u64 = 128;

impl KernelInfo {
    /// Which first launch to make for a call of `dims` with `n` sequences: 0 for this one,
    /// `k` for `narrower[k − 1]` (see [`KernelInfo::narrower`]); `None` when a grid does not
    /// evaluate (overflow).
    ///
    /// ```
    /// use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, Launch, SizeExpr, SizeSym};
    /// let per_head = |bv: u64| [
    ///     SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(bv)),
    ///     SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::H)),
    ///     SizeExpr::Const(1),
    /// ];
    /// let launch = |bv: u64| Launch {
    ///     entry: format!("k_v{bv}"),
    ///     params: vec![],
    ///     grid: per_head(bv),
    ///     block: [256, 1, 1],
    ///     shared_bytes: 0,
    ///     scratch: 0,
    /// };
    /// let config = KernelConfig {
    ///     dtype: ElementType::Bf16,
    ///     key_dim: 128,
    ///     value_dim: 128,
    ///     chunk: 64,
    ///     initial_state: false,
    ///     final_state: false,
    ///     varlen: false,
    /// };
    /// let info = KernelInfo {
    ///     entry: "k".into(),
    ///     spec_name: "s".into(),
    ///     spec_hash: "0".into(),
    ///     direction: "backward".into(),
    ///     target: "sm_90".into(),
    ///     config,
    ///     params: vec![],
    ///     grid: per_head(64),
    ///     block: [256, 1, 1],
    ///     shared_bytes: 0,
    ///     scratch: 0,
    ///     then: vec![],
    ///     narrower: vec![launch(32), launch(16)],
    ///     instead: None,
    /// };
    /// let dims = |b, h| linrec_spec::Dims::new(b, 2048, h, 128, 128);
    /// assert_eq!(info.pick_first(&dims(8, 16), 8), Some(0)); // 256 workgroups at BV 64
    /// assert_eq!(info.pick_first(&dims(2, 16), 2), Some(1)); // 128 at BV 32
    /// assert_eq!(info.pick_first(&dims(1, 16), 1), Some(2)); // 128 at BV 16
    /// assert_eq!(info.pick_first(&dims(1, 4), 1), Some(2)); // too few anyway: the narrowest
    /// ```
    pub fn pick_first(&self, dims: &crate::Dims, n: usize) -> Option<usize> {
        let workgroups = |grid: &[SizeExpr; 3]| -> Option<u64> {
            grid.iter()
                .try_fold(1u64, |acc, e| acc.checked_mul(e.eval(dims, n)?))
        };
        let grids = std::iter::once(&self.grid).chain(self.narrower.iter().map(|l| &l.grid));
        for (k, grid) in grids.enumerate() {
            if workgroups(grid)? >= ENOUGH_WORKGROUPS {
                return Some(k);
            }
        }
        Some(self.narrower.len())
    }

    /// Whether a call of `dims` with `n` sequences runs [`KernelInfo::instead`]: when there is
    /// one, this launch's grid — in its narrowest variant ([`KernelInfo::narrower`]) — has
    /// fewer than [`ENOUGH_WORKGROUPS`] workgroups and the sequences are longer than one
    /// segment ([`SEGMENT_CHUNKS`] chunks) on average, so that splitting them over T gives the
    /// GPU more work. `None` when the grid does not evaluate.
    ///
    /// ```
    /// use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, Route, SizeExpr, SizeSym};
    /// let config = KernelConfig {
    ///     dtype: ElementType::Bf16, key_dim: 128, value_dim: 128, chunk: 64,
    ///     initial_state: false, final_state: false, varlen: false,
    /// };
    /// let per_head = [
    ///     SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(64)),
    ///     SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
    ///     SizeExpr::Const(1),
    /// ];
    /// let info = KernelInfo {
    ///     entry: "k".into(), spec_name: "s".into(), spec_hash: "0".into(),
    ///     direction: "forward".into(), target: "sm_90".into(), config, params: vec![],
    ///     grid: per_head, block: [256, 1, 1], shared_bytes: 0, scratch: 0,
    ///     then: vec![], narrower: vec![],
    ///     instead: Some(Box::new(Route { launches: vec![], needs_chunk_states: false })),
    /// };
    /// let dims = |b, t| linrec_spec::Dims::new(b, t, 16, 128, 128);
    /// assert_eq!(info.takes_instead(&dims(8, 2048), 8), Some(false)); // 256 workgroups
    /// assert_eq!(info.takes_instead(&dims(1, 32768), 1), Some(true)); // 32, 512 chunks
    /// assert_eq!(info.takes_instead(&dims(1, 1024), 1), Some(false)); // one segment
    /// ```
    pub fn takes_instead(&self, dims: &crate::Dims, n: usize) -> Option<bool> {
        if self.instead.is_none() {
            return Some(false);
        }
        let grid = self.narrower.last().map_or(&self.grid, |l| &l.grid);
        let workgroups = grid
            .iter()
            .try_fold(1u64, |acc, e| acc.checked_mul(e.eval(dims, n)?))?;
        let tokens = (dims.batch as u64).checked_mul(dims.seq_len as u64)?;
        let segment = (SEGMENT_CHUNKS * self.config.chunk) as u64;
        let long = tokens > segment.checked_mul(n.max(1) as u64)?;
        Some(workgroups < ENOUGH_WORKGROUPS && long)
    }
}

/// One more kernel launch of a [`KernelInfo`]: a split forward is a states kernel (the one
/// the `KernelInfo` describes) then a chunk-parallel output kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// Entry-point symbol in the binary.
    pub entry: String,
    /// Parameters in ABI order.
    pub params: Vec<KernelParam>,
    /// Workgroups along x, y, z.
    pub grid: [SizeExpr; 3],
    /// Threads per workgroup along x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    /// f32 scratch elements each workgroup needs.
    pub scratch: u64,
}

/// Version of the artifact manifest format.
pub const MANIFEST_VERSION: u32 = 2;

/// The `manifest.json` of an artifact folder written by `linrec compile`: every kernel's launch
/// metadata and the file holding its binary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] of the writer.
    pub version: u32,
    /// Who compiled it: crate version and LLVM version (a loader refuses other versions' kernels
    /// only when the launch ABI changed, which bumps [`MANIFEST_VERSION`]).
    pub compiler: String,
    /// One entry per kernel.
    pub kernels: Vec<ManifestEntry>,
}

/// One compiled kernel of an artifact folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name of the binary, relative to the folder.
    pub file: String,
    /// SHA-256 of the binary (hex), checked on load.
    pub sha256: String,
    /// Compile time in milliseconds (informative).
    pub compile_ms: f64,
    /// How to launch it.
    pub info: KernelInfo,
}

impl Manifest {
    /// The kernel for a spec hash, direction, target and config, if the folder has it.
    pub fn find(
        &self,
        spec_hash: &str,
        direction: &str,
        target: &str,
        config: &KernelConfig,
    ) -> Option<&ManifestEntry> {
        self.kernels.iter().find(|e| {
            e.info.spec_hash == spec_hash
                && e.info.direction == direction
                && e.info.target == target
                && e.info.config == *config
        })
    }
}
