#!/usr/bin/env python3
"""Checkpoints between PyTorch and wgpu-optim, both directions.

usage:
  gen_torch_checkpoint.py write   # torch writes torch_adam.safetensors and torch_adam_next.safetensors
  gen_torch_checkpoint.py verify  # torch reads ours_adamw.safetensors (written by wgpu-optim),
                                  # continues one step and compares with ours_adamw_next.safetensors

write: a torch.optim.Adam over two parameters (shapes [3, 4] and [5]) takes 5
steps with fixed gradients; its state_dict() is saved with
safetensors.torch.save_file in wgpu-optim's naming: state.{i}.{exp_avg,
exp_avg_sq, step} as torch keeps them, params.{i} the parameters, and the
metadata "rule" and "param_groups" (torch's param_groups as JSON). Nothing
else: a file torch can write without wgpu-optim. Then one more step with the
gradients grads.{i}: the parameters and state after it go to
torch_adam_next.safetensors, which tests/checkpoint.rs compares with
wgpu-optim's step from the first file.

verify: loads ours_adamw.safetensors with safetensors.torch.load_file,
rebuilds torch.optim.AdamW from its param_groups metadata, load_state_dict()s
the tensors, steps once with the gradients of ours_adamw_next.safetensors and
compares the parameters and state with wgpu-optim's in that file. Exits
non-zero on any difference beyond a few float32 rounding steps.
"""
import json, os, sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def grads_at(step, shapes):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(s, generator=g, dtype=torch.float32) for s in shapes]


def flat_state(opt, params):
    out = {}
    sd = opt.state_dict()
    for i in range(len(params)):
        for k, v in sd["state"][i].items():
            out[f"state.{i}.{k}"] = v.detach().clone().contiguous()
    return out, sd["param_groups"]


def write():
    torch.manual_seed(0)
    shapes = [(3, 4), (5,)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float32)) for s in shapes]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for step in range(1, 6):
        for p, g in zip(params, grads_at(step, shapes)):
            p.grad = g
        opt.step()
    tensors, groups = flat_state(opt, params)
    for i, p in enumerate(params):
        tensors[f"params.{i}"] = p.detach().clone().contiguous()
    meta = {"rule": "adam", "param_groups": json.dumps(groups)}
    save_file(tensors, os.path.join(HERE, "torch_adam.safetensors"), metadata=meta)

    grads = grads_at(6, shapes)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    after, _ = flat_state(opt, params)
    for i, (p, g) in enumerate(zip(params, grads)):
        after[f"params.{i}"] = p.detach().clone().contiguous()
        after[f"grads.{i}"] = g.contiguous()
    save_file(after, os.path.join(HERE, "torch_adam_next.safetensors"),
              metadata={"torch": torch.__version__})
    print("wrote torch_adam.safetensors and torch_adam_next.safetensors with torch", torch.__version__)


def verify():
    path = os.path.join(HERE, "ours_adamw.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["rule"] == "adamw", meta["rule"]
    assert meta["format"] == "wgpu-optim/checkpoint/1"
    groups = json.loads(meta["param_groups"])
    n = len(groups[0]["params"])
    params = [torch.nn.Parameter(tensors[f"params.{i}"].clone()) for i in range(n)]
    hyper = {k: v for k, v in groups[0].items() if k not in ("params", "eps_inside_sqrt", "decoupled_weight_decay")}
    hyper["betas"] = tuple(hyper["betas"])
    assert groups[0].get("eps_inside_sqrt", False) is False
    opt = torch.optim.AdamW(params, **hyper)
    state = {}
    for i in range(n):
        state[i] = {k: tensors[f"state.{i}.{k}"].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
    opt.load_state_dict({"state": state, "param_groups": groups})
    nxt = load_file(os.path.join(HERE, "ours_adamw_next.safetensors"))
    for i, p in enumerate(params):
        p.grad = nxt[f"grads.{i}"].clone()
    opt.step()
    worst = 0
    for i, p in enumerate(params):
        pairs = [(p.detach(), nxt[f"params.{i}"], "params")]
        for k in ("exp_avg", "exp_avg_sq"):
            pairs.append((opt.state[p][k], nxt[f"state.{i}.{k}"], k))
        for got, want, what in pairs:
            assert got.shape == want.shape, (what, got.shape, want.shape)
            ulps = ((got.view(torch.int32).long() - want.view(torch.int32).long()).abs().max().item())
            worst = max(worst, ulps)
            if ulps > 4:
                sys.exit(f"tensor {i} {what}: torch and wgpu-optim differ by {ulps} ulps")
        assert opt.state[p]["step"].item() == float(json.loads(meta["wgpu_optim"])["step"]) + 1
    print(f"ours_adamw.safetensors: loaded by safetensors.torch.load_file and torch.optim.AdamW.load_state_dict; "
          f"torch's next step matches wgpu-optim's to {worst} ulp(s) (torch {torch.__version__})")


if __name__ == "__main__":
    {"write": write, "verify": verify}[sys.argv[1] if len(sys.argv) > 1 else "write"]()
