#!/usr/bin/env python3
"""Merges `linrec bench --json` and `scripts/bench-fla.py --json` into ONE table (markdown).

usage: python3 scripts/bench-merge.py LINREC.json FLA.json

Per (variant, shape): linrec's median forward ms, fla 0.6.0's forward ms, the ratio fla/linrec
(> 1: linrec is faster), the HBM floor of the forward (bytes read + written once over the
device copy bandwidth measured by `linrec bench`), linrec's ratio to it, fla's fwd+bwd ms (or
why it has none) and PyTorch SDPA-causal's forward ms at the same shape.
"""
import json
import sys


def main():
    lin = json.load(open(sys.argv[1]))
    fla = json.load(open(sys.argv[2]))
    by = {(r["impl"], r["variant"], tuple(r["shape"])): r for r in fla["results"]}
    print(f"linrec: {lin['device']}, {lin['timer']}, median of {lin['iters']}; "
          f"copy bandwidth {lin['bandwidth_gb_per_s']:.0f} GB/s ({lin['bandwidth_how']})")
    print(f"fla {fla['fla']}, torch {fla['torch']}, triton {fla['triton']}, CUDA {fla['cuda']}: "
          f"{fla['device']}, {fla['timer']}, median of {fla['iters']}")
    print()
    print("| variant | B,T,H,D | linrec ms | fla ms | fla/linrec | floor ms | linrec/floor "
          "| TFLOP/s | fla fwd+bwd ms | SDPA ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    f3 = lambda x: f"{x:.3f}" if isinstance(x, (int, float)) else "–"
    for r in lin["results"]:
        shape = tuple(r["shape"])
        f = by.get(("fla", r["variant"], shape), {})
        s = by.get(("torch", "sdpa_causal", shape), {})
        fms = f.get("fwd_ms")
        ratio = f"{fms / r['ms']:.2f}" if fms else "–"
        if "fwdbwd_ms" in f:
            fb = f3(f["fwdbwd_ms"])
        elif "bwd_error" in f:
            fb = "refused"
        else:
            fb = "–"
        print(f"| {r['variant']} | {','.join(map(str, shape))} | {r['ms']:.3f} | {f3(fms)} | {ratio} "
              f"| {r['floor_ms']:.4f} | {r['ratio_to_floor']:.1f} | {r['tflop_per_s']:.1f} | {fb} "
              f"| {f3(s.get('fwd_ms'))} |")
    errs = {r.get("bwd_error") for r in fla["results"] if r.get("bwd_error")}
    for e in sorted(errs):
        print(f"\nfla fwd+bwd refused: {e}")


if __name__ == "__main__":
    main()
