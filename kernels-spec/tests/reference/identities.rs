//! Known identities: the recurrence equals closed-form (decayed) causal attention; special
//! values of the gates and β reduce one form to another; options (GVA, l2norm, scale) equal
//! their definitions.

use crate::common::{
    Case, assert_close, base_spec, gradients, make_spec, max_abs_diff, normal, problem, unit_rows,
    valid_specs,
};
use linrec_spec::reference::{self, Inputs, Rng, Tensor};
use linrec_spec::{
    ConstantRate, Decay, DeltaOrder, Dims, Read, Role, RunOptions, Scale, Spec, Transition, Write,
};

const TOL: f64 = 1e-12;

/// Row-major offsets of the tensor contract.
struct Ix(Dims);

impl Ix {
    fn qk(&self, b: usize, t: usize, h: usize, x: usize) -> usize {
        let d = &self.0;
        ((b * d.seq_len + t) * d.heads + h) * d.key_dim + x
    }
    fn v(&self, b: usize, t: usize, hv: usize, c: usize) -> usize {
        let d = &self.0;
        ((b * d.seq_len + t) * d.value_heads + hv) * d.value_dim + c
    }
    fn scalar(&self, b: usize, t: usize, hv: usize) -> usize {
        let d = &self.0;
        (b * d.seq_len + t) * d.value_heads + hv
    }
    fn state(&self, n: usize, hv: usize, x: usize, c: usize) -> usize {
        let d = &self.0;
        ((n * d.value_heads + hv) * d.key_dim + x) * d.value_dim + c
    }
}

fn opts_final() -> RunOptions {
    RunOptions {
        output_final_state: true,
        ..Default::default()
    }
}

fn with_decay(spec: Spec, decay: Decay) -> Spec {
    make_spec(
        decay,
        spec.transition,
        spec.write,
        spec.read,
        spec.scale,
        spec.features.qk_l2norm,
    )
}

/// Closed-form decayed causal attention (no varlen):
/// inclusive `o_i = s Σ_κ q_iκ (e^{G_iκ} h0_κ + Σ_{j≤i} e^{G_iκ − G_jκ} k_jκ v_j)`,
/// exclusive + bonus the same over `j < i` with `G_{i−1}` plus `s (q_i ⊙ u ⊙ k_i)·1 v_i`;
/// `G` the inclusive cumulative sum of the log-decay `log_decay(b, t, hv, κ)`.
/// Returns `(o, ht)`.
#[allow(clippy::needless_range_loop)] // index arithmetic mirrors the formula
fn decayed_attention(
    dims: Dims,
    inputs: &Inputs,
    scale: f64,
    log_decay: impl Fn(usize, usize, usize, usize) -> f64,
    exclusive: bool,
) -> (Tensor, Tensor) {
    let ix = Ix(dims);
    let (bsz, tl, hvs, kd, vd) = (
        dims.batch,
        dims.seq_len,
        dims.value_heads,
        dims.key_dim,
        dims.value_dim,
    );
    let group = dims.value_heads / dims.heads;
    let mut o = Tensor::zeros(&dims.output_shape());
    let mut ht = Tensor::zeros(&dims.state_shape(bsz));
    let h0 = |b, hv, x, c| {
        inputs
            .h0
            .as_ref()
            .map_or(0.0, |h0| h0.data[ix.state(b, hv, x, c)])
    };
    for b in 0..bsz {
        for hv in 0..hvs {
            let h = hv / group;
            // cum[t][κ] = G_tκ; cum_before(t) = G_{t−1} (0 before the first token).
            let mut cum = vec![vec![0.0; kd]; tl];
            for t in 0..tl {
                for x in 0..kd {
                    let prev = if t == 0 { 0.0 } else { cum[t - 1][x] };
                    cum[t][x] = prev + log_decay(b, t, hv, x);
                }
            }
            let g_at = |t: Option<usize>, x: usize| t.map_or(0.0, |t| cum[t][x]);
            for i in 0..tl {
                // The state read at token i is the one after token `last` (None: h0).
                let last = if exclusive { i.checked_sub(1) } else { Some(i) };
                for c in 0..vd {
                    let mut acc = 0.0;
                    for x in 0..kd {
                        let q = inputs.q.data[ix.qk(b, i, h, x)];
                        acc += q * g_at(last, x).exp() * h0(b, hv, x, c);
                        let Some(last) = last else { continue };
                        for j in 0..=last {
                            let k = inputs.k.data[ix.qk(b, j, h, x)];
                            let v = inputs.v.data[ix.v(b, j, hv, c)];
                            acc += q * (cum[last][x] - cum[j][x]).exp() * k * v;
                        }
                    }
                    if exclusive {
                        let u = inputs.u.as_ref().expect("bonus");
                        let quk: f64 = (0..kd)
                            .map(|x| {
                                inputs.q.data[ix.qk(b, i, h, x)]
                                    * u.data[hv * kd + x]
                                    * inputs.k.data[ix.qk(b, i, h, x)]
                            })
                            .sum();
                        acc += quk * inputs.v.data[ix.v(b, i, hv, c)];
                    }
                    o.data[ix.v(b, i, hv, c)] = scale * acc;
                }
            }
            let end = tl.checked_sub(1);
            for x in 0..kd {
                for c in 0..vd {
                    let mut s = g_at(end, x).exp() * h0(b, hv, x, c);
                    for j in 0..tl {
                        s += (g_at(end, x) - cum[j][x]).exp()
                            * inputs.k.data[ix.qk(b, j, h, x)]
                            * inputs.v.data[ix.v(b, j, hv, c)];
                    }
                    ht.data[ix.state(b, hv, x, c)] = s;
                }
            }
        }
    }
    (o, ht)
}

