//! Code generation: the spec as a Rust value and the typed API around it.
//!
//! Generated code names everything by absolute path through the facade (`::linrec::spec::...`),
//! so it works in any crate that depends on `linrec` (and inside `linrec` itself, which declares
//! `extern crate self as linrec;`).

use linrec_spec::{ConstantRate, Decay, DeltaOrder, Read, Role, Scale, Spec, Transition, Write};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::ext::IdentExt;

use crate::analyze::{Skeleton, Variant, snake_case};

fn role(r: Role) -> TokenStream {
    let v = match r {
        Role::Query => quote!(Query),
        Role::Key => quote!(Key),
        Role::Value => quote!(Value),
        Role::Gate => quote!(Gate),
        Role::Beta => quote!(Beta),
        Role::Bonus => quote!(Bonus),
        Role::DecayRate => quote!(DecayRate),
    };
    quote!(::linrec::spec::Role::#v)
}

/// The spec as an expression building it.
fn spec_expr(spec: &Spec) -> TokenStream {
    let s = quote!(::linrec::spec);
    let name = &spec.name;
    let doc = &spec.doc;
    let inputs = spec.inputs.iter().map(|i| {
        let n = &i.name;
        let r = role(i.role);
        quote!(#s::Input::new(#n, #r))
    });
    let decay = match spec.decay {
        Decay::None => quote!(#s::Decay::None),
        Decay::Constant(ConstantRate::Retnet) => {
            quote!(#s::Decay::Constant(#s::ConstantRate::Retnet))
        }
        Decay::Constant(ConstantRate::Input) => {
            quote!(#s::Decay::Constant(#s::ConstantRate::Input))
        }
        Decay::Scalar => quote!(#s::Decay::Scalar),
        Decay::Diagonal => quote!(#s::Decay::Diagonal),
    };
    let transition = match spec.transition {
        Transition::Identity => quote!(#s::Transition::Identity),
        Transition::Delta { order } => {
            let o = match order {
                DeltaOrder::DecayThenDelta => quote!(DecayThenDelta),
                DeltaOrder::DeltaThenDecay => quote!(DeltaThenDecay),
            };
            quote!(#s::Transition::Delta { order: #s::DeltaOrder::#o })
        }
    };
    let write = match spec.write {
        Write::Outer => quote!(#s::Write::Outer),
        Write::BetaOuter => quote!(#s::Write::BetaOuter),
    };
    let read = match spec.read {
        Read::Inclusive => quote!(#s::Read::Inclusive),
        Read::ExclusiveBonus => quote!(#s::Read::ExclusiveBonus),
    };
    let scale = match spec.scale {
        Scale::InvSqrtK => quote!(#s::Scale::InvSqrtK),
        // Validation admits only positive finite values, which a literal spells exactly
        // (Rust prints the shortest string that parses back to the same f64).
        Scale::Value(v) if v.is_finite() => {
            let lit = Literal::f64_suffixed(v);
            quote!(#s::Scale::Value(#lit))
        }
        Scale::Value(_) => quote!(#s::Scale::Value(::core::f64::NAN)),
    };
    let l2 = spec.features.qk_l2norm;
    quote! {
        #s::Spec {
            name: ::std::string::String::from(#name),
            doc: ::std::string::String::from(#doc),
            inputs: ::std::vec![#(#inputs),*],
            decay: #decay,
            transition: #transition,
            write: #write,
            read: #read,
            scale: #scale,
            features: #s::Features { qk_l2norm: #l2 },
        }
    }
}

/// The items of a valid variant.
pub fn variant(v: &Variant) -> TokenStream {
    let Variant {
        doc_lines,
        vis,
        ident,
        inputs,
        spec,
    } = v;
    let inputs_ident = format_ident!("{}Inputs", ident.unraw());
    let name = &spec.name;
    let n = inputs.len();
    let fields: Vec<_> = inputs.iter().map(|(i, _)| i).collect();
    let names: Vec<String> = inputs.iter().map(|(i, _)| i.unraw().to_string()).collect();
    let roles: Vec<_> = inputs.iter().map(|(_, r)| role(*r)).collect();
    let field_docs = inputs.iter().map(|(i, r)| {
        format!(
            "`{}`: the {}, shape `{}`.",
            i.unraw(),
            r.as_str().replace('_', " "),
            r.shape_text(&spec.decay)
        )
    });
    let spec_expr = spec_expr(spec);
    let user_doc = doc_lines.iter().map(|l| quote!(#[doc = #l]));
    let separator = (!doc_lines.is_empty()).then(|| quote!(#[doc = ""]));
    let recurrence = format!(
        "Recurrence: `{}`, scale `{}`.",
        spec.recurrence_text(),
        spec.scale_text()
    );
    let api_doc = format!(
        "Declared with `linrec::recurrence!`: the spec `{name}` is [`{ident}::spec`]; its inputs are [`{inputs_ident}`]."
    );
    let inputs_doc = format!(
        "The inputs of [`{ident}`], one field per declared input, generic over the tensor type `T`."
    );
    let forward_doc = format!(
        "Runs the forward of `{name}` on `device`: [`linrec::ops::forward`](::linrec::ops::forward) with this spec and `inputs` (owned buffers or references: `{inputs_ident}<DeviceBuffer>` or `{inputs_ident}<&DeviceBuffer>`)."
    );
    let backward_doc = format!(
        "Runs the backward of `{name}` on `device` (the forward's): [`linrec::ops::backward`](::linrec::ops::backward) of the forward call that returned `saved`, with the gradients flowing in (`grads`: `dO`, and `dht` when the forward returned the final state) and the default [`BackwardOptions`](::linrec::ops::BackwardOptions)."
    );
    let backward_with_doc = format!(
        "[`{ident}::backward`] with explicit [`BackwardOptions`](::linrec::ops::BackwardOptions) (e.g. a kernel provider)."
    );
    quote! {
        #(#user_doc)*
        #separator
        #[doc = #recurrence]
        #[doc = ""]
        #[doc = #api_doc]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #vis struct #ident;

        impl #ident {
            /// The spec's name (snake_case).
            pub const NAME: &'static str = #name;
            /// The declared inputs as `(name, role)`, in declaration order.
            pub const INPUTS: &'static [(&'static str, ::linrec::spec::Role)] = &[#((#names, #roles)),*];

            /// The spec. `recurrence!` validated it when it expanded, so building it cannot
            /// fail; it is built once, on first use.
            pub fn spec() -> &'static ::linrec::spec::Spec {
                static SPEC: ::std::sync::LazyLock<::linrec::spec::Spec> =
                    ::std::sync::LazyLock::new(|| #spec_expr);
                &SPEC
            }

            #[doc = #forward_doc]
            ///
            /// Returns the output, the final state if the options ask for it, and the
            /// saved-for-backward context; every argument is checked first, and a mismatch is
            /// a [`linrec::Error`](::linrec::Error) naming it.
            pub fn forward<B: ::core::borrow::Borrow<::linrec::runtime::DeviceBuffer>>(
                device: &::linrec::runtime::Device,
                inputs: &#inputs_ident<B>,
                options: &::linrec::ops::ForwardOptions<'_>,
            ) -> ::core::result::Result<::linrec::ops::Forward, ::linrec::Error> {
                ::linrec::ops::forward(
                    device,
                    Self::spec(),
                    &[#((#roles, ::core::borrow::Borrow::borrow(&inputs.#fields))),*],
                    options,
                )
            }

            #[doc = #backward_doc]
            ///
            /// Returns the gradient of every input (by role, or by declared name with
            /// `grad_named`) and of `h0` when the forward read one; `saved` must come from a
            /// forward of this variant, and `dO` / `dht` must fit it, or the error names them.
            pub fn backward(
                device: &::linrec::runtime::Device,
                saved: &::linrec::ops::Saved,
                grads: &::linrec::ops::Grads<'_>,
            ) -> ::core::result::Result<::linrec::ops::Backward, ::linrec::Error> {
                ::linrec::ops::backward_of(
                    Self::spec(),
                    device,
                    saved,
                    grads,
                    &::linrec::ops::BackwardOptions::new(),
                )
            }

            #[doc = #backward_with_doc]
            pub fn backward_with(
                device: &::linrec::runtime::Device,
                saved: &::linrec::ops::Saved,
                grads: &::linrec::ops::Grads<'_>,
                options: &::linrec::ops::BackwardOptions<'_>,
            ) -> ::core::result::Result<::linrec::ops::Backward, ::linrec::Error> {
                ::linrec::ops::backward_of(Self::spec(), device, saved, grads, options)
            }
        }

        #[doc = #inputs_doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #vis struct #inputs_ident<T> {
            #(
                #[doc = #field_docs]
                pub #fields: T,
            )*
        }

        impl<T> #inputs_ident<T> {
            /// The number of inputs.
            pub const LEN: usize = #n;

            /// Every input as `(name, role, &tensor)`, in declaration order.
            pub fn named(&self) -> [(&'static str, ::linrec::spec::Role, &T); #n] {
                [#((#names, #roles, &self.#fields)),*]
            }

            /// Every input as `(name, role, tensor)`, in declaration order.
            pub fn into_named(self) -> [(&'static str, ::linrec::spec::Role, T); #n] {
                [#((#names, #roles, self.#fields)),*]
            }

            /// Borrows every input.
            pub fn as_ref(&self) -> #inputs_ident<&T> {
                #inputs_ident { #(#fields: &self.#fields),* }
            }

            /// Applies `f` to every input (e.g. host tensors to device buffers), given its name
            /// and role.
            pub fn map<U>(
                self,
                mut f: impl ::core::ops::FnMut(&'static str, ::linrec::spec::Role, T) -> U,
            ) -> #inputs_ident<U> {
                #inputs_ident { #(#fields: f(#names, #roles, self.#fields)),* }
            }

            /// Builds the inputs by asking `f` for each one by name and role (e.g. from a
            /// safetensors file), in declaration order; stops at the first error.
            pub fn try_from_fn<E>(
                mut f: impl ::core::ops::FnMut(&'static str, ::linrec::spec::Role)
                    -> ::core::result::Result<T, E>,
            ) -> ::core::result::Result<Self, E> {
                ::core::result::Result::Ok(#inputs_ident { #(#fields: f(#names, #roles)?),* })
            }
        }
    }
}

/// The items of a variant that failed, emitted next to its error so that the rest of the
/// user's crate still resolves its names (and editors keep completing them) while the one real
/// error is shown. The crate does not compile, so `spec()` is never called.
pub fn skeleton(s: &Skeleton) -> TokenStream {
    let Skeleton { vis, ident, inputs } = s;
    let name = snake_case(&ident.unraw().to_string());
    let inputs_ident = format_ident!("{}Inputs", ident.unraw());
    let mut seen = Vec::new();
    let fields: Vec<_> = inputs
        .iter()
        .filter(|i| {
            let n = i.unraw().to_string();
            let fresh = !seen.contains(&n);
            seen.push(n);
            fresh
        })
        .collect();
    let inputs_struct = (!fields.is_empty()).then(|| {
        quote! {
            #[allow(missing_docs)]
            #[derive(Clone, Copy, Debug, PartialEq, Eq)]
            #vis struct #inputs_ident<T> { #(pub #fields: T,)* }

            #[allow(missing_docs)]
            impl #ident {
                pub fn forward<B: ::core::borrow::Borrow<::linrec::runtime::DeviceBuffer>>(
                    _device: &::linrec::runtime::Device,
                    _inputs: &#inputs_ident<B>,
                    _options: &::linrec::ops::ForwardOptions<'_>,
                ) -> ::core::result::Result<::linrec::ops::Forward, ::linrec::Error> {
                    ::core::unreachable!()
                }
            }
        }
    });
    // `backward` takes no inputs struct, so it exists whatever the inputs were.
    let backward = quote! {
        pub fn backward(
            _device: &::linrec::runtime::Device,
            _saved: &::linrec::ops::Saved,
            _grads: &::linrec::ops::Grads<'_>,
        ) -> ::core::result::Result<::linrec::ops::Backward, ::linrec::Error> {
            ::core::unreachable!()
        }
        pub fn backward_with(
            _device: &::linrec::runtime::Device,
            _saved: &::linrec::ops::Saved,
            _grads: &::linrec::ops::Grads<'_>,
            _options: &::linrec::ops::BackwardOptions<'_>,
        ) -> ::core::result::Result<::linrec::ops::Backward, ::linrec::Error> {
            ::core::unreachable!()
        }
    };
    quote! {
        #[allow(missing_docs)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #vis struct #ident;

        #[allow(missing_docs)]
        impl #ident {
            pub const NAME: &'static str = #name;
            pub const INPUTS: &'static [(&'static str, ::linrec::spec::Role)] = &[];
            pub fn spec() -> &'static ::linrec::spec::Spec {
                ::core::unreachable!()
            }
            #backward
        }

        #inputs_struct
    }
}
