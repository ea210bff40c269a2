//! Node order by barrier level: each node as early as its operands allow.
//!
//! A kernel runs its chunk's nodes in plan order with a barrier wherever a node reads a tile
//! written since the last one. The plan's order is the derivation's, which interleaves
//! independent chains (the decay vectors, `Q·Kᵀ`, the scaled keys), so a chain's next node
//! often waits for a barrier that an unrelated node could have shared. Ordering the nodes by
//! level — a tile read is one level after its writer; a scalar, computed by every thread, is
//! usable in its own level — puts everything that can run between two barriers together.
//! Within a level the plan's order is kept, so the result is deterministic.

use crate::plan::{Plan, ValueId};

/// `plan` with its nodes sorted by level (see the module docs), operands and sinks
/// renumbered.
pub(super) fn by_level(plan: &Plan) -> Plan {
    let n = plan.nodes.len();
    let level = levels(plan);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (level[i], i));
    let mut renumber = vec![ValueId(usize::MAX); n];
    for (new, &old) in order.iter().enumerate() {
        renumber[old] = ValueId(new);
    }
    let nodes = order
        .iter()
        .map(|&old| {
            let mut node = plan.nodes[old].clone();
            node.op = node.op.map_operands(|v| renumber[v.0]);
            node
        })
        .collect();
    Plan {
        name: plan.name.clone(),
        direction: plan.direction,
        nodes,
        sinks: plan
            .sinks
            .iter()
            .map(|(s, v)| (*s, renumber[v.0]))
            .collect(),
    }
}

/// Each node's level: 0 for nodes with no operands, else the highest of its operands' levels,
/// plus one for an operand that is a tile.
pub(super) fn levels(plan: &Plan) -> Vec<usize> {
    let mut level = vec![0usize; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        level[i] = node
            .op
            .operands()
            .iter()
            .map(|v| {
                let tile = plan.node(*v).shape.rank() > 0;
                level[v.0] + usize::from(tile)
            })
            .max()
            .unwrap_or(0);
    }
    level
}
