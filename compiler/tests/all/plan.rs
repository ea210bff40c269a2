//! The plan stage: snapshots of each supported built-in's forward and backward plans, clear
//! errors for forms not derived yet, and both plans evaluated chunk by chunk in f64 against the
//! token-by-token reference (its outputs and its exact gradients) over a shape matrix.

use linrec_compiler::plan::{self, PlanError};
use linrec_spec::reference::{self, Rng, Tensor};
use linrec_spec::{
    ConstantRate, Decay, DeltaOrder, Dims, Features, Input, Read, Role, RunOptions, Scale, Spec,
    Transition, Write,
};

fn spec(name: &str, decay: Decay, extra: &[(&str, Role)]) -> Spec {
    let mut inputs = vec![
        Input::new("q", Role::Query),
        Input::new("k", Role::Key),
        Input::new("v", Role::Value),
    ];
    inputs.extend(extra.iter().map(|(n, r)| Input::new(*n, *r)));
    Spec {
        name: name.into(),
        doc: String::new(),
        inputs,
        decay,
        transition: Transition::Identity,
        write: Write::Outer,
        read: Read::Inclusive,
        scale: Scale::InvSqrtK,
        features: Features::default(),
    }
}

fn linear_attn() -> Spec {
    spec("linear_attn", Decay::None, &[])
}
fn retention() -> Spec {
    spec("retention", Decay::Constant(ConstantRate::Retnet), &[])
}
fn simple_gla() -> Spec {
    spec("simple_gla", Decay::Scalar, &[("g", Role::Gate)])
}

#[test]
fn plan_snapshots_of_the_additive_builtins() {
    for s in [linear_attn(), retention(), simple_gla()] {
        let p = plan::forward(&s).expect("additive family is supported");
        insta::assert_snapshot!(format!("plan_forward_{}", s.name), p.to_string());
    }
}

#[test]
fn forms_not_derived_yet_are_named() {
    let gla = spec("gla", Decay::Diagonal, &[("g", Role::Gate)]);
    let mut delta = spec("delta_net", Decay::None, &[("beta", Role::Beta)]);
    delta.transition = Transition::Delta {
        order: DeltaOrder::DecayThenDelta,
    };
    delta.write = Write::BetaOuter;
    let mut rwkv = spec(
        "rwkv",
        Decay::Scalar,
        &[("g", Role::Gate), ("u", Role::Bonus)],
    );
    rwkv.read = Read::ExclusiveBonus;
    for (s, form) in [
        (gla, "not yet supported: the diagonal decay"),
        (delta, "not yet supported: the delta-rule transition"),
        (rwkv, "not yet supported: the exclusive read with bonus"),
    ] {
        for err in [
            plan::forward(&s).expect_err("not derived yet"),
            plan::backward(&s).expect_err("not derived yet"),
        ] {
            assert!(matches!(err, PlanError::NotYetSupported { .. }));
            assert!(err.to_string().contains(form), "{err}");
        }
    }
    let mut invalid = simple_gla();
    invalid.inputs.pop();
    assert!(matches!(plan::forward(&invalid), Err(PlanError::Spec(_))));
    assert!(matches!(plan::backward(&invalid), Err(PlanError::Spec(_))));
}

/// Runs the plan and the reference on the same random inputs and returns the worst ratio.
fn compare(s: &Spec, dims: Dims, cu: Option<Vec<i64>>, h0: bool, chunk: usize, seed: u64) -> f64 {
    compare_plan(
        s,
        &plan::forward(s).expect("supported"),
        dims,
        cu,
        h0,
        chunk,
        seed,
    )
}

/// Random inputs of `s` (seeded), h0 when asked (from `Rng::new(seed + 1)`, which is returned
/// for the caller's further draws) and run options with `cu`.
fn random_case(
    s: &Spec,
    dims: Dims,
    cu: Option<Vec<i64>>,
    h0: bool,
    seed: u64,
) -> (reference::Inputs, RunOptions, Rng) {
    let mut inputs = reference::random_inputs(s, &dims, seed);
    let n = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
    let mut rng = Rng::new(seed + 1);
    if h0 {
        inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(n), || rng.normal()));
    }
    let opts = RunOptions {
        cu_seqlens: cu,
        output_final_state: true,
        ..Default::default()
    };
    (inputs, opts, rng)
}

