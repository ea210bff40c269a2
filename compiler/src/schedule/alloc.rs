//! Placement by liveness: each tile gets an offset in its arena (f32 scratch, or the 16-bit
//! operand arena) such that tiles alive at the same time never overlap. A tile is alive from
//! the node that writes it to the last node that reads that copy (the sinks count as read
//! after the last node). A node never writes over a tile it reads itself, even at its last
//! use: a matmul or a mask reads other elements than the one it writes. The one exception,
//! asked for with [`Reuse::InPlace`] (AMD, whose 64 KiB of LDS is tight): an elementwise node
//! may write its operand tile over the operand tile of a same-shaped operand that it reads for
//! the last time, since each thread reads exactly the element it then writes.

use super::{OperandTile, Placement, Tile, TileDims};
use crate::plan::{Op, Plan, Sink, ValueId};
use linrec_spec::Role;

/// Which copy of a value a node reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Copy {
    /// The f32 tile in scratch.
    F32,
    /// The 16-bit operand tile.
    Operand,
}

/// q, k and v: with operand tiles, they are loaded straight into them and have no f32 tile.
pub(crate) fn is_operand_load(op: &Op) -> bool {
    matches!(op, Op::Load(Role::Query | Role::Key | Role::Value))
}

/// Whether a value of `op` lives in its operand tile alone: q, k, v; with `from_memory` (see
/// [`Placing::from_memory`]) the state and `dh'` too.
fn operand_only(op: &Op, from_memory: bool) -> bool {
    is_operand_load(op) || (from_memory && matches!(op, Op::StateIn | Op::GradIn(Sink::StateOut)))
}

/// The tiles node `node` reads and which copy of each, when matmuls read operand tiles
/// (`operands`) or f32 tiles; `from_memory` as [`Placing::from_memory`].
pub(super) fn reads(
    plan: &Plan,
    node: usize,
    operands: bool,
    from_memory: bool,
) -> Vec<(ValueId, Copy)> {
    let op = &plan.nodes[node].op;
    // A matmul operand is read from its operand tile; any other read from the f32 tile,
    // except the values that have only operand tiles.
    let read = |v: ValueId, by_matmul: bool| {
        let copy = if operands && (by_matmul || operand_only(&plan.node(v).op, from_memory)) {
            Copy::Operand
        } else {
            Copy::F32
        };
        (v, copy)
    };
    if let Op::Fused(f) = op {
        // Its matmuls' operands, then its expression's values.
        let mut out: Vec<(ValueId, Copy)> = Vec::new();
        let matmul_reads = f
            .matmuls
            .iter()
            .flat_map(|m| [m.a, m.b])
            .map(|v| read(v, true));
        for r in matmul_reads.chain(f.expr.values().into_iter().map(|v| read(v, false))) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        return out;
    }
    let by_matmul = matches!(op, Op::Matmul { .. });
    super::tile_operands(op)
        .into_iter()
        .map(|v| read(v, by_matmul))
        .collect()
}

/// Options of [`place`] beyond the plan and its tiles.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Placing {
    /// The fused forward's next state, written over `S` when safe (see [`place`]).
    pub state_in_place: Option<ValueId>,
    /// The output sink, stored to `o` by its node when nothing else reads it.
    pub direct_output: Option<ValueId>,
    /// The plan is ordered by level ([`super::order::by_level`]): keep a tile until its last
    /// reader's level is over.
    pub by_level: bool,
    /// The state and `dh'` are read from memory per chunk (the backward's gradient kernel, a
    /// split forward's output kernel): with operand tiles they live in those alone, copied
    /// straight from `chunk_states` / `chunk_dh` (already in the dtype, so an elementwise
    /// reader widening the operand tile reads exactly the stored value), no f32 tile.
    pub from_memory: bool,
    /// Every fused sink of the plan that no node reads gets [`Placement::Output`]: its node
    /// stores it to memory (the backward's gradients from the matmul accumulators), no tile.
    pub direct_sinks: bool,
    /// The operand tiles of q, k and v hold their rows for the whole chunk: the Tensor Memory
    /// Accelerator writes the next chunk's rows there once their last reader is done
    /// (`emit/tma.rs`), so no later tile of the chunk may take their place.
    pub pin_rows: bool,
}

/// Where everything of one kernel lives.
pub(super) struct Layout {
    /// Indexed like the plan's nodes.
    pub values: Vec<Placement>,
    /// Indexed like the plan's nodes.
    pub operands: Vec<Option<OperandTile>>,
    /// The carried state `S [K × BV]`, first in scratch.
    pub state: Tile,
    /// f32 scratch elements.
    pub scratch: u64,
    /// Operand arena elements.
    pub operand_arena: u64,
}

