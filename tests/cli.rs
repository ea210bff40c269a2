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
    assert_success(&out, &format!("linrec {args:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `out` succeeded; `case` names the command, its stdout and stderr follow in a
/// failure message.
fn assert_success(out: &std::process::Output, case: &str) {
    assert!(
        out.status.success(),
        "{case} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `out` is a usage or input error: exit code 2 and every needle in its stderr.
/// `case` names the command in a failure message.
fn assert_exit_2(out: &std::process::Output, case: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{case}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{case}: `{needle}` missing from {err}"
        );
    }
}

/// Runs `linrec args` and asserts a usage error ([`assert_exit_2`]).
fn fails_with(args: &[&str], needles: &[&str]) {
    let out = linrec().args(args).output().expect("linrec runs");
    assert_exit_2(&out, &format!("linrec {args:?}"), needles);
}

/// [`fails_with`] for a command line without spaces in its arguments, split on whitespace.
fn fails_with_line(line: &str, needles: &[&str]) {
    fails_with(&line.split_whitespace().collect::<Vec<_>>(), needles);
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
    let needles: Vec<&str> = std::iter::once("unknown variant `gdn`")
        .chain(BUILTINS)
        .collect();
    for line in ["show gdn", "run gdn"] {
        fails_with_line(line, &needles);
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
        // The kernels' head-dim limit of 256, as for `--inputs` files.
        ("1,8,1,8,512", "head dim V = 512"),
    ] {
        fails_with(&["run", "--shape", shape], &[needle]);
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
    assert_exit_2(
        &out,
        "run on opencl without --artifacts",
        &["without the `jit` feature", "--artifacts"],
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

/// The `grad` lines of a `linrec run --backward`: (name, ratio, bound).
#[cfg(feature = "jit")]
fn grad_lines(out: &str) -> Vec<(String, f64, f64)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("grad     ‖")?;
            let (name, rest) = rest.split_once(" − ref‖/‖ref‖")?;
            let (_, rest) = rest.split_once("= ")?;
            let (ratio, bound) = rest.split_once("(< ")?;
            Some((
                name.to_owned(),
                ratio.trim().parse().ok()?,
                bound.trim_end_matches(')').parse().ok()?,
            ))
        })
        .collect()
}

#[cfg(feature = "jit")]
#[test]
fn run_backward_on_opencl_checks_every_gradient() {
    if !opencl_ready() {
        return;
    }
    let out = stdout(&["run", "simple_gla", "--backward", "--device", "opencl"]);
    assert!(
        out.contains("PASS     simple_gla forward on spirv"),
        "{out}"
    );
    assert!(
        out.contains(
            "PASS     simple_gla backward on spirv matches the f64 reference (5 gradients)"
        ),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("kernel ")).count(),
        2,
        "a forward and a backward kernel:\n{out}"
    );
    let lines = grad_lines(&out);
    let names: Vec<&str> = lines.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["dq", "dk", "dv", "dg", "dh0"], "{out}");
    for (name, ratio, bound) in &lines {
        let want = if name == "dg" { 0.02 } else { 0.005 };
        assert_eq!(*bound, want, "{name}");
        assert!(ratio < bound, "{name}: {ratio} >= {bound}");
    }

    // GVA + varlen, f32, retention (no gate: dq, dk, dv, dh0).
    let out = stdout(&[
        "run",
        "retention",
        "--backward",
        "--device",
        "opencl",
        "--shape",
        "1,70,1,2,8,16",
        "--varlen",
        "--dtype",
        "f32",
    ]);
    assert!(out.contains("PASS     retention backward"), "{out}");
    let names: Vec<String> = grad_lines(&out).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["dq", "dk", "dv", "dh0"], "{out}");

    // Without --backward nothing of the backward shows.
    let out = stdout(&[
        "run",
        "simple_gla",
        "--device",
        "opencl",
        "--shape",
        "1,8,1,4,4",
    ]);
    assert!(!out.contains("grad ") && !out.contains("backward"), "{out}");
}

