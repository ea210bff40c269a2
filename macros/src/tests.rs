//! Parser and checker tests over `proc_macro2` tokens, and the property that the macro never
//! panics, whatever tokens it is given. Where each error points is checked by the trybuild UI
//! tests of the facade (`tests/ui/`), which see real spans.

use std::str::FromStr;

use linrec_spec::{ConstantRate, Decay, DeltaOrder, Read, Role, Scale, Spec, Transition, Write};
use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use proptest::prelude::*;

use crate::{expand, specs};

fn tokens(src: &str) -> TokenStream {
    TokenStream::from_str(src).expect("test sources lex")
}

fn spec(src: &str) -> Spec {
    let mut all = specs(tokens(src)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn error(src: &str) -> String {
    match specs(tokens(src)) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e.to_string(),
    }
}

/// A body around the update and read, with the usual inputs.
fn body(inputs: &str, lines: &str) -> String {
    format!("pub V1 {{ inputs {{ {inputs} }} state S: [K, V]; {lines} }}")
}

const GDN: &str = "
    /// Gated DeltaNet (Yang et al. 2024)
    ///
    /// A second paragraph stays out of the spec's one-line doc.
    pub GatedDeltaNet {
        inputs { q: [K], k: [K], v: [V], g: log_gate, beta: scalar }
        state S: [K, V];
        l2norm(q, k);
        S = exp(g) * (I - beta * k * k^T) * S + beta * k * v^T;
        o = S^T * q * scale;
    }";

#[test]
fn gated_delta_net() {
    let s = spec(GDN);
    assert_eq!(s.name, "gated_delta_net");
    assert_eq!(s.doc, "Gated DeltaNet (Yang et al. 2024)");
    let inputs: Vec<_> = s.inputs.iter().map(|i| (i.name.as_str(), i.role)).collect();
    assert_eq!(
        inputs,
        [
            ("q", Role::Query),
            ("k", Role::Key),
            ("v", Role::Value),
            ("g", Role::Gate),
            ("beta", Role::Beta)
        ]
    );
    assert_eq!(s.decay, Decay::Scalar);
    assert_eq!(
        s.transition,
        Transition::Delta {
            order: DeltaOrder::DeltaThenDecay
        }
    );
    assert_eq!(s.write, Write::BetaOuter);
    assert_eq!(s.read, Read::Inclusive);
    assert_eq!(s.scale, Scale::InvSqrtK);
    assert!(s.features.qk_l2norm);
}

#[test]
fn every_decay_form() {
    let qkv = "q: [K], k: [K], v: [V]";
    let read = "o = S^T * q * scale;";
    let cases = [
        ("", "S = S + k * v^T;", Decay::None),
        (
            "",
            "S = gamma * S + k * v^T;",
            Decay::Constant(ConstantRate::Retnet),
        ),
        (
            ", a: log_rate",
            "S = exp(a) * S + k * v^T;",
            Decay::Constant(ConstantRate::Input),
        ),
        (", g: log_gate", "S = exp(g) * S + k * v^T;", Decay::Scalar),
        (
            ", g: log_gate[K]",
            "S = Diag(exp(g)) * S + k * v^T;",
            Decay::Diagonal,
        ),
    ];
    for (extra, update, decay) in cases {
        let s = spec(&body(&format!("{qkv}{extra}"), &format!("{update} {read}")));
        assert_eq!(s.decay, decay, "{update}");
    }
}

#[test]
fn delta_order_and_equivalent_spellings() {
    let inputs = "q: [K], k: [K], v: [V], g: log_gate[K], beta: scalar";
    let after = spec(&body(
        inputs,
        "S = (I - beta * k * k^T) * Diag(exp(g)) * S + beta * k * v^T; o = S^T * q * scale;",
    ));
    assert_eq!(
        after.transition,
        Transition::Delta {
            order: DeltaOrder::DecayThenDelta
        }
    );
    let before = spec(&body(
        inputs,
        "S = Diag(exp(g)) * (I - beta * k * k^T) * S + beta * k * v^T; o = S^T * q * scale;",
    ));
    assert_eq!(
        before.transition,
        Transition::Delta {
            order: DeltaOrder::DeltaThenDecay
        }
    );
    // Terms in either order, beta anywhere in its product, S_prev for S, q^T * S for S^T * q,
    // extra parentheses, the `scale` factor first.
    let other = spec(&body(
        inputs,
        "S = k * v^T * beta + (I - k * beta * k^T) * Diag(exp(g)) * S_prev; o = scale * (q^T * S);",
    ));
    assert_eq!(other.normalized(), after.normalized());
}

#[test]
fn exclusive_read_with_bonus_and_fixed_scale() {
    let s = spec(&body(
        "r: [K], k: [K], v: [V], w: log_gate[K], u: per_head[K]",
        "S = Diag(exp(w)) * S + k * v^T; o = (S_prev^T * r + sum(k * r * u) * v) * scale; scale = 0.5;",
    ));
    assert_eq!(s.read, Read::ExclusiveBonus);
    assert_eq!(s.scale, Scale::Value(0.5));
    assert_eq!(s.input(Role::Bonus).map(|i| i.name.as_str()), Some("u"));
}

#[test]
fn several_variants_in_one_invocation() {
    let src = format!(
        "{GDN} pub(crate) Plain {{ inputs {{ q: [K], k: [K], v: [V] }} state S: [K, V]; S = S + k * v^T; o = S^T * q * scale; }}"
    );
    let all = specs(tokens(&src)).expect("valid");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].name, "plain");
}

