//! The plan's deterministic text form (snapshot-tested, shown by `linrec emit --stage plan`).

use std::fmt;

use super::{Dim, Direction, Op, Param, Plan, Shape, Sink, ValueId};

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
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Forward => "forward",
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
        for (sink, v) in &self.sinks {
            let name = match sink {
                Sink::Output => "output",
                Sink::StateOut => "state_out",
            };
            writeln!(f, "  {name:<9} <- {v}")?;
        }
        Ok(())
    }
}
