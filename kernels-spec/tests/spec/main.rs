//! Tests of the spec IR: validation (every invalid combination, with its message),
//! normalisation, serde, and the canonical hash (golden values and what it depends on).

#![allow(clippy::unwrap_used)]

use linrec_spec::{
    CANONICAL_VERSION, ConstantRate, Decay, DeltaOrder, Dims, Features, Input, Read, Role,
    RunOptions, Scale, Spec, SpecError, Transition, Write,
};

const DECAYS: [Decay; 5] = [
    Decay::None,
    Decay::Constant(ConstantRate::Retnet),
    Decay::Constant(ConstantRate::Input),
    Decay::Scalar,
    Decay::Diagonal,
];
const TRANSITIONS: [Transition; 3] = [
    Transition::Identity,
    Transition::Delta {
        order: DeltaOrder::DecayThenDelta,
    },
    Transition::Delta {
        order: DeltaOrder::DeltaThenDecay,
    },
];
const RESERVED: [&str; 9] = [
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Query => "q",
        Role::Key => "k",
        Role::Value => "v",
        Role::Gate => "g",
        Role::Beta => "beta",
        Role::Bonus => "u",
        Role::DecayRate => "gamma",
    }
}

/// A spec of these forms declaring exactly the inputs they need.
fn spec(
    name: &str,
    decay: Decay,
    transition: Transition,
    write: Write,
    read: Read,
    scale: Scale,
    qk_l2norm: bool,
) -> Spec {
    let mut s = Spec {
        name: name.into(),
        doc: format!("{name} for tests"),
        inputs: Vec::new(),
        decay,
        transition,
        write,
        read,
        scale,
        features: Features { qk_l2norm },
    };
    s.inputs = s
        .required_roles()
        .into_iter()
        .map(|r| Input::new(role_name(r), r))
        .collect();
    s
}

fn linear_attn() -> Spec {
    spec(
        "linear_attn",
        Decay::None,
        Transition::Identity,
        Write::Outer,
        Read::Inclusive,
        Scale::InvSqrtK,
        false,
    )
}

fn retention() -> Spec {
    Spec {
        name: "retention".into(),
        decay: Decay::Constant(ConstantRate::Retnet),
        ..linear_attn()
    }
}

fn gla() -> Spec {
    spec(
        "gla",
        Decay::Diagonal,
        Transition::Identity,
        Write::Outer,
        Read::Inclusive,
        Scale::InvSqrtK,
        false,
    )
}

fn rwkv6() -> Spec {
    let mut s = spec(
        "rwkv6",
        Decay::Diagonal,
        Transition::Identity,
        Write::Outer,
        Read::ExclusiveBonus,
        Scale::InvSqrtK,
        false,
    );
    s.inputs[0].name = "r".into();
    s.inputs[3].name = "w".into();
    s
}

fn gated_delta_net(order: DeltaOrder) -> Spec {
    spec(
        "gated_delta_net",
        Decay::Scalar,
        Transition::Delta { order },
        Write::BetaOuter,
        Read::Inclusive,
        Scale::InvSqrtK,
        true,
    )
}

fn kda(order: DeltaOrder) -> Spec {
    spec(
        "kda",
        Decay::Diagonal,
        Transition::Delta { order },
        Write::BetaOuter,
        Read::Inclusive,
        Scale::InvSqrtK,
        true,
    )
}

fn mamba2() -> Spec {
    spec(
        "mamba2",
        Decay::Scalar,
        Transition::Identity,
        Write::Outer,
        Read::Inclusive,
        Scale::Value(1.0),
        false,
    )
}

/// Every combination of forms and options (scales: default and 0.5).
fn all_combinations() -> Vec<Spec> {
    let mut out = Vec::new();
    for decay in DECAYS {
        for transition in TRANSITIONS {
            for write in [Write::Outer, Write::BetaOuter] {
                for read in [Read::Inclusive, Read::ExclusiveBonus] {
                    for scale in [Scale::InvSqrtK, Scale::Value(0.5)] {
                        for l2 in [false, true] {
                            out.push(spec("combo", decay, transition, write, read, scale, l2));
                        }
                    }
                }
            }
        }
    }
    out
}

fn valid_specs() -> Vec<Spec> {
    all_combinations()
        .into_iter()
        .filter(|s| s.validate().is_ok())
        .collect()
}