#[test]
fn errors_say_what_is_allowed() {
    let qkv = "q: [K], k: [K], v: [V]";
    let ok_read = "o = S^T * q * scale;";
    let cases: Vec<(String, &str)> = vec![
        (
            body(qkv, &format!("S = exp(h) * S + k * v^T; {ok_read}")),
            "unknown input `h`",
        ),
        (
            body(
                "q: [K], k: [K], v: [K]",
                &format!("S = S + k * v^T; {ok_read}"),
            ),
            "`v` is declared `[K]`",
        ),
        (
            body(
                "q: [K], k: [K], v: [V]",
                &format!("S = S + v * k^T; {ok_read}"),
            ),
            "is [V, K]",
        ),
        (
            body(
                &format!("{qkv}, g: scalar"),
                &format!("S = g * S + k * v^T; {ok_read}"),
            ),
            "declared `scalar`",
        ),
        (
            body(
                &format!("{qkv}, g: log_gate[K]"),
                &format!("S = exp(g) * S + k * v^T; {ok_read}"),
            ),
            "Diag(exp(g))",
        ),
        (
            body(qkv, &format!("S = S * S + k * v^T; {ok_read}")),
            "unsupported form `S * S`",
        ),
        (
            body(qkv, &format!("S = exp(S) + k * v^T; {ok_read}")),
            "unsupported form `exp(S)`",
        ),
        (body(qkv, "S = S + k * v^T;"), "has no output"),
        (
            body(
                "q: [K], k: [K], k: [V]",
                &format!("S = S + k * v^T; {ok_read}"),
            ),
            "declared twice",
        ),
        (
            body(
                &format!("{qkv}, beta: scalar"),
                &format!("S = (I - k * k^T) * S + beta * k * v^T; {ok_read}"),
            ),
            "needs its strength beta",
        ),
        (
            body(
                &format!("{qkv}, u: per_head[K]"),
                "S = S + k * v^T; o = (S^T * q + sum(q * u * k) * v) * scale;",
            ),
            "a bonus on an inclusive read",
        ),
        (
            body(qkv, "S = S + k * v^T; o = S^T * q;"),
            "ends with `* scale`",
        ),
        (
            body(
                &format!("{qkv}, beta: scalar"),
                &format!("S = (I - beta * k * k^T) * S + k * v^T; {ok_read}"),
            ),
            "the delta rule with the plain write",
        ),
        (
            body(qkv, &format!("S = S + k * v^T; {ok_read} scale = 0.0;")),
            "scale 0 is not allowed",
        ),
        (
            body(
                "q: [K], k: [K], v: [V], h0: [K]",
                &format!("S = S + k * v^T; {ok_read}"),
            ),
            "input `h0` is declared but not used",
        ),
        (
            body(qkv, &format!("l2norm(k); S = S + k * v^T; {ok_read}")),
            "`l2norm(q, k);`",
        ),
        (
            body(
                &format!("{qkv}, u: per_head[K]"),
                "S = S + k * v^T; o = S_prev^T * q * scale;",
            ),
            "needs the bonus",
        ),
        (
            body(qkv, "S = S + k * v^T; o = S^T * k * scale;"),
            "already the key",
        ),
        (
            body("q: [K], k: [K], v: [V], g: gate", ""),
            "unknown kind `gate`",
        ),
        (
            "pub X { inputs { q: [K], k: [K], v: [V] } state S: [V, K]; }".into(),
            "the state's shape is `[K, V]`",
        ),
        (
            body(qkv, &format!("S = S + k * v^T; {ok_read} h0 zero;")),
            "call-time options",
        ),
        (
            body(qkv, &format!("S = S + k * v^T; {ok_read} scael = 1.0;")),
            "unknown setting `scael`",
        ),
        (
            body(
                &format!("{qkv}, g: log_gate"),
                &format!("S = exp(g) * gamma * S + k * v^T; {ok_read}"),
            ),
            "a second decay factor",
        ),
        (
            body(qkv, &format!("S = S + k^T * v; {ok_read}")),
            "inner product",
        ),
        ("pub struct X {}".into(), "without `struct`"),
    ];
    for (src, expected) in cases {
        let e = error(&src);
        assert!(
            e.contains(expected),
            "for\n{src}\nexpected `{expected}` in\n{e}"
        );
    }
}