fn with_h0(spec: &Spec, dims: Dims, seed: u64) -> Inputs {
    let mut inputs = reference::random_inputs(spec, &dims, seed);
    inputs.h0 = Some(normal(
        &dims.state_shape(dims.batch),
        &mut Rng::new(seed + 100),
    ));
    inputs
}

/// linear_attn equals `scale · causal(Q Kᵀ) V`, computed as matrices, and its final state is
/// `Σ_t k_t v_tᵀ` (GVA: each value head reads its query/key head).
#[test]
fn linear_attn_is_causal_attention() {
    let spec = base_spec();
    let dims = Dims::new(2, 6, 2, 3, 2).with_value_heads(4);
    let inputs = reference::random_inputs(&spec, &dims, 21);
    let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
    let ix = Ix(dims);
    let scale = 1.0 / 3f64.sqrt();
    let mut o = Tensor::zeros(&dims.output_shape());
    let mut ht = Tensor::zeros(&dims.state_shape(2));
    for b in 0..2 {
        for hv in 0..4 {
            let h = hv / 2;
            // A = causal(Q Kᵀ), [T, T]
            let mut a = [[0.0; 6]; 6];
            for (i, row) in a.iter_mut().enumerate() {
                for (j, aij) in row.iter_mut().enumerate().take(i + 1) {
                    *aij = (0..3)
                        .map(|x| {
                            inputs.q.data[ix.qk(b, i, h, x)] * inputs.k.data[ix.qk(b, j, h, x)]
                        })
                        .sum();
                }
            }
            // O = scale · A V
            for (i, row) in a.iter().enumerate() {
                for c in 0..2 {
                    o.data[ix.v(b, i, hv, c)] = scale
                        * (0..6)
                            .map(|j| row[j] * inputs.v.data[ix.v(b, j, hv, c)])
                            .sum::<f64>();
                }
            }
            for x in 0..3 {
                for c in 0..2 {
                    ht.data[ix.state(b, hv, x, c)] = (0..6)
                        .map(|t| {
                            inputs.k.data[ix.qk(b, t, h, x)] * inputs.v.data[ix.v(b, t, hv, c)]
                        })
                        .sum();
                }
            }
        }
    }
    assert_close(&out.o, &o, TOL, "o");
    assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
}

