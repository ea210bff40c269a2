//! The plan stage: snapshots of each supported built-in's forward plan, clear errors for forms
//! not derived yet, and the plan evaluated chunk by chunk in f64 against the token-by-token
//! reference over a shape matrix.

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
        let err = plan::forward(&s).expect_err("not derived yet");
        assert!(matches!(err, PlanError::NotYetSupported { .. }));
        assert!(err.to_string().contains(form), "{err}");
    }
    let mut invalid = simple_gla();
    invalid.inputs.pop();
    assert!(matches!(plan::forward(&invalid), Err(PlanError::Spec(_))));
}

/// Runs the plan and the reference on the same random inputs and returns the worst ratio.
fn compare(s: &Spec, dims: Dims, cu: Option<Vec<i64>>, h0: bool, chunk: usize, seed: u64) -> f64 {
    let p = plan::forward(s).expect("supported");
    let mut inputs = reference::random_inputs(s, &dims, seed);
    let n = cu.as_ref().map_or(dims.batch, |c| c.len() - 1);
    if h0 {
        let mut rng = Rng::new(seed + 1);
        inputs.h0 = Some(Tensor::from_fn(&dims.state_shape(n), || rng.normal()));
    }
    let opts = RunOptions {
        cu_seqlens: cu,
        output_final_state: true,
        ..Default::default()
    };
    let want = reference::forward(s, &inputs, &opts).expect("reference runs");
    let got = plan::eval::forward(&p, s, &inputs, &opts, chunk).expect("plan runs");
    let ro = got.o.rel_error(&want.o);
    let rh = got
        .ht
        .as_ref()
        .zip(want.ht.as_ref())
        .map_or(f64::INFINITY, |(a, b)| a.rel_error(b));
    ro.max(rh)
}

#[test]
fn plan_matches_reference_over_the_shape_matrix() {
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
    let specs = [linear_attn(), retention(), simple_gla(), with_beta, rate];
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
