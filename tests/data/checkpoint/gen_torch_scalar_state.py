#!/usr/bin/env python3
"""torch.optim.NAdam and torch.optim.ASGD checkpoints, for tests/scalar_state.rs.

usage: gen_torch_scalar_state.py

For each of the two rules: two parameters (shapes [3, 4] and [5]) take 5
steps with fixed gradients, a hyperparameter their scalar state depends on
changed before step 3 (NAdam's betas[0], ASGD's lr), so that the state is
history. Its state_dict() is saved with safetensors.torch.save_file as
torch_{rule}.safetensors in wgpu-optim's naming: state.{i}.{name} as torch
keeps them (the step, the moments or ax, and the one-number mu_product or
eta and mu, 0-dimensional float32 tensors), params.{i}, and the metadata
"rule" and "param_groups" (torch's, as JSON). Then that hyperparameter is
changed again (and the lr), one more step is taken with the gradients
grads.{i}, and the parameters and state after it go to
torch_{rule}_next.safetensors, whose metadata "set" holds the
hyperparameters in force at that step.
"""
import json, os
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(3, 4), (5,)]


def grads_at(step):
    g = torch.Generator().manual_seed(2000 + step)
    return [torch.randn(s, generator=g, dtype=torch.float32) for s in SHAPES]


def flat_state(opt):
    out = {}
    sd = opt.state_dict()
    for i in range(len(SHAPES)):
        for k, v in sd["state"][i].items():
            out[f"state.{i}.{k}"] = v.detach().clone().contiguous()
    return out, sd["param_groups"]


def run(rule, make, change, last):
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float32)) for s in SHAPES]
    opt = make(params)
    for step in range(1, 6):
        if step == 3:
            change(opt.param_groups[0])
        for p, g in zip(params, grads_at(step)):
            p.grad = g
        opt.step()
    tensors, groups = flat_state(opt)
    for i, p in enumerate(params):
        tensors[f"params.{i}"] = p.detach().clone().contiguous()
    save_file(tensors, os.path.join(HERE, f"torch_{rule}.safetensors"),
              metadata={"rule": rule, "param_groups": json.dumps(groups)})

    group = opt.param_groups[0]
    set_ = last(group)
    grads = grads_at(6)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    after, _ = flat_state(opt)
    for i, (p, g) in enumerate(zip(params, grads)):
        after[f"params.{i}"] = p.detach().clone().contiguous()
        after[f"grads.{i}"] = g.contiguous()
    save_file(after, os.path.join(HERE, f"torch_{rule}_next.safetensors"),
              metadata={"torch": torch.__version__, "set": json.dumps(set_)})


def nadam_change(g):
    g["betas"] = (0.6, g["betas"][1])


def nadam_last(g):
    g["betas"] = (0.7, g["betas"][1])
    g["lr"] = 0.02
    return {"lr": 0.02, "momentum": 0.7}


def asgd_change(g):
    g["lr"] = 0.05


def asgd_last(g):
    g["lr"] = 0.01
    return {"lr": 0.01}


def main():
    run("nadam",
        lambda p: torch.optim.NAdam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                    momentum_decay=0.01, foreach=False),
        nadam_change, nadam_last)
    run("asgd",
        lambda p: torch.optim.ASGD(p, lr=0.02, lambd=0.01, alpha=0.6, t0=2, weight_decay=0.05,
                                   foreach=False),
        asgd_change, asgd_last)
    print("wrote torch_{nadam,asgd}{,_next}.safetensors with torch", torch.__version__)


if __name__ == "__main__":
    main()
