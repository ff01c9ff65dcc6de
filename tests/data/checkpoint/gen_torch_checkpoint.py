#!/usr/bin/env python3
"""Checkpoints between PyTorch and wgpu-optim, both directions.

usage:
  gen_torch_checkpoint.py write   # torch writes torch_adam.safetensors and torch_adam_next.safetensors
  gen_torch_checkpoint.py verify  # torch reads ours_adamw.safetensors (written by wgpu-optim),
                                  # continues one step and compares with ours_adamw_next.safetensors
  gen_torch_checkpoint.py write_groups   # torch writes torch_groups.safetensors, torch_groups_next.safetensors
  gen_torch_checkpoint.py verify_groups  # torch reads ours_groups.safetensors (wgpu-optim's), continues
                                         # one step and compares with torch_groups_next.safetensors

write_groups / verify_groups: the same with three parameter groups of
different hyperparameters (lr, betas, weight_decay; AMSGrad in the last, so
its tensors have one more state) over four tensors. ours_groups.safetensors
is wgpu-optim's checkpoint of torch_groups.safetensors loaded into its CPU
optimizer: verify_groups rebuilds torch.optim.Adam with its param_groups,
load_state_dict()s it and checks that torch's next step is torch's own.

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


def save_run(opt, params, shapes, name):
    """{name}.safetensors: the state dict and parameters, with only torch's
    metadata; {name}_next.safetensors: after one more step, with its grads."""
    tensors, groups = flat_state(opt, params)
    for i, p in enumerate(params):
        tensors[f"params.{i}"] = p.detach().clone().contiguous()
    save_file(tensors, os.path.join(HERE, f"{name}.safetensors"),
              metadata={"rule": "adam", "param_groups": json.dumps(groups)})
    grads = grads_at(6, shapes)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    after, _ = flat_state(opt, params)
    for i, (p, g) in enumerate(zip(params, grads)):
        after[f"params.{i}"] = p.detach().clone().contiguous()
        after[f"grads.{i}"] = g.contiguous()
    save_file(after, os.path.join(HERE, f"{name}_next.safetensors"),
              metadata={"torch": torch.__version__})
    print(f"wrote {name}.safetensors and {name}_next.safetensors with torch", torch.__version__)


def write():
    torch.manual_seed(0)
    shapes = [(3, 4), (5,)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float32)) for s in shapes]
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for step in range(1, 6):
        for p, g in zip(params, grads_at(step, shapes)):
            p.grad = g
        opt.step()
    save_run(opt, params, shapes, "torch_adam")

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


GROUP_SHAPES = [[(3, 4), (5,)], [(6,)], [(2, 3)]]


def groups_run():
    torch.manual_seed(1)
    groups = [[torch.nn.Parameter(torch.randn(s, dtype=torch.float32)) for s in g] for g in GROUP_SHAPES]
    opt = torch.optim.Adam([
        {"params": groups[0], "lr": 0.01, "weight_decay": 0.1},
        {"params": groups[1], "lr": 0.003, "betas": (0.8, 0.95), "weight_decay": 0.0},
        {"params": groups[2], "lr": 0.02, "eps": 1e-6, "amsgrad": True},
    ], lr=0.001, betas=(0.9, 0.99))
    params = [p for g in groups for p in g]
    shapes = [s for g in GROUP_SHAPES for s in g]
    for step in range(1, 6):
        for p, g in zip(params, grads_at(step, shapes)):
            p.grad = g
        opt.step()
    return opt, params, shapes


def write_groups():
    opt, params, shapes = groups_run()
    save_run(opt, params, shapes, "torch_groups")

def verify_groups():
    path = os.path.join(HERE, "ours_groups.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["rule"] == "adam", meta["rule"]
    groups = json.loads(meta["param_groups"])
    assert len(groups) == 3, len(groups)
    n = sum(len(g["params"]) for g in groups)
    nxt = load_file(os.path.join(HERE, "torch_groups_next.safetensors"))
    # Our file keeps each tensor flat (its length); torch's shapes are the run's.
    shape = [nxt[f"grads.{i}"].shape for i in range(n)]
    params = [torch.nn.Parameter(tensors[f"params.{i}"].clone().reshape(shape[i])) for i in range(n)]
    torch_groups = []
    for g in groups:
        hyper = {k: v for k, v in g.items() if k not in ("params", "eps_inside_sqrt")}
        hyper["betas"] = tuple(hyper["betas"])
        torch_groups.append({"params": [params[i] for i in g["params"]], **hyper})
    opt = torch.optim.Adam(torch_groups)
    state = {}
    for i in range(n):
        state[i] = {k[len(f"state.{i}."):]: (v.clone() if v.dim() == 0 else v.clone().reshape(shape[i]))
                    for k, v in tensors.items() if k.startswith(f"state.{i}.")}
    opt.load_state_dict({"state": state, "param_groups": groups})
    for i, p in enumerate(params):
        p.grad = nxt[f"grads.{i}"].clone()
    opt.step()
    for i, p in enumerate(params):
        got = {"params": p.detach(), **{k: v for k, v in opt.state[p].items() if k != "step"}}
        for what, v in got.items():
            want = nxt[f"params.{i}" if what == "params" else f"state.{i}.{what}"]
            if not torch.equal(v, want):
                sys.exit(f"tensor {i} {what}: torch's step from ours differs from torch's own")
    print(f"ours_groups.safetensors: loaded into torch.optim.Adam (3 groups) by load_state_dict; "
          f"its next step is torch's own, bit for bit (torch {torch.__version__})")


if __name__ == "__main__":
    {"write": write, "verify": verify, "write_groups": write_groups, "verify_groups": verify_groups}[sys.argv[1] if len(sys.argv) > 1 else "write"]()