#[test]
fn run_backward_on_the_reference_prints_gradient_norms() {
    let out = stdout(&[
        "run",
        "gated_delta_net",
        "--backward",
        "--device",
        "reference",
        "--shape",
        "1,20,1,2,4,4",
    ]);
    for name in ["dq", "dk", "dv", "dg", "dbeta", "dh0"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("grad     ‖{name}‖")) && l.ends_with("(reference)")),
            "{name} missing from:\n{out}"
        );
    }
    assert!(out.contains("PASS"), "{out}");
    // Without --backward: no norms (the finite-difference check as before).
    let out = stdout(&["run", "--device", "reference", "--shape", "1,8,1,4,4"]);
    assert!(!out.contains("grad "), "{out}");
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
    // The backward's stages: the derived plan, the two-kernel schedule, its PTX.
    for (stage, needle) in [
        ("plan", "plan simple_gla backward"),
        ("schedule", "phase 2, per chunk in reverse"),
        ("asm", ".visible .entry linrec_simple_gla_bwd"),
    ] {
        let args = [
            "emit",
            "simple_gla",
            "--target",
            "sm_90",
            "--head-dims",
            "64",
            "--direction",
            "backward",
            "--stage",
            stage,
        ];
        let out = stdout(&args);
        assert!(
            out.contains(needle),
            "backward {stage}: `{needle}` missing from:\n{out}"
        );
    }
    fails_with(
        &[
            "emit",
            "simple_gla",
            "--target",
            "sm_90",
            "--direction",
            "both",
        ],
        &["--direction", "forward", "backward"],
    );
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
    assert_success(&out, "compile all");
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
        fails_with(
            &[
                "run",
                "retention",
                "--device",
                "opencl",
                "--artifacts",
                d,
                "--shape",
                "1,20,1,32,32",
            ],
            &[
                "has no forward kernel of `retention`",
                "linrec compile retention",
            ],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `linrec compile --direction both` writes forward and backward kernels (one backward per
/// forward config); `linrec run --backward --artifacts` runs both from the folder, and a
/// forward-only folder names the missing backward kernel.
#[cfg(feature = "jit")]
#[test]
fn compile_backward_kernels_that_run_backward_loads() {
    let tmp = TestDir::new("bwd-art");
    let (both, fwd_only) = (tmp.path("both"), tmp.path("fwd"));
    for (dir, direction) in [(&both, "both"), (&fwd_only, "forward")] {
        let out = linrec()
            .args([
                "compile",
                "simple_gla",
                "--target",
                "spirv",
                "--dtype",
                "f32",
                "--head-dims",
                "8",
                "--direction",
                direction,
                "--out",
                path_str(dir),
            ])
            .output()
            .expect("linrec runs");
        assert_success(&out, &format!("compile --direction {direction}"));
    }
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(both.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest is JSON");
    let kernels = manifest["kernels"].as_array().expect("kernels list");
    assert_eq!(kernels.len(), 16);
    let backward = kernels
        .iter()
        .filter(|k| k["info"]["direction"] == "backward")
        .count();
    assert_eq!(backward, 8);
    for k in kernels {
        let file = k["file"].as_str().expect("file name");
        assert!(both.join(file).exists(), "{file}");
    }
    if !opencl_ready() {
        return;
    }
    let run = |dir: &std::path::Path| {
        linrec()
            .args([
                "run",
                "simple_gla",
                "--backward",
                "--device",
                "opencl",
                "--dtype",
                "f32",
                "--shape",
                "1,30,1,8,8",
                "--artifacts",
                path_str(dir),
            ])
            .output()
            .expect("linrec runs")
    };
    let out = run(&both);
    assert_success(&out, "run --backward on the artifacts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PASS     simple_gla backward"), "{text}");
    assert_eq!(text.matches("(from artifacts: ").count(), 2, "{text}");
    assert_exit_2(
        &run(&fwd_only),
        "run --backward on forward-only artifacts",
        &[
            "backward kernel of `simple_gla`",
            "linrec compile simple_gla",
        ],
    );
}

#[cfg(feature = "jit")]
#[test]
fn bad_kernel_arguments_exit_2_naming_the_argument() {
    for (line, needle) in [
        ("emit simple_gla --target sm_75", "sm_75"),
        ("emit simple_gla --target sm_90 --dtype fp8", "--dtype"),
        ("emit simple_gla --target sm_90 --chunk 48", "--chunk 48"),
        (
            "emit simple_gla --target sm_90 --head-dims 300",
            "--head-dims",
        ),
        (
            "emit gla --target sm_90",
            "not yet supported: the diagonal decay",
        ),
        (
            "run simple_gla --device opencl --varlen --shape 2,8,1,4,4",
            "B = 1",
        ),
    ] {
        if line.contains("--varlen") && !opencl_ready() {
            continue;
        }
        fails_with_line(line, &[needle]);
    }
}

// --- `linrec run --inputs/--outputs`: safetensors files written here, as another framework
// would write them (tensor names = the spec's input names, plus h0 and cu_seqlens). ---

use linrec::host;
use linrec::reference::{self, Inputs, Rng, Tensor};
use linrec::spec::RunOptions;
use linrec::spec::launch::ElementType;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// One tensor of a test file; `values` are written as `dtype` (floats rounded, integers cast).
#[derive(Clone)]
struct St {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn element(dtype: Dtype) -> Option<ElementType> {
    match dtype {
        Dtype::BF16 => Some(ElementType::Bf16),
        Dtype::F16 => Some(ElementType::F16),
        Dtype::F32 => Some(ElementType::F32),
        _ => None,
    }
}

/// A float tensor of standard normals (`log_gate`: log-sigmoids of them, as fla's gates),
/// already rounded to `dtype` so the f64 values are exactly what the file holds.
fn st(name: &'static str, dtype: Dtype, shape: &[usize], seed: u64) -> St {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let mut values: Vec<f64> = (0..n)
        .map(|_| {
            let x = rng.normal();
            if name == "g" {
                reference::log_sigmoid(x)
            } else {
                x
            }
        })
        .collect();
    if let Some(e) = element(dtype) {
        host::round_to(e, &mut values);
    }
    St {
        name,
        dtype,
        shape: shape.to_vec(),
        values,
    }
}

fn offsets(dtype: Dtype, cu: &[i64]) -> St {
    St {
        name: "cu_seqlens",
        dtype,
        shape: vec![cu.len()],
        values: cu.iter().map(|&x| x as f64).collect(),
    }
}

fn encode(t: &St) -> Vec<u8> {
    match t.dtype {
        Dtype::F64 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::I32 => t
            .values
            .iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
        Dtype::I64 => t
            .values
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect(),
        d => host::to_bytes(element(d).expect("a float dtype"), &t.values),
    }
}

/// A temp folder of one test's files, removed when the test ends.
struct TestDir(std::path::PathBuf);

impl TestDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("linrec-cli-st-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestDir(dir)
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `tensors` to `<dir>/<file>.safetensors` with the safetensors crate.
fn write_st(dir: &TestDir, file: &str, tensors: &[St]) -> std::path::PathBuf {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(encode).collect();
    let views = tensors.iter().zip(&bytes).map(|(t, b)| {
        (
            t.name,
            TensorView::new(t.dtype, t.shape.clone(), b).expect("a consistent view"),
        )
    });
    let path = dir.path(&format!("{file}.safetensors"));
    std::fs::write(
        &path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write the file");
    path
}

/// simple_gla inputs: B = 1, T = 12, H = 1, HV = 2 (GVA), K = V = 8; q, k, v in `dtype`, g and
/// h0 f32.
fn simple_gla_file(dtype: Dtype) -> Vec<St> {
    vec![
        st("q", dtype, &[1, 12, 1, 8], 1),
        st("k", dtype, &[1, 12, 1, 8], 2),
        st("v", dtype, &[1, 12, 2, 8], 3),
        st("g", Dtype::F32, &[1, 12, 2], 4),
        st("h0", Dtype::F32, &[1, 2, 8, 8], 5),
    ]
}

/// `tensors` with `t` in place of the tensor of the same name (or added).
fn with(mut tensors: Vec<St>, t: St) -> Vec<St> {
    tensors.retain(|x| x.name != t.name);
    tensors.push(t);
    tensors
}

fn without(mut tensors: Vec<St>, name: &str) -> Vec<St> {
    tensors.retain(|x| x.name != name);
    tensors
}

/// The file's tensor `name` as a reference tensor, if the file has it.
fn tensor_of(tensors: &[St], name: &str) -> Option<Tensor> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .map(|t| Tensor::from_vec(&t.shape, t.values.clone()).expect("values match the shape"))
}

/// What the f64 reference of simple_gla takes for the file's tensors: the spec, the inputs
/// (q, k, v, g, h0) and options with the offsets `cu` and the final state.
fn reference_setup(
    tensors: &[St],
    cu: Option<Vec<i64>>,
) -> (linrec::spec::Spec, Inputs, RunOptions) {
    let get = |name: &str| tensor_of(tensors, name);
    let inputs = Inputs {
        q: get("q").expect("q"),
        k: get("k").expect("k"),
        v: get("v").expect("v"),
        g: get("g"),
        beta: None,
        u: None,
        decay_rate: None,
        h0: get("h0"),
    };
    let spec = linrec::catalogue::lookup("simple_gla")
        .expect("built-in")
        .spec();
    let opts = RunOptions {
        cu_seqlens: cu,
        output_final_state: true,
        ..Default::default()
    };
    (spec, inputs, opts)
}

/// The f64 reference on the file's values.
fn reference_of(tensors: &[St], cu: Option<Vec<i64>>) -> reference::Outputs {
    let (spec, inputs, opts) = reference_setup(tensors, cu);
    reference::forward(&spec, &inputs, &opts).expect("the reference runs")
}

/// `o` and `ht` of an `--outputs` file, checked for their dtypes, against `want`.
fn assert_outputs_match(path: &std::path::Path, o_dtype: Dtype, want: &reference::Outputs) {
    let bytes = std::fs::read(path).expect("--outputs written");
    let file = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut names = file.names();
    names.sort();
    assert_eq!(names, ["ht", "o"]);
    let read = |name: &str, dtype: Dtype| {
        let t = file.tensor(name).expect("present");
        assert_eq!(t.dtype(), dtype, "{name}");
        Tensor::from_vec(
            t.shape(),
            host::from_bytes(element(dtype).expect("float"), t.data()),
        )
        .expect("data matches the shape")
    };
    let o = read("o", o_dtype);
    let ht = read("ht", Dtype::F32);
    let want_ht = want.ht.as_ref().expect("final state");
    assert_eq!(o.shape, want.o.shape);
    assert_eq!(ht.shape, want_ht.shape);
    assert!(o.rel_error(&want.o) < 5e-3, "o: {}", o.rel_error(&want.o));
    assert!(
        ht.rel_error(want_ht) < 5e-3,
        "ht: {}",
        ht.rel_error(want_ht)
    );
}

/// The reference's gradients of simple_gla on the file's tensors (`do`, `dht` from the file).
fn reference_grads_of(tensors: &[St], cu: Option<Vec<i64>>) -> reference::Gradients {
    let (spec, inputs, opts) = reference_setup(tensors, cu);
    let d_o = tensor_of(tensors, "do").expect("do in the file");
    let dht = tensor_of(tensors, "dht");
    reference::backward(&spec, &inputs, &opts, &d_o, dht.as_ref()).expect("the reference runs")
}

/// The gradients of an `--outputs` file (dq, dk, dv in `qkv`, dg, dh0 f32) against the
/// reference's, within `tol` (0: exactly the reference's values as written in their dtype).
fn assert_grads_match(path: &std::path::Path, qkv: Dtype, tensors: &[St], tol: f64) {
    let want = reference_grads_of(tensors, None);
    let bytes = std::fs::read(path).expect("--outputs written");
    let file = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    for (name, dtype, w) in [
        ("dq", qkv, &want.dq),
        ("dk", qkv, &want.dk),
        ("dv", qkv, &want.dv),
        ("dg", Dtype::F32, want.dg.as_ref().expect("dg")),
        ("dh0", Dtype::F32, want.dh0.as_ref().expect("dh0")),
    ] {
        let t = file
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} written"));
        assert_eq!(t.dtype(), dtype, "{name}");
        let got = Tensor::from_vec(
            t.shape(),
            host::from_bytes(element(dtype).expect("float"), t.data()),
        )
        .expect("data matches the shape");
        let mut rounded = w.clone();
        host::round_to(element(dtype).expect("float"), &mut rounded.data);
        let r = got.rel_error(if tol == 0.0 { &rounded } else { w });
        // fla's bounds: 0.02 for the gate's gradient where the others have 0.005.
        let tol = if name == "dg" { tol * 4.0 } else { tol };
        assert!(r <= tol, "{name}: {r} > {tol}");
    }
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// `linrec run VARIANT --device DEVICE EXTRA.. --inputs INPUT --outputs OUTPUT`, which must
/// succeed; its stdout.
fn run_files(
    variant: &str,
    device: &str,
    extra: &[&str],
    input: &std::path::Path,
    output: &std::path::Path,
) -> String {
    let mut args = vec!["run", variant, "--device", device];
    args.extend_from_slice(extra);
    args.extend(["--inputs", path_str(input), "--outputs", path_str(output)]);
    stdout(&args)
}

/// [`simple_gla_file`] with `do` (in `dtype`) and `dht` (f32), the backward's inputs.
fn with_do_and_dht(dtype: Dtype) -> Vec<St> {
    with(
        with(
            simple_gla_file(dtype),
            St {
                name: "do",
                ..st("v", dtype, &[1, 12, 2, 8], 6)
            },
        ),
        St {
            name: "dht",
            ..st("h0", Dtype::F32, &[1, 2, 8, 8], 7)
        },
    )
}

#[test]
fn safetensors_inputs_on_the_reference_write_o_and_ht() {
    let tensors = simple_gla_file(Dtype::BF16);
    let dir = TestDir::new("ref-good");
    let input = write_st(&dir, "in", &tensors);
    let output = dir.path("out.safetensors");
    let out = run_files("simple_gla", "reference", &[], &input, &output);
    assert!(
        out.contains("shape    B=1 T=12 H=1 HV=2 K=8 V=8") && out.contains("q bf16 [1, 12, 1, 8]"),
        "{out}"
    );
    assert_outputs_match(&output, Dtype::BF16, &reference_of(&tensors, None));
}

#[cfg(feature = "jit")]
#[test]
fn safetensors_inputs_run_on_opencl_and_outputs_match_the_reference() {
    if !opencl_ready() {
        return;
    }
    // bf16, GVA, h0 and varlen offsets (i64, an empty sequence included).
    let cu = vec![0i64, 0, 5, 12];
    let tensors = with(
        with(
            simple_gla_file(Dtype::BF16),
            st("h0", Dtype::F32, &[3, 2, 8, 8], 5),
        ),
        offsets(Dtype::I64, &cu),
    );
    let dir = TestDir::new("ocl");
    let input = write_st(&dir, "varlen", &tensors);
    let output = dir.path("varlen-out.safetensors");
    let out = run_files("simple_gla", "opencl", &[], &input, &output);
    assert!(out.contains("PASS"), "{out}");
    assert_outputs_match(&output, Dtype::BF16, &reference_of(&tensors, Some(cu)));

    // f16 without h0 or offsets, a gate given as f64 (rounded to f32, with a note), and
    // --no-check: the outputs are still written, and still right.
    let tensors = with(
        without(simple_gla_file(Dtype::F16), "h0"),
        st("g", Dtype::F64, &[1, 12, 2], 4),
    );
    let input = write_st(&dir, "f16", &tensors);
    let output = dir.path("f16-out.safetensors");
    let run = linrec()
        .args([
            "run",
            "simple_gla",
            "--device",
            "opencl",
            "--no-check",
            "--inputs",
            path_str(&input),
            "--outputs",
            path_str(&output),
        ])
        .output()
        .expect("linrec runs");
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{out}\n{err}");
    assert!(
        out.contains("check    skipped (--no-check)") && !out.contains("PASS"),
        "{out}"
    );
    assert!(
        err.contains("note: tensor `g` is f64: rounded to f32"),
        "{err}"
    );
    let mut rounded = tensors.clone();
    for t in &mut rounded {
        if t.name == "g" {
            host::round_to(ElementType::F32, &mut t.values);
        }
    }
    assert_outputs_match(&output, Dtype::F16, &reference_of(&rounded, None));
}

/// Runs simple_gla on `tensors` and asserts a bad-input error ([`assert_exit_2`]: exit code 2,
/// every needle in the message) and no device opened (so nothing launched). `file` names the
/// case and its temp folder.
fn rejects(file: &str, tensors: &[St], needles: &[&str]) {
    let dir = TestDir::new(file);
    let input = write_st(&dir, "in", tensors);
    let out = linrec()
        .args(["run", "simple_gla", "--inputs", path_str(&input)])
        .output()
        .expect("linrec runs");
    assert_exit_2(&out, file, needles);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("device ") && !stdout.contains("kernel "),
        "{file}: got as far as a device: {stdout}"
    );
}

/// A bad `--inputs` file is refused before any device opens, naming the tensor and what was
/// expected: a missing or unexpected tensor, a wrong shape, rank or dtype, a head dim over the
/// kernels' limit, value heads not a multiple of the heads, bad offsets, and h0 for the wrong
/// number of sequences.
#[test]
fn safetensors_bad_inputs_are_refused_naming_the_tensor() {
    let bf16 = || simple_gla_file(Dtype::BF16);
    let f32 = || simple_gla_file(Dtype::F32);
    let cases: Vec<(&str, Vec<St>, &[&str])> = vec![
        (
            "missing",
            without(bf16(), "g"),
            &[
                "tensor `g` (gate, [B, T, HV]) is missing",
                "the file has: h0, k, q, v",
                "simple_gla reads q, k, v, g and optionally h0, cu_seqlens, do, dht",
            ],
        ),
        (
            "extra",
            with(
                without(bf16(), "h0"),
                St {
                    name: "h_0",
                    ..st("h0", Dtype::F32, &[1, 2, 8, 8], 5)
                },
            ),
            &["unexpected tensor `h_0`", "optionally h0"],
        ),
        (
            "shape",
            with(bf16(), st("k", Dtype::BF16, &[1, 13, 1, 8], 2)),
            &[
                "tensor `k` has shape [1, 13, 1, 8], expected [B, T, H, K]: T = 13 here but T = 12 from `q` [1, 12, 1, 8]",
            ],
        ),
        (
            "rank",
            with(bf16(), st("g", Dtype::F32, &[1, 12, 2, 8], 4)),
            &["tensor `g` has shape [1, 12, 2, 8] (rank 4), expected [B, T, HV] (rank 3)"],
        ),
        (
            "mixed",
            with(bf16(), st("v", Dtype::F16, &[1, 12, 2, 8], 3)),
            &["tensors `q` bf16, `k` bf16 and `v` f16 must share one dtype"],
        ),
        (
            "f64-q",
            with(
                with(f32(), st("q", Dtype::F64, &[1, 12, 1, 8], 1)),
                st("k", Dtype::F64, &[1, 12, 1, 8], 2),
            ),
            &["tensor `q` has dtype f64", "must be bf16, f16 or f32"],
        ),
        (
            "int-gate",
            with(
                f32(),
                St {
                    dtype: Dtype::I32,
                    ..st("g", Dtype::F32, &[1, 12, 2], 4)
                },
            ),
            &["tensor `g` has dtype i32: expected a float type"],
        ),
        (
            "float-offsets",
            with(f32(), {
                let mut cu = offsets(Dtype::I32, &[0, 12]);
                cu.dtype = Dtype::F32;
                cu
            }),
            &["tensor `cu_seqlens` has dtype f32: expected i32 or i64"],
        ),
        (
            "k300",
            vec![
                st("q", Dtype::BF16, &[1, 2, 1, 300], 1),
                st("k", Dtype::BF16, &[1, 2, 1, 300], 2),
                st("v", Dtype::BF16, &[1, 2, 1, 8], 3),
                st("g", Dtype::F32, &[1, 2, 1], 4),
            ],
            &["head dim K = 300 from `q` [1, 2, 1, 300] is over the kernels' limit of 256"],
        ),
        (
            "gva",
            vec![
                st("q", Dtype::BF16, &[1, 4, 2, 8], 1),
                st("k", Dtype::BF16, &[1, 4, 2, 8], 2),
                st("v", Dtype::BF16, &[1, 4, 3, 8], 3),
                st("g", Dtype::F32, &[1, 4, 3], 4),
            ],
            &[
                "value heads HV = 3 from `v` [1, 4, 3, 8] are not a multiple of query/key heads H = 2 from `q` [1, 4, 2, 8]",
            ],
        ),
        (
            "cu-start",
            with(bf16(), offsets(Dtype::I32, &[1, 12])),
            &["tensor `cu_seqlens`", "the first offset is not 0"],
        ),
        (
            "cu-decreasing",
            with(bf16(), offsets(Dtype::I64, &[0, 7, 5, 12])),
            &[
                "tensor `cu_seqlens`",
                "[0, 7, 5, 12]",
                "the offsets decrease",
            ],
        ),
        (
            "cu-end",
            with(bf16(), offsets(Dtype::I32, &[0, 5, 11])),
            &["tensor `cu_seqlens`", "the last offset is not T", "T = 12"],
        ),
        (
            "cu-batch",
            vec![
                st("q", Dtype::BF16, &[2, 6, 1, 8], 1),
                st("k", Dtype::BF16, &[2, 6, 1, 8], 2),
                st("v", Dtype::BF16, &[2, 6, 1, 8], 3),
                st("g", Dtype::F32, &[2, 6, 1], 4),
                offsets(Dtype::I32, &[0, 3, 6]),
            ],
            &[
                "tensor `cu_seqlens`",
                "needs B = 1, but B = 2 from `q` [2, 6, 1, 8]",
            ],
        ),
        // Three sequences by cu_seqlens, h0 for one.
        (
            "h0-n",
            with(bf16(), offsets(Dtype::I32, &[0, 4, 8, 12])),
            &[
                "tensor `h0` has shape [1, 2, 8, 8], expected [N, HV, K, V]: N = 1 here but N = 3 from `cu_seqlens` (4 offsets: N + 1)",
            ],
        ),
    ];
    for (file, tensors, needles) in &cases {
        rejects(file, tensors, needles);
    }
}

#[test]
fn safetensors_do_and_dht_are_checked_then_ignored() {
    let tensors = with_do_and_dht(Dtype::BF16);
    let dir = TestDir::new("backward");
    let input = write_st(&dir, "in", &tensors);
    let out = linrec()
        .args([
            "run",
            "simple_gla",
            "--device",
            "reference",
            "--inputs",
            path_str(&input),
        ])
        .output()
        .expect("linrec runs");
    assert_success(&out, "run --inputs with do and dht");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("note: do, dht checked but not used: they feed the backward"),
        "{err}"
    );
    // With --backward they feed it: the reference writes the gradients of the file's do, dht.
    let output = dir.path("grads.safetensors");
    let out = run_files("simple_gla", "reference", &["--backward"], &input, &output);
    assert!(
        out.contains("outputs  ") && out.contains(": o, ht, dq, dk, dv, dg, dh0"),
        "{out}"
    );
    assert_grads_match(&output, Dtype::BF16, &tensors, 0.0);
    rejects(
        "backward-shape",
        &with(
            tensors,
            St {
                name: "do",
                ..st("v", Dtype::BF16, &[1, 12, 2, 9], 6)
            },
        ),
        &["tensor `do` has shape [1, 12, 2, 9], expected [B, T, HV, V]: V = 9 here but V = 8"],
    );
}

/// `linrec run --backward --inputs` on OpenCL: the file's `do` and `dht` feed the backward
/// kernel, and `--outputs` gets every gradient, matching the reference's.
#[cfg(feature = "jit")]
#[test]
fn safetensors_backward_on_opencl_writes_the_gradients() {
    if !opencl_ready() {
        return;
    }
    let tensors = with_do_and_dht(Dtype::F32);
    let dir = TestDir::new("ocl-backward");
    let input = write_st(&dir, "in", &tensors);
    let output = dir.path("out.safetensors");
    let out = run_files("simple_gla", "opencl", &["--backward"], &input, &output);
    assert!(out.contains("PASS     simple_gla backward"), "{out}");
    assert!(out.contains(": o, ht, dq, dk, dv, dg, dh0"), "{out}");
    assert_grads_match(&output, Dtype::F32, &tensors, 0.005);
}

#[test]
fn safetensors_bad_files_and_arguments_exit_2() {
    let dir = TestDir::new("args");
    let good = write_st(&dir, "good", &simple_gla_file(Dtype::BF16));
    let junk = dir.path("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").expect("write");
    let nowhere = dir.path("no-such-dir").join("out.safetensors");
    for (args, needle) in [
        (vec!["--inputs", path_str(&junk)], "not a safetensors file"),
        (
            vec!["--inputs", "/nonexistent/in.safetensors"],
            "--inputs /nonexistent/in.safetensors: cannot read it",
        ),
        (
            vec!["--inputs", path_str(&good), "--shape", "1,12,1,8,8"],
            "cannot be used with '--shape",
        ),
        (
            vec!["--inputs", path_str(&good), "--dtype", "f32"],
            "cannot be used with '--dtype",
        ),
        (vec!["--outputs", path_str(&nowhere)], "--inputs"),
        (
            vec!["--inputs", path_str(&good), "--outputs", path_str(&nowhere)],
            "no-such-dir does not exist",
        ),
        (
            vec![
                "--inputs",
                path_str(&good),
                "--device",
                "reference",
                "--no-check",
            ],
            "--no-check skips the reference",
        ),
    ] {
        fails_with(&[&["run", "simple_gla"][..], &args[..]].concat(), &[needle]);
    }
}

/// Artifacts compiled for sm_90 only, run on OpenCL (SPIR-V): the error names the target the
/// device needs and what the folder has.
#[cfg(feature = "jit")]
#[test]
fn artifacts_for_another_target_name_both_targets() {
    if !opencl_ready() {
        return;
    }
    let tmp = TestDir::new("sm90");
    let dir = tmp.path("artifacts");
    let d = path_str(&dir);
    let out = linrec()
        .args([
            "compile",
            "simple_gla",
            "--target",
            "sm_90",
            "--head-dims",
            "8",
            "--out",
            d,
        ])
        .output()
        .expect("linrec runs");
    assert_success(&out, "compile for sm_90");
    let input = write_st(&tmp, "in", &simple_gla_file(Dtype::BF16));
    fails_with(
        &[
            "run",
            "simple_gla",
            "--device",
            "opencl",
            "--artifacts",
            d,
            "--inputs",
            path_str(&input),
        ],
        &[
            "has no forward kernel of `simple_gla` for target spirv",
            "(it has: forward sm_90",
        ],
    );
}

/// The names are the spec's: rwkv6 reads r, k, v, w (a diagonal gate, `[B, T, HV, K]`) and u
/// (`[HV, K]`); it runs on the reference (no kernel derives its form yet).
#[test]
fn safetensors_inputs_use_the_spec_names() {
    let dir = TestDir::new("rwkv6");
    let tensors = [
        st("r", Dtype::F32, &[1, 6, 1, 4], 1),
        st("k", Dtype::F32, &[1, 6, 1, 4], 2),
        st("v", Dtype::F32, &[1, 6, 1, 3], 3),
        St {
            name: "w",
            ..st("g", Dtype::F32, &[1, 6, 1, 4], 4)
        },
        st("u", Dtype::F32, &[1, 4], 5),
    ];
    let input = write_st(&dir, "in", &tensors);
    let output = dir.path("out.safetensors");
    let out = run_files("rwkv6", "reference", &[], &input, &output);
    assert!(out.contains("shape    B=1 T=6 H=1 HV=1 K=4 V=3"), "{out}");
    let bytes = std::fs::read(&output).expect("--outputs written");
    let file = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    assert_eq!(file.tensor("o").expect("o").shape(), [1, 6, 1, 3]);
    assert_eq!(file.tensor("ht").expect("ht").shape(), [1, 1, 4, 3]);

    // q instead of r is both missing r and an unknown q.
    let mut renamed = tensors.to_vec();
    renamed[0].name = "q";
    let input = write_st(&dir, "renamed", &renamed);
    fails_with(
        &["run", "rwkv6", "--inputs", path_str(&input)],
        &[
            "tensor `r` (query, [B, T, H, K]) is missing",
            "rwkv6 reads r, k, v, w, u",
        ],
    );
}

/// `linrec bench` on the CPU OpenCL runtime: runs, labels the timing as not a GPU one, and
/// writes well-formed JSON with the per-(variant, shape) numbers.
#[cfg(feature = "jit")]
#[test]
fn bench_on_opencl_writes_json() {
    if !opencl_ready() {
        return;
    }
    let json = std::env::temp_dir().join(format!("linrec-bench-{}.json", std::process::id()));
    let path = json.to_str().expect("utf-8 temp path");
    let out = stdout(&[
        "bench",
        "simple_gla",
        "--device",
        "opencl",
        "--shapes",
        "1,64,1,16",
        "--iters",
        "100",
        "--json",
        path,
    ]);
    assert!(out.contains("NOT a GPU timing"), "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("well-formed JSON");
    let _ = std::fs::remove_file(&json);
    assert_eq!(doc["gpu_timing"], false);
    assert_eq!(doc["iters"], 100);
    let rows = doc["results"].as_array().expect("results");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["variant"], "simple_gla");
    assert_eq!(r["label"], "linrec");
    assert!(r.get("fwd_bwd_ms").is_none(), "{r}");
    assert_eq!(r["shape"], serde_json::json!([1, 64, 1, 16]));
    // q, k, v, o bf16 (4 · 64 · 16 · 2) + g f32 (64 · 4); one chunk of flops.
    assert_eq!(r["bytes"], 4 * 64 * 16 * 2 + 64 * 4);
    assert_eq!(r["flops"], 327_680.0);
    for key in [
        "ms",
        "p10_ms",
        "p90_ms",
        "gb_per_s",
        "tflop_per_s",
        "floor_ms",
    ] {
        let x = r[key].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
}

/// `linrec bench --backward` on the CPU OpenCL runtime, kernels from an artifact folder of
/// `linrec compile --direction both`: the fwd+bwd columns and JSON keys appear (also with
/// `--state`: the backward then takes h0 and a zero dht); with a split forward
/// (`LINREC_FORWARD=split`) the backward reads its chunk states; a forward-only folder is a
/// usage error naming the `--direction both` command.
#[cfg(feature = "jit")]
#[test]
fn bench_backward_on_opencl_times_forward_and_backward() {
    if !opencl_ready() {
        return;
    }
    let tmp = TestDir::new("bench-bwd");
    let (both, fwd_only, split) = (tmp.path("both"), tmp.path("fwd"), tmp.path("split"));
    for (dir, direction, form) in [
        (&both, "both", "fused"),
        (&fwd_only, "forward", "fused"),
        (&split, "both", "split"),
    ] {
        let out = linrec()
            .env("LINREC_FORWARD", form)
            .args([
                "compile",
                "simple_gla",
                "--target",
                "spirv",
                "--dtype",
                "f32",
                "--head-dims",
                "16",
                "--direction",
                direction,
                "--out",
                path_str(dir),
            ])
            .output()
            .expect("linrec runs");
        assert_success(&out, &format!("compile --direction {direction} ({form})"));
    }
    let json = tmp.path("bench.json");
    let bench = |dir: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "bench",
            "simple_gla",
            "--backward",
            "--device",
            "opencl",
            "--dtype",
            "f32",
            "--shapes",
            "1,64,1,16",
            "--iters",
            "100",
            "--warmup",
            "2",
            "--artifacts",
            path_str(dir),
        ];
        args.extend_from_slice(extra);
        linrec().args(&args).output().expect("linrec runs")
    };
    for extra in [&["--json", path_str(&json)][..], &["--state"][..]] {
        let out = bench(&both, extra);
        assert_success(&out, &format!("bench --backward {extra:?}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let header = text
            .lines()
            .find(|l| l.starts_with("variant"))
            .unwrap_or_else(|| panic!("no header in:\n{text}"));
        assert!(
            header.contains("fwd+bwd") && header.contains("≈bwd ms"),
            "{header}"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("simple_gla"))
            .unwrap_or_else(|| panic!("no row in:\n{text}"));
        // variant, shape, 7 forward columns, fwd+bwd median, p10, p90, the estimate.
        assert_eq!(row.split_whitespace().count(), 13, "{row}");
        assert!(text.contains("fwd+bwd  forward then backward"), "{text}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("well-formed JSON");
    assert_eq!(doc["backward"], true);
    let r = &doc["results"][0];
    for key in ["fwd_bwd_ms", "fwd_bwd_p10_ms", "fwd_bwd_p90_ms"] {
        let x = r[key].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    let est = r["bwd_est_ms"].as_f64().unwrap_or(f64::NAN);
    let (fb, fwd) = (
        r["fwd_bwd_ms"].as_f64().unwrap_or(f64::NAN),
        r["ms"].as_f64().unwrap_or(f64::NAN),
    );
    assert!((est - (fb - fwd)).abs() < 1e-9, "{r}");
    assert!(
        r["backward_kernel"]
            .as_str()
            .is_some_and(|e| e.contains("simple_gla")),
        "{r}"
    );
    assert_eq!(r["bwd_chunk_states"], "recomputed", "{r}");

    // The split forward's chunk states go to the backward.
    let out = bench(
        &split,
        &["--json", path_str(&json), "--label", "linrec-split"],
    );
    assert_success(&out, "bench --backward on split kernels");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("well-formed JSON");
    let r = &doc["results"][0];
    assert_eq!(r["label"], "linrec-split");
    assert_eq!(r["bwd_chunk_states"], "saved", "{r}");
    assert!(r["fwd_bwd_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");

    // A spent --budget-s skips the rest, in the table and the JSON, and still succeeds.
    let out = bench(&both, &["--json", path_str(&json), "--budget-s", "0.001"]);
    assert_success(&out, "bench --budget-s 0.001");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("skipped: time budget"), "{text}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("well-formed JSON");
    assert_eq!(doc["complete"], true);
    let r = &doc["results"][0];
    assert!(
        r["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("time budget")),
        "{r}"
    );
    assert!(r.get("ms").is_none(), "{r}");

    assert_exit_2(
        &bench(&fwd_only, &[]),
        "bench --backward on forward-only artifacts",
        &[
            "backward kernel of `simple_gla`",
            "linrec compile simple_gla --target spirv --dtype f32 --head-dims 16:16 \
             --chunk 64 --direction both --out DIR",
        ],
    );
}

/// `linrec bench --label` names the kernel set in the JSON (top level and rows); the printed
/// table of a forward-only run has no fwd+bwd columns; a label with a space is refused.
#[cfg(feature = "jit")]
#[test]
fn bench_label_names_the_kernel_set() {
    fails_with(
        &["bench", "--label", "a b", "--device", "opencl"],
        &["--label"],
    );
    if !opencl_ready() {
        return;
    }
    let tmp = TestDir::new("bench-label");
    let json = tmp.path("bench.json");
    let out = stdout(&[
        "bench",
        "linear_attn",
        "--device",
        "opencl",
        "--dtype",
        "f32",
        "--shapes",
        "1,64,1,16",
        "--iters",
        "100",
        "--label",
        "linrec-split",
        "--json",
        path_str(&json),
    ]);
    assert!(!out.contains("fwd+bwd"), "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("well-formed JSON");
    assert_eq!(doc["label"], "linrec-split");
    assert_eq!(doc["backward"], false);
    let r = &doc["results"][0];
    assert_eq!(r["label"], "linrec-split");
    assert!(r.get("fwd_bwd_ms").is_none(), "{r}");
}

/// `linrec bench` keeps DESIGN §9's protocol: fewer than 100 timed runs is a usage error.
#[test]
fn bench_refuses_fewer_than_100_iters() {
    fails_with_line("bench --iters 10 --device opencl", &["at least 100"]);
}

/// `linrec run --backward --save-chunk-states`: with split forward kernels
/// (`LINREC_FORWARD=split` in the child's environment) the forward's chunk states go to the
/// backward, which reads them instead of recomputing them, and every gradient passes; with
/// fused ones it is a usage error naming the option and how to get split kernels.
#[cfg(feature = "jit")]
#[test]
fn run_backward_with_saved_chunk_states_on_opencl() {
    if !opencl_ready() {
        return;
    }
    let run = |forward: &str, extra: &[&str]| {
        linrec()
            .env("LINREC_FORWARD", forward)
            .args([
                "run",
                "--backward",
                "--save-chunk-states",
                "--device",
                "opencl",
            ])
            .args(extra)
            .output()
            .expect("linrec runs")
    };
    // simple_gla at the default shape 2,100,2,16,16, bf16, chunk 64: ⌊2·100 / 64⌋ + 2 = 5 slots.
    let out = run("split", &["simple_gla"]);
    assert_success(&out, "simple_gla with saved chunk states");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("states   saved by the forward for the backward: bf16 [5, 2, 16, 16]"),
        "{text}"
    );
    assert!(
        text.contains(
            "PASS     simple_gla backward on spirv matches the f64 reference (5 gradients)"
        ),
        "{text}"
    );
    for (name, ratio, bound) in grad_lines(&text) {
        assert!(ratio < bound, "{name}: {ratio} >= {bound}");
    }

    // linear_attn, GVA + varlen (cu_seqlens [0, 0, 23, 70]), f32, chunk 16:
    // ⌊70 / 16⌋ + 3 = 7 slots.
    let out = run(
        "split",
        &[
            "linear_attn",
            "--shape",
            "1,70,1,2,8,16",
            "--varlen",
            "--dtype",
            "f32",
            "--chunk",
            "16",
        ],
    );
    assert_success(&out, "linear_attn with saved chunk states");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("states   saved by the forward for the backward: f32 [7, 2, 8, 16]"),
        "{text}"
    );
    assert!(text.contains("PASS     linear_attn backward"), "{text}");

    // Fused forward kernels write no chunk states: the library's error, before any launch.
    let out = run("fused", &["simple_gla", "--shape", "1,8,1,4,4"]);
    assert_exit_2(
        &out,
        "fused forward with --save-chunk-states",
        &[
            "simple_gla: option `save_chunk_states`",
            "LINREC_FORWARD=split",
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("time "));
}

/// `--save-chunk-states` is about the backward: without `--backward` it is a usage error.
#[test]
fn run_save_chunk_states_requires_backward() {
    fails_with_line(
        "run simple_gla --save-chunk-states --device reference",
        &["--backward"],
    );
}