#[track_caller]
fn invalid(spec: &Spec, needles: &[&str]) -> SpecError {
    let err = spec.validate().expect_err("must be invalid");
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
    }
    err
}

mod validation {
    use super::*;

    #[test]
    fn catalogue_like_specs_are_valid() {
        for s in [
            linear_attn(),
            retention(),
            gla(),
            rwkv6(),
            mamba2(),
            gated_delta_net(DeltaOrder::DeltaThenDecay),
            gated_delta_net(DeltaOrder::DecayThenDelta),
            kda(DeltaOrder::DecayThenDelta),
            kda(DeltaOrder::DeltaThenDecay),
        ] {
            s.validate().unwrap();
        }
    }

    /// Exactly the delta rule with the plain write or the exclusive read is unsupported; each
    /// rejected combination says which and what is supported.
    #[test]
    fn every_combination_is_valid_or_unsupported() {
        let all = all_combinations();
        assert_eq!(all.len(), 5 * 3 * 2 * 2 * 2 * 2);
        let mut valid = 0;
        for s in &all {
            match s.validate() {
                Ok(()) => {
                    valid += 1;
                    assert!(
                        s.transition == Transition::Identity
                            || (s.write == Write::BetaOuter && s.read == Read::Inclusive)
                    );
                }
                Err(SpecError::Unsupported {
                    what, supported, ..
                }) => {
                    assert!(matches!(s.transition, Transition::Delta { .. }));
                    assert!(what.contains("delta rule"));
                    assert!(!supported.is_empty());
                }
                Err(e) => panic!("{s:?}: unexpected {e}"),
            }
        }
        assert_eq!(valid, 120);
    }

    #[test]
    fn delta_with_plain_write() {
        let mut s = gated_delta_net(DeltaOrder::DeltaThenDecay);
        s.write = Write::Outer;
        let e = invalid(
            &s,
            &[
                "spec `gated_delta_net`: unsupported combination",
                "the delta rule with the plain write k_t v_t^T",
                "supported: the delta rule with the write beta_t k_t v_t^T",
            ],
        );
        assert!(matches!(e, SpecError::Unsupported { .. }));
    }

    #[test]
    fn delta_with_exclusive_read() {
        let mut s = kda(DeltaOrder::DecayThenDelta);
        s.read = Read::ExclusiveBonus;
        s.inputs.push(Input::new("u", Role::Bonus));
        let e = invalid(
            &s,
            &[
                "unsupported combination: the delta rule with the exclusive read + bonus",
                "supported: the exclusive read + bonus with the identity transition (rwkv6)",
            ],
        );
        assert!(matches!(e, SpecError::Unsupported { .. }));
    }

    /// Every role a form needs, removed, is reported with the form that needs it and its
    /// shape; the input's own name is the user's choice, the message names the role.
    #[test]
    fn missing_input_for_each_form() {
        let cases: [(Spec, Role, &str, &str); 9] = [
            (
                linear_attn(),
                Role::Query,
                "every recurrence",
                "[B, T, H, K]",
            ),
            (linear_attn(), Role::Key, "every recurrence", "[B, T, H, K]"),
            (
                linear_attn(),
                Role::Value,
                "every recurrence",
                "[B, T, HV, V]",
            ),
            (
                mamba2(),
                Role::Gate,
                "the scalar decay exp(g_t)",
                "[B, T, HV]",
            ),
            (
                gla(),
                Role::Gate,
                "the diagonal decay Diag(exp(g_t))",
                "[B, T, HV, K]",
            ),
            (
                gated_delta_net(DeltaOrder::DecayThenDelta),
                Role::Beta,
                "the delta rule (I - beta_t k_t k_t^T)",
                "[B, T, HV]",
            ),
            (
                spec(
                    "beta_write",
                    Decay::None,
                    Transition::Identity,
                    Write::BetaOuter,
                    Read::Inclusive,
                    Scale::InvSqrtK,
                    false,
                ),
                Role::Beta,
                "the write beta_t k_t v_t^T",
                "[B, T, HV]",
            ),
            (
                rwkv6(),
                Role::Bonus,
                "the exclusive read with bonus u",
                "[HV, K]",
            ),
            (
                spec(
                    "lightning",
                    Decay::Constant(ConstantRate::Input),
                    Transition::Identity,
                    Write::Outer,
                    Read::Inclusive,
                    Scale::InvSqrtK,
                    false,
                ),
                Role::DecayRate,
                "the constant decay from an input rate",
                "[HV]",
            ),
        ];
        for (mut s, role, needed_by, shape) in cases {
            s.validate().unwrap();
            s.inputs.retain(|i| i.role != role);
            let e = invalid(
                &s,
                &[
                    &format!("spec `{}`", s.name),
                    needed_by,
                    &format!("needs an input with role `{role}` (shape {shape})"),
                    "none is declared; add one",
                ],
            );
            assert!(
                matches!(e, SpecError::MissingInput { role: r, .. } if r == role),
                "{e:?}"
            );
        }
    }

