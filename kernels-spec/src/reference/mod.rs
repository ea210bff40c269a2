//! The f64 reference: the ground truth for every kernel (DESIGN §4).
//!
//! A token-by-token recurrence in f64 on the CPU for every spec form and option, and its exact
//! backward: a reverse sweep through the recurrence (states are checkpointed every
//! [`CHECKPOINT`] tokens and recomputed per segment, so memory stays `O(T/64 · K · V)` per head).
//!
//! ```
//! use linrec_spec::{Dims, RunOptions, reference};
//! # fn spec() -> linrec_spec::Spec { use linrec_spec::*; Spec { name: "la".into(), doc: String::new(),
//! #   inputs: vec![Input::new("q", Role::Query), Input::new("k", Role::Key), Input::new("v", Role::Value)],
//! #   decay: Decay::None, transition: Transition::Identity, write: Write::Outer, read: Read::Inclusive,
//! #   scale: Scale::InvSqrtK, features: Features::default() } }
//! let spec = spec();
//! let dims = Dims::new(1, 5, 2, 4, 3);
//! let inputs = reference::random_inputs(&spec, &dims, 7);
//! let opts = RunOptions { output_final_state: true, ..Default::default() };
//! let out = reference::forward(&spec, &inputs, &opts)?;
//! assert_eq!(out.o.shape, vec![1, 5, 2, 3]);
//! assert_eq!(out.ht.unwrap().shape, vec![1, 2, 4, 3]);
//! # Ok::<(), reference::ReferenceError>(())
//! ```

mod recurrence;
mod tensor;

pub use tensor::{Rng, Tensor, log_sigmoid, sigmoid};

use crate::dims::{Dims, RunOptions, Sequences};
use crate::error::{ShapeError, SpecError};
use crate::forms::{ConstantRate, Role, Spec};

/// States are stored every this many tokens in the backward and recomputed in between.
pub const CHECKPOINT: usize = 64;

/// Epsilon of the in-kernel L2 norm, `x / sqrt(‖x‖² + EPS)` (fla's value).
pub const L2NORM_EPS: f64 = 1e-6;

/// Why the reference could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReferenceError {
    /// The spec is not valid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Shapes, sequences or tensors do not fit.
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// Input tensors by role, plus the optional initial state.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// Queries `[B, T, H, K]`.
    pub q: Tensor,
    /// Keys `[B, T, H, K]`.
    pub k: Tensor,
    /// Values `[B, T, HV, V]`.
    pub v: Tensor,
    /// Log-space gate `[B, T, HV]` (scalar decay) or `[B, T, HV, K]` (diagonal decay).
    pub g: Option<Tensor>,
    /// β `[B, T, HV]`.
    pub beta: Option<Tensor>,
    /// Bonus `[HV, K]`.
    pub u: Option<Tensor>,
    /// Constant log-decay per head `[HV]`.
    pub decay_rate: Option<Tensor>,
    /// Initial state `[N, HV, K, V]`.
    pub h0: Option<Tensor>,
}

impl Inputs {
    /// The tensor playing `role`, if given.
    pub fn get(&self, role: Role) -> Option<&Tensor> {
        match role {
            Role::Query => Some(&self.q),
            Role::Key => Some(&self.k),
            Role::Value => Some(&self.v),
            Role::Gate => self.g.as_ref(),
            Role::Beta => self.beta.as_ref(),
            Role::Bonus => self.u.as_ref(),
            Role::DecayRate => self.decay_rate.as_ref(),
        }
    }

