//! The canonical encoding of a spec's mathematics and its hash.
//!
//! The encoding is a small line-based text over the *normalised* forms; the variant's name, doc
//! and input names are left out, so two specs that compute the same function share a hash (and
//! so share compiled kernels). The hash is SHA-256 of that text: it depends on no Rust hasher,
//! so it is the same in every process and with every compiler version. Changing the encoding
//! is a breaking change: bump [`CANONICAL_VERSION`] (the golden-value test pins it).

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use crate::forms::{ConstantRate, Decay, DeltaOrder, Read, Scale, Spec, Transition, Write};

/// Version of the canonical encoding; part of the encoded text.
pub const CANONICAL_VERSION: u32 = 1;

/// SHA-256 of a spec's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpecHash(pub [u8; 32]);

impl SpecHash {
    /// Full lowercase hex (64 characters).
    pub fn hex(&self) -> String {
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// The first 16 hex characters: short enough for file names, long enough to never collide
    /// within one cache.
    pub fn short(&self) -> String {
        self.hex()[..16].to_string()
    }
}

impl std::fmt::Display for SpecHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::fmt::Debug for SpecHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpecHash({})", self.short())
    }
}

impl Spec {
    /// The canonical text of the normalised forms.
    ///
    /// ```
    /// # use linrec_spec::*;
    /// let spec = Spec {
    ///     name: "la".into(), doc: String::new(),
    ///     inputs: vec![Input::new("q", Role::Query), Input::new("k", Role::Key), Input::new("v", Role::Value)],
    ///     decay: Decay::None, transition: Transition::Identity, write: Write::Outer,
    ///     read: Read::Inclusive, scale: Scale::InvSqrtK, features: Features::default(),
    /// };
    /// assert!(spec.canonical_text().starts_with("linrec-spec v1\ndecay none\n"));
    /// ```
    pub fn canonical_text(&self) -> String {
        let s = self.normalized();
        let decay = match s.decay {
            Decay::None => "none".to_string(),
            Decay::Constant(ConstantRate::Retnet) => "constant retnet".to_string(),
            Decay::Constant(ConstantRate::Input) => "constant input".to_string(),
            Decay::Scalar => "scalar".to_string(),
            Decay::Diagonal => "diagonal".to_string(),
        };
        let transition = match s.transition {
            Transition::Identity => "identity",
            Transition::Delta {
                order: DeltaOrder::DecayThenDelta,
            } => "delta decay_then_delta",
            Transition::Delta {
                order: DeltaOrder::DeltaThenDecay,
            } => "delta delta_then_decay",
        };
        let write = match s.write {
            Write::Outer => "outer",
            Write::BetaOuter => "beta_outer",
        };
        let read = match s.read {
            Read::Inclusive => "inclusive",
            Read::ExclusiveBonus => "exclusive_bonus",
        };
        // Bits, not a decimal rendering: exact and independent of float formatting.
        let scale = match s.scale {
            Scale::InvSqrtK => "inv_sqrt_k".to_string(),
            Scale::Value(v) => format!("value {:016x}", v.to_bits()),
        };
        let roles = s
            .inputs
            .iter()
            .map(|i| i.role.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "linrec-spec v{CANONICAL_VERSION}\ndecay {decay}\ntransition {transition}\nwrite {write}\nread {read}\nscale {scale}\nqk_l2norm {}\ninputs {roles}\n",
            s.features.qk_l2norm
        )
    }

    /// SHA-256 of [`Spec::canonical_text`]; keys the kernel cache.
    pub fn hash(&self) -> SpecHash {
        SpecHash(Sha256::digest(self.canonical_text().as_bytes()).into())
    }
}
