//! Every malformed call returns a typed error naming the problem — never a panic.

use crate::common::{base_spec, make_spec, normal, valid_specs};
use linrec_spec::reference::{self, Inputs, ReferenceError, Rng, Tensor};
use linrec_spec::{
    Decay, Dims, Input, Read, Role, RunOptions, Scale, ShapeError, Spec, SpecError, Transition,
    Write,
};
use proptest::prelude::*;

fn gla() -> Spec {
    make_spec(
        Decay::Diagonal,
        Transition::Identity,
        Write::Outer,
        Read::Inclusive,
        Scale::InvSqrtK,
        false,
    )
}

fn varlen(cu: &[i64]) -> RunOptions {
    RunOptions {
        cu_seqlens: Some(cu.to_vec()),
        ..Default::default()
    }
}

/// Runs forward and backward (with well-shaped `do` when the dims can be read) and asserts
/// both fail with the same error, whose message contains every one of `needles`.
#[track_caller]
fn both_fail(spec: &Spec, inputs: &Inputs, opts: &RunOptions, needles: &[&str]) -> ReferenceError {
    let fwd = reference::forward(spec, inputs, opts).expect_err("forward must fail");
    // The inputs are checked before `do`, so any `do` gives the inputs' error.
    let bwd = reference::backward(spec, inputs, opts, &Tensor::zeros(&[0]), None)
        .expect_err("backward must fail");
    // (compared as text: an error carrying a NaN is not equal to itself)
    assert_eq!(fwd.to_string(), bwd.to_string());
    let msg = fwd.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
    }
    fwd
}

fn shape_error(e: ReferenceError) -> ShapeError {
    match e {
        ReferenceError::Shape(s) => s,
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn cu_seqlens_not_starting_at_zero() {
    let spec = base_spec();
    let inputs = reference::random_inputs(&spec, &Dims::new(1, 7, 1, 2, 2), 1);
    let e = both_fail(
        &spec,
        &inputs,
        &varlen(&[1, 3, 7]),
        &[
            "cu_seqlens [1, 3, 7] is malformed",
            "the first offset is not 0",
            "T = 7",
        ],
    );
    assert!(matches!(
        shape_error(e),
        ShapeError::BadCuSeqlens { t: 7, .. }
    ));
}

#[test]
fn cu_seqlens_decreasing() {
    let spec = base_spec();
    let inputs = reference::random_inputs(&spec, &Dims::new(1, 7, 1, 2, 2), 1);
    for cu in [&[0, 5, 3, 7][..], &[0, -1, 7]] {
        let e = both_fail(&spec, &inputs, &varlen(cu), &["the offsets decrease"]);
        assert!(matches!(shape_error(e), ShapeError::BadCuSeqlens { .. }));
    }
}

#[test]
fn cu_seqlens_last_offset_not_t() {
    let spec = base_spec();
    let inputs = reference::random_inputs(&spec, &Dims::new(1, 7, 1, 2, 2), 1);
    for cu in [&[0, 3, 6][..], &[0, 3, 8], &[0, 0]] {
        let e = both_fail(
            &spec,
            &inputs,
            &varlen(cu),
            &["the last offset is not T", "end at T = 7"],
        );
        assert!(matches!(shape_error(e), ShapeError::BadCuSeqlens { .. }));
    }
}

#[test]
fn cu_seqlens_too_short() {
    let spec = base_spec();
    let inputs = reference::random_inputs(&spec, &Dims::new(1, 0, 1, 2, 2), 1);
    for cu in [&[][..], &[0]] {
        let e = both_fail(&spec, &inputs, &varlen(cu), &["at least two entries"]);
        assert!(matches!(shape_error(e), ShapeError::BadCuSeqlens { .. }));
    }
}

#[test]
fn varlen_needs_batch_one() {
    let spec = base_spec();
    let inputs = reference::random_inputs(&spec, &Dims::new(2, 4, 1, 2, 2), 1);
    let e = both_fail(
        &spec,
        &inputs,
        &varlen(&[0, 2, 4]),
        &["varlen", "needs batch B = 1", "got B = 2"],
    );
    assert_eq!(shape_error(e), ShapeError::VarlenBatch { b: 2 });
}

#[test]
fn value_heads_not_a_multiple_of_heads() {
    let spec = base_spec();
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 2, 2, 2), 1);
    inputs.v = Tensor::zeros(&[1, 3, 3, 2]);
    let e = both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["HV = 3 is not a multiple of query/key heads H = 2"],
    );
    assert_eq!(shape_error(e), ShapeError::HeadsNotMultiple { h: 2, hv: 3 });
}

