#!/usr/bin/env bash
# The forward and backward conformance matrices on a GPU machine that has no Rust and no LLVM
# (DESIGN §8).
#
# Here (with LLVM):   bash scripts/gpu-check.sh prepare [DIR]
#   builds linrec without `jit` (target/nojit) and compiles the matrix's kernels for sm_80,
#   sm_90 and sm_90a with the jit build: the forward kernels into DIR/art, forward + backward kernels into
#   DIR/art-bwd (a failed backward compile is reported and leaves the forward check whole);
#   DIR (default .device) then holds `linrec`, `art/` and `art-bwd/` to carry.
# There (the GPU):    bash scripts/gpu-check.sh run [DIR]
#   runs `linrec run --device cuda --artifacts DIR/art` over the matrix: random inputs,
#   NaN-poisoned outputs, o and the final state checked against the f64 reference
#   (fla's criterion, < 0.005); then `linrec run --backward --artifacts DIR/art-bwd` over the
#   backward matrix: random dO and dht, every gradient (dq, dk, dv, dg, dh0) checked against
#   the reference's exact backward (< 0.005, 0.02 for dg). Ends with `N passed, N failed`.
#
# Knobs: TARGETS (prepare only), default "sm_80 sm_90 sm_90a"; `TARGETS=sm_90a` is what an
# H100/H200 loads by default (scripts/gpu-session.sh does that). RUN_TARGETS (run only), default
# "default" (the device's own target): each listed CUDA target (e.g. "sm_90 sm_90a") runs the
# whole matrix through LINREC_CUDA_TARGET, its kernels read from the same folders.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
dir=${2:-.device}
read -r -a TARGETS <<<"${TARGETS:-sm_80 sm_90 sm_90a}"
read -r -a RUN_TARGETS <<<"${RUN_TARGETS:-default}"

VARIANTS=(linear_attn retention simple_gla)
# shape dtype extra-flags   (B,T,H,K,V or B,T,H,HV,K,V)
MATRIX=(
  "2,1,2,64,64        bf16"
  "1,63,1,60,100      bf16"
  "2,75,2,4,64,64     f16"
  "1,500,2,128,128    bf16 --varlen"
  "1,1000,4,128,128   f32"
  "4,2048,8,64,64     f16"
  "8,2048,16,128,128  bf16"
  # These take the split-scan over T (long sequences on few heads: KernelInfo::takes_instead).
  "1,4096,4,128,128   bf16"
  "2,3000,2,64,64     f16"
)
# The backward's: the f64 reference backward costs a few forward passes on the host, so the
# largest forward shape is left out.
BWD_MATRIX=(
  "2,1,2,64,64        bf16"
  "1,63,1,60,100      bf16"
  "2,75,2,4,64,64     f16"
  "1,500,2,128,128    bf16 --varlen"
  "1,1000,4,128,128   f32"
  "4,2048,8,64,64     f16"
  # The split-scan's chunk states, read by the backward.
  "1,3000,2,64,64     bf16 --save-chunk-states"
)

case "$mode" in
  prepare)
    eval "$(bash scripts/setup.sh --print-env)"
    mkdir -p "$dir"
    cargo build --release --locked --no-default-features --bin linrec --target-dir target/nojit
    cp target/nojit/release/linrec "$dir/linrec"
    # The compiler itself need not be optimised; its own target dir keeps it apart from others.
    cargo run --locked --quiet --bin linrec --target-dir target/gpucheck -- compile "${VARIANTS[@]}" \
      --target "${TARGETS[@]}" --dtype bf16,f16,f32 --head-dims 64,60:100,128 --out "$dir/art"
    rm -rf "$dir/art-bwd"
    if ! cargo run --locked --quiet --bin linrec --target-dir target/gpucheck -- compile "${VARIANTS[@]}" \
      --target "${TARGETS[@]}" --dtype bf16,f16,f32 --head-dims 64,60:100,128 --direction both \
      --out "$dir/art-bwd"; then
      echo "warning: the backward kernels did not compile: \`run\` checks the forward only" >&2
      rm -rf "$dir/art-bwd"
    fi
    du -sh "$dir"
    ;;
  run)
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    pass=0; fail=0
    for target in "${RUN_TARGETS[@]}"; do
    if [ "$target" = default ]; then unset LINREC_CUDA_TARGET; else export LINREC_CUDA_TARGET=$target; fi
    echo "== target: $target"
    for variant in "${VARIANTS[@]}"; do
      for row in "${MATRIX[@]}"; do
        read -r shape dtype extra <<<"$row"
        log=$("$dir/linrec" run "$variant" --device cuda --artifacts "$dir/art" \
          --shape "$shape" --dtype "$dtype" $extra 2>&1)
        if echo "$log" | grep -q '^PASS'; then
          pass=$((pass + 1)); status=PASS
        else
          fail=$((fail + 1)); status=FAIL
        fi
        ratios=$(echo "$log" | grep '^check' | sed 's/.*= \([0-9.e+-]*\).*/\1/' | paste -sd' ')
        ms=$(echo "$log" | grep '^time' | awk '{print $2}')
        printf '%-5s %-12s %-20s %-5s %-9s o/ht %-22s %8s ms\n' "$status" "$variant" "$shape" "$dtype" "${extra:-}" "$ratios" "$ms"
        [ "$status" = FAIL ] && echo "$log" | sed 's/^/      /'
      done
    done
    if [ -f "$dir/art-bwd/manifest.json" ]; then
      for variant in "${VARIANTS[@]}"; do
        for row in "${BWD_MATRIX[@]}"; do
          read -r shape dtype extra <<<"$row"
          log=$("$dir/linrec" run "$variant" --backward --device cuda --artifacts "$dir/art-bwd" \
            --shape "$shape" --dtype "$dtype" $extra 2>&1)
          if [ $? -eq 0 ] && echo "$log" | grep -q '^PASS .* backward'; then
            pass=$((pass + 1)); status=PASS
          else
            fail=$((fail + 1)); status=FAIL
          fi
          ratios=$(echo "$log" | grep '^grad' | sed 's/^grad *‖\([^ ]*\) − ref‖\/‖ref‖ *= \([^ ]*\).*/\1=\2/' | paste -sd' ')
          ms=$(echo "$log" | grep '^time.*backward' | awk '{print $2}')
          printf '%-5s %-12s %-20s %-5s %-9s bwd %-48s %8s ms\n' "$status" "$variant" "$shape" "$dtype" "${extra:-}" "$ratios" "$ms"
          [ "$status" = FAIL ] && echo "$log" | sed 's/^/      /'
        done
      done
    else
      echo "note: no $dir/art-bwd (the backward kernels did not compile in prepare): backward skipped"
    fi
    done
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    ;;
  *)
    echo "usage: bash scripts/gpu-check.sh prepare|run [DIR]" >&2
    exit 2
    ;;
esac
