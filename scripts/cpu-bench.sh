#!/usr/bin/env bash
# Our CPU backend against PyTorch's fused and foreach CPU steps, side by side
# in one run on this machine: for each size, ours then PyTorch's, same rules,
# same GB/s definition. Needs torch (`pip install torch`).
#   SIZES=1M,16M,64M RULES=sgd,sgd_momentum,adagrad,rmsprop,adam,adamw STEPS=20 REPEAT=1
# With REPEAT=k every (rule, size) pair is measured k times, ours and
# PyTorch's alternating, and the table gives the median of each: on a shared
# machine whose bandwidth moves from minute to minute, only measurements
# taken seconds apart compare.
#   OUT=benches/results/cpu-<date>
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1M,16M,64M}
RULES=${RULES:-sgd,sgd_momentum,adagrad,rmsprop,adam,adamw}
STEPS=${STEPS:-20}
REPEAT=${REPEAT:-1}
OUT=${OUT:-benches/results/cpu-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
torch_bench=${TORCH_BENCH:-../shared/bench/torch_optim_bench.py}
cargo build --release --bin wgpu-optim
: > "$OUT/bench.jsonl"; : > "$OUT/torch.jsonl"
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse HEAD)"
  grep -m1 "model name" /proc/cpuinfo
  echo "cores: $(nproc)"
  python3 -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'
} > "$OUT/info.txt"
for _ in $(seq "$REPEAT"); do
for size in ${SIZES//,/ }; do
  for rule in ${RULES//,/ }; do
    target/release/wgpu-optim bench --json --backends cpu --rules "$rule" --sizes "$size" --steps "$STEPS" \
      >> "$OUT/bench.jsonl" 2>/dev/null
    python3 "$torch_bench" --device cpu --rules "$rule" --sizes "$size" --impls fused,foreach \
      --steps "$STEPS" >> "$OUT/torch.jsonl"
  done
done
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(os.path.join(out, f)) if l.startswith("{")]
from statistics import median
ours, torch = {}, {}
for r in load("bench.jsonl"):
    ours.setdefault((r["rule"], r["n"]), []).append(r)
for r in load("torch.jsonl"):
    if "gbps" in r:
        torch.setdefault((r["rule"], r["n"], r["impl"]), []).append(r["median_ms"])
print(f"{'rule':<13}{'n':>10}{'runs':>5}{'ours ms':>9}{'GB/s':>7}{'fused ms':>10}{'GB/s':>7}{'foreach ms':>11}{'GB/s':>7}{'fused/ours':>11}")
for (rule, n), rows in ours.items():
    bpp = rows[0]["bytes_per_param"]
    ms = median(r["median_ms"] for r in rows)
    fu = torch.get((rule, n, "torch-fused")); fe = torch.get((rule, n, "torch-foreach"))
    fu = median(fu) if fu else None; fe = median(fe) if fe else None
    gb = lambda t: bpp * n / (t * 1e-3) / 1e9 if t else None
    f = lambda x, w, p: f"{x:>{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"
    print(f"{rule:<13}{n:>10}{len(rows):>5}{f(ms,9,2)}{f(gb(ms),7,1)}{f(fu,10,2)}{f(gb(fu),7,1)}"
          f"{f(fe,11,2)}{f(gb(fe),7,1)}{f(fu / ms if fu else None,11,2)}")
PY
