#!/usr/bin/env bash
# The benchmark of DESIGN §9 on a GPU machine with no Rust and no LLVM: `linrec bench` (CUDA
# events) against fla 0.6.0 and PyTorch SDPA in the same call, merged into one table.
#
# Here (with LLVM):   bash scripts/gpu-bench.sh prepare [DIR]
#   builds linrec without `jit` (target/nojit), compiles the bench's kernels (linear_attn,
#   retention, simple_gla; sm_90; bf16; K=V 64, 128, 256; chunk 64; every call option) and
#   downloads the pure-Python wheels fla-core 0.6.0 and einops. DIR (default .device/bench,
#   git-ignored) is what the device call carries.
# There (the GPU):    bash scripts/gpu-bench.sh run [DIR]
#   installs the wheels (--no-deps --target), runs `linrec bench --device cuda`, then
#   scripts/bench-fla.py, then scripts/bench-merge.py; JSON and logs go to $OUT (else DIR/out).
#   fla's Triton autotuning on a fresh machine is slow (minutes for the first shape's fwd+bwd),
#   so fla's fwd+bwd runs only at FLA_BWD_SHAPES and anything past FLA_BUDGET_S seconds is
#   recorded as skipped; keep the device call's timeout above ~60 s + the budget.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
dir=${2:-.device/bench}
VARIANTS=(linear_attn retention simple_gla)

case "$mode" in
  prepare)
    eval "$(bash scripts/setup.sh --print-env)"
    mkdir -p "$dir/whl"
    cargo build --release --locked --no-default-features --bin linrec --target-dir target/nojit
    cp target/nojit/release/linrec "$dir/linrec"
    cargo run --locked --quiet --bin linrec --target-dir target/gpucheck -- compile "${VARIANTS[@]}" \
      --target sm_90 --dtype bf16 --head-dims 64,128,256 --out "$dir/art"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir/whl" fla-core==0.6.0 einops==0.8.2
    du -sh "$dir"
    ;;
  run)
    out=${OUT:-$dir/out}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$dir"/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    "$dir/linrec" bench "${VARIANTS[@]}" --device cuda --artifacts "$dir/art" --shapes fla \
      --iters "${ITERS:-100}" --json "$out/linrec.json" 2>&1 | tee "$out/linrec.log"
    python3 scripts/bench-fla.py --shapes fla --iters "${ITERS:-100}" --json "$out/fla.json" \
      --bwd-shapes "${FLA_BWD_SHAPES:-8,2048,16,128;1,32768,16,128}" \
      --budget-s "${FLA_BUDGET_S:-330}" 2>&1 | tee "$out/fla.log"
    python3 scripts/bench-merge.py "$out/linrec.json" "$out/fla.json" | tee "$out/table.md"
    ;;
  *)
    echo "usage: bash scripts/gpu-bench.sh prepare|run [DIR]" >&2
    exit 2
    ;;
esac