/// [`compare`] for a given plan of `s`.
fn compare_plan(
    s: &Spec,
    p: &plan::Plan,
    dims: Dims,
    cu: Option<Vec<i64>>,
    h0: bool,
    chunk: usize,
    seed: u64,
) -> f64 {
    let (inputs, opts, _) = random_case(s, dims, cu, h0, seed);
    let want = reference::forward(s, &inputs, &opts).expect("reference runs");
    let got = plan::eval::forward(p, s, &inputs, &opts, chunk).expect("plan runs");
    let ro = got.o.rel_error(&want.o);
    let rh = got
        .ht
        .as_ref()
        .zip(want.ht.as_ref())
        .map_or(f64::INFINITY, |(a, b)| a.rel_error(b));
    ro.max(rh)
}

/// The fusion pass keeps every value: the fused plans (with and without matmul sums) match
/// the reference like the unfused ones, and the elementwise chains did fuse.
#[test]
fn fused_plans_compute_the_same_values() {
    let mut seed = 500;
    for s in supported_specs() {
        let unfused = plan::forward(&s).expect("supported");
        for sums in [true, false] {
            let p = plan::fuse(&unfused, &plan::FuseOptions { matmul_sums: sums });
            assert!(
                p.nodes.len() < unfused.nodes.len(),
                "{}: nothing fused",
                s.name
            );
            let text = p.to_string();
            assert!(
                text.contains("fused acc = "),
                "{}: no matmul epilogue\n{text}",
                s.name
            );
            // o = scale·(Q' h + A V): two matmuls in one accumulator, only with sums.
            let summed = text.lines().any(|l| {
                l.split("acc = ")
                    .nth(1)
                    .and_then(|r| r.split(';').next())
                    .is_some_and(|acc| acc.contains(" + "))
            });
            assert_eq!(summed, sums, "{}\n{text}", s.name);
            for chunk in [16, 64] {
                for (dims, cu, h0) in [
                    (Dims::new(1, 63, 1, 60, 12), None, true),
                    (Dims::new(2, 75, 2, 13, 20).with_value_heads(4), None, true),
                    (
                        Dims::new(1, 130, 1, 8, 8),
                        Some(vec![0, 0, 17, 17, 130]),
                        true,
                    ),
                ] {
                    seed += 1;
                    let r = compare_plan(&s, &p, dims, cu.clone(), h0, chunk, seed);
                    assert!(
                        r < 1e-10,
                        "{} sums {sums} chunk {chunk} {dims:?}: {r:e}",
                        s.name
                    );
                }
            }
        }
    }
    let p = plan::fuse(
        &plan::forward(&simple_gla()).expect("supported"),
        &plan::FuseOptions { matmul_sums: true },
    );
    insta::assert_snapshot!("plan_forward_simple_gla_fused", p.to_string());
}

/// Every forward form the compiler derives, a user spec (β-write, L2 norm) and an input
/// decay rate among them.
fn supported_specs() -> Vec<Spec> {
    let mut with_beta = simple_gla();
    with_beta.name = "beta_gla".into();
    with_beta.write = Write::BetaOuter;
    with_beta.features = Features { qk_l2norm: true };
    with_beta.inputs.push(Input::new("beta", Role::Beta));
    let mut rate = spec(
        "rate",
        Decay::Constant(ConstantRate::Input),
        &[("lg", Role::DecayRate)],
    );
    rate.scale = Scale::Value(0.5);
    vec![linear_attn(), retention(), simple_gla(), with_beta, rate]
}

#[test]
fn plan_matches_reference_over_the_shape_matrix() {
    let specs = supported_specs();
    let mut seed = 0;
    for s in &specs {
        for chunk in [16, 32, 64] {
            for (dims, cu, h0) in [
                (Dims::new(2, 1, 2, 16, 8), None, false),
                (Dims::new(1, 63, 1, 60, 12), None, true),
                (Dims::new(2, 75, 2, 13, 20).with_value_heads(4), None, true),
                (
                    Dims::new(1, 130, 1, 8, 8),
                    Some(vec![0, 0, 17, 17, 130]),
                    true,
                ),
                (Dims::new(1, 0, 1, 8, 8), None, true),
            ] {
                seed += 1;
                let r = compare(s, dims, cu.clone(), h0, chunk, seed);
                assert!(
                    r < 1e-10,
                    "{} chunk {chunk} dims {dims:?} cu {cu:?}: ratio {r:e}",
                    s.name
                );
            }
        }
    }
}

