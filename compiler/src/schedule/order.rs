//! Node order by barrier level: each node as early as its operands allow.
//!
//! A kernel runs its chunk's nodes in plan order with a barrier wherever a node reads a tile
//! written since the last one. The plan's order is the derivation's, which interleaves
//! independent chains (the decay vectors, `Q·Kᵀ`, the scaled keys), so a chain's next node
//! often waits for a barrier that an unrelated node could have shared. Ordering the nodes by
//! level — a tile read is one level after its writer; a scalar, computed by every thread, is
//! usable in its own level — puts everything that can run between two barriers together.
//! Within a level the plan's order is kept, so the result is deterministic.

use crate::plan::Plan;

/// `plan` with its nodes sorted by level (see the module docs), operands and sinks
/// renumbered.
pub(super) fn by_level(plan: &Plan) -> Plan {
    let level = levels(plan);
    let mut order: Vec<usize> = (0..plan.nodes.len()).collect();
    order.sort_by_key(|&i| (level[i], i));
    plan.rebuild(&order, |i| plan.nodes[i].op.clone(), &plan.sinks)
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
