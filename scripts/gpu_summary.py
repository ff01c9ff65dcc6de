#!/usr/bin/env python3
"""Table of one gpu-check run: our GPU step against PyTorch's, same sizes.

usage: gpu_summary.py OUTDIR   (reads bench.jsonl, torch.jsonl, conformance.jsonl)
"""
import json, os, sys


def load(path):
    rows = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def main():
    out = sys.argv[1]
    ours = load(os.path.join(out, "bench.jsonl"))
    torch = load(os.path.join(out, "torch.jsonl"))
    conf = load(os.path.join(out, "conformance.jsonl"))
    if conf:
        passed = sum(1 for c in conf if c.get("pass"))
        print(f"conformance: {passed}/{len(conf)} case-backend pairs pass")
    t = {(r["rule"], r["n"], r["impl"]): r for r in torch if "gbps" in r}
    print(f"{'rule':<13}{'n':>11}{'tensors':>8}{'kernel':>26}{'ours ms':>9}{'GB/s':>8}{'kern GB/s':>10}"
          f"{'copy GB/s':>10}{'DMA GB/s':>9}{'of copy':>8}{'torch fused':>12}{'foreach':>9}  verify")
    for r in ours:
        if r.get("backend") != "gpu" or "gbps" not in r:
            continue
        key = (r["rule"], r["n"])
        fused = t.get(key + ("torch-fused",), {}).get("gbps")
        foreach = t.get(key + ("torch-foreach",), {}).get("gbps")
        kern = r.get("kernel_ms")
        kgbps = r["bytes_per_param"] * r["n"] / (kern * 1e-3) / 1e9 if kern else None
        frac = r.get("roofline")
        # The precision mode, where it is not f32 (issue 16's rows).
        mode = ""
        if r.get("param_dtype", "f32") != "f32" or r.get("state_dtype", "f32") != "f32":
            master = "+master" if r.get("master_weights") else ""
            mode = f" {r.get('param_dtype')}{master}/{r.get('state_dtype')}"
        kernel = str(r.get("kernel") or "-") + mode
        f = lambda x, w, p=1: (f"{x:>{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}")
        print(f"{r['rule']:<13}{r['n']:>11}{r.get('tensors', 1):>8}{kernel:>26}"
              f"{f(r['median_ms'], 9, 3)}{f(r['gbps'], 8)}"
              f"{f(kgbps, 10)}{f(r.get('copy_gbps'), 10)}{f(r.get('dma_copy_gbps'), 9)}{f(frac, 8, 2)}{f(fused, 12)}{f(foreach, 9)}"
              f"  {r.get('verify', '-')}")


if __name__ == "__main__":
    main()