/// The backward plans of the additive built-ins, derived by reverse-mode AD of the forward
/// plans. Reviewed by hand against fla's hand-derived simple_gla backward
/// (shared/reference/fla.md §2.1); in the simple_gla snapshot:
///
/// - `dh` (state_grad) = `e^{b_C} dh' + (Q ⊙ 2^b)ᵀ (scale·dO)`: the adjoint of `hd = h·2^{b_C}`
///   (dh'·2^{b_C}) plus that of `inter = (Q ⊙ 2^b) h` — DESIGN §5's reverse scan.
/// - dq = `(scale·dO hᵀ) ⊙ 2^b + dA_masked K` with `dA = (scale·dO) Vᵀ ⊙ Γ`: fla's dq.
/// - The gate: `b = cumsum(g)·log2 e` collects four terms, and `dg = reverse_cumsum(db·log2 e)`:
///   1. `row_sum(dQd ⊙ Q) ⊙ 2^b ⊙ ln2` — q_i·dq_i of the inter-chunk term,
///   2. `row_sum(dM) − col_sum(dM)` with `dM = dA ⊙ QKᵀ ⊙ Γ ⊙ ln2` (masked) — q_i·dq_i minus
///      k_i·dk_i of the intra-chunk term,
///   3. `−(row_sum(dKd ⊙ K) ⊙ 2^{b_C−b} ⊙ ln2)` — minus k_i·dk_i of the state write,
///   4. `scatter_last(sum(those write terms) + 2^{b_C}·ln2·sum(h ⊙ dh'))` — the last-row state
///      term.
///
///   Since `log2 e · ln2 = 1`, this is exactly fla's `dg = reverse local cumsum of
///   (q⊙dq − k⊙dk)` plus `e^{G_last} Σ(h⊙dh) + Σ(k⊙dk_write)` on the last row (fla's `dk` there
///   being the write's part, which the derivation keeps separate before adding it into dk).
///   No inter-chunk term appears: g reaches other chunks only through `b_C`.
/// - linear_attn has no gate and no decay nodes; retention's constant gate has no gradient (the
///   RetNet schedule is fixed), so its gate adjoints are dead and dropped: its backward plan
///   only recomputes Γ and the decays. No plan computes a gradient of the scale or a constant.
#[test]
fn backward_plan_snapshots_of_the_additive_builtins() {
    for s in [linear_attn(), retention(), simple_gla()] {
        let p = plan::backward(&s).expect("additive family is supported");
        // No dead code: every node feeds a later node or a sink.
        for (i, _) in p.nodes.iter().enumerate() {
            let used = p.nodes[i + 1..]
                .iter()
                .any(|n| n.op.operands().contains(&plan::ValueId(i)))
                || p.sinks.iter().any(|(_, v)| v.0 == i);
            assert!(used, "%{i} of {} is dead:\n{p}", s.name);
        }
        insta::assert_snapshot!(format!("plan_backward_{}", s.name), p.to_string());
    }
}

/// Every gradient's ratio to the reference (0 when neither side has that gradient).
fn compare_backward(
    s: &Spec,
    dims: Dims,
    cu: Option<Vec<i64>>,
    h0: bool,
    chunk: usize,
    seed: u64,
) -> Vec<(&'static str, f64)> {
    let p = plan::backward(s).expect("supported");
    compare_backward_plan(s, &p, dims, cu, h0, chunk, seed)
}

/// [`compare_backward`] for a given backward plan of `s`.
fn compare_backward_plan(
    s: &Spec,
    p: &plan::Plan,
    dims: Dims,
    cu: Option<Vec<i64>>,
    h0: bool,
    chunk: usize,
    seed: u64,
) -> Vec<(&'static str, f64)> {
    let n = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
    let (inputs, opts, mut rng) = random_case(s, dims, cu, h0, seed);
    let dht = h0.then(|| Tensor::from_fn(&dims.state_shape(n), || rng.normal()));
    let d_o = Tensor::from_fn(&dims.output_shape(), || rng.normal());
    let want = reference::backward(s, &inputs, &opts, &d_o, dht.as_ref()).expect("reference");
    let got =
        plan::eval::backward(p, s, &inputs, &opts, &d_o, dht.as_ref(), chunk).expect("plan runs");
    let pair = |name, a: Option<&Tensor>, b: Option<&Tensor>| match (a, b) {
        (Some(a), Some(b)) => (name, a.rel_error(b)),
        (None, None) => (name, 0.0),
        // One side has the gradient and the other not: a failure.
        _ => (name, f64::INFINITY),
    };
    vec![
        pair("dq", Some(&got.dq), Some(&want.dq)),
        pair("dk", Some(&got.dk), Some(&want.dk)),
        pair("dv", Some(&got.dv), Some(&want.dv)),
        pair("dg", got.dg.as_ref(), want.dg.as_ref()),
        pair("dbeta", got.dbeta.as_ref(), want.dbeta.as_ref()),
        pair("du", got.du.as_ref(), want.du.as_ref()),
        pair(
            "ddecay_rate",
            got.ddecay_rate.as_ref(),
            want.ddecay_rate.as_ref(),
        ),
        pair("dh0", got.dh0.as_ref(), want.dh0.as_ref()),
    ]
}