#[test]
fn a_reserved_name_is_checked_by_the_spec() {
    let e = error(&body(
        "q: [K], k: [K], o: [V]",
        "S = S + k * o^T; out = S^T * q * scale;",
    ));
    assert!(e.contains("input name `o` is not allowed"), "{e}");
}

#[test]
fn failed_variants_still_emit_their_items() {
    let out = expand(tokens(&body("q: [K], k: [K], v: [V]", "S = S + k * v^T;"))).to_string();
    assert!(out.contains("compile_error"), "{out}");
    assert!(out.contains("struct V1"), "{out}");
    assert!(out.contains("struct V1Inputs"), "{out}");
    for f in ["fn forward", "fn backward (", "fn backward_with ("] {
        assert!(out.contains(f), "`{f}` missing from {out}");
    }
}

/// Every variant gets the typed forward and both backwards; the backwards go through
/// `ops::backward_of` with the variant's spec (which refuses a `Saved` of another spec).
#[test]
fn valid_variants_get_forward_and_backward() {
    let out = expand(tokens(&body(
        "q: [K], k: [K], v: [V]",
        "S = S + k * v^T; o = S^T * q * scale;",
    )))
    .to_string();
    assert!(!out.contains("compile_error"), "{out}");
    for f in [
        "pub fn forward <",
        "pub fn backward (",
        "pub fn backward_with (",
        ":: linrec :: ops :: backward_of (Self :: spec () , device , saved , grads , options)",
        ":: linrec :: ops :: BackwardOptions :: new ()",
    ] {
        assert!(out.contains(f), "`{f}` missing from {out}");
    }
}

// ------------------------------------------------------------------- no panics, ever

const WORDS: &[&str] = &[
    "inputs", "state", "S", "S_prev", "o", "q", "k", "v", "g", "beta", "u", "w", "r", "a", "exp",
    "Diag", "sum", "I", "T", "K", "V", "scale", "gamma", "l2norm", "log_gate", "log_rate",
    "scalar", "per_head", "pub", "struct", "crate", "doc", "Gdn", "x", "h0", "options", "type",
    "fn", "_",
];
const PUNCTS: &[char] = &[
    '*', '+', '-', '^', ':', ';', ',', '=', '#', '!', '.', '/', '<', '>', '&', '\'', '@', '|',
];

fn leaf() -> impl Strategy<Value = TokenTree> {
    prop_oneof![
        4 => proptest::sample::select(WORDS)
            .prop_map(|w| TokenTree::Ident(Ident::new(w, Span::call_site()))),
        3 => (proptest::sample::select(PUNCTS), any::<bool>()).prop_map(|(c, joint)| {
            let spacing = if joint { Spacing::Joint } else { Spacing::Alone };
            TokenTree::Punct(Punct::new(c, spacing))
        }),
        1 => (-1e6f64..1e6).prop_map(|x| TokenTree::Literal(Literal::f64_unsuffixed(x))),
        1 => any::<i64>().prop_map(|x| TokenTree::Literal(Literal::i64_unsuffixed(x))),
        1 => "[ -~]{0,8}".prop_map(|s| TokenTree::Literal(Literal::string(&s))),
    ]
}

fn tree() -> impl Strategy<Value = TokenTree> {
    leaf().prop_recursive(4, 96, 10, |inner| {
        (
            proptest::sample::select(
                &[
                    Delimiter::Brace,
                    Delimiter::Bracket,
                    Delimiter::Parenthesis,
                    Delimiter::None,
                ][..],
            ),
            proptest::collection::vec(inner, 0..10),
        )
            .prop_map(|(d, trees)| TokenTree::Group(Group::new(d, trees.into_iter().collect())))
    })
}

