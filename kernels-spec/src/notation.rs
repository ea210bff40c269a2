//! Human-readable renderings of a spec: the recurrence in one line and its parts. Used by
//! `linrec list` / `linrec show` and in error messages; not part of the canonical encoding.

use crate::forms::{ConstantRate, Decay, DeltaOrder, Read, Role, Scale, Spec, Transition, Write};

impl Spec {
    fn name_of(&self, role: Role) -> &str {
        self.input(role).map_or(role.as_str(), |i| i.name.as_str())
    }

    /// The decay factor applied to the state, e.g. `exp(g_t)` or `Diag(exp(g_t))`.
    pub fn decay_text(&self) -> Option<String> {
        let g = self.name_of(Role::Gate);
        match self.decay {
            Decay::None => None,
            Decay::Constant(ConstantRate::Retnet) => Some("γ_h".into()),
            Decay::Constant(ConstantRate::Input) => {
                Some(format!("exp({}_h)", self.name_of(Role::DecayRate)))
            }
            Decay::Scalar => Some(format!("exp({g}_t)")),
            Decay::Diagonal => Some(format!("Diag(exp({g}_t))")),
        }
    }

    /// The state update, e.g. `S_t = exp(g_t)·(I − β_t k_t k_tᵀ)·S_{t−1} + β_t k_t v_tᵀ`.
    pub fn update_text(&self) -> String {
        let (k, v, b) = (
            self.name_of(Role::Key),
            self.name_of(Role::Value),
            self.name_of(Role::Beta),
        );
        let decay = self.decay_text().map(|d| format!("{d}·"));
        let delta = format!("(I − {b}_t {k}_t {k}_tᵀ)·");
        let prefix = match (self.transition, decay) {
            (Transition::Identity, d) => d.unwrap_or_default(),
            (Transition::Delta { .. }, None) => delta,
            (Transition::Delta { order }, Some(d)) => match order {
                DeltaOrder::DecayThenDelta => format!("{delta}{d}"),
                DeltaOrder::DeltaThenDecay => format!("{d}{delta}"),
            },
        };
        let write = match self.write {
            Write::Outer => format!("{k}_t {v}_tᵀ"),
            Write::BetaOuter => format!("{b}_t {k}_t {v}_tᵀ"),
        };
        format!("S_t = {prefix}S_{{t−1}} + {write}")
    }

    /// The output, e.g. `o_t = scale·S_tᵀ q_t`.
    pub fn read_text(&self) -> String {
        let (q, k, v, u) = (
            self.name_of(Role::Query),
            self.name_of(Role::Key),
            self.name_of(Role::Value),
            self.name_of(Role::Bonus),
        );
        let l2 = if self.features.qk_l2norm {
            format!("  ({q}, {k} L2-normalised)")
        } else {
            String::new()
        };
        match self.read {
            Read::Inclusive => format!("o_t = scale·S_tᵀ {q}_t{l2}"),
            Read::ExclusiveBonus => {
                format!("o_t = scale·(S_{{t−1}}ᵀ {q}_t + ({q}_t ⊙ {u} ⊙ {k}_t)·1 {v}_t){l2}")
            }
        }
    }

    /// The whole recurrence on one line.
    pub fn recurrence_text(&self) -> String {
        format!("{};  {}", self.update_text(), self.read_text())
    }

    /// The scale, e.g. `K^-1/2` or `1`.
    pub fn scale_text(&self) -> String {
        match self.scale {
            Scale::InvSqrtK => "K^-1/2".into(),
            Scale::Value(v) => format!("{v}"),
        }
    }
}
