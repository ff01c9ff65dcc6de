"""Reference data for tests/precision.rs: AdamW in each low-precision mode,
computed independently of the crate with numpy float32 arithmetic, torch's
bfloat16 conversion (round to nearest even) and bitsandbytes' own
quantize_blockwise / dequantize_blockwise (its CPU kernels) for 8-bit state.

Run from this directory: python3 generate.py (needs numpy, torch,
safetensors, bitsandbytes==0.50.*). Writes reference.safetensors: every
tensor as raw f32 bits (uint32 or uint8 arrays), hyperparameters in the
metadata.
"""

import json

import bitsandbytes
import bitsandbytes.functional as bnbf
import numpy as np
import torch
from safetensors.numpy import save_file

f32 = np.float32
LENGTHS = [4608, 300, 7]  # one 8-bit tensor (18 blocks), one under 4096, an odd one
STEPS = 4
LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 1e-2
SEED = 1234
BLOCK, MIN_8BIT = 256, 4096

rng = np.random.default_rng(20261202)
p0 = [rng.standard_normal(n).astype(f32) for n in LENGTHS]
grads = [[(rng.standard_normal(n) * 0.1).astype(f32) for n in LENGTHS] for _ in range(STEPS)]


def bf16_rne(x):
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).to(torch.float32)
    return t.numpy()


def f16_rne(x):
    return x.astype(np.float16).astype(f32)


M32 = np.uint64(0xFFFFFFFF)


