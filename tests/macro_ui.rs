//! The `recurrence!` macro seen from a user's crate: compile-fail UI tests with their expected
//! errors (`tests/ui/*.rs` + `.stderr`), compile-and-run cases (`tests/ui/pass/`), and the
//! built-in catalogue, declared with the macro, checked against hand-normalized specs.
//!
//! One test binary for all of it: trybuild builds a scratch crate per run, so one run is cheaper
//! than several. After a deliberate change of a message, refresh the goldens with
//! `TRYBUILD=overwrite cargo test --test macro_ui` and review the diff.

use linrec::catalogue::{self, BUILTINS};
use linrec::spec::{
    ConstantRate, Decay, DeltaOrder, Features, Input, Read, Role, Scale, Spec, Transition, Write,
};

// trybuild builds the facade again in a scratch crate with the features of this run; with `jit`
// that rebuilds and links LLVM/MLIR (minutes on 2 cores) for nothing the macro needs, so the UI
// cases run in the `--no-default-features` pass of scripts/test.sh.
#[cfg(not(feature = "jit"))]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}

/// Each built-in, as the macro builds it, equals its hand-normalized spec: forms, name, doc and
/// input names alike.
#[test]
fn builtins_match_hand_normalized_specs() {
    let fixtures = hand_normalized();
    assert_eq!(BUILTINS.len(), fixtures.len());
    for (builtin, expected) in BUILTINS.iter().zip(&fixtures) {
        let built = builtin.spec();
        assert_eq!(built.name, builtin.name);
        assert_eq!(
            built.normalized(),
            expected.normalized(),
            "{}",
            builtin.name
        );
        assert_eq!(built.hash(), expected.hash(), "{}", builtin.name);
        built.validate().expect("built-ins are valid");
    }
}

/// The typed API of a built-in agrees with its spec.
#[test]
fn typed_api_agrees_with_spec() {
    use catalogue::{GatedDeltaNet, GatedDeltaNetInputs, Rwkv6, Rwkv6Inputs};
    let spec = GatedDeltaNet::spec();
    assert_eq!(GatedDeltaNet::NAME, spec.name);
    let declared: Vec<(&str, Role)> = spec
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.role))
        .collect();
    assert_eq!(GatedDeltaNet::INPUTS, declared.as_slice());
    assert!(std::ptr::eq(spec, GatedDeltaNet::spec()), "built once");

    let inputs = GatedDeltaNetInputs {
        q: 1,
        k: 2,
        v: 3,
        g: 4,
        beta: 5,
    };
    assert_eq!(GatedDeltaNetInputs::<i32>::LEN, 5);
    let named = inputs.named();
    assert_eq!(named[4], ("beta", Role::Beta, &5));
    let doubled = inputs.map(|_, _, x| x * 2);
    assert_eq!(doubled.g, 8);
    let by_name = GatedDeltaNetInputs::try_from_fn(|name, _| match name {
        "beta" => Err(format!("no tensor `{name}`")),
        _ => Ok(name.len()),
    });
    assert_eq!(by_name, Err("no tensor `beta`".to_string()));

    let r = Rwkv6Inputs::try_from_fn(|name, role| Ok::<_, ()>((name, role))).expect("no error");
    assert_eq!(r.u, ("u", Role::Bonus));
    assert_eq!(r.as_ref().r, &("r", Role::Query));
    assert_eq!(Rwkv6::spec().read, Read::ExclusiveBonus);
}

/// The nine built-ins as written by hand from DESIGN §3 and fla's semantics, in `BUILTINS`
/// order. These were the catalogue before it was declared with `recurrence!`.
fn hand_normalized() -> Vec<Spec> {
    vec![
        linear_attn(),
        retention(),
        simple_gla(),
        gla(),
        hgrn2(),
        rwkv6(),
        delta_net(),
        gated_delta_net(),
        kda(),
    ]
}

fn inputs(list: &[(&str, Role)]) -> Vec<Input> {
    list.iter().map(|(n, r)| Input::new(*n, *r)).collect()
}

