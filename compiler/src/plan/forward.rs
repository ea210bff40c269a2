//! Spec → forward plan, for the additive family (DESIGN §5, first bullet):
//!
//! ```text
//! b  = cumsum(g) · log2(e)            Γ_ij = 2^(b_i − b_j) (i ≥ j)
//! O  = scale · [(Q ⊙ 2^b) h + ((Q Kᵀ) ⊙ Γ) V]
//! h' = 2^(b_C) h + (K ⊙ 2^(b_C − b))ᵀ V
//! ```
//!
//! with `V ← β ⊙ V` for the write `β k vᵀ` and q, k L2-normalised when the spec asks.

use linrec_spec::{Decay, Read, Role, Spec, Transition, Write};

use super::{Dim, Direction, Node, Op, Param, Plan, PlanError, Shape, Sink, ValueId};

struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn push(&mut self, op: Op, shape: &[Dim]) -> ValueId {
        self.nodes.push(Node {
            op,
            shape: Shape(shape.to_vec()),
        });
        ValueId(self.nodes.len() - 1)
    }

    fn shape(&self, v: ValueId) -> Vec<Dim> {
        self.nodes[v.0].shape.0.clone()
    }

    /// Elementwise product; the result has the larger operand's shape.
    fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let shape = if sa.len() >= sb.len() { sa } else { sb };
        self.push(Op::Mul(a, b), &shape)
    }

    fn matmul(&mut self, a: ValueId, b: ValueId, ta: bool, tb: bool) -> ValueId {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let m = if ta { sa[1] } else { sa[0] };
        let n = if tb { sb[0] } else { sb[1] };
        self.push(Op::Matmul { a, b, ta, tb }, &[m, n])
    }
}

/// Derives the forward plan of `spec`.
///
/// ```
/// let spec = linrec_spec::Spec {
///     name: "sg".into(), doc: String::new(),
///     inputs: vec![
///         linrec_spec::Input::new("q", linrec_spec::Role::Query),
///         linrec_spec::Input::new("k", linrec_spec::Role::Key),
///         linrec_spec::Input::new("v", linrec_spec::Role::Value),
///         linrec_spec::Input::new("g", linrec_spec::Role::Gate),
///     ],
///     decay: linrec_spec::Decay::Scalar, transition: linrec_spec::Transition::Identity,
///     write: linrec_spec::Write::Outer, read: linrec_spec::Read::Inclusive,
///     scale: linrec_spec::Scale::InvSqrtK, features: Default::default(),
/// };
/// let plan = linrec_compiler::plan::forward(&spec)?;
/// assert!(plan.to_string().contains("cumsum"));
/// # Ok::<(), linrec_compiler::plan::PlanError>(())
/// ```
pub fn forward(spec: &Spec) -> Result<Plan, PlanError> {
    spec.validate()
        .map_err(|e| PlanError::Spec(e.to_string()))?;
    let unsupported = |form| PlanError::NotYetSupported {
        spec: spec.name.clone(),
        form,
    };
    if spec.decay == Decay::Diagonal {
        return Err(unsupported("the diagonal decay Diag(exp(g_t))"));
    }
    if matches!(spec.transition, Transition::Delta { .. }) {
        return Err(unsupported("the delta-rule transition"));
    }
    if spec.read == Read::ExclusiveBonus {
        return Err(unsupported("the exclusive read with bonus"));
    }
    use Dim::{C, K, V};
    let mut b = Builder { nodes: Vec::new() };
    let mut q = b.push(Op::Load(Role::Query), &[C, K]);
    let mut k = b.push(Op::Load(Role::Key), &[C, K]);
    let mut v = b.push(Op::Load(Role::Value), &[C, V]);
    if spec.features.qk_l2norm {
        q = b.push(Op::L2NormRows(q), &[C, K]);
        k = b.push(Op::L2NormRows(k), &[C, K]);
    }
    if spec.write == Write::BetaOuter {
        // β_t k_t v_tᵀ = k_t (β_t v_t)ᵀ: fold β into the value rows once.
        let beta = b.push(Op::Load(Role::Beta), &[C]);
        v = b.mul(v, beta);
    }
    let h = b.push(Op::StateIn, &[K, V]);
    let scale = b.push(Op::Param(Param::Scale), &[]);
    let qk = b.matmul(q, k, false, true);
    let gate = match spec.decay {
        Decay::None => None,
        Decay::Constant(_) => Some(b.push(Op::ConstantGate, &[C])),
        Decay::Scalar => Some(b.push(Op::Load(Role::Gate), &[C])),
        Decay::Diagonal => unreachable!("rejected above"),
    };
    let (qd, a, kd, hd) = match gate {
        None => {
            let a = b.push(
                Op::MaskCausal {
                    x: qk,
                    strict: false,
                    fill: 0.0,
                },
                &[C, C],
            );
            (q, a, k, h)
        }
        Some(g) => {
            let cum = b.push(Op::CumSum(g), &[C]);
            let log2e = b.push(Op::Const(std::f64::consts::LOG2_E), &[]);
            let bb = b.mul(cum, log2e);
            let last = b.push(Op::Last(bb), &[]);
            let eb = b.push(Op::Exp2(bb), &[C]);
            let qd = b.mul(q, eb);
            // Mask in the log domain: exponents above the diagonal are positive and could
            // overflow, so they become −∞ before the exp2.
            let diff = b.push(Op::PairDiff(bb), &[C, C]);
            let masked = b.push(
                Op::MaskCausal {
                    x: diff,
                    strict: false,
                    fill: f64::NEG_INFINITY,
                },
                &[C, C],
            );
            let gamma = b.push(Op::Exp2(masked), &[C, C]);
            let a = b.mul(qk, gamma);
            let to_end = b.push(Op::Sub(last, bb), &[C]);
            let e_to_end = b.push(Op::Exp2(to_end), &[C]);
            let kd = b.mul(k, e_to_end);
            let e_last = b.push(Op::Exp2(last), &[]);
            let hd = b.mul(h, e_last);
            (qd, a, kd, hd)
        }
    };
    let inter = b.matmul(qd, h, false, false);
    let intra = b.matmul(a, v, false, false);
    let sum = b.push(Op::Add(inter, intra), &[C, V]);
    let o = b.mul(sum, scale);
    let update = b.matmul(kd, v, true, false);
    let h_next = b.push(Op::Add(hd, update), &[K, V]);
    Ok(Plan {
        name: spec.name.clone(),
        direction: Direction::Forward,
        nodes: b.nodes,
        sinks: vec![(Sink::Output, o), (Sink::StateOut, h_next)],
    })
}
