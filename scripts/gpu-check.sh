#!/usr/bin/env bash
# The whole real-GPU check in one run, on a machine with a GPU driver but no
# Rust toolchain, no Vulkan loader and no network (see prepare-gpu-check.sh):
#   1. `wgpu-optim info`: the adapter, its limits and features;
#   2. every integration-test binary, conformance against PyTorch included;
#   3. `wgpu-optim conformance --backend both` on the PyTorch cases;
#   4. `wgpu-optim bench --json --verify` at $SIZES, a many-tensor model, and
#      AdamW in each precision mode (bf16, master weights, 8-bit state);
#   5. PyTorch's own fused/foreach steps at the same sizes, when torch has CUDA.
# Logs and JSON go to $OUT (default ./gpu-check-out); a table prints last.
#
#   REQUIRE_ADAPTER=NVIDIA  only adapters whose name contains this (WGPU_ADAPTER_NAME)
#   SIZES=16M,128M BIG=1G STEPS=20 RULES=sgd,...,lamb TORCH_RULES=sgd,...,adamw
#
# Against lavapipe on a machine without a GPU:
#   SIZES=64K BIG= STEPS=3 REQUIRE_ADAPTER= scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bundle=${BUNDLE:-.gpu}
OUT=${OUT:-$root/gpu-check-out}
mkdir -p "$OUT"
SIZES=${SIZES:-16M,128M}
BIG=${BIG-1G}
STEPS=${STEPS:-20}
RULES=${RULES:-sgd,sgd_momentum,adagrad,rmsprop,adam,adamw,adam_clip,lamb,radam,adamax,nadam,asgd,adadelta,rprop,lion,ademamix,schedulefree_sgd,schedulefree_adamw}
# lion and ademamix are timed in PyTorch only where their reference packages
# are installed (TORCH_RULES=...,lion,ademamix); the GPU machines have torch.
TORCH_RULES=${TORCH_RULES:-sgd,sgd_momentum,adagrad,rmsprop,adam,adamw,adam_clip,radam,adamax,nadam,asgd,adadelta,rprop}
REQUIRE_ADAPTER=${REQUIRE_ADAPTER-NVIDIA}
status=0
bin=$bundle/wgpu-optim

# The Vulkan loader, from Debian's package, where the machine has none.
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -n "$REQUIRE_ADAPTER" ]; then export WGPU_ADAPTER_NAME=$REQUIRE_ADAPTER; fi
# The tests find their data through the source path they were built in, and
# the command through the target path: point both at this tree and bundle.
if [ -f "$bundle/paths" ]; then
  built_src=$(sed -n 's/^src=//p' "$bundle/paths")
  built_target=$(sed -n 's/^target=//p' "$bundle/paths")
  if [ -n "$built_src" ] && [ ! -e "$built_src/tests/data" ]; then
    mkdir -p "$(dirname "$built_src")" && ln -sfn "$root" "$built_src"
  fi
  if [ -n "$built_target" ] && [ ! -x "$built_target/release/wgpu-optim" ]; then
    mkdir -p "$built_target/release" && ln -sf "$root/$bundle/wgpu-optim" "$built_target/release/wgpu-optim"
  fi
fi

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(sed -n 's/^commit=//p' "$bundle/paths" 2>/dev/null || git rev-parse HEAD 2>/dev/null)"
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
tests=$(mktemp -d)
for f in "$bundle"/tests/*; do
  case "$f" in
    *.xz) xz -dc "$f" > "$tests/$(basename "$f" .xz)" ;;
    *) cp "$f" "$tests/" ;;
  esac
done
chmod +x "$tests"/*
for t in "$tests"/*; do
  echo "--- $(basename "$t")" >> "$OUT/tests.log"
  if "$t" --test-threads=4 >> "$OUT/tests.log" 2>&1; then r=ok; else r=FAILED; status=1; fi
  printf '%-14s %s\n' "$(basename "$t")" "$r" | tee -a "$OUT/tests.log"
done

"$bin" conformance --backend both --json tests/data/golden/cases > "$OUT/conformance.jsonl" 2>> "$OUT/tests.log"
echo "conformance exit: $?" | tee -a "$OUT/tests.log"

bench() { "$bin" bench --json --backends gpu --steps "$STEPS" "$@" >> "$OUT/bench.jsonl" 2>> "$OUT/bench.log" || status=1; }
torch_bench() {
  if [ "$have_torch" = 1 ]; then
    python3 "$bundle/torch_optim_bench.py" --device cuda --rules "$TORCH_RULES" \
      --impls fused,foreach --steps "$STEPS" "$@" >> "$OUT/torch.jsonl" 2>> "$OUT/bench.log"
  fi
}
have_torch=0
if python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  have_torch=1
else
  echo "torch with CUDA not found: no PyTorch anchor" | tee -a "$OUT/bench.log"
fi
: > "$OUT/bench.jsonl"; : > "$OUT/torch.jsonl"
# Every rule at the main sizes, checked against the CPU, and PyTorch beside it.
bench --verify --rules "$RULES" --sizes "$SIZES"
torch_bench --sizes "$SIZES"
# Kernel variants (issue: vec4 against scalar loads, bounds checks on/off)
# and a model of 1000 tensors, at the largest main size.
last=${SIZES##*,}
bench --rules adam,adamw,sgd_momentum --sizes "$last" --vector-width 1
bench --rules adam,adamw,sgd_momentum --sizes "$last" --unchecked
bench --verify --rules adam,lamb,adam_clip --sizes "$last" --tensors 1000
# AdamW in each precision mode (issue 16), checked against the CPU twin:
# bf16 state, bf16 parameters behind a master, both, 8-bit state, 8-bit
# behind a bf16 master. (Unquoted on purpose: each is several flags.)
for mode in "--state-dtype bf16" "--param-dtype bf16 --master-weights" \
  "--param-dtype bf16 --master-weights --state-dtype bf16" "--state-dtype 8bit" \
  "--param-dtype bf16 --master-weights --state-dtype 8bit"; do
  # shellcheck disable=SC2086
  bench --verify --rules adamw --sizes "$SIZES" $mode
done
# The largest models last, so a time limit cuts the least.
if [ -n "$BIG" ]; then
  bench --verify --verify-steps 2 --rules "$RULES" --sizes "$BIG"
  torch_bench --sizes "$BIG"
fi

python3 scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
exit $status