    /// Dims read off q and v (`[B, T, H, K]`, `[B, T, HV, V]`).
    pub fn dims(&self) -> Result<Dims, ShapeError> {
        let (q, v) = (&self.q.shape, &self.v.shape);
        if q.len() != 4 {
            return Err(ShapeError::TensorShape {
                name: "q".into(),
                found: q.clone(),
                expected: vec![],
                symbolic: "rank 4: [B, T, H, K]".into(),
            });
        }
        if v.len() != 4 {
            return Err(ShapeError::TensorShape {
                name: "v".into(),
                found: v.clone(),
                expected: vec![],
                symbolic: "rank 4: [B, T, HV, V]".into(),
            });
        }
        let dims = Dims {
            batch: q[0],
            seq_len: q[1],
            heads: q[2],
            value_heads: v[2],
            key_dim: q[3],
            value_dim: v[3],
        };
        dims.validate()?;
        Ok(dims)
    }

    /// Checks every tensor against the spec and returns the dims and sequences.
    pub fn check(
        &self,
        spec: &Spec,
        opts: &RunOptions,
    ) -> Result<(Dims, Sequences), ReferenceError> {
        spec.validate()?;
        if let Some(value) = opts.scale {
            // The override obeys the spec's rule: a NaN, zero or negative scale is an error,
            // not a silently wrong (or NaN) output.
            if !(value.is_finite() && value > 0.0) {
                return Err(SpecError::BadScale {
                    spec: spec.name.clone(),
                    value,
                }
                .into());
            }
        }
        let dims = self.dims()?;
        // Tensors before sequences: once q's element count matches its shape, B is a real
        // size and the per-row spans can be built.
        for role in crate::forms::Role::ALL {
            let declared = spec.input(role);
            let name = declared.map_or(role.as_str().to_string(), |i| i.name.clone());
            match (declared, self.get(role)) {
                (Some(_), None) => {
                    return Err(ShapeError::MissingTensor {
                        name,
                        role: role.to_string(),
                        symbolic: role.shape_text(&spec.decay).into(),
                    }
                    .into());
                }
                (None, Some(_)) => {
                    return Err(ShapeError::UnexpectedTensor {
                        name,
                        known: spec
                            .inputs
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                    .into());
                }
                (Some(_), Some(t)) => {
                    check_shape(
                        &name,
                        t,
                        &dims.input_shape(role, &spec.decay),
                        role.shape_text(&spec.decay),
                    )?;
                }
                (None, None) => {}
            }
        }
        let seqs = Sequences::new(&dims, opts.cu_seqlens.as_deref())?;
        if let Some(h0) = &self.h0 {
            check_shape("h0", h0, &dims.state_shape(seqs.len()), "[N, HV, K, V]")?;
        }
        Ok((dims, seqs))
    }
}

pub(crate) fn check_shape(
    name: &str,
    t: &Tensor,
    expected: &[usize],
    symbolic: &str,
) -> Result<(), ShapeError> {
    let error = |symbolic: String| ShapeError::TensorShape {
        name: name.to_string(),
        found: t.shape.clone(),
        expected: expected.to_vec(),
        symbolic,
    };
    if t.shape != expected {
        return Err(error(symbolic.to_string()));
    }
    // Checked: shapes read off user tensors may be absurd, and an overflowing product must be
    // an error, not a panic.
    let count = expected.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    if count != Some(t.data.len()) {
        let why = match count {
            Some(n) => format!(
                "{symbolic}; its data holds {} values, not {n}",
                t.data.len()
            ),
            None => format!("{symbolic}; its element count overflows"),
        };
        return Err(error(why));
    }
    Ok(())
}

/// Forward results.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// `[B, T, HV, V]`.
    pub o: Tensor,
    /// Final state `[N, HV, K, V]` when asked for.
    pub ht: Option<Tensor>,
}

/// Gradients of `L = Σ o ⊙ do + Σ ht ⊙ dht` with respect to every input.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// `[B, T, H, K]`.
    pub dq: Tensor,
    /// `[B, T, H, K]`.
    pub dk: Tensor,
    /// `[B, T, HV, V]`.
    pub dv: Tensor,
    /// Same shape as the gate.
    pub dg: Option<Tensor>,
    /// `[B, T, HV]`.
    pub dbeta: Option<Tensor>,
    /// `[HV, K]`.
    pub du: Option<Tensor>,
    /// `[HV]`: gradient of the constant log-decay input.
    pub ddecay_rate: Option<Tensor>,
    /// `[N, HV, K, V]` when h0 was given.
    pub dh0: Option<Tensor>,
}

