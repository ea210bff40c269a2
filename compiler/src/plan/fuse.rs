//! The fusion pass: elementwise chains become one node, and a matmul read only by such a chain
//! becomes its accumulator ([`Op::Fused`]).
//!
//! A kernel runs a plan node as a cooperative loop over its tile with a barrier wherever a node
//! reads what another wrote; measured on an H100, those loops and barriers, not bandwidth or the
//! matmul units, bound the kernels (docs/performance.md). After this pass, an elementwise node
//! (`mul`, `add`, `sub`, `exp2`, `mask_causal`, `pair_diff`) whose one reader is an elementwise
//! node of its shape is computed inside that reader, per element, and never stored; a matmul
//! whose one reader is such a chain is summed into the chain's accumulator, so the chain runs
//! as the matmul's epilogue on the accumulator registers. Values read with broadcasting (a
//! `[C]` gate across a `[C, K]` tile) stay nodes of their own: inlining them would redo their
//! work for every column.
//!
//! The fused plan computes the same values: [`super::eval`] runs it, and the tests compare it
//! with the unfused plan.

use super::{Expr, Fused, MatmulTerm, Op, Plan, ValueId};

/// What the kernels that will run the plan can fuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    /// Several matmuls may be summed into one accumulator (their operands all on chip at once);
    /// without, a fused node has at most one matmul.
    pub matmul_sums: bool,
}

/// Whether `op` computes each element from the same element of its operands (or, for
/// `pair_diff`, from two elements of a vector), so it can run inside its reader.
fn elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Mul(..)
            | Op::Add(..)
            | Op::Sub(..)
            | Op::Exp2(_)
            | Op::MaskCausal { .. }
            | Op::PairDiff(_)
    )
}

/// The plan with its elementwise chains fused (see the module docs). Sinks keep their values;
/// nodes are renumbered in order.
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
/// use linrec_compiler::plan::{self, FuseOptions};
/// let plan = plan::forward(&spec)?;
/// let fused = plan::fuse(&plan, &FuseOptions { matmul_sums: true });
/// assert!(fused.nodes.len() < plan.nodes.len());
/// assert!(fused.to_string().contains("fused acc = "));
/// # Ok::<(), linrec_compiler::plan::PlanError>(())
/// ```
pub fn fuse(plan: &Plan, options: &FuseOptions) -> Plan {
    let n = plan.nodes.len();
    // Readers of each value, one entry per use (`mul x, x` reads x twice).
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in plan.nodes.iter().enumerate() {
        for v in node.op.operands() {
            readers[v.0].push(i);
        }
    }
    let mut is_sink = vec![false; n];
    for (_, v) in &plan.sinks {
        is_sink[v.0] = true;
    }
    // The one reader of `i`, when it is an elementwise node of `i`'s shape that reads `i` at
    // the element (not `pair_diff`, which reads two elements).
    let sole_elementwise_reader = |i: usize| -> Option<usize> {
        match readers[i].as_slice() {
            [r] if !is_sink[i]
                && elementwise(&plan.nodes[*r].op)
                && !matches!(plan.nodes[*r].op, Op::PairDiff(_))
                && plan.nodes[*r].shape == plan.nodes[i].shape =>
            {
                Some(*r)
            }
            _ => None,
        }
    };
    let inline: Vec<bool> = (0..n)
        .map(|i| {
            let node = &plan.nodes[i];
            elementwise(&node.op) && node.shape.rank() > 0 && sole_elementwise_reader(i).is_some()
        })
        .collect();
    let candidate: Vec<bool> = (0..n)
        .map(|i| {
            matches!(plan.nodes[i].op, Op::Matmul { .. }) && sole_elementwise_reader(i).is_some()
        })
        .collect();

    // Each chain's root (an elementwise node that is not inlined) gets its expression; the
    // first sum of candidate matmuls in it (pre-order) becomes the accumulator.
    let mut absorbed = vec![false; n];
    let mut fused: Vec<Option<Fused>> = vec![None; n];
    for i in 0..n {
        if !elementwise(&plan.nodes[i].op) || inline[i] {
            continue;
        }
        let expr = chain(plan, i, &inline);
        let mut matmuls = Vec::new();
        let expr = take_accumulator(&expr, &candidate, options, &mut matmuls);
        let grew = has_inlined(plan, i, &inline);
        if matmuls.is_empty() && !grew {
            continue; // nothing to fuse: the node stays as it is
        }
        let mut terms = Vec::new();
        for m in &matmuls {
            absorbed[m.0] = true;
            if let Op::Matmul { a, b, ta, tb } = plan.nodes[m.0].op {
                terms.push(MatmulTerm { a, b, ta, tb });
            }
        }
        fused[i] = Some(Fused {
            matmuls: terms,
            expr,
        });
    }

    let order: Vec<usize> = (0..n).filter(|&i| !inline[i] && !absorbed[i]).collect();
    plan.rebuild(
        &order,
        |i| match fused[i].take() {
            Some(f) => Op::Fused(Box::new(f)),
            None => plan.nodes[i].op.clone(),
        },
        &plan.sinks,
    )
}