/// The backward kernels run fused plans: fused, every derived backward still gives the
/// reference's exact gradients (and did fuse).
#[test]
fn fused_backward_plans_compute_the_same_gradients() {
    let mut seed = 900;
    for s in supported_specs() {
        let unfused = plan::backward(&s).expect("supported");
        let p = plan::fuse(&unfused, &plan::FuseOptions { matmul_sums: true });
        assert!(
            p.nodes.len() < unfused.nodes.len(),
            "{}: nothing fused",
            s.name
        );
        for chunk in [16, 64] {
            for (dims, cu, h0) in shape_matrix() {
                seed += 1;
                for (name, r) in compare_backward_plan(&s, &p, dims, cu.clone(), h0, chunk, seed) {
                    assert!(r < 1e-9, "{} {name} chunk {chunk} {dims:?}: {r:e}", s.name);
                }
            }
        }
    }
}

/// The forward tests' shapes: odd T, GVA, varlen with empty sequences, T = 0; h0 + dht on all
/// but the first.
fn shape_matrix() -> Vec<(Dims, Option<Vec<i64>>, bool)> {
    vec![
        (Dims::new(2, 1, 2, 16, 8), None, false),
        (Dims::new(1, 63, 1, 60, 12), None, true),
        (Dims::new(2, 75, 2, 13, 20).with_value_heads(4), None, true),
        (
            Dims::new(1, 130, 1, 8, 8),
            Some(vec![0, 0, 17, 17, 130]),
            true,
        ),
        (Dims::new(1, 0, 1, 8, 8), None, true),
    ]
}

