//! Runs a plan in f64 on the CPU, chunk by chunk, over whole tensors: the chunkwise algorithm
//! exactly as the kernels will compute it, but without rounding. Comparing it with the
//! token-by-token reference checks the plan's derivation independently of any target.
//!
//! [`forward`] scans the chunks of each (sequence, value head) carrying the state; [`backward`]
//! first recomputes the state entering every chunk with the forward plan, then runs the
//! backward plan over the chunks in reverse, carrying `dh`.

use linrec_spec::reference::{self, Gradients, Inputs, Outputs, ReferenceError, Tensor};
use linrec_spec::{Decay, Role, RunOptions, ShapeError, Spec, SpecError};

use super::{Dim, Direction, Expr, Op, Param, Plan, Sink, ValueId};

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

/// Where the rows of a per-token tensor (or of its gradient) live for one head.
#[derive(Clone, Copy)]
struct Layout {
    heads: usize,
    head: usize,
    width: usize,
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
    /// The gradient of the output (backward only).
    d_o: Option<&'a Tensor>,
}

impl ChunkCtx<'_> {
    /// The layout of `role`'s rows at this chunk's value head (q and k: its group's head).
    fn layout(&self, role: Role) -> Layout {
        let d = &self.dims;
        let (heads, head, width) = match role {
            Role::Query | Role::Key => (d.heads, self.hv / d.group(), d.key_dim),
            Role::Value => (d.value_heads, self.hv, d.value_dim),
            Role::Gate if self.spec.decay == Decay::Diagonal => (d.value_heads, self.hv, d.key_dim),
            Role::Gate | Role::Beta => (d.value_heads, self.hv, 1),
            // Per-head parameters, not per-token rows.
            Role::Bonus | Role::DecayRate => (0, 0, 0),
        };
        Layout { heads, head, width }
    }

    /// Offset of valid row `r` of the chunk in a tensor of layout `l`.
    fn offset(&self, l: Layout, r: usize) -> usize {
        ((self.batch * self.dims.seq_len + self.start + r) * l.heads + l.head) * l.width
    }

    /// The chunk's rows of `tensor`, zero-padded to C rows.
    fn rows(&self, tensor: &Tensor, l: Layout) -> Vec<f64> {
        let mut data = vec![0.0; self.chunk * l.width];
        for r in 0..self.len {
            let base = self.offset(l, r);
            data[r * l.width..(r + 1) * l.width]
                .copy_from_slice(&tensor.data[base..base + l.width]);
        }
        data
    }

    /// Adds the valid rows of `rows` (C rows of layout `l`) into `tensor`; padded rows are
    /// dropped.
    fn add_rows(&self, tensor: &mut Tensor, l: Layout, rows: &[f64]) {
        for r in 0..self.len {
            let base = self.offset(l, r);
            tensor.data[base..base + l.width]
                .iter_mut()
                .zip(&rows[r * l.width..(r + 1) * l.width])
                .for_each(|(a, b)| *a += b);
        }
    }

    /// The chunk's rows of the input playing `role`, zero-padded to C rows.
    fn load(&self, role: Role) -> Tile {
        let l = self.layout(role);
        let data = match self.inputs.get(role) {
            Some(t) => self.rows(t, l),
            // Validated: a role the plan loads is one the spec declares, so it was given.
            None => vec![0.0; self.chunk * l.width],
        };
        let shape = if l.width == 1 && matches!(role, Role::Gate | Role::Beta) {
            vec![self.chunk]
        } else {
            vec![self.chunk, l.width]
        };
        Tile::new(shape, data)
    }

    fn extent(&self, d: Dim) -> usize {
        match d {
            Dim::C => self.chunk,
            Dim::K => self.dims.key_dim,
            Dim::V => self.dims.value_dim,
        }
    }

    fn zeros(&self, shape: &super::Shape) -> Tile {
        let shape: Vec<usize> = shape.0.iter().map(|d| self.extent(*d)).collect();
        let n = shape.iter().product();
        Tile::new(shape, vec![0.0; n])
    }
}