    /// Every role declared where no form uses it is reported with what would use it.
    #[test]
    fn unused_input() {
        let cases: [(Spec, Role, &str); 5] = [
            (
                linear_attn(),
                Role::Gate,
                "only by a scalar or diagonal data decay",
            ),
            (
                gla(),
                Role::Beta,
                "only by the delta rule or the write beta*k*v^T",
            ),
            (gla(), Role::Bonus, "only by the exclusive read"),
            (
                retention(),
                Role::DecayRate,
                "only by a constant decay of kind `input`",
            ),
            (
                mamba2(),
                Role::DecayRate,
                "only by a constant decay of kind `input`",
            ),
        ];
        for (mut s, role, why) in cases {
            s.inputs.push(Input::new("extra", role));
            let e = invalid(
                &s,
                &[&format!("input `extra` (role `{role}`) is not used"), why],
            );
            assert!(matches!(e, SpecError::UnusedInput { .. }), "{e:?}");
        }
    }

    #[test]
    fn duplicate_name() {
        let mut s = gla();
        s.inputs[3].name = "k".into();
        let e = invalid(
            &s,
            &["spec `gla`: input name `k` is declared twice; give each input its own name"],
        );
        assert_eq!(
            e,
            SpecError::DuplicateName {
                spec: "gla".into(),
                name: "k".into()
            }
        );
    }

    #[test]
    fn duplicate_role() {
        let mut s = linear_attn();
        s.inputs.push(Input::new("q2", Role::Query));
        let e = invalid(
            &s,
            &[
                "inputs `q` and `q2` both play the role `query`; a spec has at most one input per role",
            ],
        );
        assert!(matches!(
            e,
            SpecError::DuplicateRole {
                role: Role::Query,
                ..
            }
        ));
    }

    #[test]
    fn reserved_input_names() {
        for name in RESERVED {
            let mut s = gla();
            s.inputs[3].name = name.into();
            let e = invalid(
                &s,
                &[
                    &format!("input name `{name}` is not allowed"),
                    "reserved for tensors the runtime passes itself",
                    "`cu_seqlens`",
                ],
            );
            assert!(matches!(e, SpecError::InvalidInputName { .. }));
        }
    }

    #[test]
    fn invalid_input_names() {
        for name in ["", "1q", "q-k", "q k", "ü", "q.k"] {
            let mut s = linear_attn();
            s.inputs[0].name = name.into();
            let e = invalid(
                &s,
                &[
                    &format!("input name `{name}` is not allowed"),
                    "it is not an ASCII identifier",
                ],
            );
            assert!(matches!(e, SpecError::InvalidInputName { .. }));
        }
        // Identifiers are fine, including upper case and a leading underscore.
        let mut s = linear_attn();
        s.inputs[0].name = "Query_1".into();
        s.inputs[1].name = "_k".into();
        s.validate().unwrap();
    }

    #[test]
    fn invalid_spec_names() {
        for name in ["", "Gla", "gla-2", "1gla", "_gla", "gla x", "glä"] {
            let mut s = gla();
            s.name = name.into();
            let e = invalid(
                &s,
                &[
                    &format!("spec name `{name}` is not valid"),
                    "snake_case identifier",
                ],
            );
            assert!(matches!(e, SpecError::InvalidName { .. }));
        }
        let mut s = gla();
        s.name = "gla_2_heads".into();
        s.validate().unwrap();
    }