/// With an initial state, linear_attn adds `scale · h0ᵀ q_i` and the final state is
/// `h0 + Σ_t k_t v_tᵀ`.
#[test]
fn linear_attn_with_h0() {
    let spec = base_spec();
    let dims = Dims::new(2, 5, 1, 3, 2);
    let inputs = with_h0(&spec, dims, 22);
    let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
    let (o, ht) = decayed_attention(dims, &inputs, 1.0 / 3f64.sqrt(), |_, _, _, _| 0.0, false);
    assert_close(&out.o, &o, TOL, "o");
    assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
}

/// Retention equals `Σ_{j≤i} γ^{i−j} (q_i·k_j) v_j` (+ `γ^{i+1} h0ᵀ q_i`) with RetNet's
/// `γ_h = 1 − 2^(−5−h)` per value head; and a constant decay from an input rate equal to
/// `log γ_h` computes the same thing.
#[test]
fn retention_is_decayed_causal_attention() {
    let spec = with_decay(base_spec(), Decay::Constant(ConstantRate::Retnet));
    let dims = Dims::new(2, 7, 2, 3, 2).with_value_heads(4);
    let inputs = with_h0(&spec, dims, 23);
    let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
    let gamma = |hv: usize| 1.0 - 2f64.powi(-5 - hv as i32);
    let (o, ht) = decayed_attention(
        dims,
        &inputs,
        1.0 / 3f64.sqrt(),
        |_, _, hv, _| gamma(hv).ln(),
        false,
    );
    assert_close(&out.o, &o, TOL, "o");
    assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
    // Spot-check the closed form itself against powers of γ: o at token 2 of head 1, no h0.
    let mut no_h0 = inputs.clone();
    no_h0.h0 = None;
    let out0 = reference::forward(&spec, &no_h0, &RunOptions::default()).unwrap();
    let ix = Ix(dims);
    let (b, i, hv, c) = (1, 2, 1, 1);
    let direct: f64 = (0..=i)
        .map(|j| {
            let qk: f64 = (0..3)
                .map(|x| no_h0.q.data[ix.qk(b, i, 0, x)] * no_h0.k.data[ix.qk(b, j, 0, x)])
                .sum();
            gamma(hv).powi((i - j) as i32) * qk * no_h0.v.data[ix.v(b, j, hv, c)]
        })
        .sum::<f64>()
        / 3f64.sqrt();
    assert!((out0.o.data[ix.v(b, i, hv, c)] - direct).abs() < 1e-12);

    let input_spec = with_decay(base_spec(), Decay::Constant(ConstantRate::Input));
    let mut rate_inputs = inputs.clone();
    rate_inputs.decay_rate =
        Some(Tensor::from_vec(&[4], (0..4).map(|hv| gamma(hv).ln()).collect()).unwrap());
    let out2 = reference::forward(&input_spec, &rate_inputs, &opts_final()).unwrap();
    assert_close(&out2.o, &out.o, TOL, "o (input rate)");
    assert_close(
        out2.ht.as_ref().unwrap(),
        out.ht.as_ref().unwrap(),
        TOL,
        "ht (input rate)",
    );
}

/// A data scalar gate equals `Σ_{j≤i} exp(G_i − G_j) (q_i·k_j) v_j`, `G` the cumulative
/// log-gate (simple_gla / Mamba2 SSD), with h0 and GVA.
#[test]
fn scalar_gate_is_gated_attention() {
    let spec = with_decay(base_spec(), Decay::Scalar);
    let dims = Dims::new(2, 6, 1, 3, 2).with_value_heads(2);
    let inputs = with_h0(&spec, dims, 24);
    let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
    let g = inputs.g.as_ref().unwrap();
    let ix = Ix(dims);
    let (o, ht) = decayed_attention(
        dims,
        &inputs,
        1.0 / 3f64.sqrt(),
        |b, t, hv, _| g.data[ix.scalar(b, t, hv)],
        false,
    );
    assert_close(&out.o, &o, TOL, "o");
    assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
}

