//! The `schedule` stage: decides how a [`Plan`] runs as GPU kernels — how many kernels, the
//! launch grid and block, what lives in memory where, and where workgroups synchronise.
//!
//! This is the *portable* schedule, generic over any plan (the backward plans of a later stage
//! reuse it): **one kernel** per (spec, config, target).
//!
//! * grid = `(ceil(V / BV), N · HV, 1)` with `BV = min(V, 32)`: V columns never interact in a
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

mod alloc;
mod print;

use linrec_spec::launch::{ElementType, KernelConfig, KernelInfo, KernelParam, SizeExpr, SizeSym};
use linrec_spec::{ConstantRate, Decay, Role, Spec};

use crate::lower::Target;
use crate::plan::{Dim, Direction, Op, Plan, Sink, ValueId};

/// Threads per workgroup (1-D): four warps on NVIDIA, two wave64s on CDNA, four wave32s on RDNA.
pub const BLOCK_THREADS: u32 = 128;

/// The widest block of value columns one workgroup owns.
pub const MAX_BLOCK_V: usize = 32;

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
    /// f32 scratch elements per workgroup.
    pub scratch: u64,
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

    fn end(&self) -> u64 {
        self.offset + self.len()
    }

    fn overlaps(&self, other: &Tile) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

/// Where a plan value lives while a chunk is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// A scalar computed by every thread (an SSA value, no memory).
    Uniform,
    /// A tile in scratch.
    Tile(Tile),
}

