//! The split-scan's view of a plan: whether the state leaves a chunk as `S' = d · S + U`, with
//! `d` a scalar and neither `d` nor `U` reading `S` (the additive family: linear attention,
//! RetNet, simple GLA). Then the state leaving a run of chunks is `(Π d) · S + U_run` too, so
//! the runs (segments) of a long sequence can be walked from zero in parallel and combined
//! afterwards (`schedule::forward_scan`). A backward plan's `dh` has the same form in reverse:
//! `dh = d · dh' + U` ([`Sink::StateGrad`] from [`Op::GradIn`]`(`[`Sink::StateOut`]`)`).

use super::{Direction, Op, Plan, Shape, Sink, ValueId};

/// The plan kept to its carried value (a forward's state, a backward's `dh`), with its
/// per-chunk decay `d` as a [`Sink::StateDecay`] (no such sink when it is not scaled, `d = 1`);
/// `None` unless the update has the form `S' = d · S + U` described in the module docs (e.g.
/// a delta-rule transition reads `S` through a matmul).
///
/// ```
/// # let spec = linrec_spec::Spec {
/// #     name: "r".into(), doc: String::new(),
/// #     inputs: vec![
/// #         linrec_spec::Input::new("q", linrec_spec::Role::Query),
/// #         linrec_spec::Input::new("k", linrec_spec::Role::Key),
/// #         linrec_spec::Input::new("v", linrec_spec::Role::Value),
/// #     ],
/// #     decay: linrec_spec::Decay::Constant(linrec_spec::ConstantRate::Retnet),
/// #     transition: linrec_spec::Transition::Identity,
/// #     write: linrec_spec::Write::Outer, read: linrec_spec::Read::Inclusive,
/// #     scale: linrec_spec::Scale::InvSqrtK, features: Default::default(),
/// # };
/// use linrec_compiler::plan::{self, Sink};
/// let segments = plan::segment_plan(&plan::forward(&spec)?).expect("additive");
/// assert!(segments.sinks.iter().any(|(s, _)| *s == Sink::StateDecay));
/// assert!(segments.sinks.iter().all(|(s, _)| *s != Sink::Output));
/// # Ok::<(), linrec_compiler::plan::PlanError>(())
/// ```
pub fn segment_plan(plan: &Plan) -> Option<Plan> {
    let (sink, carried) = match plan.direction {
        Direction::Forward => (Sink::StateOut, Op::StateIn),
        Direction::Backward => (Sink::StateGrad, Op::GradIn(Sink::StateOut)),
    };
    let (_, next) = plan.sinks.iter().find(|(s, _)| *s == sink)?;
    let reads_state = reads(plan, &carried);
    let Op::Add(a, b) = plan.node(*next).op else {
        return None;
    };
    // One side the scaled state, the other free of it.
    let decay =
        [(a, b), (b, a)]
            .into_iter()
            .find_map(|(scaled, rest)| match reads_state[rest.0] {
                true => None,
                false => decay_of(plan, scaled, &carried, &reads_state),
            })?;
    let mut sinks = vec![(sink, *next)];
    sinks.extend(decay.map(|d| (Sink::StateDecay, d)));
    Some(
        Plan {
            sinks,
            ..plan.clone()
        }
        .keep_sinks(|_| true),
    )
}

/// `Some(None)` when `v` is the carried value itself, `Some(Some(d))` when it is `S · d` or
/// `d · S` with `d` a scalar that does not read it.
fn decay_of(
    plan: &Plan,
    v: ValueId,
    carried: &Op,
    reads_state: &[bool],
) -> Option<Option<ValueId>> {
    match &plan.node(v).op {
        op if op == carried => Some(None),
        Op::Mul(x, y) => [(*x, *y), (*y, *x)].into_iter().find_map(|(s, d)| {
            let scalar = plan.node(d).shape == Shape::scalar();
            (plan.node(s).op == *carried && scalar && !reads_state[d.0]).then_some(Some(d))
        }),
        _ => None,
    }
}

/// Whether each node reads the carried value (`carried`'s node), directly or through its
/// operands.
fn reads(plan: &Plan, carried: &Op) -> Vec<bool> {
    let mut reads = vec![false; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        reads[i] = node.op == *carried || node.op.operands().iter().any(|v| reads[v.0]);
    }
    reads
}