/// Runs the evaluated backward plan against the reference's exact gradients; returns the worst
/// ratio per gradient over the matrix.
fn backward_matrix(specs: &[Spec], seed0: u64) -> Vec<(&'static str, f64)> {
    let mut worst: Vec<(&'static str, f64)> = Vec::new();
    let mut seed = seed0;
    for s in specs {
        for chunk in [16, 32, 64] {
            for (dims, cu, h0) in shape_matrix() {
                seed += 1;
                for (name, r) in compare_backward(s, dims, cu.clone(), h0, chunk, seed) {
                    assert!(
                        r < 1e-9,
                        "{}: {name} chunk {chunk} dims {dims:?} cu {cu:?}: ratio {r:e}",
                        s.name
                    );
                    match worst.iter_mut().find(|(n, _)| *n == name) {
                        Some(w) => w.1 = w.1.max(r),
                        None => worst.push((name, r)),
                    }
                }
            }
        }
    }
    worst
}

fn beta_l2norm_gla() -> Spec {
    let mut s = simple_gla();
    s.name = "beta_gla".into();
    s.write = Write::BetaOuter;
    s.features = Features { qk_l2norm: true };
    s.inputs.push(Input::new("beta", Role::Beta));
    s
}

fn input_rate() -> Spec {
    let mut s = spec(
        "rate",
        Decay::Constant(ConstantRate::Input),
        &[("lg", Role::DecayRate)],
    );
    s.scale = Scale::Value(0.5);
    s
}

#[test]
fn backward_plan_matches_reference_gradients_over_the_shape_matrix() {
    let specs = [
        linear_attn(),
        retention(),
        simple_gla(),
        beta_l2norm_gla(),
        input_rate(),
    ];
    let worst = backward_matrix(&specs, 1000);
    // The constant input rate's gradient is derived too (summed over the valid rows).
    assert!(worst.iter().any(|(n, r)| *n == "ddecay_rate" && *r > 0.0));
    eprintln!("worst ratios: {worst:?}");
}

/// A variant that is no built-in — a β write with a constant decay read from an input, a fixed
/// scale and in-kernel l2norm — gets its backward from the same derivation.
#[test]
fn a_user_spec_gets_a_correct_backward() {
    let mut user = spec(
        "my_beta_decay",
        Decay::Constant(ConstantRate::Input),
        &[("beta", Role::Beta), ("log_gamma", Role::DecayRate)],
    );
    user.write = Write::BetaOuter;
    user.scale = Scale::Value(0.3);
    user.features = Features { qk_l2norm: true };
    let p = plan::backward(&user).expect("additive family");
    let text = p.to_string();
    for sink in [
        "grad beta",
        "grad decay_rate",
        "l2norm_rows_vjp",
        "valid_rows",
    ] {
        assert!(text.contains(sink), "{sink} missing from\n{text}");
    }
    let worst = backward_matrix(&[user], 5000);
    eprintln!("worst ratios: {worst:?}");
}

#[test]
fn backward_eval_rejects_bad_arguments() {
    let s = simple_gla();
    let dims = Dims::new(1, 5, 1, 4, 3);
    let inputs = reference::random_inputs(&s, &dims, 3);
    let opts = RunOptions::default();
    let good = Tensor::zeros(&dims.output_shape());
    let bwd = plan::backward(&s).expect("supported");
    let fwd = plan::forward(&s).expect("supported");
    let bad = Tensor::zeros(&[1, 5, 1, 4]);
    let err = plan::eval::backward(&bwd, &s, &inputs, &opts, &bad, None, 16).expect_err("shape");
    assert!(err.to_string().contains("`do`"), "{err}");
    let bad_dht = Tensor::zeros(&[2, 1, 4, 3]);
    let err = plan::eval::backward(&bwd, &s, &inputs, &opts, &good, Some(&bad_dht), 16)
        .expect_err("dht shape");
    assert!(err.to_string().contains("`dht`"), "{err}");
    let err = plan::eval::backward(&fwd, &s, &inputs, &opts, &good, None, 16)
        .expect_err("a forward plan");
    assert!(err.to_string().contains("forward plan"), "{err}");
    let err = plan::eval::backward(&bwd, &s, &inputs, &opts, &good, None, 0).expect_err("C = 0");
    assert!(err.to_string().contains("C = 0"), "{err}");
    assert!(plan::eval::forward(&fwd, &s, &inputs, &opts, 0).is_err());
}

/// `plan::segment_plan`: every supported spec's state update (and its backward's dh update)
/// has the split-scan's form `S' = d·S + U`, with `d` a sink exactly when the spec decays; an
/// update that reads the state elementwise (`S ⊙ S`) has not.
#[test]
fn segment_plans_find_the_additive_update_and_its_decay() {
    use plan::{Node, Op, Sink};
    for s in supported_specs() {
        let decays = s.decay != Decay::None;
        let fwd = plan::forward(&s).expect("forward plan");
        let dh = plan::backward(&s)
            .expect("backward plan")
            .keep_sinks(|k| k == Sink::StateGrad);
        for (p, carried) in [(&fwd, Sink::StateOut), (&dh, Sink::StateGrad)] {
            let seg = plan::segment_plan(p).unwrap_or_else(|| panic!("{}: {p}", s.name));
            let sinks: Vec<Sink> = seg.sinks.iter().map(|(k, _)| *k).collect();
            let want = match decays {
                true => vec![carried, Sink::StateDecay],
                false => vec![carried],
            };
            assert_eq!(sinks, want, "{}", s.name);
            if let Some((_, d)) = seg.sinks.get(1) {
                assert!(seg.node(*d).shape.rank() == 0, "{}: a scalar decay", s.name);
            }
        }
        // The next state from S ⊙ S + U: reads S beyond a scaling.
        let mut bad = fwd.clone();
        let (_, next) = bad.sinks[1];
        let Op::Add(_, u) = bad.node(next).op else {
            panic!("{}: the state update is an add", s.name)
        };
        let state = (bad.nodes.iter())
            .position(|n| n.op == Op::StateIn)
            .expect("state_in");
        let shape = bad.node(next).shape.clone();
        let id = |i: usize| plan::ValueId(i);
        bad.nodes.push(Node {
            op: Op::Mul(id(state), id(state)),
            shape: shape.clone(),
        });
        bad.nodes.push(Node {
            op: Op::Add(id(bad.nodes.len() - 1), u),
            shape,
        });
        bad.sinks[1] = (Sink::StateOut, id(bad.nodes.len() - 1));
        assert!(plan::segment_plan(&bad).is_none(), "{}", s.name);
    }
}
