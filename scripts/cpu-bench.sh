#!/usr/bin/env bash
# Our CPU backend against PyTorch's fused and foreach CPU steps, side by side
# in one run on this machine: for each size, ours then PyTorch's, same rules,
# same GB/s definition. Needs torch (`pip install torch`).
#   SIZES=1M,16M,64M RULES=sgd,sgd_momentum,adagrad,rmsprop,adam,adamw STEPS=20
#   OUT=benches/results/cpu-<date>
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1M,16M,64M}
RULES=${RULES:-sgd,sgd_momentum,adagrad,rmsprop,adam,adamw}
STEPS=${STEPS:-20}
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
for size in ${SIZES//,/ }; do
  for rule in ${RULES//,/ }; do
    target/release/wgpu-optim bench --json --backends cpu --rules "$rule" --sizes "$size" --steps "$STEPS" \
      >> "$OUT/bench.jsonl" 2>/dev/null
    python3 "$torch_bench" --device cpu --rules "$rule" --sizes "$size" --impls fused,foreach \
      --steps "$STEPS" >> "$OUT/torch.jsonl"
  done
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(os.path.join(out, f)) if l.startswith("{")]
ours = load("bench.jsonl"); torch = {(r["rule"], r["n"], r["impl"]): r for r in load("torch.jsonl") if "gbps" in r}
print(f"{'rule':<13}{'n':>10}{'ours ms':>9}{'GB/s':>7}{'fused ms':>10}{'GB/s':>7}{'foreach ms':>11}{'GB/s':>7}{'ours/fused':>11}")
for r in ours:
    fu = torch.get((r["rule"], r["n"], "torch-fused"), {}); fe = torch.get((r["rule"], r["n"], "torch-foreach"), {})
    f = lambda x, w, p: f"{x:>{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"
    ratio = fu["median_ms"] / r["median_ms"] if fu else None
    print(f"{r['rule']:<13}{r['n']:>10}{f(r['median_ms'],9,2)}{f(r['gbps'],7,1)}{f(fu.get('median_ms'),10,2)}{f(fu.get('gbps'),7,1)}"
          f"{f(fe.get('median_ms'),11,2)}{f(fe.get('gbps'),7,1)}{f(ratio,11,2)}")
PY