impl Placement {
    /// The tile, if the value has one.
    pub fn tile(&self) -> Option<Tile> {
        match self {
            Placement::Uniform => None,
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

/// Lays out the forward plan of `spec` as one kernel for `target` and `config`.
pub fn forward(
    plan: &Plan,
    spec: &Spec,
    target: Target,
    config: &KernelConfig,
) -> Result<Schedule, ScheduleError> {
    check_config(config)?;
    let block_v = config.value_dim.min(MAX_BLOCK_V);
    let dims = TileDims {
        c: config.chunk,
        k: config.key_dim,
        v: block_v,
    };
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
    if plan.direction != Direction::Forward {
        return Err(err(0, "the portable schedule runs forward plans".into()));
    }
    check_plan(plan, &err)?;

    let sink = |which: Sink| {
        plan.sinks
            .iter()
            .find(|(s, _)| *s == which)
            .map(|(_, v)| *v)
            .ok_or_else(|| err(0, format!("the plan has no {which:?} sink")))
    };
    let output = sink(Sink::Output)?;
    let state_out = sink(Sink::StateOut)?;
    for (id, want) in [(output, [Dim::C, Dim::V]), (state_out, [Dim::K, Dim::V])] {
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

    // The state tile comes first and stays for the whole kernel; everything else is placed by
    // liveness after it.
    let state = Tile {
        offset: 0,
        rows: dims.k,
        cols: dims.v,
    };
    let (values, scratch) = alloc::place(plan, &dims, state, &[output, state_out]);
    let (barrier_before, barrier_before_sinks) =
        barriers(plan, &values, state, &[output, state_out]);

    let decay = match spec.decay {
        Decay::Constant(ConstantRate::Retnet) => Some(KernelParam::DecayRates),
        Decay::Constant(ConstantRate::Input) => Some(KernelParam::Input(Role::DecayRate)),
        _ => None,
    };
    if plan.nodes.iter().any(|n| n.op == Op::ConstantGate) && decay.is_none() {
        let node = plan.nodes.iter().position(|n| n.op == Op::ConstantGate);
        return Err(err(
            node.unwrap_or(0),
            "the spec has no constant decay to read".into(),
        ));
    }

    let mut params: Vec<KernelParam> = spec
        .required_roles()
        .into_iter()
        .map(KernelParam::Input)
        .collect();
    if decay == Some(KernelParam::DecayRates) {
        params.push(KernelParam::DecayRates);
    }
    if config.initial_state {
        params.push(KernelParam::InitialState);
    }
    if config.varlen {
        params.push(KernelParam::CuSeqlens);
    }
    params.push(KernelParam::Output);
    if config.final_state {
        params.push(KernelParam::FinalState);
    }
    params.extend([
        KernelParam::Scratch,
        KernelParam::SeqLen,
        KernelParam::Heads,
        KernelParam::ValueHeads,
        KernelParam::Scale,
    ]);

    let grid = [
        SizeExpr::ceil_div(SizeExpr::Sym(SizeSym::V), SizeExpr::Const(block_v as u64)),
        SizeExpr::product(SizeExpr::Sym(SizeSym::N), SizeExpr::Sym(SizeSym::Hv)),
        SizeExpr::Const(1),
    ];

    Ok(Schedule {
        spec_name: spec.name.clone(),
        spec_hash: spec.hash().hex(),
        target,
        config: *config,
        entry: entry_name(&spec.name, "fwd"),
        plan: plan.clone(),
        block_threads: BLOCK_THREADS,
        block_v,
        grid,
        params,
        values,
        barrier_before,
        barrier_before_sinks,
        state,
        output,
        state_out,
        decay,
        scratch,
    })
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
    /// The launch metadata the runtime needs (what `manifest.json` holds per kernel).
    pub fn kernel_info(&self) -> KernelInfo {
        KernelInfo {
            entry: self.entry.clone(),
            spec_name: self.spec_name.clone(),
            spec_hash: self.spec_hash.clone(),
            direction: "forward".into(),
            target: self.target.name().into(),
            config: self.config,
            params: self.params.clone(),
            grid: self.grid.clone(),
            block: [self.block_threads, 1, 1],
            shared_bytes: 0,
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
}

/// The element type of a buffer parameter for inputs of `dtype` (`None` for scalars).
pub fn buffer_type(dtype: ElementType, param: &KernelParam) -> Option<BufferType> {
    Some(match param {
        KernelParam::Input(Role::Query | Role::Key | Role::Value) | KernelParam::Output => {
            BufferType::Float(dtype)
        }
        KernelParam::Input(_)
        | KernelParam::DecayRates
        | KernelParam::InitialState
        | KernelParam::FinalState
        | KernelParam::Scratch => BufferType::Float(ElementType::F32),
        KernelParam::CuSeqlens => BufferType::I32,
        KernelParam::SeqLen | KernelParam::Heads | KernelParam::ValueHeads | KernelParam::Scale => {
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
}

impl TileDims {
    fn of(&self, d: Dim) -> usize {
        match d {
            Dim::C => self.c,
            Dim::K => self.k,
            Dim::V => self.v,
        }
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
/// emitter assumes, and that no node reduces over V (which would couple the V blocks).
fn check_plan(
    plan: &Plan,
    err: &impl Fn(usize, String) -> ScheduleError,
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
                if of(x)?.get(1) == Some(&V) {
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
                if ka == V {
                    return Err(err(
                        i,
                        "a matmul reducing over V would couple the V blocks".into(),
                    ));
                }
            }
            Op::GradIn(_)
            | Op::ValidRows
            | Op::ReverseCumSum(_)
            | Op::RowSum(_)
            | Op::ColSum(_)
            | Op::SumAll(_)
            | Op::ScatterLast(_)
            | Op::L2NormRowsVjp { .. } => {
                return Err(err(
                    i,
                    "a backward-plan op; backward plans are not scheduled yet".into(),
                ));
            }
        }
    }
    Ok(())
}

/// The tiles a node reads (its tile operands; a uniform `last` reads its operand's tile too).
pub(crate) fn tile_operands(op: &Op) -> Vec<ValueId> {
    op.operands()
}

/// Where barriers go: before a node that reads a tile written since the last barrier, or
/// writes a tile that overlaps one read or written since (scratch is reused by liveness).
/// The sink phase reads the output and next-state tiles and overwrites `S`.
fn barriers(
    plan: &Plan,
    values: &[Placement],
    state: Tile,
    sinks: &[ValueId],
) -> (Vec<bool>, bool) {
    // Tiles written / read since the last barrier. The chunk loop starts after a barrier.
    let mut written: Vec<Tile> = Vec::new();
    let mut read: Vec<Tile> = Vec::new();
    let mut before = Vec::with_capacity(plan.nodes.len());
    let hazard = |reads: &[Tile], writes: &[Tile], written: &[Tile], read: &[Tile]| {
        reads.iter().any(|r| written.iter().any(|w| w.overlaps(r)))
            || writes
                .iter()
                .any(|w| written.iter().chain(read).any(|x| x.overlaps(w)))
    };
    for (i, node) in plan.nodes.iter().enumerate() {
        let reads: Vec<Tile> = tile_operands(&node.op)
            .iter()
            .filter_map(|v| values[v.0].tile())
            .collect();
        let writes: Vec<Tile> = match node.op {
            // The state tile is not written by its node; it is just where S lives.
            Op::StateIn => vec![],
            _ => values[i].tile().into_iter().collect(),
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
    let reads: Vec<Tile> = sinks.iter().filter_map(|v| values[v.0].tile()).collect();
    let sinks_barrier = hazard(&reads, &[state], &written, &read);
    (before, sinks_barrier)
}
