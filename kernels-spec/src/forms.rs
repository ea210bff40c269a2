//! The forms a spec is built from (DESIGN §3). Each enum lists every form linrec supports;
//! a combination that the compiler cannot derive is rejected by [`Spec::validate`].

use serde::{Deserialize, Serialize};

/// A linear-attention variant as a gated recurrence over a per-head state `S ∈ R^{K×V}`.
///
/// Plain data: build it by hand, deserialize it, or let `linrec::recurrence!` build it.
/// Call [`Spec::validate`] before use; [`Spec::normalized`] gives the canonical form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// snake_case identifier of the variant (`gated_delta_net`).
    pub name: String,
    /// One-line description, shown by `linrec list`.
    pub doc: String,
    /// Declared inputs in declaration order. Names are the user's; roles carry the meaning.
    pub inputs: Vec<Input>,
    /// How the state decays at each token.
    pub decay: Decay,
    /// Transition applied to the state besides the decay.
    pub transition: Transition,
    /// What each token adds to the state.
    pub write: Write,
    /// How the output reads the state.
    pub read: Read,
    /// Output scale.
    pub scale: Scale,
    /// Pre-processing fused into the kernels.
    pub features: Features,
}

/// One declared input tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Input {
    /// The name the user gave it (also the safetensors tensor name).
    pub name: String,
    /// What the recurrence does with it; fixes its shape.
    pub role: Role,
}

impl Input {
    /// An input named `name` playing `role`.
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        Input {
            name: name.into(),
            role,
        }
    }
}

/// The meaning of an input, which fixes its shape (see [`Role::shape_text`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Query `q_t ∈ R^K`, `[B, T, H, K]`.
    Query,
    /// Key `k_t ∈ R^K`, `[B, T, H, K]`.
    Key,
    /// Value `v_t ∈ R^V`, `[B, T, HV, V]`.
    Value,
    /// Log-space gate: `[B, T, HV]` for a scalar decay, `[B, T, HV, K]` for a diagonal one.
    Gate,
    /// Delta-rule / write strength `β_t`, `[B, T, HV]`.
    Beta,
    /// Bonus `u ∈ R^K` of the exclusive read, `[HV, K]`.
    Bonus,
    /// Per-head constant log-decay `log γ_h`, `[HV]`.
    DecayRate,
}

impl Role {
    /// All roles in canonical order.
    pub const ALL: [Role; 7] = [
        Role::Query,
        Role::Key,
        Role::Value,
        Role::Gate,
        Role::Beta,
        Role::Bonus,
        Role::DecayRate,
    ];

    /// Stable lowercase name used in the canonical encoding and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Query => "query",
            Role::Key => "key",
            Role::Value => "value",
            Role::Gate => "gate",
            Role::Beta => "beta",
            Role::Bonus => "bonus",
            Role::DecayRate => "decay_rate",
        }
    }

    /// The tensor shape in the symbols B, T, H, HV, K, V, given the decay form (gates only
    /// depend on it).
    pub fn shape_text(self, decay: &Decay) -> &'static str {
        match self {
            Role::Query | Role::Key => "[B, T, H, K]",
            Role::Value => "[B, T, HV, V]",
            Role::Gate if matches!(decay, Decay::Diagonal) => "[B, T, HV, K]",
            Role::Gate | Role::Beta => "[B, T, HV]",
            Role::Bonus => "[HV, K]",
            Role::DecayRate => "[HV]",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the state decays at token t. Gates are log-space: the factor is `exp(g)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// No decay (linear attention).
    None,
    /// A constant factor `γ_h` per value head (retention, lightning attention).
    Constant(ConstantRate),
    /// A data-dependent scalar `exp(g_t)` per head, `g ≤ 0` (simple_gla / Mamba2, gated_delta_net).
    Scalar,
    /// A data-dependent diagonal `Diag(exp(g_t))` over K (gla, hgrn2, rwkv6, kda).
    Diagonal,
}

/// Where a constant per-head decay comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstantRate {
    /// RetNet's schedule `γ_h = 1 − 2^(−5−h)` over value heads h = 0..HV.
    Retnet,
    /// A `[HV]` log-space input tensor (role [`Role::DecayRate`]), fla's `g_gamma`.
    Input,
}

/// The transition applied to the state besides the decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// `S ← decay(S)`.
    Identity,
    /// The delta rule `(I − β_t k_t k_tᵀ)`; `order` places it relative to the decay.
    Delta {
        /// Order of decay and delta; only matters for a diagonal decay.
        order: DeltaOrder,
    },
}

/// Order of the decay and the delta-rule transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaOrder {
    /// `(I − β k kᵀ) · Decay(S)` — KDA. The canonical order when the two commute.
    DecayThenDelta,
    /// `Decay((I − β k kᵀ) · S)` — Gated DeltaNet as written in its paper.
    DeltaThenDecay,
}

/// What token t adds to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Write {
    /// `k_t v_tᵀ`.
    Outer,
    /// `β_t k_t v_tᵀ` (the delta family).
    BetaOuter,
}

/// How the output reads the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Read {
    /// `o_t = scale · S_tᵀ q_t`, the state after token t (fla's convention).
    Inclusive,
    /// `o_t = scale · (S_{t−1}ᵀ q_t + (q_t ⊙ u ⊙ k_t)·1 v_t)` (rwkv6).
    ExclusiveBonus,
}

/// The output scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// `K^(−1/2)`, fla's default.
    InvSqrtK,
    /// A fixed positive finite value (Mamba2 uses 1).
    Value(f64),
}

impl Scale {
    /// The scale for key dimension `k`.
    pub fn resolve(self, key_dim: usize) -> f64 {
        match self {
            Scale::InvSqrtK => 1.0 / (key_dim as f64).sqrt(),
            Scale::Value(s) => s,
        }
    }
}

/// Pre-processing fused into the kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Features {
    /// L2-normalise q and k per token and head, `x / sqrt(‖x‖² + 1e-6)` (the delta family's
    /// `use_qk_l2norm_in_kernel`).
    pub qk_l2norm: bool,
}

impl Spec {
    /// The input playing `role`, if declared.
    pub fn input(&self, role: Role) -> Option<&Input> {
        self.inputs.iter().find(|i| i.role == role)
    }

    /// The roles this spec's forms need, in canonical order. Validation checks that the declared
    /// inputs are exactly these.
    pub fn required_roles(&self) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| self.requires(*r))
            .collect()
    }

    fn requires(&self, role: Role) -> bool {
        match role {
            Role::Query | Role::Key | Role::Value => true,
            Role::Gate => matches!(self.decay, Decay::Scalar | Decay::Diagonal),
            Role::Beta => {
                self.write == Write::BetaOuter
                    || matches!(self.transition, Transition::Delta { .. })
            }
            Role::Bonus => self.read == Read::ExclusiveBonus,
            Role::DecayRate => self.decay == Decay::Constant(ConstantRate::Input),
        }
    }

    /// The canonical form: the delta order is `DecayThenDelta` wherever the decay commutes with
    /// the transition (every decay but the diagonal one), inputs in canonical role order.
    /// Two specs that compute the same function normalise to the same forms.
    pub fn normalized(&self) -> Spec {
        let mut s = self.clone();
        if let Transition::Delta { order } = &mut s.transition {
            if s.decay != Decay::Diagonal {
                *order = DeltaOrder::DecayThenDelta;
            }
        }
        s.inputs.sort_by_key(|i| i.role);
        s
    }
}
