#!/usr/bin/env bash
# The README's test command: installs what is missing (scripts/setup.sh), then runs every check
# CI runs — formatting, clippy with warnings denied, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
step() { echo; echo "==> $*"; }
# CI's disk is small: no incremental state there (1.1 GB of a clean build), and the
# out-of-workspace examples get the workspace's line-tables-only debug info too.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
echo "[test] free disk: $(df -h --output=avail . | tail -1 | tr -d ' ')"
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p linrec --no-default-features --all-targets --locked -- -D warnings
cargo clippy -p linrec-runtime --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
# Those test binaries link LLVM/MLIR (~250 MB each) and are not run again: free the space
# before the examples' own LLVM-linking build (CI's disk is small).
if [ -n "${CI:-}" ]; then
  find target/debug/deps -maxdepth 1 -type f -executable -size +100M -delete
fi
step "cargo test without jit (the LLVM-free build; the macro's UI tests)"
cargo test -p linrec --no-default-features --locked
cargo test -p linrec-runtime --locked
step "a crate outside the workspace declares its own variant (examples/new-variant)"
cargo run --quiet --manifest-path examples/new-variant/Cargo.toml --target-dir target
step "a crate embeds its kernels (examples/embedded-kernels)"
cargo run --quiet --manifest-path examples/embedded-kernels/Cargo.toml --target-dir target
step "a crate outside the workspace runs its own variant through the typed op (examples/typed-op)"
cargo run --quiet --manifest-path examples/typed-op/Cargo.toml --target-dir target