    #[test]
    fn bad_scale() {
        for value in [f64::NAN, 0.0, -0.0, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
            let mut s = gla();
            s.scale = Scale::Value(value);
            let e = invalid(
                &s,
                &[
                    &format!("spec `gla`: scale {value} is not allowed"),
                    "use a positive finite number or the default K^-1/2",
                ],
            );
            assert!(matches!(e, SpecError::BadScale { .. }));
        }
        let mut s = gla();
        s.scale = Scale::Value(1e-30);
        s.validate().unwrap();
    }
}

mod normalization {
    use super::*;

    /// The delta order is canonicalised to decay-then-delta for every decay that commutes with
    /// the delta rule (all but the diagonal one); inputs are sorted by role.
    #[test]
    fn delta_order_is_canonical_for_non_diagonal_decays() {
        for decay in DECAYS {
            for order in [DeltaOrder::DecayThenDelta, DeltaOrder::DeltaThenDecay] {
                let s = spec(
                    "x",
                    decay,
                    Transition::Delta { order },
                    Write::BetaOuter,
                    Read::Inclusive,
                    Scale::InvSqrtK,
                    false,
                );
                let n = s.normalized();
                let expected = if decay == Decay::Diagonal {
                    order
                } else {
                    DeltaOrder::DecayThenDelta
                };
                assert_eq!(n.transition, Transition::Delta { order: expected });
                assert_eq!(n.normalized(), n, "idempotent");
                n.validate().unwrap();
                assert_eq!(n.hash(), s.hash());
            }
        }
    }

    #[test]
    fn inputs_are_sorted_by_role() {
        let mut s = rwkv6();
        s.inputs.reverse();
        s.validate().unwrap();
        let n = s.normalized();
        let roles: Vec<Role> = n.inputs.iter().map(|i| i.role).collect();
        assert_eq!(
            roles,
            [Role::Query, Role::Key, Role::Value, Role::Gate, Role::Bonus]
        );
        assert_eq!(n.inputs[0].name, "r", "names travel with their roles");
        assert_eq!(s.hash(), rwkv6().hash());
        assert_eq!(n.required_roles(), roles);
    }

    #[test]
    fn gated_delta_net_orders_hash_equal() {
        let a = gated_delta_net(DeltaOrder::DeltaThenDecay);
        let b = gated_delta_net(DeltaOrder::DecayThenDelta);
        assert_ne!(a, b);
        assert_eq!(a.normalized(), b.normalized());
        assert_eq!(a.canonical_text(), b.canonical_text());
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn kda_orders_hash_differently() {
        let a = kda(DeltaOrder::DecayThenDelta);
        let b = kda(DeltaOrder::DeltaThenDecay);
        assert_ne!(a.normalized(), b.normalized());
        assert_ne!(a.canonical_text(), b.canonical_text());
        assert_ne!(a.hash(), b.hash());
    }

    /// Over every valid combination: hashes are equal exactly when the normalised forms are.
    #[test]
    fn hash_equal_iff_normalised_forms_equal() {
        let specs = valid_specs();
        let mut hashes: Vec<_> = specs.iter().map(Spec::hash).collect();
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[i + 1..] {
                assert_eq!(a.hash() == b.hash(), a.normalized() == b.normalized());
            }
        }
        hashes.sort();
        hashes.dedup();
        // 120 valid specs; the two delta orders coincide for 4 non-diagonal decays × 2 scales ×
        // 2 l2norm settings.
        assert_eq!(hashes.len(), 120 - 16);
    }
}