/// Whether an elementwise node may write its operand tile in place of one it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reuse {
    /// Never: every node's result gets a tile of its own.
    Never,
    /// Over a same-shaped operand tile read for the last time by an elementwise node.
    InPlace,
}

/// The operand tile node `i` may take over in place ([`Reuse::InPlace`]): that of a
/// same-shaped operand of an elementwise op (`mul`, `add`, `sub`, `exp2`) which node `i`
/// reads from its operand tile for the last time.
fn in_place_source(
    plan: &Plan,
    i: usize,
    operands: bool,
    last_op: &[Option<usize>],
    tiles: &[Option<OperandTile>],
) -> Option<OperandTile> {
    let node = &plan.nodes[i];
    if !matches!(
        node.op,
        Op::Mul(..) | Op::Add(..) | Op::Sub(..) | Op::Exp2(_)
    ) {
        return None;
    }
    reads(plan, i, operands, false)
        .into_iter()
        .filter(|(v, copy)| *copy == Copy::Operand && last_op[v.0] == Some(i))
        .filter(|(v, _)| plan.node(*v).shape == node.shape)
        .find_map(|(v, _)| tiles.get(v.0).copied().flatten())
}

/// Places every value of `plan`. With `operands`, matmuls read 16-bit operand tiles (see the
/// schedule's module docs for who gets which copy). `StateIn` lives in the state tile.
///
/// With `carried_grad` (backward kernels), a second `[K × V]` tile follows the state for the
/// whole kernel: `dh`, carried from chunk to chunk, where [`Op::GradIn`] of the state lives.
///
/// With `state_in_place` (a fused forward's next state, `Some(state_out)`), the next state is
/// written straight over `S` when that is safe (see [`writes_state_in_place`]), which saves
/// its tile and the copy into `S` after every chunk. With `direct_output` (the output sink),
/// that value gets [`Placement::Output`] when no node reads it: no tile, stored to `o` by the
/// node itself.
pub(super) fn place(
    plan: &Plan,
    dims: &TileDims,
    sinks: &[ValueId],
    operands: bool,
    reuse: Reuse,
    carried_grad: bool,
    opts: Placing,
) -> Layout {
    let Placing {
        state_in_place,
        direct_output,
        by_level,
        from_memory,
        direct_sinks,
        pin_rows,
    } = opts;
    // With `by_level`, a tile is free again only once its last reader's level is over.
    let level = if by_level {
        super::order::levels(plan)
    } else {
        (0..plan.nodes.len()).collect()
    };
    let n = plan.nodes.len();
    // Last reader of each copy of each value (index of the reading node; `n` for the sinks).
    let mut last_f32: Vec<Option<usize>> = vec![None; n];
    let mut last_op: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        for (v, copy) in reads(plan, i, operands, from_memory) {
            match copy {
                Copy::F32 => last_f32[v.0] = Some(i),
                Copy::Operand => last_op[v.0] = Some(i),
            }
        }
    }
    for v in sinks {
        last_f32[v.0] = Some(n);
    }
    if pin_rows && operands {
        for (i, node) in plan.nodes.iter().enumerate() {
            let rows = matches!(node.op, Op::Load(Role::Query | Role::Key | Role::Value));
            if rows && last_op[i].is_some() {
                last_op[i] = Some(n);
            }
        }
    }

    // The state tile comes first and stays for the whole kernel.
    let state = Tile {
        offset: 0,
        rows: dims.k,
        cols: dims.v,
    };
    let mut values = Vec::with_capacity(n);
    let mut tiles = Vec::with_capacity(n);
    // Tiles currently holding a live value: (offset, length, last use), per arena.
    let mut live: Vec<(u64, u64, usize)> = Vec::new();
    let mut live_op: Vec<(u64, u64, usize)> = Vec::new();
    let dstate = Tile {
        offset: state.offset + state.len(),
        ..state
    };
    // Read from memory into operand tiles, the state and dh need no f32 tiles at all.
    let fixed_end = if from_memory && operands {
        0
    } else if carried_grad {
        dstate.offset + dstate.len()
    } else {
        state.offset + state.len()
    };
    let mut size = fixed_end;
    let mut arena = 0;
    for (i, node) in plan.nodes.iter().enumerate() {
        let Some((rows, cols)) = dims.extent(&node.shape.0) else {
            values.push(Placement::Uniform);
            tiles.push(None);
            continue;
        };
        let direct = direct_output == Some(ValueId(i))
            || (direct_sinks && sinks.contains(&ValueId(i)) && matches!(node.op, Op::Fused(_)));
        if direct && last_op[i].is_none() && last_f32[i].is_none_or(|last| last == n) {
            values.push(Placement::Output);
            tiles.push(None);
            continue;
        }
        // Free the tiles whose last reader came before this node (and before its level:
        // reusing a tile read in this node's own level would cost a barrier).
        let busy = |last: usize| last >= i || level.get(last).is_some_and(|l| *l >= level[i]);
        live.retain(|(_, _, last)| busy(*last));
        live_op.retain(|(_, _, last)| busy(*last));

        let operand_load = operands && operand_only(&node.op, from_memory);
        let wants_operand = operands && (operand_load || last_op[i].is_some());
        let operand = if wants_operand {
            let shared = match reuse {
                Reuse::InPlace => in_place_source(plan, i, operands, &last_op, &tiles),
                Reuse::Never => None,
            };
            dims.operand(&node.shape.0, 0).map(|t| {
                let offset = match shared {
                    // Same shape, same geometry: the tile lands exactly on its source.
                    Some(src) if src.len() == t.len() => src.offset,
                    _ => first_fit(&live_op, 0, t.len(), t.align()),
                };
                arena = arena.max(offset + t.len());
                // A dead operand (no reader) still holds its tile for the node's duration.
                live_op.push((offset, t.len(), last_op[i].unwrap_or(i)));
                OperandTile { offset, ..t }
            })
        } else {
            None
        };
        tiles.push(operand);

        // (A state or dh read from memory is an operand load: its operand tile alone.)
        if (node.op == Op::StateIn && !operand_load)
            || (state_in_place == Some(ValueId(i))
                && writes_state_in_place(plan, i, operands, &last_f32))
        {
            values.push(Placement::Tile(state));
            continue;
        }
        if carried_grad && node.op == Op::GradIn(Sink::StateOut) && !operand_load {
            values.push(Placement::Tile(dstate));
            continue;
        }
        // An f32 tile unless the operand tile is the only copy anyone reads.
        let wants_f32 = !operand_load && (last_f32[i].is_some() || operand.is_none());
        if !wants_f32 {
            values.push(Placement::Operand);
            continue;
        }
        let len = (rows * cols) as u64;
        let offset = first_fit(&live, fixed_end, len, 1);
        let tile = Tile { offset, rows, cols };
        size = size.max(tile.offset + tile.len());
        // A value nobody reads (a dead node) still gets its own tile for the node's duration.
        live.push((offset, len, last_f32[i].unwrap_or(i)));
        values.push(Placement::Tile(tile));
    }
    Layout {
        values,
        operands: tiles,
        state,
        scratch: size,
        operand_arena: arena,
    }
}