/// A diagonal gate equals GLA's `Σ_{j≤i} Σ_κ q_iκ exp(G_iκ − G_jκ) k_jκ v_j`.
#[test]
fn diagonal_gate_is_gla_attention() {
    let spec = Spec {
        scale: Scale::Value(0.9),
        ..with_decay(base_spec(), Decay::Diagonal)
    };
    let dims = Dims::new(1, 6, 2, 3, 2).with_value_heads(2);
    let inputs = with_h0(&spec, dims, 25);
    let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
    let g = inputs.g.as_ref().unwrap();
    let ix = Ix(dims);
    let (o, ht) = decayed_attention(
        dims,
        &inputs,
        0.9,
        |b, t, hv, x| g.data[ix.scalar(b, t, hv) * 3 + x],
        false,
    );
    assert_close(&out.o, &o, TOL, "o");
    assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
}

/// The exclusive read with bonus equals RWKV-6's
/// `Σ_{j<i} Σ_κ q_iκ exp(G_{i−1,κ} − G_jκ) k_jκ v_j + (q_i ⊙ u ⊙ k_i)·1 v_i`.
#[test]
fn exclusive_bonus_is_rwkv6_attention() {
    let spec = make_spec(
        Decay::Diagonal,
        Transition::Identity,
        Write::Outer,
        Read::ExclusiveBonus,
        Scale::InvSqrtK,
        false,
    );
    let dims = Dims::new(2, 5, 1, 3, 2).with_value_heads(2);
    let inputs = with_h0(&spec, dims, 26);
    let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
    let g = inputs.g.as_ref().unwrap();
    let ix = Ix(dims);
    let (o, ht) = decayed_attention(
        dims,
        &inputs,
        1.0 / 3f64.sqrt(),
        |b, t, hv, x| g.data[ix.scalar(b, t, hv) * 3 + x],
        true,
    );
    assert_close(&out.o, &o, TOL, "o");
    assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
}

/// A diagonal gate that is the same over K equals the scalar gate — outputs, final state and
/// gradients (`dg_scalar = Σ_κ dg_diag`) — for every transition, write and read, including
/// the delta rule in both orders (kda with a uniform gate is gated_delta_net).
#[test]
fn uniform_diagonal_gate_equals_scalar_gate() {
    let scalar_specs: Vec<Spec> = valid_specs()
        .into_iter()
        .filter(|s| s.decay == Decay::Scalar)
        .collect();
    assert_eq!(scalar_specs.len(), 24);
    for spec in scalar_specs {
        let diag = with_decay(spec.clone(), Decay::Diagonal);
        let mut case = Case::new(Dims::new(2, 5, 1, 3, 2).with_value_heads(2));
        case.h0 = true;
        case.dht = true;
        let p = problem(&spec, &case);
        let mut pd = p.clone();
        let g = p.inputs.g.as_ref().unwrap();
        let mut gd = Tensor::zeros(&[2, 5, 2, 3]);
        for (i, gi) in g.data.iter().enumerate() {
            gd.data[i * 3..i * 3 + 3].fill(*gi);
        }
        pd.inputs.g = Some(gd);
        let (a, b) = (
            reference::forward(&spec, &p.inputs, &p.opts).unwrap(),
            reference::forward(&diag, &pd.inputs, &pd.opts).unwrap(),
        );
        assert_close(&b.o, &a.o, TOL, "o");
        assert_close(b.ht.as_ref().unwrap(), a.ht.as_ref().unwrap(), TOL, "ht");
        let (ga, gb) = (gradients(&spec, &p), gradients(&diag, &pd));
        for role in [Role::Query, Role::Key, Role::Value, Role::Beta, Role::Bonus] {
            if let Some(x) = ga.get(role) {
                assert_close(gb.get(role).unwrap(), x, 1e-11, role.as_str());
            }
        }
        assert_close(
            gb.dh0.as_ref().unwrap(),
            ga.dh0.as_ref().unwrap(),
            1e-11,
            "dh0",
        );
        let summed = Tensor::from_vec(
            &[2, 5, 2],
            gb.dg
                .as_ref()
                .unwrap()
                .data
                .chunks(3)
                .map(|c| c.iter().sum())
                .collect(),
        )
        .unwrap();
        assert_close(&summed, ga.dg.as_ref().unwrap(), 1e-11, "dg");
    }
}

