//! Forward plan → backward plan, by reverse-mode differentiation (DESIGN §5, "Backward is
//! derived, not hand-written per variant").
//!
//! 1. **Recompute**: the forward plan's nodes are copied in order (nothing is saved yet; what
//!    to save instead is the scheduler's choice).
//! 2. **Seed**: each forward sink's gradient enters as a source, [`Op::GradIn`] — the chunk's
//!    `dO` rows for the output, `dh'` for the state leaving the chunk.
//! 3. **Sweep** the forward nodes in reverse order: a node's gradient is the sum of the terms
//!    its consumers contributed, and its op's adjoint rule ([`super::ad`]) contributes terms to
//!    its operands. Only operands that depend on an input with a gradient get terms, so the
//!    adjoints of constants and parameters are never built.
//! 4. **Sinks** at the sources: a load's gradient becomes [`Sink::Grad`] of its role, the
//!    state's becomes [`Sink::StateGrad`] (`dh`, carried to the previous chunk), and a constant
//!    gate read from a decay-rate input becomes the rate's gradient summed over the valid rows.
//! 5. **Dead code** (recomputed values no gradient needs) is dropped.

use linrec_spec::{Role, Spec};

use super::ad::{Builder, Term, adjoint};
use super::{Dim, Direction, Op, Plan, PlanError, Sink, ValueId, forward};

/// Derives the backward plan of `spec` from its forward plan.
///
/// The plan covers one chunk. Its inputs are the forward plan's (the chunk's rows, the state
/// entering it, the scale) plus [`Op::GradIn`] sources for the chunk's `dO` rows and `dh'`;
/// its sinks are the chunk's part of every input gradient ([`Sink::Grad`]) and `dh`
/// ([`Sink::StateGrad`]). Forms the forward plan does not support give its error.
///
/// ```
/// # let spec = linrec_spec::Spec {
/// #     name: "sg".into(), doc: String::new(),
/// #     inputs: vec![
/// #         linrec_spec::Input::new("q", linrec_spec::Role::Query),
/// #         linrec_spec::Input::new("k", linrec_spec::Role::Key),
/// #         linrec_spec::Input::new("v", linrec_spec::Role::Value),
/// #         linrec_spec::Input::new("g", linrec_spec::Role::Gate),
/// #     ],
/// #     decay: linrec_spec::Decay::Scalar, transition: linrec_spec::Transition::Identity,
/// #     write: linrec_spec::Write::Outer, read: linrec_spec::Read::Inclusive,
/// #     scale: linrec_spec::Scale::InvSqrtK, features: Default::default(),
/// # };
/// let plan = linrec_compiler::plan::backward(&spec)?;
/// let text = plan.to_string();
/// assert!(text.contains("reverse_cumsum") && text.contains("grad gate"));
/// # Ok::<(), linrec_compiler::plan::PlanError>(())
/// ```
pub fn backward(spec: &Spec) -> Result<Plan, PlanError> {
    let fwd = forward(spec)?;
    let fail = |why: String| PlanError::Derivation {
        spec: spec.name.clone(),
        why,
    };
    let mut b = Builder::new();

    // 1. Recompute. `map` takes a forward id to its copy (identical nodes are shared).
    let mut map: Vec<ValueId> = Vec::with_capacity(fwd.nodes.len());
    for node in &fwd.nodes {
        let op = node.op.map_operands(|v| map[v.0]);
        map.push(b.push(op, node.shape.0.clone()));
    }
    let recomputed = b.nodes.len();
    // A value is active when it depends on something with a gradient. A constant gate has one
    // only when the spec reads its rate from an input (the RetNet schedule is fixed).
    let has_rate = spec.input(Role::DecayRate).is_some();
    let mut active = vec![false; recomputed];
    for (i, node) in b.nodes.iter().enumerate() {
        active[i] = match node.op {
            Op::Load(_) | Op::StateIn => true,
            Op::ConstantGate => has_rate,
            _ => node.op.operands().iter().any(|v| active[v.0]),
        };
    }

    // 2. Seed.
    let mut terms: Vec<Vec<(ValueId, bool)>> = vec![Vec::new(); recomputed];
    for (sink, v) in &fwd.sinks {
        let v = map[v.0];
        let seed = b.push(Op::GradIn(*sink), b.shape(v));
        terms[v.0].push((seed, false));
    }

    // 3–4. Sweep and sinks.
    let mut sinks: Vec<(Sink, ValueId)> = Vec::new();
    for i in (0..recomputed).rev() {
        if terms[i].is_empty() {
            continue;
        }
        let dy = sum_terms(&mut b, &terms[i]);
        let op = b.nodes[i].op.clone();
        match op {
            Op::Load(role) => sinks.push((Sink::Grad(role), dy)),
            Op::StateIn => sinks.push((Sink::StateGrad, dy)),
            Op::ConstantGate => {
                // The gate is the rate on valid rows and 0 on padding.
                let valid = b.push(Op::ValidRows, vec![Dim::C]);
                let per_row = b.push(Op::Mul(dy, valid), vec![Dim::C]);
                let d_rate = b.push(Op::SumAll(per_row), vec![]);
                sinks.push((Sink::Grad(Role::DecayRate), d_rate));
            }
            _ => {
                let is_active = |v: ValueId| active.get(v.0).copied().unwrap_or(false);
                let new = adjoint(&mut b, &op, ValueId(i), dy, &is_active).map_err(fail)?;
                for Term { to, value, negate } in new {
                    terms[to.0].push((value, negate));
                }
            }
        }
    }
    sinks.sort_by_key(|(sink, _)| match sink {
        Sink::Grad(role) => (0, Some(*role)),
        _ => (1, None),
    });

    // 5. Dead code.
    let plan = Plan {
        name: spec.name.clone(),
        direction: Direction::Backward,
        nodes: b.nodes,
        sinks,
    };
    Ok(plan.keep_sinks(|_| true))
}

/// The sum of a value's gradient terms: positive terms added, negated ones subtracted.
fn sum_terms(b: &mut Builder, terms: &[(ValueId, bool)]) -> ValueId {
    let first_positive = terms.iter().position(|(_, negate)| !negate);
    let mut acc = match first_positive {
        Some(p) => terms[p].0,
        None => {
            // Only negated terms (never in the current plans): 0 − t broadcasts the scalar.
            let zero = b.push(Op::Const(0.0), vec![]);
            let t = terms[0].0;
            let shape = b.shape(t);
            b.push(Op::Sub(zero, t), shape)
        }
    };
    let start = first_positive.unwrap_or(0);
    for (j, &(t, negate)) in terms.iter().enumerate() {
        if j == start {
            continue;
        }
        let shape = b.shape(t);
        acc = if negate {
            b.push(Op::Sub(acc, t), shape)
        } else {
            b.push(Op::Add(acc, t), shape)
        };
    }
    acc
}