/// Whether root `i` reads an inlined node.
fn has_inlined(plan: &Plan, i: usize, inline: &[bool]) -> bool {
    plan.nodes[i].op.operands().iter().any(|v| inline[v.0])
}

/// The expression of node `i` with its inlined operands expanded (in the original numbering).
fn chain(plan: &Plan, i: usize, inline: &[bool]) -> Expr {
    let sub = |v: &ValueId| -> Box<Expr> {
        Box::new(if inline[v.0] {
            chain(plan, v.0, inline)
        } else {
            Expr::Value(*v)
        })
    };
    match &plan.nodes[i].op {
        Op::Mul(x, y) => Expr::Mul(sub(x), sub(y)),
        Op::Add(x, y) => Expr::Add(sub(x), sub(y)),
        Op::Sub(x, y) => Expr::Sub(sub(x), sub(y)),
        Op::Exp2(x) => Expr::Exp2(sub(x)),
        Op::MaskCausal { x, strict, fill } => Expr::MaskCausal {
            x: sub(x),
            strict: *strict,
            fill: *fill,
        },
        Op::PairDiff(x) => Expr::PairDiff(*x),
        // Only elementwise nodes are chained.
        _ => Expr::Value(ValueId(i)),
    }
}

/// The candidate matmuls of `e` if it is one of them or a sum of them (a sum only with
/// [`FuseOptions::matmul_sums`]).
fn matmul_sum(e: &Expr, candidate: &[bool], options: &FuseOptions) -> Option<Vec<ValueId>> {
    match e {
        Expr::Value(v) if candidate[v.0] => Some(vec![*v]),
        Expr::Add(x, y) if options.matmul_sums => {
            let mut xs = matmul_sum(x, candidate, options)?;
            xs.extend(matmul_sum(y, candidate, options)?);
            Some(xs)
        }
        _ => None,
    }
}

/// `e` with its first matmul sum (pre-order) replaced by [`Expr::Acc`]; the sum's matmuls go
/// to `taken`. Other candidates stay values (their nodes are kept).
fn take_accumulator(
    e: &Expr,
    candidate: &[bool],
    options: &FuseOptions,
    taken: &mut Vec<ValueId>,
) -> Expr {
    if taken.is_empty() {
        if let Some(ms) = matmul_sum(e, candidate, options) {
            *taken = ms;
            return Expr::Acc;
        }
    }
    let mut rec = |x: &Expr| Box::new(take_accumulator(x, candidate, options, taken));
    match e {
        Expr::Acc | Expr::Value(_) | Expr::PairDiff(_) => e.clone(),
        Expr::Exp2(x) => Expr::Exp2(rec(x)),
        Expr::Mul(x, y) => {
            let x = rec(x);
            Expr::Mul(x, rec(y))
        }
        Expr::Add(x, y) => {
            let x = rec(x);
            Expr::Add(x, rec(y))
        }
        Expr::Sub(x, y) => {
            let x = rec(x);
            Expr::Sub(x, rec(y))
        }
        Expr::MaskCausal { x, strict, fill } => Expr::MaskCausal {
            x: rec(x),
            strict: *strict,
            fill: *fill,
        },
    }
}
