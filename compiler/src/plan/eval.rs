//! Runs a plan in f64 on the CPU, chunk by chunk, over whole tensors: the chunkwise algorithm
//! exactly as the kernels will compute it, but without rounding. Comparing it with the
//! token-by-token reference checks the plan's derivation independently of any target.

use linrec_spec::reference::{self, Inputs, Outputs, ReferenceError, Tensor};
use linrec_spec::{Decay, Role, RunOptions, Spec};

use super::{Op, Param, Plan, Sink};

/// A dense f64 tile: shape `[]`, `[n]` or `[r, c]`.
#[derive(Clone, Debug)]
struct Tile {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Tile {
    fn new(shape: Vec<usize>, data: Vec<f64>) -> Self {
        Tile { shape, data }
    }
    fn scalar(x: f64) -> Self {
        Tile::new(vec![], vec![x])
    }
    fn map(&self, mut f: impl FnMut(f64) -> f64) -> Tile {
        Tile::new(
            self.shape.clone(),
            self.data.iter().map(|x| f(*x)).collect(),
        )
    }
    fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

/// Elementwise with broadcasting: a scalar everywhere, a vector across the columns of a matrix.
fn broadcast(a: &Tile, b: &Tile, f: impl Fn(f64, f64) -> f64) -> Tile {
    let (big, small, swapped) = if a.data.len() >= b.data.len() {
        (a, b, false)
    } else {
        (b, a, true)
    };
    let cols = big.cols();
    let data = big
        .data
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let y = match small.shape.len() {
                0 => small.data[0],
                1 if big.shape.len() == 2 => small.data[i / cols],
                _ => small.data[i],
            };
            if swapped { f(y, *x) } else { f(*x, y) }
        })
        .collect();
    Tile::new(big.shape.clone(), data)
}

fn matmul(a: &Tile, b: &Tile, ta: bool, tb: bool) -> Tile {
    let at = |i: usize, j: usize| {
        if ta {
            a.data[j * a.shape[1] + i]
        } else {
            a.data[i * a.shape[1] + j]
        }
    };
    let bt = |i: usize, j: usize| {
        if tb {
            b.data[j * b.shape[1] + i]
        } else {
            b.data[i * b.shape[1] + j]
        }
    };
    let (m, inner) = if ta {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let n = if tb { b.shape[0] } else { b.shape[1] };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..inner).map(|l| at(i, l) * bt(l, j)).sum();
        }
    }
    Tile::new(vec![m, n], out)
}

/// What one chunk reads: its valid rows and where they live.
struct ChunkCtx<'a> {
    spec: &'a Spec,
    inputs: &'a Inputs,
    dims: linrec_spec::Dims,
    chunk: usize,
    batch: usize,
    start: usize,
    len: usize,
    hv: usize,
    scale: f64,
}

impl ChunkCtx<'_> {
    /// Rows `start..start+len` of a per-token input at the right head, zero-padded to C rows.
    fn load(&self, role: Role) -> Tile {
        let d = &self.dims;
        let (tensor, heads, head, width) = match role {
            Role::Query => (&self.inputs.q, d.heads, self.hv / d.group(), d.key_dim),
            Role::Key => (&self.inputs.k, d.heads, self.hv / d.group(), d.key_dim),
            Role::Value => (&self.inputs.v, d.value_heads, self.hv, d.value_dim),
            Role::Gate if self.spec.decay == Decay::Diagonal => (
                self.inputs.g.as_ref().unwrap_or(&self.inputs.q),
                d.value_heads,
                self.hv,
                d.key_dim,
            ),
            Role::Gate => (
                self.inputs.g.as_ref().unwrap_or(&self.inputs.q),
                d.value_heads,
                self.hv,
                1,
            ),
            Role::Beta => (
                self.inputs.beta.as_ref().unwrap_or(&self.inputs.q),
                d.value_heads,
                self.hv,
                1,
            ),
            Role::Bonus | Role::DecayRate => (&self.inputs.q, 0, 0, 0),
        };
        let mut data = vec![0.0; self.chunk * width];
        for r in 0..self.len {
            let t = self.start + r;
            let base = ((self.batch * d.seq_len + t) * heads + head) * width;
            data[r * width..(r + 1) * width].copy_from_slice(&tensor.data[base..base + width]);
        }
        let shape = if width == 1 && matches!(role, Role::Gate | Role::Beta) {
            vec![self.chunk]
        } else {
            vec![self.chunk, width]
        };
        Tile::new(shape, data)
    }
}

