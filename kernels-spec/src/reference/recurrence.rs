//! The token-by-token recurrence and its reverse sweep. One (sequence, value head) at a time;
//! the state `S` is `K × V`, row-major.

use super::{CHECKPOINT, Gradients, Inputs, L2NORM_EPS, Outputs, Tensor, constant_log_decay};
use crate::dims::{Dims, RunOptions, Sequences};
use crate::forms::{Decay, DeltaOrder, Read, Spec, Transition, Write};

/// Everything one token contributes, after pre-processing (L2 norm) and gate exponentiation.
struct Token {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    /// Decay factor per K row (a scalar decay is broadcast).
    d: Vec<f64>,
    /// β (1 when the spec has none).
    beta: f64,
}

/// Per-token gradients of one (token, value head).
struct TokenGrad {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    /// Gradient with respect to the decay factors `d` (not yet the log-gate).
    dd: Vec<f64>,
    dbeta: f64,
}

/// The data of one (sequence, value head) pair.
struct Head<'a> {
    spec: &'a Spec,
    dims: &'a Dims,
    inputs: &'a Inputs,
    q: &'a Tensor,
    k: &'a Tensor,
    scale: f64,
    batch: usize,
    hv: usize,
    h: usize,
    log_const: f64,
}

impl Head<'_> {
    fn qk_base(&self, t: usize) -> usize {
        ((self.batch * self.dims.seq_len + t) * self.dims.heads + self.h) * self.dims.key_dim
    }
    fn v_base(&self, t: usize) -> usize {
        ((self.batch * self.dims.seq_len + t) * self.dims.value_heads + self.hv)
            * self.dims.value_dim
    }
    fn scalar_at(&self, t: usize) -> usize {
        (self.batch * self.dims.seq_len + t) * self.dims.value_heads + self.hv
    }
    fn diag_base(&self, t: usize) -> usize {
        self.scalar_at(t) * self.dims.key_dim
    }

    fn token(&self, t: usize) -> Token {
        let (kd, vd) = (self.dims.key_dim, self.dims.value_dim);
        let qb = self.qk_base(t);
        let vb = self.v_base(t);
        let d = match self.spec.decay {
            Decay::None => vec![1.0; kd],
            Decay::Constant(_) => vec![self.log_const.exp(); kd],
            Decay::Scalar => vec![self.gate().data[self.scalar_at(t)].exp(); kd],
            Decay::Diagonal => {
                let b = self.diag_base(t);
                self.gate().data[b..b + kd]
                    .iter()
                    .map(|g| g.exp())
                    .collect()
            }
        };
        Token {
            q: self.q.data[qb..qb + kd].to_vec(),
            k: self.k.data[qb..qb + kd].to_vec(),
            v: self.inputs.v.data[vb..vb + vd].to_vec(),
            d,
            beta: self
                .inputs
                .beta
                .as_ref()
                .map_or(1.0, |b| b.data[self.scalar_at(t)]),
        }
    }

    fn gate(&self) -> &Tensor {
        // validated: a scalar or diagonal decay always has its gate
        self.inputs.g.as_ref().unwrap_or(&self.inputs.v)
    }

    fn bonus(&self) -> &[f64] {
        let kd = self.dims.key_dim;
        match &self.inputs.u {
            Some(u) => &u.data[self.hv * kd..(self.hv + 1) * kd],
            None => &[],
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `S ← Diag(d) S`.
fn apply_decay(s: &mut [f64], d: &[f64], vd: usize) {
    for (row, di) in s.chunks_mut(vd).zip(d) {
        row.iter_mut().for_each(|x| *x *= di);
    }
}

/// `w = Sᵀ k` (a V-vector).
fn st_times(s: &[f64], k: &[f64], vd: usize) -> Vec<f64> {
    let mut w = vec![0.0; vd];
    for (row, ki) in s.chunks(vd).zip(k) {
        w.iter_mut().zip(row).for_each(|(wj, sij)| *wj += ki * sij);
    }
    w
}

/// `S ← S + c · a bᵀ`.
fn add_outer(s: &mut [f64], c: f64, a: &[f64], b: &[f64]) {
    for (row, ai) in s.chunks_mut(b.len()).zip(a) {
        row.iter_mut().zip(b).for_each(|(x, bj)| *x += c * ai * bj);
    }
}

/// `S ← (I − β k kᵀ) S`.
fn apply_delta(s: &mut [f64], k: &[f64], beta: f64, vd: usize) {
    let w = st_times(s, k, vd);
    add_outer(s, -beta, k, &w);
}

/// `Σ_j A_ij B_ij` per row i.
fn row_dots(a: &[f64], b: &[f64], vd: usize) -> Vec<f64> {
    a.chunks(vd)
        .zip(b.chunks(vd))
        .map(|(x, y)| dot(x, y))
        .collect()
}

/// The state after decay and transition, before the write.
fn transition(spec: &Spec, tok: &Token, s: &mut [f64], vd: usize) {
    match spec.transition {
        Transition::Identity => apply_decay(s, &tok.d, vd),
        Transition::Delta {
            order: DeltaOrder::DecayThenDelta,
        } => {
            apply_decay(s, &tok.d, vd);
            apply_delta(s, &tok.k, tok.beta, vd);
        }
        Transition::Delta {
            order: DeltaOrder::DeltaThenDecay,
        } => {
            apply_delta(s, &tok.k, tok.beta, vd);
            apply_decay(s, &tok.d, vd);
        }
    }
}

fn write_coef(spec: &Spec, tok: &Token) -> f64 {
    match spec.write {
        Write::Outer => 1.0,
        Write::BetaOuter => tok.beta,
    }
}

/// One token forward: updates `s` from `S_{t−1}` to `S_t` and writes `o_t` into `o`.
fn step(spec: &Spec, tok: &Token, scale: f64, bonus: &[f64], s: &mut [f64], o: &mut [f64]) {
    let vd = o.len();
    if spec.read == Read::ExclusiveBonus {
        let w = st_times(s, &tok.q, vd);
        let b: f64 = tok
            .q
            .iter()
            .zip(bonus)
            .zip(&tok.k)
            .map(|((q, u), k)| q * u * k)
            .sum();
        o.iter_mut()
            .zip(w.iter().zip(&tok.v))
            .for_each(|(oj, (wj, vj))| *oj = scale * (wj + b * vj));
    }
    transition(spec, tok, s, vd);
    add_outer(s, write_coef(spec, tok), &tok.k, &tok.v);
    if spec.read == Read::Inclusive {
        let w = st_times(s, &tok.q, vd);
        o.iter_mut().zip(w).for_each(|(oj, wj)| *oj = scale * wj);
    }
}

/// One token backward (the spec, scale and bonus come from `hd`). `ds` holds dL/dS_t on entry and dL/dS_{t−1} on exit; `du` accumulates
/// the bonus gradient.
fn step_back(
    hd: &Head<'_>,
    tok: &Token,
    s_prev: &[f64],
    ds: &mut [f64],
    d_o: &[f64],
    du: &mut [f64],
) -> TokenGrad {
    let (spec, scale, bonus) = (hd.spec, hd.scale, hd.bonus());
    let (kd, vd) = (tok.k.len(), tok.v.len());
    let mut g = TokenGrad {
        dq: vec![0.0; kd],
        dk: vec![0.0; kd],
        dv: vec![0.0; vd],
        dd: vec![0.0; kd],
        dbeta: 0.0,
    };
    let c = write_coef(spec, tok);
    if spec.read == Read::Inclusive {
        let mut s_t = s_prev.to_vec();
        transition(spec, tok, &mut s_t, vd);
        add_outer(&mut s_t, c, &tok.k, &tok.v);
        add_outer(ds, scale, &tok.q, d_o);
        for (dqi, row) in g.dq.iter_mut().zip(s_t.chunks(vd)) {
            *dqi += scale * dot(row, d_o);
        }
    }
    // write: S_t = S' + c k vᵀ
    let dsv = row_dots_vec(ds, &tok.v, vd);
    g.dk.iter_mut().zip(&dsv).for_each(|(x, y)| *x += c * y);
    let dstk = st_times(ds, &tok.k, vd);
    g.dv.iter_mut().zip(&dstk).for_each(|(x, y)| *x += c * y);
    if spec.write == Write::BetaOuter {
        g.dbeta += dot(&tok.k, &dsv);
    }
    // transition: S' = f(S_{t−1})
    match spec.transition {
        Transition::Identity => {
            g.dd = row_dots(ds, s_prev, vd);
            apply_decay(ds, &tok.d, vd);
        }
        Transition::Delta {
            order: DeltaOrder::DecayThenDelta,
        } => {
            let mut x = s_prev.to_vec();
            apply_decay(&mut x, &tok.d, vd);
            delta_back(tok, &x, ds, &mut g, vd);
            g.dd = row_dots(ds, s_prev, vd);
            apply_decay(ds, &tok.d, vd);
        }
        Transition::Delta {
            order: DeltaOrder::DeltaThenDecay,
        } => {
            let mut y = s_prev.to_vec();
            apply_delta(&mut y, &tok.k, tok.beta, vd);
            g.dd = row_dots(ds, &y, vd);
            apply_decay(ds, &tok.d, vd);
            delta_back(tok, s_prev, ds, &mut g, vd);
        }
    }
    if spec.read == Read::ExclusiveBonus {
        add_outer(ds, scale, &tok.q, d_o);
        let vdo = dot(&tok.v, d_o);
        let quk: f64 = tok
            .q
            .iter()
            .zip(bonus)
            .zip(&tok.k)
            .map(|((q, u), k)| q * u * k)
            .sum();
        for i in 0..kd {
            g.dq[i] +=
                scale * (dot(&s_prev[i * vd..(i + 1) * vd], d_o) + vdo * bonus[i] * tok.k[i]);
            g.dk[i] += scale * vdo * bonus[i] * tok.q[i];
            du[i] += scale * vdo * tok.q[i] * tok.k[i];
        }
        g.dv.iter_mut()
            .zip(d_o)
            .for_each(|(x, y)| *x += scale * quk * y);
    }
    g
}

/// `(dS v)` as a K-vector.
fn row_dots_vec(ds: &[f64], v: &[f64], vd: usize) -> Vec<f64> {
    ds.chunks(vd).map(|row| dot(row, v)).collect()
}

/// Backward of `S' = X − β k (kᵀ X)`: turns `ds` (dL/dS') into dL/dX, accumulates dk and dβ.
fn delta_back(tok: &Token, x: &[f64], ds: &mut [f64], g: &mut TokenGrad, vd: usize) {
    let a = st_times(x, &tok.k, vd); // Xᵀ k
    let b = st_times(ds, &tok.k, vd); // dS'ᵀ k
    g.dbeta -= dot(&a, &b);
    let ds_a = row_dots_vec(ds, &a, vd);
    let x_b = row_dots_vec(x, &b, vd);
    for i in 0..tok.k.len() {
        g.dk[i] -= tok.beta * (ds_a[i] + x_b[i]);
    }
    add_outer(ds, -tok.beta, &tok.k, &b);
}

/// `x / sqrt(‖x‖² + eps)` per row of length `n`.
fn l2norm_rows(t: &Tensor, n: usize) -> Tensor {
    let mut out = t.clone();
    for row in out.data.chunks_mut(n) {
        let r = 1.0 / (dot(row, row) + L2NORM_EPS).sqrt();
        row.iter_mut().for_each(|x| *x *= r);
    }
    out
}

/// Pulls a gradient with respect to the normalised rows back through the L2 norm:
/// `dx = r·dx̂ − r³·x·(x·dx̂)`.
fn l2norm_back(x: &Tensor, dxhat: &Tensor, n: usize) -> Tensor {
    let mut dx = dxhat.clone();
    for (row, drow) in x.data.chunks(n).zip(dx.data.chunks_mut(n)) {
        let r = 1.0 / (dot(row, row) + L2NORM_EPS).sqrt();
        let xd = dot(row, drow);
        for (d, xi) in drow.iter_mut().zip(row) {
            *d = r * *d - r * r * r * xi * xd;
        }
    }
    dx
}

struct Prepared {
    q: Tensor,
    k: Tensor,
    scale: f64,
}

fn prepare(spec: &Spec, inputs: &Inputs, dims: &Dims, opts: &RunOptions) -> Prepared {
    let (q, k) = if spec.features.qk_l2norm {
        (
            l2norm_rows(&inputs.q, dims.key_dim),
            l2norm_rows(&inputs.k, dims.key_dim),
        )
    } else {
        (inputs.q.clone(), inputs.k.clone())
    };
    Prepared {
        q,
        k,
        scale: opts
            .scale
            .unwrap_or_else(|| spec.scale.resolve(dims.key_dim)),
    }
}

fn head<'a>(
    spec: &'a Spec,
    inputs: &'a Inputs,
    dims: &'a Dims,
    prep: &'a Prepared,
    batch: usize,
    hv: usize,
) -> Head<'a> {
    let log_const = match spec.decay {
        Decay::Constant(rate) => constant_log_decay(rate, inputs.decay_rate.as_ref(), hv),
        _ => 0.0,
    };
    Head {
        spec,
        dims,
        inputs,
        q: &prep.q,
        k: &prep.k,
        scale: prep.scale,
        batch,
        hv,
        h: hv / dims.group(),
        log_const,
    }
}