#[test]
fn zero_dimensions() {
    let spec = base_spec();
    for (shape_q, shape_v, name) in [
        ([0, 3, 1, 2], [0, 3, 1, 2], "B = 0"),
        ([1, 3, 0, 2], [1, 3, 0, 2], "H = 0"),
        ([1, 3, 1, 0], [1, 3, 1, 2], "K = 0"),
        ([1, 3, 1, 2], [1, 3, 1, 0], "V = 0"),
    ] {
        let inputs = Inputs {
            q: Tensor::zeros(&shape_q),
            k: Tensor::zeros(&shape_q),
            v: Tensor::zeros(&shape_v),
            g: None,
            beta: None,
            u: None,
            decay_rate: None,
            h0: None,
        };
        let e = both_fail(
            &spec,
            &inputs,
            &RunOptions::default(),
            &[name, "at least 1"],
        );
        assert!(matches!(shape_error(e), ShapeError::BadDim { .. }));
    }
}

#[test]
fn wrong_rank_of_q_or_v() {
    let spec = base_spec();
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 2, 2), 1);
    inputs.q = Tensor::zeros(&[3, 1, 2]);
    both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["tensor `q`", "rank 4: [B, T, H, K]"],
    );
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 2, 2), 1);
    inputs.v = Tensor::zeros(&[1, 3, 1, 2, 1]);
    both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["tensor `v`", "rank 4: [B, T, HV, V]"],
    );
}

/// Each tensor with a wrong shape is named, with the expected concrete and symbolic shapes.
#[test]
fn wrong_tensor_shapes() {
    let dims = Dims::new(2, 3, 1, 2, 4).with_value_heads(2);
    let all_specs = valid_specs();
    let mut covered = Vec::new();
    for spec in &all_specs {
        for role in spec.required_roles() {
            // q fixes B, T, H and K: the other tensors are checked against it.
            if role == Role::Query || covered.contains(&(role, spec.decay == Decay::Diagonal)) {
                continue;
            }
            covered.push((role, spec.decay == Decay::Diagonal));
            let mut inputs = reference::random_inputs(spec, &dims, 2);
            let expected = dims.input_shape(role, &spec.decay);
            let mut wrong = expected.clone();
            *wrong.last_mut().unwrap() += 1;
            let slot = match role {
                Role::Query | Role::Key => &mut inputs.k,
                Role::Value => {
                    // v fixes HV and V: make its batch disagree instead.
                    wrong = expected.clone();
                    wrong[0] = 1;
                    &mut inputs.v
                }
                Role::Gate => inputs.g.as_mut().unwrap(),
                Role::Beta => inputs.beta.as_mut().unwrap(),
                Role::Bonus => inputs.u.as_mut().unwrap(),
                Role::DecayRate => inputs.decay_rate.as_mut().unwrap(),
            };
            *slot = Tensor::zeros(&wrong);
            let name = spec.input(role).unwrap().name.clone();
            let e = both_fail(
                spec,
                &inputs,
                &RunOptions::default(),
                &[
                    &format!("tensor `{name}` has shape {wrong:?}, expected {expected:?}"),
                    role.shape_text(&spec.decay),
                ],
            );
            assert!(matches!(shape_error(e), ShapeError::TensorShape { .. }));
        }
    }
    // k, v, scalar gate, vector gate, beta, bonus, decay rate (q is the reference shape).
    assert!(covered.len() >= 8, "{covered:?}");
}

/// A tensor whose data length disagrees with its shape is a shape error, not an out-of-bounds
/// index.
#[test]
fn data_length_disagrees_with_shape() {
    let spec = gla();
    let dims = Dims::new(1, 3, 1, 2, 2);
    let mut inputs = reference::random_inputs(&spec, &dims, 3);
    inputs.g.as_mut().unwrap().data.pop();
    both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &[
            "tensor `g`",
            "[1, 3, 1, 2]",
            "its data holds 5 values, not 6",
        ],
    );
    let mut inputs = reference::random_inputs(&spec, &dims, 3);
    inputs.q.data.push(0.0);
    both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["tensor `q`", "its data holds 7 values, not 6"],
    );
}