/// A chunk length of 0 would never advance.
fn check_chunk(chunk: usize) -> Result<(), ReferenceError> {
    if chunk == 0 {
        return Err(ShapeError::BadDim {
            name: "C",
            value: 0,
            allowed: "a chunk length of at least 1 (kernels use 16, 32 or 64)",
        }
        .into());
    }
    Ok(())
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
    check_chunk(chunk)?;
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
                    d_o: None,
                };
                let vals = run_chunk(plan, &ctx, &h, None);
                if let Some(out) = sink(plan, &vals, Sink::Output) {
                    let l = ctx.layout(Role::Value);
                    ctx.add_rows(&mut o, l, &out.data);
                }
                if let Some(next) = sink(plan, &vals, Sink::StateOut) {
                    h.clone_from(&next.data);
                }
                s += chunk;
            }
            if let Some(ht) = ht.as_mut() {
                ht.data[sb..sb + kd * vd].copy_from_slice(&h);
            }
        }
    }
    Ok(Outputs { o, ht })
}

/// The gradients of `L = Σ o ⊙ d_o + Σ ht ⊙ dht` by the backward `plan` (from
/// [`super::backward`]), the same as [`reference::backward`] computes token by token.
///
/// Per (sequence, value head): the states entering each chunk are recomputed with the forward
/// plan, then the chunks are swept in reverse, each taking `dh'` from the chunk after it (`dht`
/// for the last) and handing its `dh` to the chunk before. q/k gradients of the value heads of
/// a GVA group add up; gradients of padded rows are dropped; `dh0` is the final `dh` when `h0`
/// was given.
pub fn backward(
    plan: &Plan,
    spec: &Spec,
    inputs: &Inputs,
    opts: &RunOptions,
    d_o: &Tensor,
    dht: Option<&Tensor>,
    chunk: usize,
) -> Result<Gradients, ReferenceError> {
    let (dims, seqs) = inputs.check(spec, opts)?;
    check_chunk(chunk)?;
    check_shape("do", d_o, &dims.output_shape(), "[B, T, HV, V]")?;
    if let Some(dht) = dht {
        check_shape("dht", dht, &dims.state_shape(seqs.len()), "[N, HV, K, V]")?;
    }
    let unsupported = |what| SpecError::Unsupported {
        spec: spec.name.clone(),
        what,
        supported: "decay none, constant or data scalar with the identity transition and the \
                    inclusive read, evaluated with the plan from plan::backward",
    };
    if plan.direction != Direction::Backward {
        return Err(unsupported("a forward plan given to the backward evaluator").into());
    }
    let fwd = super::forward(spec).map_err(|e| match e {
        super::PlanError::NotYetSupported { form, .. } => unsupported(form),
        _ => unsupported("a spec without a forward plan"),
    })?;
    let (kd, vd) = (dims.key_dim, dims.value_dim);
    let scale = opts.scale.unwrap_or_else(|| spec.scale.resolve(kd));
    let zeros = |t: &Tensor| Tensor::zeros(&t.shape);
    let mut grads = Gradients {
        dq: zeros(&inputs.q),
        dk: zeros(&inputs.k),
        dv: zeros(&inputs.v),
        dg: inputs.g.as_ref().map(zeros),
        dbeta: inputs.beta.as_ref().map(zeros),
        du: inputs.u.as_ref().map(zeros),
        ddecay_rate: inputs.decay_rate.as_ref().map(zeros),
        dh0: inputs.h0.as_ref().map(zeros),
    };
    for (n, &(batch, start, end)) in seqs.spans.iter().enumerate() {
        for hv in 0..dims.value_heads {
            let sb = (n * dims.value_heads + hv) * kd * vd;
            let ctx_at = |s: usize| ChunkCtx {
                spec,
                inputs,
                dims,
                chunk,
                batch,
                start: s,
                len: chunk.min(end - s),
                hv,
                scale,
                d_o: Some(d_o),
            };
            // The state entering each chunk (recomputed, as the kernels will by default).
            let mut h = match &inputs.h0 {
                Some(h0) => h0.data[sb..sb + kd * vd].to_vec(),
                None => vec![0.0; kd * vd],
            };
            let mut entering = Vec::new();
            let mut s = start;
            while s < end {
                let vals = run_chunk(&fwd, &ctx_at(s), &h, None);
                let next = sink(&fwd, &vals, Sink::StateOut).map(|t| t.data.clone());
                entering.push((s, std::mem::replace(&mut h, next.unwrap_or_default())));
                s += chunk;
            }
            let mut dh = match dht {
                Some(d) => d.data[sb..sb + kd * vd].to_vec(),
                None => vec![0.0; kd * vd],
            };
            for (s, h_in) in entering.iter().rev() {
                let ctx = ctx_at(*s);
                let vals = run_chunk(plan, &ctx, h_in, Some(&dh));
                // No state_grad sink: nothing before this chunk reaches the loss through h.
                let mut dh_prev = vec![0.0; kd * vd];
                for (sink, id) in &plan.sinks {
                    let t = &vals[id.0];
                    match sink {
                        Sink::Grad(role @ (Role::Bonus | Role::DecayRate)) => {
                            // A per-head parameter: the chunk's (summed) part goes to head hv.
                            if let Some(dst) = grad_mut(&mut grads, *role) {
                                let w = t.data.len();
                                dst.data[hv * w..(hv + 1) * w]
                                    .iter_mut()
                                    .zip(&t.data)
                                    .for_each(|(a, b)| *a += b);
                            }
                        }
                        Sink::Grad(role) => {
                            if let Some(dst) = grad_mut(&mut grads, *role) {
                                ctx.add_rows(dst, ctx.layout(*role), &t.data);
                            }
                        }
                        Sink::StateGrad => dh_prev.clone_from(&t.data),
                        Sink::Output | Sink::StateOut | Sink::StateDecay => {}
                    }
                }
                dh = dh_prev;
            }
            if let Some(dh0) = grads.dh0.as_mut() {
                dh0.data[sb..sb + kd * vd].copy_from_slice(&dh);
            }
        }
    }
    Ok(grads)
}