fn state_base(dims: &Dims, n: usize, hv: usize) -> usize {
    (n * dims.value_heads + hv) * dims.key_dim * dims.value_dim
}

fn initial_state(inputs: &Inputs, dims: &Dims, n: usize, hv: usize) -> Vec<f64> {
    let kv = dims.key_dim * dims.value_dim;
    match &inputs.h0 {
        Some(h0) => {
            let b = state_base(dims, n, hv);
            h0.data[b..b + kv].to_vec()
        }
        None => vec![0.0; kv],
    }
}

pub(super) fn forward(
    spec: &Spec,
    inputs: &Inputs,
    dims: &Dims,
    seqs: &Sequences,
    opts: &RunOptions,
) -> Outputs {
    let prep = prepare(spec, inputs, dims, opts);
    let mut o = Tensor::zeros(&dims.output_shape());
    let mut ht = opts
        .output_final_state
        .then(|| Tensor::zeros(&dims.state_shape(seqs.len())));
    let vd = dims.value_dim;
    for (n, &(batch, start, end)) in seqs.spans.iter().enumerate() {
        for hv in 0..dims.value_heads {
            let hd = head(spec, inputs, dims, &prep, batch, hv);
            let mut s = initial_state(inputs, dims, n, hv);
            for t in start..end {
                let ob = hd.v_base(t);
                step(
                    spec,
                    &hd.token(t),
                    hd.scale,
                    hd.bonus(),
                    &mut s,
                    &mut o.data[ob..ob + vd],
                );
            }
            if let Some(ht) = ht.as_mut() {
                let b = state_base(dims, n, hv);
                ht.data[b..b + s.len()].copy_from_slice(&s);
            }
        }
    }
    Outputs { o, ht }
}

