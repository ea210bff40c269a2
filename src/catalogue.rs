//! The built-in variants. Each is a plain [`Spec`] plus the fla call that computes the same
//! function, so users can switch between the two.

use linrec_spec::{
    ConstantRate, Decay, DeltaOrder, Features, Input, Read, Role, Scale, Spec, Transition, Write,
};

/// A built-in variant.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// Canonical name (`gated_delta_net`).
    pub name: &'static str,
    /// Other names it answers to (`mamba2` for `simple_gla`).
    pub aliases: &'static [&'static str],
    /// The fla 0.6.0 call computing the same function.
    pub fla: &'static str,
    spec: fn() -> Spec,
}

impl Builtin {
    /// The variant's spec (validated by the catalogue's tests).
    pub fn spec(&self) -> Spec {
        (self.spec)()
    }
}

/// No built-in answers to the name given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown variant `{name}`; known variants: {known}")]
pub struct UnknownVariant {
    /// The name asked for.
    pub name: String,
    /// The built-in names and aliases, comma separated.
    pub known: String,
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

/// The built-ins, in the order `linrec list` shows them.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "linear_attn",
        aliases: &[],
        fla: "chunk_linear_attn(q, k, v, normalize=False)",
        spec: linear_attn,
    },
    Builtin {
        name: "retention",
        aliases: &[],
        fla: "chunk_retention(q, k, v)",
        spec: retention,
    },
    Builtin {
        name: "simple_gla",
        aliases: &["mamba2"],
        fla: "chunk_simple_gla(q, k, v, g)  (Mamba2: q=C, k=B, v=x·dt, g=A·dt, scale=1)",
        spec: simple_gla,
    },
    Builtin {
        name: "gla",
        aliases: &[],
        fla: "chunk_gla(q, k, v, g)",
        spec: gla,
    },
    Builtin {
        name: "hgrn2",
        aliases: &[],
        fla: "chunk_gla(q, 1 - g.exp(), v, g, scale=1.0)  (fla's HGRN2Attention)",
        spec: hgrn2,
    },
    Builtin {
        name: "rwkv6",
        aliases: &[],
        fla: "chunk_rwkv6(r, k, v, w, u)",
        spec: rwkv6,
    },
    Builtin {
        name: "delta_net",
        aliases: &[],
        fla: "chunk_delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel=True)",
        spec: delta_net,
    },
    Builtin {
        name: "gated_delta_net",
        aliases: &[],
        fla: "chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)",
        spec: gated_delta_net,
    },
    Builtin {
        name: "kda",
        aliases: &[],
        fla: "chunk_kda(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)",
        spec: kda,
    },
];

/// The variant `linrec run` uses when none is named.
pub const DEFAULT_VARIANT: &str = "gated_delta_net";

/// Finds a built-in by name or alias.
///
/// ```
/// let b = linrec::catalogue::lookup("mamba2")?;
/// assert_eq!(b.name, "simple_gla");
/// assert!(linrec::catalogue::lookup("nope").is_err());
/// # Ok::<(), linrec::catalogue::UnknownVariant>(())
/// ```
pub fn lookup(name: &str) -> Result<&'static Builtin, UnknownVariant> {
    BUILTINS
        .iter()
        .find(|b| b.name == name || b.aliases.contains(&name))
        .ok_or_else(|| UnknownVariant {
            name: name.to_string(),
            known: BUILTINS
                .iter()
                .map(|b| {
                    if b.aliases.is_empty() {
                        b.name.to_string()
                    } else {
                        format!("{} (alias {})", b.name, b.aliases.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}