/// A zero log-gate (scalar or diagonal) and a zero constant rate equal no decay.
#[test]
fn zero_gate_equals_no_decay() {
    for none in valid_specs().into_iter().filter(|s| s.decay == Decay::None) {
        let dims = Dims::new(1, 5, 1, 2, 2);
        let mut inputs = with_h0(&none, dims, 27);
        let reference_out = reference::forward(&none, &inputs, &opts_final()).unwrap();
        for decay in [
            Decay::Scalar,
            Decay::Diagonal,
            Decay::Constant(ConstantRate::Input),
        ] {
            let spec = with_decay(none.clone(), decay);
            let shape = dims.input_shape(Role::Gate, &decay);
            match decay {
                Decay::Constant(_) => inputs.decay_rate = Some(Tensor::zeros(&[1])),
                _ => inputs.g = Some(Tensor::zeros(&shape)),
            }
            let out = reference::forward(&spec, &inputs, &opts_final()).unwrap();
            assert_eq!(out, reference_out, "{decay:?}");
            inputs.g = None;
            inputs.decay_rate = None;
        }
    }
}

/// The delta rule with β = 0 neither writes nor erases: the state is h0 under the decay
/// alone, `o_i = scale · (Π_{t≤i} e^{g_t}) h0ᵀ q_i`, and k and v get zero gradient.
#[test]
fn delta_rule_with_zero_beta_only_decays_h0() {
    for order in [DeltaOrder::DecayThenDelta, DeltaOrder::DeltaThenDecay] {
        for decay in [Decay::None, Decay::Scalar, Decay::Diagonal] {
            let spec = make_spec(
                decay,
                Transition::Delta { order },
                Write::BetaOuter,
                Read::Inclusive,
                Scale::InvSqrtK,
                false,
            );
            let mut case = Case::new(Dims::new(1, 5, 1, 3, 2));
            case.h0 = true;
            case.dht = true;
            let mut p = problem(&spec, &case);
            p.inputs.beta = Some(Tensor::zeros(&[1, 5, 1]));
            let out = reference::forward(&spec, &p.inputs, &p.opts).unwrap();
            let mut free = p.inputs.clone();
            free.beta = None;
            let (o, ht) = decayed_attention(
                case.dims,
                &Inputs {
                    k: Tensor::zeros(&free.k.shape),
                    ..free
                },
                1.0 / 3f64.sqrt(),
                |_, t, _, x| match &p.inputs.g {
                    None => 0.0,
                    Some(g) if decay == Decay::Scalar => g.data[t],
                    Some(g) => g.data[t * 3 + x],
                },
                false,
            );
            assert_close(&out.o, &o, TOL, "o");
            assert_close(out.ht.as_ref().unwrap(), &ht, TOL, "ht");
            let grads = gradients(&spec, &p);
            assert!(
                grads.dk.data.iter().all(|x| *x == 0.0),
                "{order:?} {decay:?}"
            );
            assert!(
                grads.dv.data.iter().all(|x| *x == 0.0),
                "{order:?} {decay:?}"
            );
            assert!(grads.dbeta.unwrap().data.iter().any(|x| *x != 0.0));
        }
    }
}