pub(super) fn backward(
    spec: &Spec,
    inputs: &Inputs,
    dims: &Dims,
    seqs: &Sequences,
    opts: &RunOptions,
    d_o: &Tensor,
    dht: Option<&Tensor>,
) -> Gradients {
    let prep = prepare(spec, inputs, dims, opts);
    let (kd, vd) = (dims.key_dim, dims.value_dim);
    let mut dqh = Tensor::zeros(&inputs.q.shape);
    let mut dkh = Tensor::zeros(&inputs.k.shape);
    let mut dv = Tensor::zeros(&inputs.v.shape);
    let mut dg = inputs.g.as_ref().map(|g| Tensor::zeros(&g.shape));
    let mut dbeta = inputs.beta.as_ref().map(|b| Tensor::zeros(&b.shape));
    let mut du = inputs.u.as_ref().map(|u| Tensor::zeros(&u.shape));
    let mut drate = inputs.decay_rate.as_ref().map(|r| Tensor::zeros(&r.shape));
    let mut dh0 = inputs.h0.as_ref().map(|h| Tensor::zeros(&h.shape));
    for (n, &(batch, start, end)) in seqs.spans.iter().enumerate() {
        for hv in 0..dims.value_heads {
            let hd = head(spec, inputs, dims, &prep, batch, hv);
            // Forward, keeping a checkpoint every CHECKPOINT tokens.
            let mut s = initial_state(inputs, dims, n, hv);
            let mut checkpoints = Vec::new();
            let mut scratch = vec![0.0; vd];
            for t in start..end {
                if (t - start) % CHECKPOINT == 0 {
                    checkpoints.push(s.clone());
                }
                step(
                    spec,
                    &hd.token(t),
                    hd.scale,
                    hd.bonus(),
                    &mut s,
                    &mut scratch,
                );
            }
            let sb = state_base(dims, n, hv);
            let mut ds = match dht {
                Some(d) => d.data[sb..sb + kd * vd].to_vec(),
                None => vec![0.0; kd * vd],
            };
            let mut du_head = vec![0.0; kd];
            for (seg, ckpt) in checkpoints.iter().enumerate().rev() {
                let t0 = start + seg * CHECKPOINT;
                let t1 = (t0 + CHECKPOINT).min(end);
                let tokens: Vec<Token> = (t0..t1).map(|t| hd.token(t)).collect();
                let mut states = Vec::with_capacity(tokens.len());
                let mut s = ckpt.clone();
                for tok in &tokens {
                    states.push(s.clone());
                    step(spec, tok, hd.scale, hd.bonus(), &mut s, &mut scratch);
                }
                for (i, tok) in tokens.iter().enumerate().rev() {
                    let t = t0 + i;
                    let ob = hd.v_base(t);
                    let g = step_back(
                        &hd,
                        tok,
                        &states[i],
                        &mut ds,
                        &d_o.data[ob..ob + vd],
                        &mut du_head,
                    );
                    let qb = hd.qk_base(t);
                    dqh.data[qb..qb + kd]
                        .iter_mut()
                        .zip(&g.dq)
                        .for_each(|(a, b)| *a += b);
                    dkh.data[qb..qb + kd]
                        .iter_mut()
                        .zip(&g.dk)
                        .for_each(|(a, b)| *a += b);
                    dv.data[ob..ob + vd]
                        .iter_mut()
                        .zip(&g.dv)
                        .for_each(|(a, b)| *a += b);
                    if let Some(db) = dbeta.as_mut() {
                        db.data[hd.scalar_at(t)] += g.dbeta;
                    }
                    // d/dg exp(g) = exp(g): the log-gate gradient is dd ⊙ d.
                    let dlog: Vec<f64> = g.dd.iter().zip(&tok.d).map(|(a, b)| a * b).collect();
                    match (spec.decay, dg.as_mut(), drate.as_mut()) {
                        (Decay::Scalar, Some(dg), _) => {
                            dg.data[hd.scalar_at(t)] += dlog.iter().sum::<f64>()
                        }
                        (Decay::Diagonal, Some(dg), _) => {
                            let b = hd.diag_base(t);
                            dg.data[b..b + kd]
                                .iter_mut()
                                .zip(&dlog)
                                .for_each(|(a, b)| *a += b);
                        }
                        (Decay::Constant(_), _, Some(dr)) => {
                            dr.data[hv] += dlog.iter().sum::<f64>()
                        }
                        _ => {}
                    }
                }
            }
            if let Some(du) = du.as_mut() {
                du.data[hv * kd..(hv + 1) * kd]
                    .iter_mut()
                    .zip(&du_head)
                    .for_each(|(a, b)| *a += b);
            }
            if let Some(dh0) = dh0.as_mut() {
                dh0.data[sb..sb + kd * vd].copy_from_slice(&ds);
            }
        }
    }
    let (dq, dk) = if spec.features.qk_l2norm {
        (
            l2norm_back(&inputs.q, &dqh, kd),
            l2norm_back(&inputs.k, &dkh, kd),
        )
    } else {
        (dqh, dkh)
    };
    Gradients {
        dq,
        dk,
        dv,
        dg,
        dbeta,
        du,
        ddecay_rate: drate,
        dh0,
    }
}