/// Shapes whose element count overflows `usize` are rejected, not multiplied into a panic.
#[test]
fn overflowing_shapes() {
    let spec = base_spec();
    let huge = usize::MAX / 2;
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 4, 2), 1);
    inputs.q = Tensor {
        shape: vec![1, huge, 1, 4],
        data: vec![],
    };
    both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["tensor `q`", "element count overflows"],
    );
    // A huge batch: rejected before anything is sized by B (one span per batch row).
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 1, 1, 1, 1), 1);
    inputs.q = Tensor {
        shape: vec![huge, 1, 1, 1],
        data: vec![],
    };
    both_fail(&spec, &inputs, &RunOptions::default(), &["tensor `q`"]);
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 2, 2), 1);
    inputs.h0 = Some(Tensor {
        shape: vec![1, 1, 2, 2],
        data: vec![0.0; 4],
    });
    inputs.v = Tensor {
        shape: vec![1, 3, huge, 2],
        data: vec![],
    };
    both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["tensor `v`", "element count overflows"],
    );
}

#[test]
fn wrong_h0_shape() {
    let spec = base_spec();
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 7, 1, 2, 3), 1);
    // three sequences need three rows
    inputs.h0 = Some(Tensor::zeros(&[1, 1, 2, 3]));
    let e = both_fail(
        &spec,
        &inputs,
        &varlen(&[0, 0, 3, 7]),
        &[
            "tensor `h0` has shape [1, 1, 2, 3], expected [3, 1, 2, 3]",
            "[N, HV, K, V]",
        ],
    );
    assert!(matches!(shape_error(e), ShapeError::TensorShape { .. }));
    inputs.h0 = Some(Tensor::zeros(&[3, 1, 3, 2]));
    both_fail(&spec, &inputs, &varlen(&[0, 0, 3, 7]), &["tensor `h0`"]);
}

/// A tensor the spec needs but was not given is named by the spec's input name.
#[test]
fn missing_tensor() {
    let mut spec = gla();
    spec.inputs[3] = Input::new("w", Role::Gate);
    let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 2, 2), 1);
    inputs.g = None;
    let e = both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["tensor `w` (gate, shape [B, T, HV, K]) is required by this spec but was not given"],
    );
    assert!(matches!(shape_error(e), ShapeError::MissingTensor { .. }));
    for role in [Role::Beta, Role::Bonus, Role::DecayRate] {
        let spec = valid_specs()
            .into_iter()
            .find(|s| s.input(role).is_some())
            .unwrap();
        let mut inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 2, 2), 1);
        match role {
            Role::Beta => inputs.beta = None,
            Role::Bonus => inputs.u = None,
            _ => inputs.decay_rate = None,
        }
        let e = both_fail(
            &spec,
            &inputs,
            &RunOptions::default(),
            &[role.as_str(), "was not given"],
        );
        assert!(matches!(shape_error(e), ShapeError::MissingTensor { .. }));
    }
}

/// A tensor the spec has no input for is rejected, listing the spec's inputs.
#[test]
fn unexpected_tensor() {
    let spec = base_spec();
    let dims = Dims::new(1, 3, 1, 2, 2);
    let mut rng = Rng::new(4);
    for role in [Role::Gate, Role::Beta, Role::Bonus, Role::DecayRate] {
        let mut inputs = reference::random_inputs(&spec, &dims, 1);
        let t = normal(&dims.input_shape(role, &Decay::Scalar), &mut rng);
        match role {
            Role::Gate => inputs.g = Some(t),
            Role::Beta => inputs.beta = Some(t),
            Role::Bonus => inputs.u = Some(t),
            _ => inputs.decay_rate = Some(t),
        }
        let e = both_fail(
            &spec,
            &inputs,
            &RunOptions::default(),
            &[
                &format!(
                    "tensor `{}` was given but this spec has no such input",
                    role.as_str()
                ),
                "its inputs are: q, k, v",
            ],
        );
        assert!(matches!(
            shape_error(e),
            ShapeError::UnexpectedTensor { .. }
        ));
    }
}

/// An invalid spec is reported as the spec's own error.
#[test]
fn invalid_spec() {
    let mut spec = gla();
    spec.inputs.pop();
    let inputs = reference::random_inputs(&base_spec(), &Dims::new(1, 3, 1, 2, 2), 1);
    let e = both_fail(
        &spec,
        &inputs,
        &RunOptions::default(),
        &["needs an input with role `gate`"],
    );
    assert!(matches!(
        e,
        ReferenceError::Spec(SpecError::MissingInput { .. })
    ));
}

/// A `RunOptions::scale` override must be a positive finite number, like a spec's scale.
#[test]
fn bad_scale_override() {
    let spec = base_spec();
    let inputs = reference::random_inputs(&spec, &Dims::new(1, 3, 1, 2, 2), 1);
    for bad in [f64::NAN, 0.0, -1.0, f64::INFINITY] {
        let opts = RunOptions {
            scale: Some(bad),
            ..Default::default()
        };
        let e = both_fail(
            &spec,
            &inputs,
            &opts,
            &["is not allowed", "positive finite"],
        );
        assert!(matches!(
            e,
            ReferenceError::Spec(SpecError::BadScale { .. })
        ));
    }
}

