//! The `linrec` binary, end to end.

use assert_cmd::Command;

fn linrec() -> Command {
    Command::cargo_bin("linrec").expect("the linrec binary is built for tests")
}

fn stdout(args: &[&str]) -> String {
    let out = linrec().args(args).output().expect("linrec runs");
    assert!(
        out.status.success(),
        "linrec {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const BUILTINS: [&str; 9] = [
    "linear_attn",
    "retention",
    "simple_gla",
    "gla",
    "hgrn2",
    "rwkv6",
    "delta_net",
    "gated_delta_net",
    "kda",
];

#[test]
fn list_prints_all_nine_builtins_with_recurrence_and_fla() {
    let out = stdout(&["list"]);
    for name in BUILTINS {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("`{name}` missing from:\n{out}"));
        assert!(line.contains("S_t ="), "{line}");
    }
    assert!(out.contains("simple_gla (mamba2)"));
    assert_eq!(out.matches("fla: ").count(), 9, "{out}");
}

#[test]
fn list_and_catalogue_agree() {
    let names: Vec<&str> = linrec::catalogue::BUILTINS.iter().map(|b| b.name).collect();
    assert_eq!(names, BUILTINS);
    for b in linrec::catalogue::BUILTINS {
        b.spec()
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert_eq!(b.spec().name, b.name);
    }
}

#[test]
fn show_prints_spec_math_inputs_and_constraints() {
    let out = stdout(&["show", "gated_delta_net"]);
    for needle in [
        "gated_delta_net",
        "S_t = (I − beta_t k_t k_tᵀ)·exp(g_t)·S_{t−1} + beta_t k_t v_tᵀ",
        "o_t = scale·S_tᵀ q_t",
        "beta   beta        [B, T, HV]",
        "g      gate        [B, T, HV]",
        "transition delta decay_then_delta",
        "HV % H == 0",
        "chunk_gated_delta_rule",
    ] {
        assert!(out.contains(needle), "`{needle}` missing from:\n{out}");
    }
    let rwkv = stdout(&["show", "rwkv6"]);
    assert!(rwkv.contains("u      bonus       [HV, K]"), "{rwkv}");
    assert!(rwkv.contains("w      gate        [B, T, HV, K]"), "{rwkv}");
}

#[test]
fn show_alias_resolves() {
    assert!(stdout(&["show", "mamba2"]).starts_with("simple_gla"));
}

#[test]
fn unknown_variant_lists_known_ones_and_exits_2() {
    for args in [&["show", "gdn"][..], &["run", "gdn"][..]] {
        let out = linrec().args(args).output().expect("linrec runs");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unknown variant `gdn`"), "{err}");
        for name in BUILTINS {
            assert!(err.contains(name), "{err}");
        }
    }
}

#[test]
fn run_checks_the_backward_of_every_builtin() {
    for name in BUILTINS {
        let out = stdout(&["run", name, "--shape", "1,70,1,2,4,3"]);
        assert!(out.contains("PASS"), "{name}:\n{out}");
    }
}

#[test]
fn run_default_is_gated_delta_net() {
    let out = stdout(&["run", "--shape", "1,8,1,4,4"]);
    assert!(out.contains("variant  gated_delta_net"), "{out}");
}

#[test]
fn run_rejects_bad_shapes_with_exit_2() {
    for (shape, needle) in [
        ("1,8,2,3,4,4", "not a multiple of query/key heads H = 2"),
        ("1,8,0,4,4", "H = 0"),
        ("1,8,4", "give B,T,H,K,V"),
        ("a,b,c,d,e", "give B,T,H,K,V"),
    ] {
        let out = linrec()
            .args(["run", "--shape", shape])
            .output()
            .expect("linrec runs");
        assert_eq!(out.status.code(), Some(2), "{shape}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{shape}: {err}");
    }
}