const QKV: [(&str, Role); 3] = [("q", Role::Query), ("k", Role::Key), ("v", Role::Value)];

fn base(name: &str, doc: &str, extra: &[(&str, Role)]) -> Spec {
    let mut all = QKV.to_vec();
    all.extend_from_slice(extra);
    Spec {
        name: name.into(),
        doc: doc.into(),
        inputs: inputs(&all),
        decay: Decay::None,
        transition: Transition::Identity,
        write: Write::Outer,
        read: Read::Inclusive,
        scale: Scale::InvSqrtK,
        features: Features::default(),
    }
}

fn delta(order: DeltaOrder) -> Transition {
    Transition::Delta { order }
}

const L2NORM: Features = Features { qk_l2norm: true };

fn linear_attn() -> Spec {
    base(
        "linear_attn",
        "Linear attention (Katharopoulos et al. 2020): an undecayed sum of k vᵀ.",
        &[],
    )
}

fn retention() -> Spec {
    Spec {
        decay: Decay::Constant(ConstantRate::Retnet),
        ..base(
            "retention",
            "RetNet retention (Sun et al. 2023): constant per-head decay γ_h = 1 − 2^(−5−h).",
            &[],
        )
    }
}

fn simple_gla() -> Spec {
    Spec {
        decay: Decay::Scalar,
        ..base(
            "simple_gla",
            "Gated retention / Mamba2 SSD: a data-dependent scalar decay per head and token.",
            &[("g", Role::Gate)],
        )
    }
}

fn gla() -> Spec {
    Spec {
        decay: Decay::Diagonal,
        ..base(
            "gla",
            "Gated Linear Attention (Yang et al. 2023): a data-dependent decay per key channel.",
            &[("g", Role::Gate)],
        )
    }
}

fn hgrn2() -> Spec {
    Spec {
        decay: Decay::Diagonal,
        scale: Scale::Value(1.0),
        ..base(
            "hgrn2",
            "HGRN2 (Qin et al. 2024): GLA's recurrence with unscaled read; keys are the input gate 1 − exp(g).",
            &[("g", Role::Gate)],
        )
    }
}

fn rwkv6() -> Spec {
    Spec {
        inputs: inputs(&[
            ("r", Role::Query),
            ("k", Role::Key),
            ("v", Role::Value),
            ("w", Role::Gate),
            ("u", Role::Bonus),
        ]),
        decay: Decay::Diagonal,
        read: Read::ExclusiveBonus,
        ..base(
            "rwkv6",
            "RWKV-6 (Peng et al. 2024): diagonal decay, exclusive read plus the bonus u for the current token.",
            &[],
        )
    }
}

fn delta_net() -> Spec {
    Spec {
        transition: delta(DeltaOrder::DecayThenDelta),
        write: Write::BetaOuter,
        features: L2NORM,
        ..base(
            "delta_net",
            "DeltaNet (Schlag et al. 2021; Yang et al. 2024): the delta rule, keys L2-normalised in kernel.",
            &[("beta", Role::Beta)],
        )
    }
}

fn gated_delta_net() -> Spec {
    Spec {
        decay: Decay::Scalar,
        transition: delta(DeltaOrder::DeltaThenDecay),
        write: Write::BetaOuter,
        features: L2NORM,
        ..base(
            "gated_delta_net",
            "Gated DeltaNet (Yang et al. 2024): the delta rule under a data-dependent scalar decay.",
            &[("g", Role::Gate), ("beta", Role::Beta)],
        )
    }
}

fn kda() -> Spec {
    Spec {
        decay: Decay::Diagonal,
        transition: delta(DeltaOrder::DecayThenDelta),
        write: Write::BetaOuter,
        features: L2NORM,
        ..base(
            "kda",
            "Kimi Delta Attention (Kimi team 2025): the delta rule after a per-channel diagonal decay.",
            &[("g", Role::Gate), ("beta", Role::Beta)],
        )
    }
}
