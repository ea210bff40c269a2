//! # linrec
//!
//! A compiler for linear-attention GPU kernels. Declare a variant as a gated recurrence (or pick
//! a built-in from [`catalogue`]); linrec derives the chunkwise algorithm and its backward and
//! lowers both to PTX, AMDGCN and SPIR-V. This facade re-exports the spec IR, the f64
//! reference and the runtime, and runs variants through typed ops ([`ops`]).
//!
//! ```
//! let gdn = linrec::catalogue::lookup("gated_delta_net")?.spec();
//! gdn.validate().expect("built-ins are valid");
//! println!("{}", gdn.recurrence_text());
//! # Ok::<(), linrec::catalogue::UnknownVariant>(())
//! ```
//!
//! Running one on a device — every variant, built-in or declared with [`recurrence!`], has a
//! typed `forward` and `backward` ([`ops`]):
//!
//! ```no_run
//! use linrec::catalogue::{LinearAttn, LinearAttnInputs};
//! use linrec::ops::Grads;
//! use linrec::runtime::{Device, DeviceKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::new(DeviceKind::Auto)?;
//! let x = device.upload(&vec![0.5f32; 1 * 16 * 2 * 32], &[1, 16, 2, 32])?; // [B, T, H, D]
//! let out = LinearAttn::forward(&device, &LinearAttnInputs { q: &x, k: &x, v: &x }, &Default::default())?;
//! let o: Vec<f32> = device.download(&out.o)?;
//! let d_o = device.upload(&vec![1.0f32; o.len()], out.o.shape())?;
//! let grads = LinearAttn::backward(&device, &out.saved, &Grads::new(&d_o))?;
//! let dq: Vec<f32> = device.download(grads.grad_named("q").expect("q is an input"))?;
//! # Ok(()) }
//! ```

// Lets the catalogue use `recurrence!`, whose expansion names `::linrec::...` paths.
extern crate self as linrec;

pub mod catalogue;
mod error;
pub mod host;
pub mod ops;

pub use error::Error;
pub use linrec_macros::recurrence;
pub use linrec_runtime as runtime;
pub use linrec_spec as spec;
pub use linrec_spec::reference;
