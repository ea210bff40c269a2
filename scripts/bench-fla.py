#!/usr/bin/env python3
"""fla 0.6.0 and PyTorch SDPA timings on DESIGN §9's shapes: the companion of `linrec bench`.

Runs on the GPU machine (torch + triton there; fla-core and einops carried as pure-Python
wheels and installed with `pip install --no-deps --target`, see scripts/gpu-bench.sh).

For each shape (B, T, H, D), K = V = D, bf16, layout [B, T, H, D]:
  linear_attn  fla.ops.linear_attn.chunk_linear_attn(q, k, v, normalize=False)
  retention    fla.ops.retention.chunk_retention(q, k, v)
  simple_gla   fla.ops.simple_gla.chunk_simple_gla(q, k, v, g)   g = logsigmoid(N(0,1)) f32 [B,T,H]
  sdpa_causal  torch.nn.functional.scaled_dot_product_attention(is_causal=True) ([B,H,T,D])
no initial state, no final state (fla's defaults), fwd under no_grad and fwd+bwd (a random do).
Each call sits between two CUDA events, calls enqueued back to back, median of --iters (>= 100)
after --warmup. Every forward is timed first, then fwd+bwd at --bwd-shapes: fla's first backward
at a shape costs minutes of Triton autotuning, which a time budget should not spend before the
other shapes' forwards. A call that raises (fla refuses simple_gla's backward on Triton 3.6 + Hopper,
its issue #640) is recorded with the error text instead of a time.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

# DESIGN §9's shapes; the two anchors first, so that a time-budgeted run reaches them.
FLA_SHAPES = [
    (8, 2048, 16, 128),
    (1, 32768, 16, 128),
    (8, 1024, 8, 64),
    (4, 2048, 16, 128),
    (1, 8192, 96, 128),
    (2, 16384, 16, 128),
    (4, 4096, 64, 128),
    (8, 2048, 32, 256),
]


def parse_shapes(s):
    if s == "fla":
        return FLA_SHAPES
    return [tuple(int(x) for x in p.split(",")) for p in s.split(";") if p.strip()]


def time_cuda(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        events.append((a, b))
    torch.cuda.synchronize()
    t = sorted(a.elapsed_time(b) for a, b in events)
    at = lambda q: t[round((len(t) - 1) * q)]
    return at(0.5), at(0.1), at(0.9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="fla")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--json", default=None)
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="skip what is left after this many seconds (recorded as skipped)")
    ap.add_argument("--no-bwd", action="store_true")
    ap.add_argument("--bwd-shapes", default=None,
                    help="time fwd+bwd only at these B,T,H,D[;...] (default: every shape); "
                         "fla's first backward at a shape costs minutes of Triton autotuning")
    args = ap.parse_args()
    assert args.iters >= 100, "the protocol takes the median of at least 100 runs"
    t0 = time.time()
    bwd_shapes = None if args.bwd_shapes is None else set(parse_shapes(args.bwd_shapes))

    import fla
    import triton
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.retention import chunk_retention
    from fla.ops.simple_gla import chunk_simple_gla

    dev = torch.device("cuda")
    meta = {
        "tool": "scripts/bench-fla.py",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "fla": getattr(fla, "__version__", "?"),
        "cuda": torch.version.cuda,
        "dtype": "bf16",
        "warmup": args.warmup,
        "iters": args.iters,
        "timer": "torch.cuda.Event per call, calls back to back",
    }
    print(f"device {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  fla {meta['fla']}",
          flush=True)
    # Prints the row as it stands and rewrites the JSON with every row so far.
    def emit(row, rows):
        fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else "-"
        print(f"{row['impl']:<12} {row['variant']:<12} {str(tuple(row['shape'])):<22} "
              f"fwd {fmt(row.get('fwd_ms'))} ms  fwd+bwd {fmt(row.get('fwdbwd_ms'))} ms"
              + (f"  [{row['note']}]" if row.get("note") else ""), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**meta, "results": rows}, f, indent=1)

    shapes = parse_shapes(args.shapes)
    want_bwd = lambda shape: not args.no_bwd and (bwd_shapes is None or shape in bwd_shapes)
    # Two passes: every forward first, then fwd+bwd where asked. fla's first backward at a
    # shape costs minutes of Triton autotuning; done first, it ate a whole budget before any
    # other shape's forward was timed.
    by_key = {}
    for kind, pass_shapes in (("fwd", shapes), ("fwdbwd", [s for s in shapes if want_bwd(s)])):
        for (B, T, H, D) in pass_shapes:
            torch.manual_seed(0)
            q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
            g = F.logsigmoid(torch.randn(B, T, H, device=dev, dtype=torch.float32))
            do = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
            cases = [
                ("fla", "linear_attn", lambda q, k, v, g: chunk_linear_attn(q, k, v, normalize=False)[0]),
                ("fla", "retention", lambda q, k, v, g: chunk_retention(q, k, v)[0]),
                ("fla", "simple_gla", lambda q, k, v, g: chunk_simple_gla(q, k, v, g)[0]),
                ("torch", "sdpa_causal", lambda q, k, v, g: F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
                ).transpose(1, 2)),
            ]
            for impl, variant, fn in cases:
                key = (impl, variant, (B, T, H, D))
                row = by_key.setdefault(key, {"impl": impl, "variant": variant, "shape": [B, T, H, D]})
                if time.time() - t0 > args.budget_s:
                    row["note"] = "skipped: time budget"
                    emit(row, list(by_key.values()))
                    continue
                if kind == "fwd":
                    try:
                        with torch.no_grad():
                            m, p10, p90 = time_cuda(lambda: fn(q, k, v, g), args.warmup, args.iters)
                        row.update(fwd_ms=m, fwd_p10_ms=p10, fwd_p90_ms=p90)
                    except Exception as e:  # noqa: BLE001 — recorded, part of the comparison
                        row["fwd_error"] = f"{type(e).__name__}: {e}"[:300]
                else:
                    row.pop("note", None)
                    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
                    gg = g.detach().clone().requires_grad_(True)

                    def fwdbwd():
                        o = fn(qg, kg, vg, gg)
                        o.backward(do)

                    try:
                        m, p10, p90 = time_cuda(fwdbwd, args.warmup, args.iters)
                        row.update(fwdbwd_ms=m, fwdbwd_p10_ms=p10, fwdbwd_p90_ms=p90)
                    except Exception as e:  # noqa: BLE001
                        row["bwd_error"] = f"{type(e).__name__}: {e}"[:300]
                        row["note"] = "fwd+bwd refused: " + row["bwd_error"][:120]
                    del qg, kg, vg, gg
                emit(row, list(by_key.values()))
            del q, k, v, g, do
            torch.cuda.empty_cache()
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