mod serde_json_round_trip {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let mut specs = valid_specs();
        specs.extend([
            rwkv6(),
            mamba2(),
            gated_delta_net(DeltaOrder::DeltaThenDecay),
            kda(DeltaOrder::DeltaThenDecay),
        ]);
        for s in specs {
            let json = serde_json::to_string(&s).unwrap();
            let back: Spec = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s, "{json}");
            assert_eq!(back.hash(), s.hash());
            let pretty = serde_json::to_string_pretty(&s).unwrap();
            assert_eq!(serde_json::from_str::<Spec>(&pretty).unwrap(), s);
        }
    }

    /// The JSON form users write by hand (documents the format).
    #[test]
    fn handwritten_json() {
        let json = r#"{
            "name": "gated_delta_net",
            "doc": "",
            "inputs": [
                {"name": "q", "role": "query"},
                {"name": "k", "role": "key"},
                {"name": "v", "role": "value"},
                {"name": "g", "role": "gate"},
                {"name": "beta", "role": "beta"}
            ],
            "decay": "scalar",
            "transition": {"delta": {"order": "delta_then_decay"}},
            "write": "beta_outer",
            "read": "inclusive",
            "scale": "inv_sqrt_k",
            "features": {"qk_l2norm": true}
        }"#;
        let s: Spec = serde_json::from_str(json).unwrap();
        let mut expected = gated_delta_net(DeltaOrder::DeltaThenDecay);
        expected.doc = String::new();
        assert_eq!(s, expected);

        let json = r#"{"name":"ret","doc":"","inputs":[{"name":"q","role":"query"},
            {"name":"k","role":"key"},{"name":"v","role":"value"},{"name":"gamma","role":"decay_rate"}],
            "decay":{"constant":"input"},"transition":"identity","write":"outer",
            "read":"exclusive_bonus","scale":{"value":0.25},"features":{"qk_l2norm":false}}"#;
        let s: Spec = serde_json::from_str(json).unwrap();
        assert_eq!(s.decay, Decay::Constant(ConstantRate::Input));
        assert_eq!(s.read, Read::ExclusiveBonus);
        assert_eq!(s.scale, Scale::Value(0.25));
    }

    #[test]
    fn unknown_forms_are_rejected() {
        let good = serde_json::to_value(gla()).unwrap();
        for (field, value) in [
            ("decay", serde_json::json!("exponential")),
            ("read", serde_json::json!("exclusive")),
            (
                "transition",
                serde_json::json!({"delta": {"order": "sideways"}}),
            ),
            ("scale", serde_json::json!(0.5)),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            let err = serde_json::from_value::<Spec>(bad).unwrap_err().to_string();
            assert!(
                err.contains("unknown variant") || err.contains("expected"),
                "{err}"
            );
        }
    }

    #[test]
    fn options_and_dims_round_trip() {
        let opts = RunOptions {
            scale: Some(0.125),
            cu_seqlens: Some(vec![0, 0, 3, 7]),
            output_final_state: true,
        };
        let back: RunOptions =
            serde_json::from_str(&serde_json::to_string(&opts).unwrap()).unwrap();
        assert_eq!(back, opts);
        let dims = Dims::new(1, 7, 2, 64, 128).with_value_heads(4);
        let back: Dims = serde_json::from_str(&serde_json::to_string(&dims).unwrap()).unwrap();
        assert_eq!(back, dims);
    }
}

mod canonical_hash {
    use super::*;

    /// (name, spec, pinned SHA-256 hex)
    type Golden = (&'static str, fn() -> Spec, &'static str);

    /// Golden values, computed once and pinned: the hash must be the same in every process, on
    /// every machine and with every Rust version (it keys the kernel cache). If the encoding
    /// changes on purpose, bump `CANONICAL_VERSION` and update these. (linear_attn's and kda's
    /// were cross-checked with `sha256sum` over their canonical text.)
    const GOLDEN: [Golden; 5] = [
        (
            "linear_attn",
            linear_attn,
            "f11b1c6f0ef8b725cfc9a6bcd07db4d2606a50d04f612ab51a4484ca372e41b5",
        ),
        (
            "retention",
            retention,
            "34f8c5dadc1d59df7537534ecc643daf94554799c8f1a23d1a8bfc64b410a332",
        ),
        (
            "rwkv6",
            rwkv6,
            "51cbc3612e736debe84005109ae216e337f393f0e2c9ab0f54857736d7b673ec",
        ),
        (
            "gated_delta_net",
            || gated_delta_net(DeltaOrder::DeltaThenDecay),
            "21a6e4421167134f5c36c1c831e00cbd34c200fc7e7b9fd55fa9eb14b65342d4",
        ),
        (
            "kda",
            || kda(DeltaOrder::DecayThenDelta),
            "da7bc25f1f4f34561c7a0116f553e9734c3d446ab824a1ad034a25abe3bcca51",
        ),
    ];

    #[test]
    fn golden_values() {
        assert_eq!(CANONICAL_VERSION, 1);
        let mut wrong = Vec::new();
        for (name, make, hex) in GOLDEN {
            let got = make().hash().hex();
            if got != hex {
                wrong.push(format!("{name}: {got}"));
            }
        }
        assert!(wrong.is_empty(), "hashes changed:\n{}", wrong.join("\n"));
    }