fn grad_mut(g: &mut Gradients, role: Role) -> Option<&mut Tensor> {
    match role {
        Role::Query => Some(&mut g.dq),
        Role::Key => Some(&mut g.dk),
        Role::Value => Some(&mut g.dv),
        Role::Gate => g.dg.as_mut(),
        Role::Beta => g.dbeta.as_mut(),
        Role::Bonus => g.du.as_mut(),
        Role::DecayRate => g.ddecay_rate.as_mut(),
    }
}

/// Checks a gradient tensor's shape and element count.
fn check_shape(
    name: &str,
    t: &Tensor,
    expected: &[usize],
    symbolic: &str,
) -> Result<(), ShapeError> {
    if t.shape == expected && t.data.len() == expected.iter().product::<usize>() {
        return Ok(());
    }
    Err(ShapeError::TensorShape {
        name: name.into(),
        found: t.shape.clone(),
        expected: expected.to_vec(),
        symbolic: if t.shape == expected {
            format!("{symbolic}; its data holds {} values", t.data.len())
        } else {
            symbolic.into()
        },
    })
}

/// The value a plan sends to `which`, if it has that sink.
fn sink<'t>(plan: &Plan, vals: &'t [Tile], which: Sink) -> Option<&'t Tile> {
    plan.sinks
        .iter()
        .find(|(s, _)| *s == which)
        .map(|(_, id)| &vals[id.0])
}