/// The delta rule with β = 1 and unit-norm keys memorises exactly: `S_tᵀ k_t = v_t`, so
/// reading with `q_t = k_t` at scale 1 returns `v_t` — whatever the state held — when the
/// delta acts after the decay (any decay) or commutes with it (scalar decay). With a diagonal
/// decay applied after the delta (gated_delta_net's order with a kda gate) it does not.
#[test]
fn delta_rule_with_unit_beta_retrieves_the_last_value() {
    let cases = [
        (Decay::None, DeltaOrder::DecayThenDelta, true),
        (
            Decay::Constant(ConstantRate::Retnet),
            DeltaOrder::DeltaThenDecay,
            true,
        ),
        (Decay::Scalar, DeltaOrder::DecayThenDelta, true),
        (Decay::Scalar, DeltaOrder::DeltaThenDecay, true),
        (Decay::Diagonal, DeltaOrder::DecayThenDelta, true),
        (Decay::Diagonal, DeltaOrder::DeltaThenDecay, false),
    ];
    for (decay, order, exact) in cases {
        let spec = make_spec(
            decay,
            Transition::Delta { order },
            Write::BetaOuter,
            Read::Inclusive,
            Scale::Value(1.0),
            false,
        );
        let dims = Dims::new(2, 6, 1, 3, 2).with_value_heads(2);
        let mut inputs = with_h0(&spec, dims, 28);
        unit_rows(&mut inputs.k, 3);
        inputs.q = inputs.k.clone();
        inputs.beta = Some(Tensor::from_fn(&[2, 6, 2], || 1.0));
        let out = reference::forward(&spec, &inputs, &RunOptions::default()).unwrap();
        let diff = max_abs_diff(&out.o, &inputs.v);
        if exact {
            assert!(diff < 1e-12, "{decay:?} {order:?}: {diff}");
        } else {
            assert!(diff > 1e-3, "{decay:?} {order:?}: {diff}");
        }
    }
}

/// With β = 1 the write `β k vᵀ` is the write `k vᵀ` (identity transition): same outputs,
/// final state and gradients; and (inclusive read) `dβ_t = kᵀ dS_t v = v_t · dv_t`.
#[test]
fn beta_outer_with_unit_beta_equals_outer() {
    for outer in valid_specs()
        .into_iter()
        .filter(|s| s.write == Write::Outer)
    {
        let beta_spec = make_spec(
            outer.decay,
            outer.transition,
            Write::BetaOuter,
            outer.read,
            outer.scale,
            outer.features.qk_l2norm,
        );
        let mut case = Case::new(Dims::new(1, 4, 1, 2, 2).with_value_heads(2));
        case.h0 = true;
        case.dht = true;
        let p = problem(&outer, &case);
        let mut pb = p.clone();
        pb.inputs.beta = Some(Tensor::from_fn(&[1, 4, 2], || 1.0));
        assert_eq!(
            reference::forward(&outer, &p.inputs, &p.opts).unwrap(),
            reference::forward(&beta_spec, &pb.inputs, &pb.opts).unwrap()
        );
        let (ga, gb) = (gradients(&outer, &p), gradients(&beta_spec, &pb));
        assert_eq!(ga.dq, gb.dq);
        assert_eq!(ga.dk, gb.dk);
        assert_eq!(ga.dv, gb.dv);
        assert_eq!(ga.dh0, gb.dh0);
        assert_eq!(ga.dg, gb.dg);
        assert_eq!(ga.du, gb.du);
        assert_eq!(ga.ddecay_rate, gb.ddecay_rate);
        // Inclusive read: v enters only through the write β k vᵀ, so at β = 1
        // dβ_t = kᵀ dS_t v = Σ_c v_tc dL/dv_tc.
        if outer.read != Read::Inclusive {
            continue;
        }
        let dbeta = gb.dbeta.unwrap();
        for (i, db) in dbeta.data.iter().enumerate() {
            let expect: f64 = (0..2)
                .map(|c| pb.inputs.v.data[i * 2 + c] * gb.dv.data[i * 2 + c])
                .sum();
            assert!((db - expect).abs() < 1e-12, "{db} vs {expect}");
        }
    }
}

