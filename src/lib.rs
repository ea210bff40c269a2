//! # linrec
//!
//! A compiler for linear-attention GPU kernels. Declare a variant as a gated recurrence (or pick
//! a built-in from [`catalogue`]); linrec derives the chunkwise algorithm and its backward and
//! lowers both to PTX, AMDGCN and SPIR-V. This facade re-exports the spec IR and the f64
//! reference; later stages (compiler, runtime) join it as they land.
//!
//! ```
//! let gdn = linrec::catalogue::lookup("gated_delta_net")?.spec();
//! gdn.validate().expect("built-ins are valid");
//! println!("{}", gdn.recurrence_text());
//! # Ok::<(), linrec::catalogue::UnknownVariant>(())
//! ```

// Lets the catalogue use `recurrence!`, whose expansion names `::linrec::...` paths.
extern crate self as linrec;

pub mod catalogue;
pub mod host;

pub use linrec_macros::recurrence;
pub use linrec_spec as spec;
pub use linrec_spec::reference;
