#!/usr/bin/env bash
# The README's main-job command: installs what is missing (scripts/setup.sh), builds the CLI and
# runs `linrec run` with the arguments given (default: the default built-in variant).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh --print-env)"
cargo run --release --quiet --locked --bin linrec -- run "$@"