/// Specs that share a hash compute the same function: for every pair in the table with equal
/// hashes (the delta orders under non-diagonal decays) outputs and gradients agree; the two
/// orders under a diagonal decay hash differently and compute different outputs.
#[test]
fn equal_hashes_compute_equal_functions() {
    let specs = valid_specs();
    let (mut pairs, mut kda_pairs) = (0, 0);
    let mut case = Case::new(Dims::new(2, 5, 1, 3, 2).with_value_heads(2));
    case.h0 = true;
    case.dht = true;
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[i + 1..] {
            let p = problem(a, &case);
            let run = || {
                (
                    reference::forward(a, &p.inputs, &p.opts).unwrap(),
                    reference::forward(b, &p.inputs, &p.opts).unwrap(),
                )
            };
            if a.hash() == b.hash() {
                let (oa, ob) = run();
                pairs += 1;
                assert_close(&ob.o, &oa.o, TOL, "o");
                assert_close(ob.ht.as_ref().unwrap(), oa.ht.as_ref().unwrap(), TOL, "ht");
                let (ga, gb) = (gradients(a, &p), gradients(b, &p));
                for role in Role::ALL {
                    if let Some(x) = ga.get(role) {
                        assert_close(gb.get(role).unwrap(), x, 1e-11, role.as_str());
                    }
                }
                assert_close(
                    gb.dh0.as_ref().unwrap(),
                    ga.dh0.as_ref().unwrap(),
                    1e-11,
                    "dh0",
                );
            } else if a.decay == Decay::Diagonal
                && b.decay == Decay::Diagonal
                && a.normalized().transition != b.normalized().transition
                && matches!(a.transition, Transition::Delta { .. })
                && matches!(b.transition, Transition::Delta { .. })
                && (a.scale, a.features) == (b.scale, b.features)
            {
                kda_pairs += 1;
                let (oa, ob) = run();
                assert!(max_abs_diff(&oa.o, &ob.o) > 1e-6, "kda orders must differ");
            }
        }
    }
    // 4 non-diagonal decays × 2 scales × 2 l2norm settings; 2 scales × 2 l2norm settings.
    assert_eq!(pairs, 16);
    assert_eq!(kda_pairs, 4);
}

/// GVA (HV = 2H) equals the same spec with H = HV and q, k repeated per value head; the
/// gradients of the repeated q, k sum to GVA's.
#[test]
fn gva_equals_repeated_query_key_heads() {
    for spec in valid_specs() {
        let mut case = Case::new(Dims::new(2, 4, 2, 2, 2).with_value_heads(4));
        case.h0 = true;
        case.dht = true;
        let p = problem(&spec, &case);
        let full = Dims::new(2, 4, 4, 2, 2);
        let repeat = |t: &Tensor| {
            let mut out = Tensor::zeros(&full.input_shape(Role::Query, &spec.decay));
            for (bt, rows) in out.data.chunks_mut(4 * 2).enumerate() {
                for hv in 0..4 {
                    let src = (bt * 2 + hv / 2) * 2;
                    rows[hv * 2..hv * 2 + 2].copy_from_slice(&t.data[src..src + 2]);
                }
            }
            out
        };
        let mut pf = p.clone();
        pf.inputs.q = repeat(&p.inputs.q);
        pf.inputs.k = repeat(&p.inputs.k);
        let (a, b) = (
            reference::forward(&spec, &p.inputs, &p.opts).unwrap(),
            reference::forward(&spec, &pf.inputs, &pf.opts).unwrap(),
        );
        assert_eq!(a, b);
        let (ga, gb) = (gradients(&spec, &p), gradients(&spec, &pf));
        assert_eq!(ga.dv, gb.dv);
        assert_eq!(ga.dg, gb.dg);
        assert_eq!(ga.dbeta, gb.dbeta);
        assert_eq!(ga.dh0, gb.dh0);
        if let (Some(a), Some(b)) = (&ga.du, &gb.du) {
            assert_close(b, a, TOL, "du");
        }
        assert_eq!(ga.du.is_some(), gb.du.is_some());
        assert_eq!(ga.ddecay_rate.is_some(), gb.ddecay_rate.is_some());
        if let (Some(a), Some(b)) = (&ga.ddecay_rate, &gb.ddecay_rate) {
            assert_close(b, a, TOL, "ddecay_rate");
        }
        for (grad, full_grad) in [(&ga.dq, &gb.dq), (&ga.dk, &gb.dk)] {
            let summed = Tensor::from_vec(
                &grad.shape,
                full_grad
                    .data
                    .chunks(2 * 2)
                    .flat_map(|pair| [pair[0] + pair[2], pair[1] + pair[3]])
                    .collect(),
            )
            .unwrap();
            assert_close(grad, &summed, TOL, "dq/dk");
        }
    }
}

