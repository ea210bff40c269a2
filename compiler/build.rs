//! Hashes the compiler's sources (and the launch ABI in linrec-spec) into
//! `LINREC_COMPILER_SOURCE_HASH`, which [`fingerprint`](crate::artifact::fingerprint) includes:
//! kernel caches key on the fingerprint, so a kernel compiled by other compiler sources (another
//! checkout, a change during development) is never taken for this compiler's, even when the
//! crate version did not change.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let roots = [manifest.join("src"), manifest.join("../kernels-spec/src")];
    let mut all = Vec::new();
    for root in &roots {
        println!("cargo:rerun-if-changed={}", root.display());
        files(root, &mut all);
    }
    all.sort();
    // FNV-1a over (relative path, contents): stable across machines and Rust versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for path in &all {
        let rel = path.strip_prefix(&manifest).unwrap_or(path);
        eat(rel.to_string_lossy().as_bytes());
        eat(&std::fs::read(path).unwrap_or_default());
    }
    println!("cargo:rustc-env=LINREC_COMPILER_SOURCE_HASH={h:016x}");
}