/// The lowest multiple of `align` at or after `start` where `len` elements overlap no live
/// tile.
fn first_fit(live: &[(u64, u64, usize)], start: u64, len: u64, align: u64) -> u64 {
    let mut taken: Vec<(u64, u64)> = live.iter().map(|(o, l, _)| (*o, o + l)).collect();
    taken.sort_unstable();
    let mut at = start.next_multiple_of(align);
    for (begin, end) in taken {
        if at + len <= begin {
            break;
        }
        at = at.max(end).next_multiple_of(align);
    }
    at
}

/// Whether node `i` (the next state) may write `S` in place: no later node reads `S`'s f32
/// tile, and node `i` reads it, if at all, only at the element it writes (an elementwise op of
/// `S`'s shape, or a fused node whose expression reads it so; each element is then read and
/// written by the same thread). Nodes before it that read `S` in its barrier phase get a
/// barrier from the hazard analysis, since the node's writes overlap their reads.
fn writes_state_in_place(
    plan: &Plan,
    i: usize,
    operands: bool,
    last_f32: &[Option<usize>],
) -> bool {
    let node = &plan.nodes[i];
    let Some(s) = plan.nodes.iter().position(|n| n.op == Op::StateIn) else {
        return false;
    };
    if last_f32[s].is_some_and(|last| last > i) {
        return false;
    }
    let reads_s = reads(plan, i, operands, false)
        .iter()
        .any(|(v, copy)| v.0 == s && *copy == Copy::F32);
    if !reads_s {
        return true;
    }
    let same_shape = node.shape == plan.nodes[s].shape;
    match &node.op {
        Op::Mul(..) | Op::Add(..) | Op::Sub(..) | Op::Exp2(_) => same_shape,
        Op::Fused(f) => {
            let in_terms = f.matmuls.iter().any(|m| m.a.0 == s || m.b.0 == s);
            same_shape && (operands || !in_terms)
        }
        _ => false,
    }
}