/// Valid declarations that mutations start from, between them covering every form.
const SEEDS: &[&str] = &[
    GDN,
    "/// RWKV-6
    pub Rwkv6 { inputs { r: [K], k: [K], v: [V], w: log_gate[K], u: per_head[K] }
    state S: [K, V];
    S = Diag(exp(w)) * S + k * v^T;
    o = (S_prev^T * r + sum(r * u * k) * v) * scale; scale = 1.0; }",
    "pub Mixed { inputs { q: [K], k: [K], v: [V], a: log_rate, beta: scalar }
    state S: [K, V];
    S = (I - beta * k * k^T) * exp(a) * S + beta * k * v^T;
    o = scale * (q^T * S); }
    pub(crate) Ret { inputs { q: [K], k: [K], v: [V] } state S: [K, V];
    S = gamma * S + k * v^T; o = S^T * q * scale; }",
];

/// The source with every delimiter and operator a word of its own, so mutations act on tokens.
/// Doc comments are dropped: joined back on one line they would swallow the rest.
fn words(src: &str) -> Vec<String> {
    let mut spaced = String::new();
    let code = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("///"))
        .collect::<Vec<_>>()
        .join("\n");
    for c in code.chars() {
        if "{}()[];,*+-^:=".contains(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    spaced.split_whitespace().map(str::to_string).collect()
}

fn check_output(out: TokenStream) -> Result<(), TestCaseError> {
    // Whatever comes out is valid Rust items (the errors are `compile_error!` invocations).
    let parsed = syn::parse2::<syn::File>(out.clone());
    prop_assert!(parsed.is_ok(), "unparsable output: {out}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random token trees: the macro never panics and always emits parsable items.
    #[test]
    fn never_panics_on_random_trees(trees in proptest::collection::vec(tree(), 0..24)) {
        let input: TokenStream = trees.into_iter().collect();
        check_output(expand(input))?;
    }

    /// Random variant bodies: as above, with the header right so the body checks run.
    #[test]
    fn never_panics_on_random_bodies(trees in proptest::collection::vec(tree(), 0..24)) {
        let body: TokenStream = trees.into_iter().collect();
        let input = quote::quote!(pub Random { #body });
        check_output(expand(input))?;
    }

    /// Near-valid inputs: a valid declaration with tokens dropped, repeated, swapped or
    /// replaced, which reaches the deep checks far more often than random trees do.
    #[test]
    fn never_panics_on_mutated_declarations(
        seed in proptest::sample::select(SEEDS),
        edits in proptest::collection::vec(
            (0usize..6, any::<proptest::sample::Index>(), any::<proptest::sample::Index>(), proptest::sample::select(MUTATION_WORDS)),
            1..4,
        ),
    ) {
        check_output(expand(mutate(seed, &edits)))?;
    }
}

/// Replacement tokens for mutations: words and operators.
const MUTATION_WORDS: &[&str] = &[
    "S", "S_prev", "o", "q", "k", "v", "g", "beta", "u", "w", "a", "exp", "Diag", "sum", "I", "T",
    "K", "V", "scale", "gamma", "l2norm", "log_gate", "log_rate", "scalar", "per_head", "inputs",
    "state", "h0", "1.0", "0", "*", "+", "-", "^", ":", ";", ",", "=",
];

type Edit = (
    usize,
    proptest::sample::Index,
    proptest::sample::Index,
    &'static str,
);

/// Applies `edits` to the tokens of `seed` other than delimiters, which stay in place so the
/// result still lexes and the checks after the parser are reached.
fn mutate(seed: &str, edits: &[Edit]) -> TokenStream {
    let mut words = words(seed);
    for (op, i, j, w) in edits {
        let movable: Vec<usize> = (0..words.len())
            .filter(|&n| !"{}()[]".contains(words[n].as_str()))
            .collect();
        if movable.is_empty() {
            break;
        }
        let (i, j) = (
            movable[i.index(movable.len())],
            movable[j.index(movable.len())],
        );
        match op {
            0 => {
                words.remove(i);
            }
            1 => {
                let t = words[i].clone();
                words.insert(j, t);
            }
            2 => words.swap(i, j),
            // Same class of token (a name for a name, an operator for an operator): mostly
            // still parses, so it exercises the semantic checks.
            3 | 4 => {
                let is_word = |t: &str| t.chars().all(|c| c.is_alphanumeric() || c == '_');
                if is_word(&words[i]) == is_word(w) {
                    words[i] = w.to_string();
                }
            }
            _ => words[i] = w.to_string(),
        }
    }
    // Every token left lexes on its own and the delimiters are balanced.
    TokenStream::from_str(&words.join(" ")).unwrap_or_default()
}

#[test]
fn the_mutation_seeds_are_valid() {
    for seed in SEEDS {
        specs(tokens(seed)).unwrap_or_else(|e| panic!("{e}\n{seed}"));
        // And still valid once split into words and joined again.
        specs(tokens(&words(seed).join(" "))).unwrap_or_else(|e| panic!("{e}\n{seed}"));
    }
}