    #[test]
    fn golden_canonical_text() {
        assert_eq!(
            mamba2().canonical_text(),
            "linrec-spec v1\ndecay scalar\ntransition identity\nwrite outer\nread inclusive\n\
             scale value 3ff0000000000000\nqk_l2norm false\ninputs query key value gate\n"
        );
        assert_eq!(
            gated_delta_net(DeltaOrder::DeltaThenDecay).canonical_text(),
            "linrec-spec v1\ndecay scalar\ntransition delta decay_then_delta\nwrite beta_outer\n\
             read inclusive\nscale inv_sqrt_k\nqk_l2norm true\ninputs query key value gate beta\n"
        );
    }

    #[test]
    fn hash_formats() {
        let h = kda(DeltaOrder::DecayThenDelta).hash();
        let hex = h.hex();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h.short(), hex[..16]);
        assert_eq!(h.to_string(), hex);
        assert_eq!(format!("{h:?}"), format!("SpecHash({})", &hex[..16]));
    }

    /// The name, doc, input names and input order are not part of the mathematics.
    #[test]
    fn names_doc_and_input_order_do_not_change_the_hash() {
        for base in valid_specs() {
            let h = base.hash();
            let mut s = base.clone();
            s.name = "renamed_variant".into();
            s.doc = "another description".into();
            for (i, input) in s.inputs.iter_mut().enumerate() {
                input.name = format!("input_{i}");
            }
            s.inputs.rotate_left(1);
            s.validate().unwrap();
            assert_eq!(s.hash(), h);
        }
    }

    /// Any change of a form or option changes the hash (except the delta order where it
    /// commutes, covered above).
    #[test]
    fn any_form_change_changes_the_hash() {
        let base = kda(DeltaOrder::DecayThenDelta);
        let h = base.hash();
        let changes: Vec<(&str, Spec)> = vec![
            (
                "decay scalar",
                Spec {
                    decay: Decay::Scalar,
                    ..base.clone()
                },
            ),
            (
                "order",
                Spec {
                    transition: Transition::Delta {
                        order: DeltaOrder::DeltaThenDecay,
                    },
                    ..base.clone()
                },
            ),
            (
                "scale 1",
                Spec {
                    scale: Scale::Value(1.0),
                    ..base.clone()
                },
            ),
            (
                "scale 1 + ulp",
                Spec {
                    scale: Scale::Value(f64::from_bits(1f64.to_bits() + 1)),
                    ..base.clone()
                },
            ),
            (
                "scale K^-1/2 for K = 4",
                Spec {
                    scale: Scale::Value(0.5),
                    ..base.clone()
                },
            ),
            (
                "l2norm off",
                Spec {
                    features: Features { qk_l2norm: false },
                    ..base.clone()
                },
            ),
            ("identity transition", {
                let mut s = base.clone();
                s.transition = Transition::Identity;
                s
            }),
            ("identity transition, outer write", {
                let mut s = base.clone();
                s.transition = Transition::Identity;
                s.write = Write::Outer;
                s.inputs.retain(|i| i.role != Role::Beta);
                s
            }),
        ];
        let mut seen = vec![h];
        for (what, s) in changes {
            s.validate().unwrap();
            let hs = s.hash();
            assert!(!seen.contains(&hs), "{what} did not change the hash");
            seen.push(hs);
        }
        // Across the whole table, every single-field change of a valid spec that stays valid
        // and is not the commuting delta order changes the hash.
        let specs = valid_specs();
        for a in &specs {
            for b in &specs {
                let differs = [
                    a.decay != b.decay,
                    a.transition != b.transition,
                    a.write != b.write,
                    a.read != b.read,
                    a.scale != b.scale,
                    a.features != b.features,
                ];
                if differs.iter().filter(|d| **d).count() == 1 && a.normalized() != b.normalized() {
                    assert_ne!(a.hash(), b.hash());
                }
            }
        }
    }

    /// The hash is a pure function of the spec: the same across clones, serde round trips and
    /// repeated calls.
    #[test]
    fn hash_is_deterministic() {
        let s = rwkv6();
        let h = s.hash();
        for _ in 0..3 {
            assert_eq!(s.clone().hash(), h);
        }
        let back: Spec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.hash(), h);
    }
}
