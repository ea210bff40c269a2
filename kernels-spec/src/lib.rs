//! # linrec-spec
//!
//! The spec IR of linrec: a linear-attention variant written as a gated recurrence over a
//! per-head state `S ∈ R^{K×V}`,
//!
//! ```text
//! S_t = A_t(S_{t-1}) + W_t          o_t = scale · read(S, t)
//! ```
//!
//! where `A_t` is a decay (none, constant per head, data scalar, data diagonal over K) combined
//! with a transition (identity or the delta rule), `W_t` a write, and `read` inclusive or
//! exclusive-with-bonus. A [`Spec`] is plain data: it validates ([`Spec::validate`]), normalises
//! ([`Spec::normalized`]) and has a canonical encoding and hash ([`Spec::canonical_text`],
//! [`Spec::hash`]) that are stable across processes and Rust versions.
//!
//! The [`reference`] module is the ground truth every kernel is checked against: a token-by-token
//! recurrence in f64 with an exact backward (a reverse sweep through the recurrence).
//!
//! ```
//! use linrec_spec::{Decay, Input, Read, Role, Scale, Spec, Transition, Write, Features};
//!
//! let spec = Spec {
//!     name: "my_gla".into(),
//!     doc: "GLA with a scalar gate".into(),
//!     inputs: vec![
//!         Input::new("q", Role::Query),
//!         Input::new("k", Role::Key),
//!         Input::new("v", Role::Value),
//!         Input::new("g", Role::Gate),
//!     ],
//!     decay: Decay::Scalar,
//!     transition: Transition::Identity,
//!     write: Write::Outer,
//!     read: Read::Inclusive,
//!     scale: Scale::InvSqrtK,
//!     features: Features::default(),
//! };
//! spec.validate()?;
//! assert_eq!(spec.hash().short().len(), 16);
//! # Ok::<(), linrec_spec::SpecError>(())
//! ```

mod canonical;
mod dims;
mod error;
mod forms;
pub mod launch;
mod notation;
pub mod reference;
mod validate;

pub use canonical::{CANONICAL_VERSION, SpecHash};
pub use dims::{Dims, RunOptions, Sequences};
pub use error::{ShapeError, SpecError};
pub use forms::{
    ConstantRate, Decay, DeltaOrder, Features, Input, Read, Role, Scale, Spec, Transition, Write,
};