/// Evaluates the DAG on one chunk given the state entering it and, for a backward plan, `dh'`;
/// returns every node's value.
fn run_chunk(plan: &Plan, ctx: &ChunkCtx<'_>, h: &[f64], dh_next: Option<&[f64]>) -> Vec<Tile> {
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
            Op::PairDiff(x) => pair_diff(v(x)),
            Op::MaskCausal { x, strict, fill } => mask_causal(v(x), *strict, *fill),
            Op::Exp2(x) => v(x).map(f64::exp2),
            Op::Mul(a, b) => broadcast(v(a), v(b), |x, y| x * y),
            Op::Add(a, b) => broadcast(v(a), v(b), |x, y| x + y),
            Op::Sub(a, b) => broadcast(v(a), v(b), |x, y| x - y),
            Op::Matmul { a, b, ta, tb } => matmul(v(a), v(b), *ta, *tb),
            Op::GradIn(Sink::Output) => match ctx.d_o {
                Some(d_o) => Tile::new(vec![c, vd], ctx.rows(d_o, ctx.layout(Role::Value))),
                None => ctx.zeros(&node.shape),
            },
            Op::GradIn(Sink::StateOut) => match dh_next {
                Some(dh) => Tile::new(vec![kd, vd], dh.to_vec()),
                None => ctx.zeros(&node.shape),
            },
            // Only a forward sink receives a gradient from outside the chunk.
            Op::GradIn(_) => ctx.zeros(&node.shape),
            Op::ValidRows => Tile::new(
                vec![c],
                (0..c)
                    .map(|r| if r < ctx.len { 1.0 } else { 0.0 })
                    .collect(),
            ),
            Op::ReverseCumSum(x) => {
                let x = v(x);
                let mut data = x.data.clone();
                let mut acc = 0.0;
                for a in data.iter_mut().rev() {
                    acc += *a;
                    *a = acc;
                }
                Tile::new(x.shape.clone(), data)
            }
            Op::RowSum(x) => {
                let x = v(x);
                let w = x.cols();
                Tile::new(
                    vec![x.shape[0]],
                    x.data.chunks(w).map(|row| row.iter().sum()).collect(),
                )
            }
            Op::ColSum(x) => {
                let x = v(x);
                let w = x.cols();
                let mut data = vec![0.0; w];
                for row in x.data.chunks(w) {
                    data.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
                Tile::new(vec![w], data)
            }
            Op::SumAll(x) => Tile::scalar(v(x).data.iter().sum()),
            Op::ScatterLast(x) => {
                let mut data = vec![0.0; c];
                if let Some(last) = data.last_mut() {
                    *last = v(x).data[0];
                }
                Tile::new(vec![c], data)
            }
            Op::L2NormRowsVjp { x, dy } => {
                let (x, dy) = (v(x), v(dy));
                let w = x.cols();
                let mut data = dy.data.clone();
                for (row, drow) in x.data.chunks(w).zip(data.chunks_mut(w)) {
                    let r = 1.0
                        / (row.iter().map(|a| a * a).sum::<f64>() + reference::L2NORM_EPS).sqrt();
                    let xd: f64 = row.iter().zip(drow.iter()).map(|(a, b)| a * b).sum();
                    for (d, xi) in drow.iter_mut().zip(row) {
                        *d = r * *d - r * r * r * xi * xd;
                    }
                }
                Tile::new(x.shape.clone(), data)
            }
            Op::Fused(f) => {
                let acc = f
                    .matmuls
                    .iter()
                    .map(|m| matmul(v(&m.a), v(&m.b), m.ta, m.tb))
                    .reduce(|x, y| broadcast(&x, &y, |a, b| a + b));
                expr(&f.expr, acc.as_ref(), &v)
            }
        };
        vals.push(t);
    }
    vals
}

/// `x_i − x_j` of a `[C]` tile.
fn pair_diff(x: &Tile) -> Tile {
    let n = x.data.len();
    Tile::new(
        vec![n, n],
        (0..n * n).map(|i| x.data[i / n] - x.data[i % n]).collect(),
    )
}

/// The causal part of a matrix (j ≤ i, or j < i when `strict`), `fill` elsewhere.
fn mask_causal(x: &Tile, strict: bool, fill: f64) -> Tile {
    let n = x.cols();
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (r, col) = (i / n, i % n);
            let keep = if strict { col < r } else { col <= r };
            if keep { *a } else { fill }
        })
        .collect();
    Tile::new(x.shape.clone(), data)
}

/// A fused node's expression, `acc` the sum of its matmuls.
fn expr<'t>(e: &Expr, acc: Option<&Tile>, v: &impl Fn(&ValueId) -> &'t Tile) -> Tile {
    match e {
        // A fused node with `acc` in its expression has matmuls (the fusion pass puts it
        // there only for them); an empty tile would fail loudly in the comparison.
        Expr::Acc => acc.cloned().unwrap_or_else(|| Tile::new(vec![0], vec![])),
        Expr::Value(x) => v(x).clone(),
        Expr::PairDiff(x) => pair_diff(v(x)),
        Expr::Exp2(x) => expr(x, acc, v).map(f64::exp2),
        Expr::Mul(x, y) => broadcast(&expr(x, acc, v), &expr(y, acc, v), |a, b| a * b),
        Expr::Add(x, y) => broadcast(&expr(x, acc, v), &expr(y, acc, v), |a, b| a + b),
        Expr::Sub(x, y) => broadcast(&expr(x, acc, v), &expr(y, acc, v), |a, b| a - b),
        Expr::MaskCausal { x, strict, fill } => mask_causal(&expr(x, acc, v), *strict, *fill),
    }
}
