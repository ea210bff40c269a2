//! The plan's deterministic text form (snapshot-tested, shown by `linrec emit --stage plan`).

use std::fmt;

use super::{Dim, Direction, Expr, Op, Param, Plan, Shape, Sink, ValueId};

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dim::C => "C",
            Dim::K => "K",
            Dim::V => "V",
        })
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.0.iter().map(Dim::to_string).collect();
        write!(f, "[{}]", dims.join(", "))
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

fn float(x: f64) -> String {
    if x == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{x:?}")
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Load(role) => write!(f, "load {role}"),
            Op::ConstantGate => f.write_str("constant_gate"),
            Op::StateIn => f.write_str("state_in"),
            Op::Param(Param::Scale) => f.write_str("param scale"),
            Op::Const(x) => write!(f, "const {}", float(*x)),
            Op::L2NormRows(x) => write!(f, "l2norm_rows {x}"),
            Op::CumSum(x) => write!(f, "cumsum {x}"),
            Op::Last(x) => write!(f, "last {x}"),
            Op::PairDiff(x) => write!(f, "pair_diff {x}"),
            Op::MaskCausal { x, strict, fill } => write!(
                f,
                "mask_causal {x} {} fill {}",
                if *strict { "strict" } else { "inclusive" },
                float(*fill)
            ),
            Op::Exp2(x) => write!(f, "exp2 {x}"),
            Op::Mul(a, b) => write!(f, "mul {a}, {b}"),
            Op::Add(a, b) => write!(f, "add {a}, {b}"),
            Op::Sub(a, b) => write!(f, "sub {a}, {b}"),
            Op::Matmul { a, b, ta, tb } => write!(
                f,
                "matmul {a}{}, {b}{}",
                if *ta { "ᵀ" } else { "" },
                if *tb { "ᵀ" } else { "" }
            ),
            Op::GradIn(sink) => write!(f, "grad_in {sink}"),
            Op::ValidRows => f.write_str("valid_rows"),
            Op::ReverseCumSum(x) => write!(f, "reverse_cumsum {x}"),
            Op::RowSum(x) => write!(f, "row_sum {x}"),
            Op::ColSum(x) => write!(f, "col_sum {x}"),
            Op::SumAll(x) => write!(f, "sum {x}"),
            Op::ScatterLast(x) => write!(f, "scatter_last {x}"),
            Op::L2NormRowsVjp { x, dy } => write!(f, "l2norm_rows_vjp {x}, {dy}"),
            Op::Fused(fused) => {
                f.write_str("fused ")?;
                if !fused.matmuls.is_empty() {
                    let terms: Vec<String> = fused
                        .matmuls
                        .iter()
                        .map(|m| {
                            format!(
                                "{}{}·{}{}",
                                m.a,
                                if m.ta { "ᵀ" } else { "" },
                                m.b,
                                if m.tb { "ᵀ" } else { "" }
                            )
                        })
                        .collect();
                    write!(f, "acc = {}; ", terms.join(" + "))?;
                }
                write!(f, "{}", fused.expr)
            }
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Output => f.write_str("output"),
            Sink::StateOut => f.write_str("state_out"),
            Sink::Grad(role) => write!(f, "grad {role}"),
            Sink::StateGrad => f.write_str("state_grad"),
            Sink::StateDecay => f.write_str("state_decay"),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        };
        writeln!(f, "plan {} {dir} (one chunk of C tokens)", self.name)?;
        for (i, node) in self.nodes.iter().enumerate() {
            let lhs = format!("%{i}");
            writeln!(
                f,
                "  {lhs:<4} = {:<40} : {}",
                node.op.to_string(),
                node.shape
            )?;
        }
        // Sink names aligned on the longest (a forward plan's are at most 9 wide).
        let names: Vec<String> = self.sinks.iter().map(|(s, _)| s.to_string()).collect();
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        for (name, (_, v)) in names.iter().zip(&self.sinks) {
            writeln!(f, "  {name:<width$} <- {v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Acc => f.write_str("acc"),
            Expr::Value(v) => write!(f, "{v}"),
            Expr::PairDiff(v) => write!(f, "pair_diff({v})"),
            Expr::Exp2(x) => write!(f, "exp2({x})"),
            Expr::Mul(x, y) => write!(f, "({x} · {y})"),
            Expr::Add(x, y) => write!(f, "({x} + {y})"),
            Expr::Sub(x, y) => write!(f, "({x} − {y})"),
            Expr::MaskCausal { x, strict, fill } => write!(
                f,
                "mask_causal({x}, {}, {})",
                if *strict { "strict" } else { "inclusive" },
                float(*fill)
            ),
        }
    }
}
