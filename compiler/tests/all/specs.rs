//! Specs and configs shared by the emit, target and end-to-end tests, built by hand (as the
//! catalogue's `recurrence!` declarations would build them) so this crate's tests need no
//! facade.

use linrec_spec::launch::{ElementType, KernelConfig};
use linrec_spec::{
    ConstantRate, Decay, DeltaOrder, Features, Input, Read, Role, Scale, Spec, Transition, Write,
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

pub fn linear_attn() -> Spec {
    spec("linear_attn", Decay::None, &[])
}

pub fn retention() -> Spec {
    spec("retention", Decay::Constant(ConstantRate::Retnet), &[])
}

pub fn simple_gla() -> Spec {
    spec("simple_gla", Decay::Scalar, &[("g", Role::Gate)])
}

/// A scalar gate with the β write and in-kernel L2 norm of q and k (the additive half of the
/// delta family's features).
pub fn beta_l2() -> Spec {
    let mut s = spec(
        "beta_l2",
        Decay::Scalar,
        &[("g", Role::Gate), ("beta", Role::Beta)],
    );
    s.write = Write::BetaOuter;
    s.features = Features { qk_l2norm: true };
    s
}

/// A constant decay read from an input rate (fla's `g_gamma`), with a fixed scale.
pub fn rate() -> Spec {
    let mut s = spec(
        "rate",
        Decay::Constant(ConstantRate::Input),
        &[("lg", Role::DecayRate)],
    );
    s.scale = Scale::Value(0.5);
    s
}

/// The supported built-ins and the two extra forms.
pub fn supported() -> Vec<Spec> {
    vec![linear_attn(), retention(), simple_gla(), beta_l2(), rate()]
}

/// gla: a diagonal decay, not derived yet.
pub fn gla() -> Spec {
    spec("gla", Decay::Diagonal, &[("g", Role::Gate)])
}

/// delta_net: the delta rule, not derived yet.
pub fn delta_net() -> Spec {
    let mut s = spec("delta_net", Decay::None, &[("beta", Role::Beta)]);
    s.transition = Transition::Delta {
        order: DeltaOrder::DecayThenDelta,
    };
    s.write = Write::BetaOuter;
    s
}

/// The snapshot config: bf16, K = V = 64, chunk 64, h0 and final state.
pub fn config() -> KernelConfig {
    KernelConfig {
        dtype: ElementType::Bf16,
        key_dim: 64,
        value_dim: 64,
        chunk: 64,
        initial_state: true,
        final_state: true,
        varlen: false,
    }
}
