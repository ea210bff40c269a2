//! The built-in variants, declared with [`recurrence!`](crate::recurrence) exactly as a user
//! would declare their own. Each comes with the fla call that computes the same function, so
//! users can switch between the two.
//!
//! Every built-in is also a typed API: [`GatedDeltaNet::spec`], [`GatedDeltaNetInputs`],
//! [`GatedDeltaNet::forward`] (see [`crate::ops`]), ...
//!
//! ```
//! use linrec::catalogue::{GatedDeltaNet, GatedDeltaNetInputs};
//!
//! assert_eq!(GatedDeltaNet::spec().name, "gated_delta_net");
//! // One field per declared input: leaving one out does not compile.
//! let inputs = GatedDeltaNetInputs { q: "q.bin", k: "k.bin", v: "v.bin", g: "g.bin", beta: "beta.bin" };
//! let names: Vec<_> = inputs.named().iter().map(|(name, _, _)| *name).collect();
//! assert_eq!(names, ["q", "k", "v", "g", "beta"]);
//! ```

use linrec_spec::Spec;

crate::recurrence! {
    /// Linear attention (Katharopoulos et al. 2020): an undecayed sum of k vᵀ.
    pub LinearAttn {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = S + k * v^T;
        o = S^T * q * scale;
    }

    /// RetNet retention (Sun et al. 2023): constant per-head decay γ_h = 1 − 2^(−5−h).
    pub Retention {
        inputs { q: [K], k: [K], v: [V] }
        state S: [K, V];
        S = gamma * S + k * v^T;
        o = S^T * q * scale;
    }

    /// Gated retention / Mamba2 SSD: a data-dependent scalar decay per head and token.
    pub SimpleGla {
        inputs { q: [K], k: [K], v: [V], g: log_gate }
        state S: [K, V];
        S = exp(g) * S + k * v^T;
        o = S^T * q * scale;
    }

    /// Gated Linear Attention (Yang et al. 2023): a data-dependent decay per key channel.
    pub Gla {
        inputs { q: [K], k: [K], v: [V], g: log_gate[K] }
        state S: [K, V];
        S = Diag(exp(g)) * S + k * v^T;
        o = S^T * q * scale;
    }

    /// HGRN2 (Qin et al. 2024): GLA's recurrence with unscaled read; keys are the input gate 1 − exp(g).
    pub Hgrn2 {
        inputs { q: [K], k: [K], v: [V], g: log_gate[K] }
        state S: [K, V];
        S = Diag(exp(g)) * S + k * v^T;
        o = S^T * q * scale;
        scale = 1.0;
    }

    /// RWKV-6 (Peng et al. 2024): diagonal decay, exclusive read plus the bonus u for the current token.
    pub Rwkv6 {
        inputs { r: [K], k: [K], v: [V], w: log_gate[K], u: per_head[K] }
        state S: [K, V];
        S = Diag(exp(w)) * S + k * v^T;
        o = (S_prev^T * r + sum(r * u * k) * v) * scale;
    }

    /// DeltaNet (Schlag et al. 2021; Yang et al. 2024): the delta rule, keys L2-normalised in kernel.
    pub DeltaNet {
        inputs { q: [K], k: [K], v: [V], beta: scalar }
        state S: [K, V];
        l2norm(q, k);
        S = (I - beta * k * k^T) * S + beta * k * v^T;
        o = S^T * q * scale;
    }

    /// Gated DeltaNet (Yang et al. 2024): the delta rule under a data-dependent scalar decay.
    pub GatedDeltaNet {
        inputs { q: [K], k: [K], v: [V], g: log_gate, beta: scalar }
        state S: [K, V];
        l2norm(q, k);
        S = exp(g) * (I - beta * k * k^T) * S + beta * k * v^T;
        o = S^T * q * scale;
    }

    /// Kimi Delta Attention (Kimi team 2025): the delta rule after a per-channel diagonal decay.
    pub Kda {
        inputs { q: [K], k: [K], v: [V], g: log_gate[K], beta: scalar }
        state S: [K, V];
        l2norm(q, k);
        S = (I - beta * k * k^T) * Diag(exp(g)) * S + beta * k * v^T;
        o = S^T * q * scale;
    }
}

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

/// The built-ins, in the order `linrec list` shows them.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "linear_attn",
        aliases: &[],
        fla: "chunk_linear_attn(q, k, v, normalize=False)",
        spec: || LinearAttn::spec().clone(),
    },
    Builtin {
        name: "retention",
        aliases: &[],
        fla: "chunk_retention(q, k, v)",
        spec: || Retention::spec().clone(),
    },
    Builtin {
        name: "simple_gla",
        aliases: &["mamba2"],
        fla: "chunk_simple_gla(q, k, v, g)  (Mamba2: q=C, k=B, v=x·dt, g=A·dt, scale=1)",
        spec: || SimpleGla::spec().clone(),
    },
    Builtin {
        name: "gla",
        aliases: &[],
        fla: "chunk_gla(q, k, v, g)",
        spec: || Gla::spec().clone(),
    },
    Builtin {
        name: "hgrn2",
        aliases: &[],
        fla: "chunk_gla(q, 1 - g.exp(), v, g, scale=1.0)  (fla's HGRN2Attention passes no scale: K^-1/2, which its output RMSNorm cancels)",
        spec: || Hgrn2::spec().clone(),
    },
    Builtin {
        name: "rwkv6",
        aliases: &[],
        fla: "chunk_rwkv6(r, k, v, w, u)",
        spec: || Rwkv6::spec().clone(),
    },
    Builtin {
        name: "delta_net",
        aliases: &[],
        fla: "chunk_delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel=True)",
        spec: || DeltaNet::spec().clone(),
    },
    Builtin {
        name: "gated_delta_net",
        aliases: &[],
        fla: "chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)",
        spec: || GatedDeltaNet::spec().clone(),
    },
    Builtin {
        name: "kda",
        aliases: &[],
        fla: "chunk_kda(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)",
        spec: || Kda::spec().clone(),
    },
];

/// The variant `linrec run` uses when none is named.
pub const DEFAULT_VARIANT: &str = "simple_gla";

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
