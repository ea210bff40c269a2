//! Scratch placement by liveness: each tile gets an offset in the workgroup's scratch such
//! that tiles alive at the same time never overlap. A tile is alive from the node that writes
//! it to the last node that reads it (the sinks count as read after the last node). A node
//! never writes over a tile it reads itself, even at its last use: a matmul or a mask reads
//! other elements than the one it writes.

use super::{Placement, Tile, TileDims};
use crate::plan::{Op, Plan, ValueId};

/// Places every value of `plan`; returns the placements and the scratch size in f32 elements.
/// `state` is reserved for the whole kernel; `StateIn` lives there.
pub(super) fn place(
    plan: &Plan,
    dims: &TileDims,
    state: Tile,
    sinks: &[ValueId],
) -> (Vec<Placement>, u64) {
    let n = plan.nodes.len();
    // Last reader of each value (index of the reading node; `n` for the sinks).
    let mut last_use: Vec<Option<usize>> = vec![None; n];
    for (i, node) in plan.nodes.iter().enumerate() {
        for v in super::tile_operands(&node.op) {
            last_use[v.0] = Some(i);
        }
    }
    for v in sinks {
        last_use[v.0] = Some(n);
    }

    let mut placements = Vec::with_capacity(n);
    // Tiles currently holding a live value: (tile, last use).
    let mut live: Vec<(Tile, usize)> = Vec::new();
    let mut size = state.offset + state.len();
    for (i, node) in plan.nodes.iter().enumerate() {
        if node.op == Op::StateIn {
            placements.push(Placement::Tile(state));
            continue;
        }
        let Some((rows, cols)) = dims.extent(&node.shape.0) else {
            placements.push(Placement::Uniform);
            continue;
        };
        // Free the tiles whose last reader came before this node.
        live.retain(|(_, last)| *last >= i);
        let len = (rows * cols) as u64;
        let offset = first_fit(&live, state.offset + state.len(), len);
        let tile = Tile { offset, rows, cols };
        size = size.max(tile.offset + tile.len());
        // A value nobody reads (a dead node) still gets its own tile for the node's duration.
        live.push((tile, last_use[i].unwrap_or(i)));
        placements.push(Placement::Tile(tile));
    }
    (placements, size)
}

/// The lowest offset at or after `start` where `len` elements overlap no live tile.
fn first_fit(live: &[(Tile, usize)], start: u64, len: u64) -> u64 {
    let mut taken: Vec<(u64, u64)> = live
        .iter()
        .map(|(t, _)| (t.offset, t.offset + t.len()))
        .collect();
    taken.sort_unstable();
    let mut at = start;
    for (begin, end) in taken {
        if at + len <= begin {
            break;
        }
        at = at.max(end);
    }
    at
}