#[test]
fn wrong_do_and_dht_shapes() {
    let spec = base_spec();
    let dims = Dims::new(1, 7, 1, 2, 3);
    let mut inputs = reference::random_inputs(&spec, &dims, 1);
    inputs.h0 = Some(Tensor::zeros(&dims.state_shape(3)));
    let opts = varlen(&[0, 0, 3, 7]);
    let good_do = Tensor::zeros(&dims.output_shape());
    let good_dht = Tensor::zeros(&dims.state_shape(3));
    assert!(reference::backward(&spec, &inputs, &opts, &good_do, Some(&good_dht)).is_ok());
    let e = reference::backward(&spec, &inputs, &opts, &Tensor::zeros(&[1, 7, 1, 2]), None)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor `do` has shape [1, 7, 1, 2], expected [1, 7, 1, 3] ([B, T, HV, V])"),
        "{e}"
    );
    let short = Tensor {
        shape: vec![1, 7, 1, 3],
        data: vec![0.0; 20],
    };
    let e = reference::backward(&spec, &inputs, &opts, &short, None).unwrap_err();
    assert!(e.to_string().contains("tensor `do`"), "{e}");
    let e = reference::backward(
        &spec,
        &inputs,
        &opts,
        &good_do,
        Some(&Tensor::zeros(&[1, 1, 2, 3])),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor `dht` has shape [1, 1, 2, 3], expected [3, 1, 2, 3] ([N, HV, K, V])"),
        "{e}"
    );
    assert!(matches!(shape_error(e), ShapeError::TensorShape { .. }));
}

fn arb_shape(rank: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..4, rank)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random small dims, random (often malformed) cu_seqlens, random spec, random h0 /
    /// do / dht shapes, occasionally a tensor of random shape: forward and backward return
    /// `Ok` or a typed error, never panic, and a forward that succeeds is finite.
    #[test]
    fn never_panics(
        spec_index in 0usize..120,
        (b, t, h, group, k, v) in (1usize..3, 0usize..6, 1usize..3, 1usize..3, 1usize..4, 1usize..3),
        hv_delta in 0usize..2,
        cu in prop::option::of(prop::collection::vec(-2i64..9, 0..5)),
        h0_rows in prop::option::of(0usize..5),
        dht_rows in prop::option::of(0usize..5),
        do_shape in prop::option::of(arb_shape(3..=5)),
        scrambled in prop::option::of((0usize..7, arb_shape(0..=5))),
        scale in prop::option::of(prop_oneof![Just(f64::NAN), Just(0.0), Just(-1.0), 0.1f64..2.0]),
        seed in 0u64..1000,
    ) {
        let spec = valid_specs().swap_remove(spec_index);
        let dims = Dims::new(b, t, h, k, v).with_value_heads(h * group + hv_delta);
        let mut inputs = reference::random_inputs(&spec, &dims, seed);
        let mut rng = Rng::new(seed);
        if let Some(n) = h0_rows {
            inputs.h0 = Some(normal(&[n, dims.value_heads, k, v], &mut rng));
        }
        if let Some((which, shape)) = scrambled {
            let tensor = normal(&shape, &mut rng);
            match which {
                0 => inputs.q = tensor,
                1 => inputs.k = tensor,
                2 => inputs.v = tensor,
                3 => inputs.g = Some(tensor),
                4 => inputs.beta = Some(tensor),
                5 => inputs.u = Some(tensor),
                _ => inputs.decay_rate = Some(tensor),
            }
        }
        let opts = RunOptions { scale, cu_seqlens: cu, output_final_state: dht_rows.is_some() };
        let d_o = match do_shape {
            Some(shape) => normal(&shape, &mut rng),
            None => normal(&dims.output_shape(), &mut rng),
        };
        let dht = dht_rows.map(|n| normal(&[n, dims.value_heads, k, v], &mut rng));
        if let Ok(out) = reference::forward(&spec, &inputs, &opts) {
            prop_assert!(out.o.data.iter().all(|x| x.is_finite()));
        }
        if let Ok(g) = reference::backward(&spec, &inputs, &opts, &d_o, dht.as_ref()) {
            prop_assert!(g.dq.data.iter().chain(&g.dk.data).chain(&g.dv.data).all(|x| x.is_finite()));
        }
    }
}
