//! The HIP and Level Zero backends end to end, against stand-in driver libraries
//! (tests/mock_drivers/*.c) that keep "device" memory on the host and run the fixture kernels
//! there. No AMD or Intel GPU is needed: what runs is this crate's whole path — loading and
//! symbol resolution, device queries, allocation, copies (through Level Zero's staging
//! buffer), fills, module and kernel creation, argument packing, launches, waiting, and
//! teardown — with the mocks refusing what a real driver would (wrong `stype`, a copy from
//! memory the device cannot reach, a wrong argument size, objects left alive).
//!
//! Each mock is compiled with the system C compiler into a temporary folder and loaded
//! through `LINREC_HIP_LIB` / `LINREC_ZE_LIB` in a child process (`child.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use linrec_runtime::{HIP_LIB_ENV, ZE_LIB_ENV};

use crate::child::{ChildResult, probe_in_child};
use crate::common::ci_mode;

/// Compiles tests/mock_drivers/`source` into a shared library, or `None` (with a note) when
/// there is no C compiler outside CI.
fn build_mock(source: &str) -> Option<(PathBuf, PathBuf)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mock_drivers")
        .join(source);
    let dir = std::env::temp_dir().join(format!(
        "linrec-mock-{}-{}",
        source.trim_end_matches(".c"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let lib = dir.join(format!("lib{}.so", source.trim_end_matches(".c")));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    match Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
    {
        Ok(out) if out.status.success() => Some((lib, dir)),
        Ok(out) => panic!(
            "{cc} could not build {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(!ci_mode(), "CI=true but no C compiler ({cc}): {e}");
            eprintln!("note: skipping the mock-driver test: no C compiler ({cc}: {e})");
            None
        }
    }
}

/// Builds the stand-in driver `source`, runs `kind`'s shared checks on it in a child process
/// whose library override `var` points at it, and asserts that they passed; `None` where
/// there is no C compiler (outside CI).
fn checks_on_mock(source: &str, kind: &str, var: &str) -> Option<ChildResult> {
    let (lib, dir) = build_mock(source)?;
    let lib_str = lib.to_str().expect("a UTF-8 temporary path");
    let r = probe_in_child(kind, &[(var, lib_str)]);
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(r.outcome, "Ok", "{r:?}");
    Some(r)
}

#[test]
fn hip_backend_runs_the_shared_checks_on_a_mock_runtime() {
    let Some(r) = checks_on_mock("mock_hip.c", "hip+checks", HIP_LIB_ENV) else {
        return;
    };
    assert!(
        r.message.contains("hip:0 (AMD / linrec mock HIP device)"),
        "{r:?}"
    );
    // The gfx name, read from hipGetDevicePropertiesR0600 at its pinned offset.
    assert!(
        r.message.contains(r#"arch=Some("gfx90a:sramecc+:xnack-")"#),
        "{r:?}"
    );
}

#[test]
fn level_zero_backend_runs_the_shared_checks_on_a_mock_loader() {
    let Some(r) = checks_on_mock("mock_ze.c", "level_zero+checks", ZE_LIB_ENV) else {
        return;
    };
    assert!(
        r.message
            .contains("level_zero:0 (Intel / linrec mock Level Zero GPU)"),
        "{r:?}"
    );
}