impl Gradients {
    /// The gradient of the input playing `role`, if it has one.
    pub fn get(&self, role: Role) -> Option<&Tensor> {
        match role {
            Role::Query => Some(&self.dq),
            Role::Key => Some(&self.dk),
            Role::Value => Some(&self.dv),
            Role::Gate => self.dg.as_ref(),
            Role::Beta => self.dbeta.as_ref(),
            Role::Bonus => self.du.as_ref(),
            Role::DecayRate => self.ddecay_rate.as_ref(),
        }
    }
}

/// Runs the recurrence token by token: outputs and, when `opts.output_final_state`, the final
/// state.
pub fn forward(spec: &Spec, inputs: &Inputs, opts: &RunOptions) -> Result<Outputs, ReferenceError> {
    let (dims, seqs) = inputs.check(spec, opts)?;
    Ok(recurrence::forward(spec, inputs, &dims, &seqs, opts))
}

/// Exact gradients of `L = Σ o ⊙ d_o + Σ ht ⊙ dht` by a reverse sweep through the recurrence.
/// `d_o` is `[B, T, HV, V]`; `dht` is `[N, HV, K, V]` (zero when absent).
pub fn backward(
    spec: &Spec,
    inputs: &Inputs,
    opts: &RunOptions,
    d_o: &Tensor,
    dht: Option<&Tensor>,
) -> Result<Gradients, ReferenceError> {
    let (dims, seqs) = inputs.check(spec, opts)?;
    check_shape("do", d_o, &dims.output_shape(), "[B, T, HV, V]")?;
    if let Some(dht) = dht {
        check_shape("dht", dht, &dims.state_shape(seqs.len()), "[N, HV, K, V]")?;
    }
    Ok(recurrence::backward(
        spec, inputs, &dims, &seqs, opts, d_o, dht,
    ))
}

/// fla-style random inputs for `spec` at `dims` from `seed`: q, k, v, u standard normal;
/// gates `log_sigmoid(N(0,1))`; β `sigmoid(N(0,1))`; constant log-rates `log_sigmoid(N(3,1))`.
/// No h0 (set it yourself).
pub fn random_inputs(spec: &Spec, dims: &Dims, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let mut make = |role: Role| -> Option<Tensor> {
        spec.input(role)?;
        let shape = dims.input_shape(role, &spec.decay);
        Some(match role {
            Role::Gate => Tensor::from_fn(&shape, || log_sigmoid(rng.normal())),
            Role::Beta => Tensor::from_fn(&shape, || sigmoid(rng.normal())),
            Role::DecayRate => Tensor::from_fn(&shape, || log_sigmoid(3.0 + rng.normal())),
            _ => Tensor::from_fn(&shape, || rng.normal()),
        })
    };
    let missing = |role: Role| Tensor::zeros(&dims.input_shape(role, &spec.decay));
    Inputs {
        q: make(Role::Query).unwrap_or_else(|| missing(Role::Query)),
        k: make(Role::Key).unwrap_or_else(|| missing(Role::Key)),
        v: make(Role::Value).unwrap_or_else(|| missing(Role::Value)),
        g: make(Role::Gate),
        beta: make(Role::Beta),
        u: make(Role::Bonus),
        decay_rate: make(Role::DecayRate),
        h0: None,
    }
}

/// The constant log-decay of value head `hv` for a spec with a constant decay.
pub fn constant_log_decay(rate: ConstantRate, decay_rate: Option<&Tensor>, hv: usize) -> f64 {
    match rate {
        ConstantRate::Retnet => (1.0 - 2f64.powi(-5 - hv as i32)).ln(),
        ConstantRate::Input => decay_rate.map_or(0.0, |t| t.data[hv]),
    }
}
