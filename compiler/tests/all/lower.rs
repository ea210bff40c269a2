//! `lower`: MLIR text → PTX in process, for the chips we support, plus the error paths.

use std::{path::PathBuf, process::Command};

use linrec_compiler::lower::{LowerError, NVIDIA_CHIPS, lower_to_ptx};

/// Elementwise `c = a + b` over 1024 f32, one element per thread. Static shapes, because the
/// bare-pointer calling convention only accepts statically shaped memrefs.
const ADD_KERNEL: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @vec_add(%a: memref<1024xf32>, %b: memref<1024xf32>, %c: memref<1024xf32>) kernel {
      %bid = gpu.block_id x
      %bdim = gpu.block_dim x
      %tid = gpu.thread_id x
      %base = arith.muli %bid, %bdim : index
      %i = arith.addi %base, %tid : index
      %x = memref.load %a[%i] : memref<1024xf32>
      %y = memref.load %b[%i] : memref<1024xf32>
      %s = arith.addf %x, %y : f32
      memref.store %s, %c[%i] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

fn lower_and_check(chip: &str) -> String {
    let ptx = match lower_to_ptx(ADD_KERNEL, chip) {
        Ok(ptx) => ptx,
        Err(e) => panic!("lowering for {chip} failed: {e}"),
    };
    assert!(
        ptx.contains(".visible .entry vec_add("),
        "no kernel entry in PTX:\n{ptx}"
    );
    assert!(
        ptx.contains(&format!(".target {chip}")),
        "PTX does not target {chip}:\n{ptx}"
    );
    // Bare-pointer ABI: exactly one `.param` per memref argument.
    assert_eq!(ptx.matches(".param .u64").count(), 3, "PTX:\n{ptx}");
    ptxas_accepts(&ptx, chip);
    ptx
}

/// Assembles the PTX with `ptxas` when it is installed; otherwise says so and skips.
fn ptxas_accepts(ptx: &str, chip: &str) {
    if Command::new("ptxas").arg("--version").output().is_err() {
        eprintln!("note: ptxas not on PATH; skipped assembling the {chip} PTX");
        return;
    }
    let path: PathBuf = std::env::temp_dir().join(format!(
        "linrec-compiler-test-{}-{chip}.ptx",
        std::process::id()
    ));
    std::fs::write(&path, ptx).expect("write PTX to a temp file");
    let out = Command::new("ptxas")
        .arg(format!("-arch={chip}"))
        .arg(&path)
        .args(["-o", "/dev/null"])
        .output()
        .expect("run ptxas");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "ptxas -arch={chip} rejected the PTX:\n{}\n{ptx}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn add_kernel_lowers_to_ptx_for_sm_80() {
    lower_and_check("sm_80");
}

#[test]
fn add_kernel_lowers_to_ptx_for_sm_90() {
    lower_and_check("sm_90");
}

#[test]
fn every_supported_chip_is_accepted() {
    for chip in NVIDIA_CHIPS {
        assert!(lower_to_ptx(ADD_KERNEL, chip).is_ok(), "{chip}");
    }
}

#[test]
fn unknown_chip_is_a_typed_error_listing_the_supported_ones() {
    let err = lower_to_ptx(ADD_KERNEL, "sm_75").expect_err("sm_75 is not supported");
    assert!(
        matches!(&err, LowerError::UnknownChip { chip } if chip == "sm_75"),
        "{err:?}"
    );
    let msg = err.to_string();
    for needle in ["`chip`", "sm_75", "sm_80", "sm_90"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
}

#[test]
fn malformed_mlir_is_a_parse_error_with_a_diagnostic() {
    let text = "module {\n  func.func @f() {\n    %x = arith.constant : i32\n  }\n}\n";
    let err = lower_to_ptx(text, "sm_90").expect_err("malformed input");
    let LowerError::Parse { diagnostics } = &err else {
        panic!("expected a parse error, got {err:?}");
    };
    assert!(!diagnostics.0.is_empty(), "no diagnostics collected");
    // The diagnostic carries a source location (line 3) and its severity.
    assert!(
        diagnostics
            .0
            .iter()
            .any(|d| d.contains(":3:") && d.contains("error:")),
        "{diagnostics}"
    );
}

#[test]
fn a_failing_pass_reports_its_diagnostics() {
    // Dynamic shapes parse fine but the bare-pointer convention rejects them, so
    // `convert-gpu-to-nvvm` fails and the error must say why.
    let text = ADD_KERNEL.replace("memref<1024xf32>", "memref<?xf32>");
    let err = lower_to_ptx(&text, "sm_90").expect_err("dynamic memrefs with bare pointers");
    let LowerError::Pass { diagnostics, .. } = &err else {
        panic!("expected a pass error, got {err:?}");
    };
    assert!(!diagnostics.0.is_empty(), "no diagnostics collected: {err}");
}
