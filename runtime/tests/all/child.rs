//! Running a backend probe in a child process with its own environment.
//!
//! The library overrides (`LINREC_HIP_LIB`, `LINREC_ZE_LIB`) are read once per process, and
//! setting environment variables while other test threads run is a data race, so the tests
//! that change them re-run this test binary as a child: `probe_in_child` starts it on the
//! ignored test below with the variables set, and reads back one line.

use std::process::Command;

use linrec_runtime::{Device, DeviceKind, RuntimeError};

/// The variable that tells the child which backend to open.
const PROBE_ENV: &str = "LINREC_TEST_CHILD_PROBE";
const MARK: &str = "CHILD-RESULT:";

/// What the child saw when it opened a device.
#[derive(Debug)]
pub struct ChildResult {
    /// `Ok`, `DriverNotFound`, `NoDevice` or `Other`.
    pub outcome: String,
    /// The error's message (`Display`), on one line.
    pub message: String,
}

/// Opens `kind` in a child process with `env` set and returns what happened. Fails the test
/// if the child crashed or printed no result (a panic in the backend would show up here).
pub fn probe_in_child(kind: &str, env: &[(&str, &str)]) -> ChildResult {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "child::child_probe",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(PROBE_ENV, kind);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        // libtest prints `test child::child_probe ... ` before the line.
        .find_map(|l| l.split_once(MARK).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no result line from the child:\n{stdout}"));
    let (outcome, message) = line.trim().split_once('|').unwrap_or((line.trim(), ""));
    ChildResult {
        outcome: outcome.to_owned(),
        message: message.to_owned(),
    }
}

/// Opens `kind` in a child process whose library override `var` is `lib`, and asserts that the
/// child found no driver and named `lib`.
pub fn refused_override(kind: &str, var: &str, lib: &str) -> ChildResult {
    let r = probe_in_child(kind, &[(var, lib)]);
    assert_eq!(r.outcome, "DriverNotFound", "{r:?}");
    assert!(r.message.contains(lib), "names the library: {r:?}");
    r
}

/// Asserts that a library override `var` pointing at the missing file `path` leaves `kind`
/// without a driver, with a message naming the override and the path, and dlopen's reason.
pub fn assert_missing_override(kind: &str, var: &str, path: &str) {
    let r = refused_override(kind, var, path);
    assert!(
        r.message.contains(var) && r.message.contains(path),
        "names the override and the path: {r:?}"
    );
    assert!(
        r.message.contains("No such file"),
        "carries dlopen's reason: {r:?}"
    );
}

/// The child's side: opens the backend named by `LINREC_TEST_CHILD_PROBE` (`hip`,
/// `level_zero`, ...) and prints the outcome. With a `+checks` suffix it then runs the shared
/// kernel checks on the device (`kernels.rs`; against the mock drivers) and drops it, so a
/// failed check or a crash at teardown fails the parent test. Does nothing when run directly
/// (`cargo test -- --ignored`).
#[test]
#[ignore = "helper: run by other tests in a child process"]
fn child_probe() {
    let Ok(which) = std::env::var(PROBE_ENV) else {
        return;
    };
    let (which, checks) = match which.strip_suffix("+checks") {
        Some(w) => (w.to_owned(), true),
        None => (which, false),
    };
    let kind: DeviceKind = which.parse().expect("a device kind");
    let (outcome, message) = match Device::new(kind) {
        Ok(dev) => {
            let message = format!("{} arch={:?}", dev.info().label(), dev.info().arch);
            if checks {
                run_shared_checks(&dev);
            }
            drop(dev);
            ("Ok", message)
        }
        Err(e) => {
            let outcome = match e {
                RuntimeError::DriverNotFound { .. } => "DriverNotFound",
                RuntimeError::NoDevice { .. } => "NoDevice",
                _ => "Other",
            };
            (outcome, e.to_string())
        }
    };
    println!("{MARK}{outcome}|{}", message.replace('\n', " "));
}

/// Every shared kernel check, in the order a reader would follow them.
fn run_shared_checks(dev: &Device) {
    use crate::kernels::*;
    device_info(dev);
    axpy_is_exact_and_leaves_the_tail_alone(dev);
    block_sum_reduces_each_work_group(dev);
    iota_writes_integers(dev);
    module_cache_loads_once(dev);
    bad_modules_and_names_are_errors(dev);
    driver_checks_the_argument_count(dev);
    fills_and_empty_tensors(dev);
    dev.synchronize().expect("synchronize");
}
