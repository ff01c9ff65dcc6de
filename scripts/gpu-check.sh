#!/usr/bin/env bash
# The whole real-GPU check in one run, on a machine with a GPU driver but no
# Rust toolchain, no Vulkan loader and no network (see prepare-gpu-check.sh):
#   1. `wgpu-optim info`: the adapter, its limits and features;
#   2. every integration-test binary, conformance against PyTorch included;
#   3. `wgpu-optim conformance --backend both` on the PyTorch cases;
#   4. `wgpu-optim bench --json --verify` at $SIZES, and a many-tensor model;
#   5. PyTorch's own fused/foreach steps at the same sizes, when torch has CUDA.
# Logs and JSON go to $OUT (default ./gpu-check-out); a table prints last.
#
#   REQUIRE_ADAPTER=NVIDIA  only adapters whose name contains this (WGPU_ADAPTER_NAME)
#   SIZES=16M,128M,1G STEPS=20 RULES=sgd,sgd_momentum,adagrad,rmsprop,adam,adamw
#
# Against lavapipe on a machine without a GPU:
#   SIZES=64K STEPS=3 REQUIRE_ADAPTER= scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bundle=${BUNDLE:-.gpu}
OUT=${OUT:-$root/gpu-check-out}
mkdir -p "$OUT"
SIZES=${SIZES:-16M,128M,1G}
STEPS=${STEPS:-20}
RULES=${RULES:-sgd,sgd_momentum,adagrad,rmsprop,adam,adamw}
REQUIRE_ADAPTER=${REQUIRE_ADAPTER-NVIDIA}
status=0
bin=$bundle/wgpu-optim

# The Vulkan loader, from Debian's package, where the machine has none.
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -n "$REQUIRE_ADAPTER" ]; then export WGPU_ADAPTER_NAME=$REQUIRE_ADAPTER; fi
# The tests find their data through the path they were built in.
if [ ! -e /work/main/tests/data ] && [ "$root" != /work/main ]; then
  mkdir -p /work && ln -sfn "$root" /work/main
fi

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null || true
} > "$OUT/info.txt"
if ! "$bin" info >> "$OUT/info.txt" 2>&1; then
  # The NVIDIA driver's Vulkan ICD lives outside the loader's search path on
  # some images.
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  echo "--- retry with VK_DRIVER_FILES=$VK_DRIVER_FILES" >> "$OUT/info.txt"
  "$bin" info >> "$OUT/info.txt" 2>&1 || { echo "no usable adapter"; status=1; }
fi
cat "$OUT/info.txt"

echo "=== tests" | tee "$OUT/tests.log"
for t in "$bundle"/tests/*; do
  echo "--- $(basename "$t")" >> "$OUT/tests.log"
  if "$t" --test-threads=4 >> "$OUT/tests.log" 2>&1; then r=ok; else r=FAILED; status=1; fi
  printf '%-14s %s\n' "$(basename "$t")" "$r" | tee -a "$OUT/tests.log"
done

"$bin" conformance --backend both --json tests/data/golden/cases > "$OUT/conformance.jsonl" 2>> "$OUT/tests.log"
echo "conformance exit: $?" | tee -a "$OUT/tests.log"

"$bin" bench --json --backends gpu --verify --rules "$RULES" --sizes "$SIZES" --steps "$STEPS" \
  > "$OUT/bench.jsonl" 2> "$OUT/bench.log" || status=1
first=${SIZES%%,*}
mid=$(echo "$SIZES" | cut -d, -f2)
"$bin" bench --json --backends gpu --verify --rules adam --sizes "${mid:-$first}" --tensors 1000 --steps "$STEPS" \
  >> "$OUT/bench.jsonl" 2>> "$OUT/bench.log" || status=1

if python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  python3 "$bundle/torch_optim_bench.py" --device cuda --sizes "$SIZES" --rules "$RULES" \
    --impls fused,foreach --steps "$STEPS" > "$OUT/torch.jsonl" 2>> "$OUT/bench.log"
else
  echo "torch with CUDA not found: no PyTorch anchor" | tee -a "$OUT/bench.log"
fi

python3 scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
exit $status
