#!/usr/bin/env bash
# The README's test command: installs what is missing (scripts/setup.sh), then runs every check
# CI runs — formatting, clippy with warnings denied, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
step() { echo; echo "==> $*"; }
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p linrec --no-default-features --all-targets --locked -- -D warnings
cargo clippy -p linrec-runtime --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
step "cargo test without jit (the LLVM-free build; the macro's UI tests)"
cargo test -p linrec --no-default-features --locked
cargo test -p linrec-runtime --locked
step "a crate outside the workspace declares its own variant (examples/new-variant)"
cargo run --quiet --manifest-path examples/new-variant/Cargo.toml --target-dir target
step "a crate embeds its kernels (examples/embedded-kernels)"
cargo run --quiet --manifest-path examples/embedded-kernels/Cargo.toml --target-dir target
step "a crate outside the workspace runs its own variant through the typed op (examples/typed-op)"
cargo run --quiet --manifest-path examples/typed-op/Cargo.toml --target-dir target