/// In-kernel l2norm equals normalising q and k first, `x / sqrt(‖x‖² + 1e-6)`.
#[test]
fn l2norm_equals_prenormalised_inputs() {
    for spec in valid_specs().into_iter().filter(|s| s.features.qk_l2norm) {
        let mut plain = spec.clone();
        plain.features.qk_l2norm = false;
        let mut case = Case::new(Dims::new(1, 5, 1, 3, 2).with_value_heads(2));
        case.h0 = true;
        case.dht = true;
        let p = problem(&spec, &case);
        let mut pre = p.inputs.clone();
        for t in [&mut pre.q, &mut pre.k] {
            for row in t.data.chunks_mut(3) {
                let r =
                    1.0 / (row.iter().map(|x| x * x).sum::<f64>() + reference::L2NORM_EPS).sqrt();
                row.iter_mut().for_each(|x| *x *= r);
            }
        }
        let a = reference::forward(&spec, &p.inputs, &p.opts).unwrap();
        let b = reference::forward(&plain, &pre, &p.opts).unwrap();
        assert_close(&a.o, &b.o, TOL, "o");
        assert_close(a.ht.as_ref().unwrap(), b.ht.as_ref().unwrap(), TOL, "ht");
    }
}

/// The default scale is `K^-1/2`; `RunOptions::scale` overrides the spec's scale, whatever it
/// is; outputs are linear in the scale and the state does not depend on it.
#[test]
fn scale_default_fixed_and_override() {
    for spec in valid_specs()
        .into_iter()
        .filter(|s| s.scale == Scale::InvSqrtK)
    {
        let dims = Dims::new(1, 4, 1, 4, 2);
        let inputs = with_h0(&spec, dims, 29);
        let fixed = |s: f64| Spec {
            scale: Scale::Value(s),
            ..spec.clone()
        };
        let default = reference::forward(&spec, &inputs, &opts_final()).unwrap();
        let half = reference::forward(&fixed(0.5), &inputs, &opts_final()).unwrap();
        assert_eq!(default, half, "K = 4: K^-1/2 = 0.5");
        let over = RunOptions {
            scale: Some(1.5),
            ..opts_final()
        };
        let a = reference::forward(&spec, &inputs, &over).unwrap();
        let b = reference::forward(&fixed(0.7), &inputs, &over).unwrap();
        let c = reference::forward(&fixed(1.5), &inputs, &opts_final()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.ht, default.ht);
        let tripled =
            Tensor::from_vec(&a.o.shape, default.o.data.iter().map(|x| 3.0 * x).collect()).unwrap();
        assert_close(&a.o, &tripled, TOL, "o linear in scale");
    }
}

/// T = 0: empty outputs; the final state is h0; dh0 = dht and the other gradients are empty.
#[test]
fn empty_input_passes_the_state_through() {
    for spec in valid_specs() {
        let mut case = Case::new(Dims::new(2, 0, 1, 2, 3));
        case.h0 = true;
        case.dht = true;
        let p = problem(&spec, &case);
        let out = reference::forward(&spec, &p.inputs, &p.opts).unwrap();
        assert!(out.o.is_empty());
        assert_eq!(out.ht.as_ref(), p.inputs.h0.as_ref());
        let g = gradients(&spec, &p);
        assert_eq!(g.dh0.as_ref(), p.dht.as_ref());
        assert!(g.dq.is_empty() && g.dk.is_empty() && g.dv.is_empty());
        if let Some(du) = &g.du {
            assert!(du.data.iter().all(|x| *x == 0.0));
        }
        if let Some(dr) = &g.ddecay_rate {
            assert!(dr.data.iter().all(|x| *x == 0.0));
        }
    }
}
