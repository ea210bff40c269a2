//! The `linrec` binary, end to end.

use assert_cmd::Command;

fn linrec() -> Command {
    let mut cmd = Command::cargo_bin("linrec").expect("the linrec binary is built for tests");
    // Compiled kernels go to a cache of this test process, not the user's ~/.cache/linrec.
    cmd.env("LINREC_CACHE_DIR", test_cache());
    cmd
}

/// The disk cache the tests' `linrec run`s share (one per test process).
fn test_cache() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("linrec-cli-cache-{}", std::process::id()))
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
        let out = stdout(&[
            "run",
            name,
            "--device",
            "reference",
            "--shape",
            "1,70,1,2,4,3",
        ]);
        assert!(out.contains("PASS"), "{name}:\n{out}");
    }
}

#[test]
fn run_default_is_simple_gla() {
    let out = stdout(&["run", "--device", "reference", "--shape", "1,8,1,4,4"]);
    assert!(out.contains("variant  simple_gla"), "{out}");
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

#[cfg(not(feature = "jit"))]
#[test]
fn without_jit_run_asks_for_artifacts() {
    if !opencl_ready() {
        return;
    }
    let out = linrec()
        .args([
            "run",
            "simple_gla",
            "--device",
            "opencl",
            "--shape",
            "1,8,1,4,4",
        ])
        .env_remove("LINREC_ARTIFACTS")
        .output()
        .expect("linrec runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without the `jit` feature") && err.contains("--artifacts"),
        "{err}"
    );
}

/// True when Intel's CPU OpenCL runtime (or another SPIR-V device) is set up; in CI it must be.
fn opencl_ready() -> bool {
    let ready = std::env::var_os("OCL_ICD_VENDORS").is_some();
    if !ready {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the OpenCL tests: scripts/test.sh sets OCL_ICD_VENDORS"
        );
        eprintln!(
            "note: OCL_ICD_VENDORS unset, OpenCL CLI tests skipped (scripts/setup-opencl.sh)"
        );
    }
    ready
}

#[cfg(feature = "jit")]
#[test]
fn run_on_opencl_passes_for_the_supported_variants() {
    if !opencl_ready() {
        return;
    }
    for (name, extra) in [
        ("simple_gla", &["--shape", "2,75,2,32,16"][..]),
        (
            "linear_attn",
            &["--shape", "1,40,1,2,16,16", "--dtype", "f16"][..],
        ),
        (
            "retention",
            &[
                "--shape",
                "1,70,2,24,8",
                "--varlen",
                "--dtype",
                "f32",
                "--chunk",
                "32",
            ][..],
        ),
    ] {
        let mut args = vec!["run", name, "--device", "opencl"];
        args.extend_from_slice(extra);
        let out = stdout(&args);
        assert!(out.contains("PASS"), "{name}:\n{out}");
        assert!(out.contains("compiled for spirv"), "{name}:\n{out}");
    }
}