def lowbias32(x):
    x = np.asarray(x, dtype=np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & M32
    x ^= x >> np.uint64(16)
    return x


def fold(key, x):
    x = np.asarray(x, dtype=np.uint64)
    return lowbias32((x & M32) ^ lowbias32((x >> np.uint64(32)) ^ key))


def stochastic_bf16(x, step, first_index):
    key = fold(fold(np.uint64(0), np.uint64(SEED)), np.uint64(step))
    idx = np.arange(first_index, first_index + x.size, dtype=np.uint64)
    r = fold(key, idx) & np.uint64(0xFFFF)
    bits = x.view(np.uint32).astype(np.uint64)
    out = ((bits + r) >> np.uint64(16)) << np.uint64(16)
    return out.astype(np.uint32).view(f32)


SIGNED = bnbf.create_dynamic_map(signed=True)
UNSIGNED = bnbf.create_dynamic_map(signed=False)


def quantize_nearest(x, code):
    """bitsandbytes' blockwise quantization as its pure-torch backend
    (backends/default/ops.py) computes it: per block absmax, x * (1/absmax)
    clamped to [-1, 1], the nearest code by argmin (the lower at a tie).
    Its compiled CPU kernel (quantize_blockwise on a CPU tensor) searches
    the map approximately and picks a farther code for some values small
    beside the block's absmax (about 1 in 10 here, all under 1e-2 of it);
    the tests check ours against both."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    n = t.numel()
    blocks = -(n // -BLOCK)
    pad = torch.zeros(blocks * BLOCK - n)
    tb = torch.cat([t, pad]).reshape(blocks, BLOCK)
    absmax = tb.abs().max(dim=1).values
    inv = torch.where(absmax == 0, torch.zeros_like(absmax), 1 / absmax)
    scaled = torch.clamp(tb * inv[:, None], -1, 1).reshape(-1)[:n]
    codes = torch.argmin((scaled[:, None] - code[None, :]).abs(), dim=1).to(torch.uint8)
    return codes, absmax


def dequantize(codes, absmax, code):
    return (code[codes.long()] * absmax.repeat_interleave(BLOCK)[: codes.numel()]).numpy()


def store_8bit(x, signed):
    if x.size < MIN_8BIT:
        return x.copy()
    code = SIGNED if signed else UNSIGNED
    q, absmax = quantize_nearest(x, code)
    return dequantize(q, absmax, code)


def store_state(x, dtype, signed):
    if dtype == "f32":
        return x
    if dtype == "bf16":
        return bf16_rne(x)
    return store_8bit(x, signed)


def run(param_dtype, state_dtype, master):
    rnd = {"f32": lambda x: x, "bf16": bf16_rne, "f16": f16_rne}[param_dtype]
    params = [rnd(p) for p in p0]
    masters = [p.copy() for p in p0] if master else None
    m = [store_state(np.zeros(n, f32), state_dtype, True) for n in LENGTHS]
    v = [store_state(np.zeros(n, f32), state_dtype, False) for n in LENGTHS]
    b1, b2 = BETAS
    for t in range(1, STEPS + 1):
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        step_size, bc2_sqrt = f32(LR / bc1), f32(np.sqrt(bc2))
        omb1, omb2, beta2 = f32(1.0 - b1), f32(1.0 - b2), f32(b2)
        decay, eps = f32(1.0 - LR * WD), f32(EPS)
        first = 0
        for k, n in enumerate(LENGTHS):
            g = grads[t - 1][k]
            p = masters[k] if master else params[k]
            p = p * decay
            # torch.lerp's CPU form for a weight under one half.
            mk = m[k] + omb1 * (g - m[k])
            vk = v[k] * beta2 + omb2 * (g * g)
            denom = np.sqrt(vk) / bc2_sqrt + eps
            p = p - step_size * (mk / denom)
            if master:
                masters[k] = p
                params[k] = rnd(p)
            elif param_dtype == "bf16":
                params[k] = stochastic_bf16(p, t, first)
            else:
                params[k] = p
            m[k] = store_state(mk, state_dtype, True)
            v[k] = store_state(vk, state_dtype, False)
            first += n
    out = {"param": np.concatenate(params), "exp_avg": np.concatenate(m), "exp_avg_sq": np.concatenate(v)}
    if master:
        out["master"] = np.concatenate(masters)
    return out


MODES = {
    "f32": ("f32", "f32", False),
    "bf16_master": ("bf16", "f32", True),
    "f16_master": ("f16", "f32", True),
    "bf16_moments": ("f32", "bf16", False),
    "bf16_stochastic": ("bf16", "f32", False),
    "bf16_stochastic_bf16_moments": ("bf16", "bf16", False),
    "int8": ("f32", "8bit", False),
    "bf16_master_int8": ("bf16", "8bit", True),
}

tensors = {
    "init": np.concatenate(p0).view(np.uint32),
    "grads": np.concatenate([np.concatenate(g) for g in grads]).view(np.uint32),
    "map_signed": SIGNED.numpy().view(np.uint32),
    "map_unsigned": UNSIGNED.numpy().view(np.uint32),
}
# bitsandbytes' blockwise quantization itself, on inputs with a short last
# block and a wide spread of magnitudes.
qx = (rng.standard_normal(1000) * np.exp(rng.uniform(-8, 2, 1000))).astype(f32)
for name, code in (("signed", SIGNED), ("unsigned", UNSIGNED)):
    x = qx if name == "signed" else np.abs(qx)
    q, qs = bnbf.quantize_blockwise(torch.from_numpy(x.copy()), code=code, blocksize=BLOCK)
    tensors[f"quant_{name}/input"] = x.view(np.uint32)
    tensors[f"quant_{name}/codes"] = q.numpy()
    tensors[f"quant_{name}/absmax"] = qs.absmax.numpy().view(np.uint32)
    tensors[f"quant_{name}/dequantized"] = bnbf.dequantize_blockwise(q, qs).numpy().view(np.uint32)
    qn, _ = quantize_nearest(x, code)
    tensors[f"quant_{name}/nearest_codes"] = qn.numpy()
# Stochastic rounding of fixed values at step 3 from index 0.
srx = (rng.standard_normal(64) * 3).astype(f32)
tensors["stochastic/input"] = srx.view(np.uint32)
tensors["stochastic/step3"] = stochastic_bf16(srx, 3, 0).view(np.uint32)
for mode, (pd, sd, master) in MODES.items():
    for key, val in run(pd, sd, master).items():
        tensors[f"{mode}/{key}"] = np.ascontiguousarray(val.astype(f32)).view(np.uint32)

meta = {
    "lengths": json.dumps(LENGTHS),
    "steps": str(STEPS),
    "adamw": json.dumps({"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD}),
    "seed": str(SEED),
    "modes": json.dumps(MODES),
    "bitsandbytes": bitsandbytes.__version__,
    "torch": torch.__version__,
    "numpy": np.__version__,
}
save_file(tensors, "reference.safetensors", metadata=meta)
print("wrote reference.safetensors:", len(tensors), "tensors")

if __name__ == "__main__" and "--print-maps" in __import__("sys").argv:
    for m in (SIGNED, UNSIGNED):
        print([hex(b) for b in m.numpy().view(np.uint32)])
