//! Spec validation: every rule names the part at fault and what is allowed.

use crate::error::SpecError;
use crate::forms::{Decay, Read, Role, Scale, Spec, Transition, Write};

/// Names the runtime and safetensors I/O use for tensors that are not declared inputs.
pub const RESERVED_NAMES: [&str; 9] = [
    "h0",
    "ht",
    "dh0",
    "dht",
    "o",
    "do",
    "cu_seqlens",
    "scale",
    "state",
];

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_snake_case(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn needed_by(spec: &Spec, role: Role) -> &'static str {
    match role {
        Role::Query | Role::Key | Role::Value => "every recurrence",
        Role::Gate if spec.decay == Decay::Diagonal => "the diagonal decay Diag(exp(g_t))",
        Role::Gate => "the scalar decay exp(g_t)",
        Role::Beta if matches!(spec.transition, Transition::Delta { .. }) => {
            "the delta rule (I - beta_t k_t k_t^T)"
        }
        Role::Beta => "the write beta_t k_t v_t^T",
        Role::Bonus => "the exclusive read with bonus u",
        Role::DecayRate => "the constant decay from an input rate",
    }
}

fn unused_why(role: Role) -> &'static str {
    match role {
        Role::Query | Role::Key | Role::Value => "every recurrence uses it",
        Role::Gate => "a gate is used only by a scalar or diagonal data decay",
        Role::Beta => "beta is used only by the delta rule or the write beta*k*v^T",
        Role::Bonus => "a bonus is used only by the exclusive read",
        Role::DecayRate => "a decay-rate input is used only by a constant decay of kind `input`",
    }
}

impl Spec {
    /// Checks that the forms combine into a recurrence linrec can derive and that the declared
    /// inputs are exactly the ones the forms need.
    ///
    /// ```
    /// # use linrec_spec::*;
    /// let mut spec = Spec {
    ///     name: "bad".into(), doc: String::new(),
    ///     inputs: vec![Input::new("q", Role::Query), Input::new("k", Role::Key), Input::new("v", Role::Value)],
    ///     decay: Decay::Scalar, transition: Transition::Identity, write: Write::Outer,
    ///     read: Read::Inclusive, scale: Scale::InvSqrtK, features: Features::default(),
    /// };
    /// let err = spec.validate().unwrap_err();
    /// assert!(err.to_string().contains("needs an input with role `gate`"));
    /// ```
    pub fn validate(&self) -> Result<(), SpecError> {
        let spec = || self.name.clone();
        if !is_snake_case(&self.name) {
            return Err(SpecError::InvalidName {
                name: self.name.clone(),
            });
        }
        let reserved = RESERVED_NAMES
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for (i, input) in self.inputs.iter().enumerate() {
            let why = if !is_identifier(&input.name) {
                Some("it is not an ASCII identifier")
            } else if RESERVED_NAMES.contains(&input.name.as_str()) {
                Some("it is reserved for tensors the runtime passes itself")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(SpecError::InvalidInputName {
                    spec: spec(),
                    name: input.name.clone(),
                    why,
                    reserved,
                });
            }
            for earlier in &self.inputs[..i] {
                if earlier.name == input.name {
                    return Err(SpecError::DuplicateName {
                        spec: spec(),
                        name: input.name.clone(),
                    });
                }
                if earlier.role == input.role {
                    return Err(SpecError::DuplicateRole {
                        spec: spec(),
                        role: input.role,
                        first: earlier.name.clone(),
                        second: input.name.clone(),
                    });
                }
            }
        }
        // Form combinations first: they explain a missing input better than the input check.
        if matches!(self.transition, Transition::Delta { .. }) && self.write != Write::BetaOuter {
            return Err(SpecError::Unsupported {
                spec: spec(),
                what: "the delta rule with the plain write k_t v_t^T",
                supported: "the delta rule with the write beta_t k_t v_t^T (the same beta as the transition)",
            });
        }
        if matches!(self.transition, Transition::Delta { .. }) && self.read == Read::ExclusiveBonus
        {
            return Err(SpecError::Unsupported {
                spec: spec(),
                what: "the delta rule with the exclusive read + bonus",
                supported: "the exclusive read + bonus with the identity transition (rwkv6); the delta rule with the inclusive read",
            });
        }
        if let Scale::Value(v) = self.scale {
            if !(v.is_finite() && v > 0.0) {
                return Err(SpecError::BadScale {
                    spec: spec(),
                    value: v,
                });
            }
        }
        let required = self.required_roles();
        for role in Role::ALL {
            let declared = self.input(role);
            match (required.contains(&role), declared) {
                (true, None) => {
                    return Err(SpecError::MissingInput {
                        spec: spec(),
                        role,
                        needed_by: needed_by(self, role),
                        shape: role.shape_text(&self.decay),
                    });
                }
                (false, Some(input)) => {
                    return Err(SpecError::UnusedInput {
                        spec: spec(),
                        name: input.name.clone(),
                        role,
                        why: unused_why(role),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}