/// `linrec run` reports where its kernel came from: compiled (and cached) the first time, the
/// disk cache the second; a corrupted cache file is reported and recompiled; `--no-cache`
/// compiles without touching the cache.
#[cfg(feature = "jit")]
#[test]
fn run_reuses_the_disk_cache_and_recompiles_a_corrupt_entry() {
    if !opencl_ready() {
        return;
    }
    let cache = std::env::temp_dir().join(format!("linrec-cli-reuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "linear_attn",
            "--device",
            "opencl",
            "--shape",
            "1,20,1,8,8",
        ];
        args.extend_from_slice(extra);
        let out = linrec()
            .args(&args)
            .env("LINREC_CACHE_DIR", &cache)
            .output()
            .expect("linrec runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success() && stdout.contains("PASS"),
            "{stdout}\n{stderr}"
        );
        (stdout, stderr)
    };
    let kernel_line = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_default()
            .to_owned()
    };

    let (first, _) = run(&[]);
    let line = kernel_line(&first);
    assert!(
        line.contains("compiled for spirv in ") && line.contains(", cached in "),
        "{first}"
    );
    let cached = std::path::PathBuf::from(
        line.split(", cached in ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .expect("the cached path"),
    );
    assert!(cached.starts_with(&cache) && cached.exists(), "{line}");

    let (second, _) = run(&[]);
    assert!(
        kernel_line(&second).contains(&format!("(from the disk cache: {})", cached.display())),
        "{second}"
    );

    // Corrupt the cached binary: the next run warns, recompiles and caches it again.
    let bytes = std::fs::read(&cached).expect("cached binary");
    std::fs::write(&cached, &bytes[..bytes.len() / 2]).expect("truncate");
    let (third, stderr) = run(&[]);
    assert!(
        kernel_line(&third).contains("compiled for spirv"),
        "{third}"
    );
    assert!(
        stderr.contains("warning: kernel cache entry") && stderr.contains("is corrupt"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&cached).expect("rewritten"), bytes);
    let (fourth, _) = run(&[]);
    assert!(
        kernel_line(&fourth).contains("from the disk cache"),
        "{fourth}"
    );

    let (fifth, _) = run(&["--no-cache"]);
    assert!(kernel_line(&fifth).contains("(not cached)"), "{fifth}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[cfg(feature = "jit")]
#[test]
fn emit_prints_every_stage() {
    for (stage, needle) in [
        ("plan", "plan simple_gla forward"),
        ("schedule", "grid"),
        ("mlir", "gpu.module"),
        ("asm", ".visible .entry linrec_simple_gla_fwd"),
    ] {
        let out = stdout(&["emit", "simple_gla", "--target", "sm_90", "--stage", stage]);
        assert!(
            out.contains(needle),
            "{stage}: `{needle}` missing from:\n{out}"
        );
    }
}

#[cfg(feature = "jit")]
#[test]
fn compile_writes_a_manifest_that_run_loads() {
    let dir = std::env::temp_dir().join(format!("linrec-cli-art-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 temp dir");
    let out = linrec()
        .args([
            "compile",
            "all",
            "--target",
            "sm_90",
            "spirv",
            "--head-dims",
            "16",
            "--out",
            d,
        ])
        .output()
        .expect("linrec runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gla") && err.contains("skipped: spec `gla`: not yet supported"),
        "{err}"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest is JSON");
    let kernels = manifest["kernels"].as_array().expect("kernels list");
    // 3 supported variants × 2 targets × 8 option combinations (h0, final state, varlen).
    assert_eq!(kernels.len(), 48);
    for k in kernels {
        let file = k["file"].as_str().expect("file name");
        assert!(dir.join(file).exists(), "{file}");
    }
    if opencl_ready() {
        let out = stdout(&[
            "run",
            "retention",
            "--device",
            "opencl",
            "--artifacts",
            d,
            "--shape",
            "1,20,1,16,16",
        ]);
        assert!(
            out.contains("PASS") && out.contains("(from artifacts: "),
            "{out}"
        );
        // A config the folder does not hold names what is missing and how to build it.
        let out = linrec()
            .args([
                "run",
                "retention",
                "--device",
                "opencl",
                "--artifacts",
                d,
                "--shape",
                "1,20,1,32,32",
            ])
            .output()
            .expect("linrec runs");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("has no forward kernel of `retention`")
                && err.contains("linrec compile retention"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "jit")]
#[test]
fn bad_kernel_arguments_exit_2_naming_the_argument() {
    for (args, needle) in [
        (&["emit", "simple_gla", "--target", "sm_75"][..], "sm_75"),
        (
            &["emit", "simple_gla", "--target", "sm_90", "--dtype", "fp8"][..],
            "--dtype",
        ),
        (
            &["emit", "simple_gla", "--target", "sm_90", "--chunk", "48"][..],
            "--chunk 48",
        ),
        (
            &[
                "emit",
                "simple_gla",
                "--target",
                "sm_90",
                "--head-dims",
                "300",
            ][..],
            "--head-dims",
        ),
        (
            &["emit", "gla", "--target", "sm_90"][..],
            "not yet supported: the diagonal decay",
        ),
        (
            &[
                "run",
                "simple_gla",
                "--device",
                "opencl",
                "--varlen",
                "--shape",
                "2,8,1,4,4",
            ][..],
            "B = 1",
        ),
    ] {
        let out = linrec().args(args).output().expect("linrec runs");
        let err = String::from_utf8_lossy(&out.stderr);
        if args.contains(&"--varlen") && !opencl_ready() {
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