/// Runs `plan` over every chunk of `chunk` tokens of every sequence and value head, returning
/// the same outputs as [`reference::forward`].
pub fn forward(
    plan: &Plan,
    spec: &Spec,
    inputs: &Inputs,
    opts: &RunOptions,
    chunk: usize,
) -> Result<Outputs, ReferenceError> {
    let (dims, seqs) = inputs.check(spec, opts)?;
    let (kd, vd) = (dims.key_dim, dims.value_dim);
    let mut o = Tensor::zeros(&dims.output_shape());
    let mut ht = opts
        .output_final_state
        .then(|| Tensor::zeros(&dims.state_shape(seqs.len())));
    let scale = opts.scale.unwrap_or_else(|| spec.scale.resolve(kd));
    for (n, &(batch, start, end)) in seqs.spans.iter().enumerate() {
        for hv in 0..dims.value_heads {
            let sb = (n * dims.value_heads + hv) * kd * vd;
            let mut h = match &inputs.h0 {
                Some(h0) => h0.data[sb..sb + kd * vd].to_vec(),
                None => vec![0.0; kd * vd],
            };
            let mut s = start;
            while s < end {
                let ctx = ChunkCtx {
                    spec,
                    inputs,
                    dims,
                    chunk,
                    batch,
                    start: s,
                    len: chunk.min(end - s),
                    hv,
                    scale,
                };
                let (out, next) = run_chunk(plan, &ctx, &h);
                for r in 0..ctx.len {
                    let ob = ((batch * dims.seq_len + s + r) * dims.value_heads + hv) * vd;
                    o.data[ob..ob + vd].copy_from_slice(&out[r * vd..(r + 1) * vd]);
                }
                h = next;
                s += chunk;
            }
            if let Some(ht) = ht.as_mut() {
                ht.data[sb..sb + kd * vd].copy_from_slice(&h);
            }
        }
    }
    Ok(Outputs { o, ht })
}

/// Evaluates the DAG on one chunk; returns the output rows `[C, V]` and the next state.
fn run_chunk(plan: &Plan, ctx: &ChunkCtx<'_>, h: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (kd, vd, c) = (ctx.dims.key_dim, ctx.dims.value_dim, ctx.chunk);
    let mut vals: Vec<Tile> = Vec::with_capacity(plan.nodes.len());
    for node in &plan.nodes {
        let v = |id: &super::ValueId| &vals[id.0];
        let t = match &node.op {
            Op::Load(role) => ctx.load(*role),
            Op::ConstantGate => {
                let rate = match ctx.spec.decay {
                    Decay::Constant(rate) => rate,
                    _ => linrec_spec::ConstantRate::Retnet,
                };
                let lg =
                    reference::constant_log_decay(rate, ctx.inputs.decay_rate.as_ref(), ctx.hv);
                Tile::new(
                    vec![c],
                    (0..c).map(|r| if r < ctx.len { lg } else { 0.0 }).collect(),
                )
            }
            Op::StateIn => Tile::new(vec![kd, vd], h.to_vec()),
            Op::Param(Param::Scale) => Tile::scalar(ctx.scale),
            Op::Const(x) => Tile::scalar(*x),
            Op::L2NormRows(x) => {
                let x = v(x);
                let w = x.cols();
                let mut data = x.data.clone();
                for row in data.chunks_mut(w) {
                    let r = 1.0
                        / (row.iter().map(|a| a * a).sum::<f64>() + reference::L2NORM_EPS).sqrt();
                    row.iter_mut().for_each(|a| *a *= r);
                }
                Tile::new(x.shape.clone(), data)
            }
            Op::CumSum(x) => {
                let mut acc = 0.0;
                v(x).map(|a| {
                    acc += a;
                    acc
                })
            }
            Op::Last(x) => Tile::scalar(*v(x).data.last().unwrap_or(&0.0)),
            Op::PairDiff(x) => {
                let x = v(x);
                let n = x.data.len();
                Tile::new(
                    vec![n, n],
                    (0..n * n).map(|i| x.data[i / n] - x.data[i % n]).collect(),
                )
            }
            Op::MaskCausal { x, strict, fill } => {
                let x = v(x);
                let n = x.cols();
                let data = x
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let (r, col) = (i / n, i % n);
                        let keep = if *strict { col < r } else { col <= r };
                        if keep { *a } else { *fill }
                    })
                    .collect();
                Tile::new(x.shape.clone(), data)
            }
            Op::Exp2(x) => v(x).map(f64::exp2),
            Op::Mul(a, b) => broadcast(v(a), v(b), |x, y| x * y),
            Op::Add(a, b) => broadcast(v(a), v(b), |x, y| x + y),
            Op::Sub(a, b) => broadcast(v(a), v(b), |x, y| x - y),
            Op::Matmul { a, b, ta, tb } => matmul(v(a), v(b), *ta, *tb),
        };
        vals.push(t);
    }
    let mut out = vec![0.0; c * vd];
    let mut next = h.to_vec();
    for (sink, id) in &plan.sinks {
        match sink {
            Sink::Output => out.clone_from(&vals[id.0].data),
            Sink::StateOut => next.clone_from(&vals[id.0].data),
        }
    }
    (out, next)
}
