//! # linrec-macros
//!
//! The `recurrence!` proc-macro of linrec; use it through the facade as `linrec::recurrence!`.
//! See [`recurrence!`] for the grammar and `docs/declare-your-own-variant.md` for a tutorial.
//!
//! The parser and the checks live in plain modules over `proc_macro2` token streams
//! (`expand` is the whole macro as a function), so unit tests and the no-panic property test
//! run without a compiler-provided `proc_macro` context.

mod analyze;
mod emit;
mod syntax;

#[cfg(test)]
mod tests;

use proc_macro2::TokenStream;

/// Declares linear-attention variants as gated recurrences; emits, per variant, a validated
/// [`Spec`](https://docs.rs/linrec-spec) and a typed API.
///
/// ```text
/// linrec::recurrence! {
///     /// Gated DeltaNet (Yang et al. 2024): the delta rule under a data-dependent scalar decay.
///     pub GatedDeltaNet {
///         inputs { q: [K], k: [K], v: [V], g: log_gate, beta: scalar }
///         state S: [K, V];
///         l2norm(q, k);
///         S = exp(g) * (I - beta * k * k^T) * S + beta * k * v^T;
///         o = S^T * q * scale;
///     }
/// }
/// ```
///
/// # Grammar
///
/// One invocation holds any number of variants: `/// doc` lines, a visibility, a CamelCase
/// name (the spec's name is its snake_case: `GatedDeltaNet` → `gated_delta_net`) and a body of
/// statements in any order:
///
/// | statement | meaning |
/// |---|---|
/// | `inputs { name: kind, ... }` | the input tensors, in the order the typed API lists them |
/// | `state S: [K, V];` | the per-head state, keys by values |
/// | `S = <carry> * S + <write>;` | the update (`S` on the right is the state before the token; `S_prev` is accepted too) |
/// | `o = <read> * scale;` | the output |
/// | `scale = 1.0;` | a fixed scale (default `K^-1/2`) |
/// | `l2norm(q, k);` | L2-normalise q and k in the kernel |
///
/// Input kinds: `[K]` (query, key), `[V]` (value), `scalar` (β), `log_gate` (scalar decay
/// `exp(g)`), `log_gate[K]` (diagonal decay `Diag(exp(g))`), `log_rate` (a constant per-head
/// decay `exp(a)`, shape `[HV]`) and `per_head[K]` (the bonus `u`, shape `[HV, K]`). An input's
/// role follows from where it is used.
///
/// The carried term is a product ending in `S`: at most one decay — `exp(g)`, `Diag(exp(g))`,
/// `gamma` (RetNet's `γ_h = 1 − 2^(−5−h)`) or `exp(a)` — and at most one delta rule
/// `(I - beta * k * k^T)`; their order is the order of application (rightmost first). The
/// write is `k * v^T` or `beta * k * v^T`. The read is `S^T * q` (inclusive) or
/// `(S_prev^T * q + sum(q * u * k) * v)` (exclusive plus bonus; inside `sum` the product is
/// element-wise), times `scale`.
///
/// The initial state, the final state, varlen and GVA are options of every call, not of the
/// declaration.
///
/// # What it emits
///
/// For `pub GatedDeltaNet { ... }`: a unit struct `GatedDeltaNet` with `NAME`, `INPUTS`
/// (`(name, role)` pairs), `spec() -> &'static Spec` and the typed op
/// `forward(&Device, &GatedDeltaNetInputs<B>, &ForwardOptions) -> Result<Forward, linrec::Error>`
/// (`B` a `DeviceBuffer` or a reference to one; see `linrec::ops`), and a struct
/// `GatedDeltaNetInputs<T>` with one public field per input (so a missing or misspelt input
/// is a compile error), plus `named`, `into_named`, `as_ref`, `map` and `try_from_fn`.
///
/// # Errors
///
/// Every mistake is a compile error on the token at fault, saying what is allowed; the
/// variant's items are still emitted so the rest of the crate keeps type-checking.
#[proc_macro]
pub fn recurrence(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand(input.into()).into()
}

/// The whole macro over `proc_macro2` tokens: parse, check, emit. Never panics; errors come
/// back as `compile_error!` invocations next to the items of the variant at fault.
fn expand(input: TokenStream) -> TokenStream {
    let headers = match syntax::parse_headers(input) {
        Ok(h) => h,
        Err(e) => return e.to_compile_error(),
    };
    let mut out = TokenStream::new();
    for header in headers {
        match analyze::analyze(header) {
            Ok(v) => out.extend(emit::variant(&v)),
            Err((skeleton, e)) => {
                out.extend(e.to_compile_error());
                out.extend(emit::skeleton(&skeleton));
            }
        }
    }
    out
}

/// The specs an invocation declares, or its first error; for tests.
#[cfg(test)]
fn specs(input: TokenStream) -> Result<Vec<linrec_spec::Spec>, syn::Error> {
    syntax::parse_headers(input)?
        .into_iter()
        .map(|h| analyze::analyze(h).map(|v| v.spec).map_err(|(_, e)| e))
        .collect()
}
