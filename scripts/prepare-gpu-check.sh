#!/usr/bin/env bash
# Builds the bundle that scripts/gpu-check.sh runs on a GPU machine that has
# a driver but no Rust toolchain, no Vulkan loader and no network:
#   .gpu/wgpu-optim           the command, release build, stripped
#   .gpu/tests/*.xz           the test binaries (release), stripped, xz-compressed
#   .gpu/paths                where they were built: the tests find their data
#                             and the command through these paths, which
#                             gpu-check.sh links to the bundle there
#   .gpu/torch_optim_bench.py PyTorch's own step timings (the anchor)
#   .gl/*.deb                 Debian's Vulkan loader (libvulkan1) and the GL
#                             dispatch libraries NVIDIA's Vulkan driver
#                             (libGLX_nvidia) needs to load (libglvnd0, ...)
# It builds the committed HEAD in a clean worktree (uncommitted work is left
# out). Run it here, on a machine with cargo and Debian's package lists;
# both folders are git-ignored. Keep the whole tree under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
src=${GPU_BUILD_DIR:-/tmp/wgpu-optim-gpubuild}
target=${GPU_BUILD_TARGET:-$src-target}
git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
git worktree add --force --detach "$src" HEAD >/dev/null
rm -rf .gpu && mkdir -p .gpu/tests
(cd "$src" && CARGO_TARGET_DIR=$target cargo build --release --bin wgpu-optim)
cp "$target/release/wgpu-optim" .gpu/
(cd "$src" && CARGO_TARGET_DIR=$target cargo test --release --no-run --lib --tests --message-format=json 2>/dev/null) |
  python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        kind = m["target"]["kind"][0]
        if kind == "bin":
            continue
        name = m["target"]["name"] if kind == "test" else "unit"
        shutil.copy(m["executable"], os.path.join(".gpu/tests", name))
        print("test binary:", name)
'
strip .gpu/wgpu-optim .gpu/tests/*
# The test binaries together outgrow what may travel (64 MiB): xz them;
# gpu-check.sh unpacks them on the GPU machine.
xz -T0 -6 .gpu/tests/*
printf 'src=%s\ntarget=%s\ncommit=%s\n' "$src" "$target" "$(git rev-parse HEAD)" > .gpu/paths
cp ../shared/bench/torch_optim_bench.py .gpu/ 2>/dev/null || cp /work/shared/bench/torch_optim_bench.py .gpu/
if ! ls .gl/libglvnd0_*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
git worktree remove --force "$src" 2>/dev/null || true
du -sh .gpu .gl
