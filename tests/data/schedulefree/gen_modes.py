#!/usr/bin/env python3
"""The schedulefree package's eval() and train() values, for
tests/schedulefree_modes.rs.

For each case: two float32 tensors, `steps` steps in train mode with the
gradients g[i] = sin(0.7·i + 1.3·s) · (1 + i % 3) (flat index i over both
tensors, step s from 0), then eval() (the parameters x) and train() again
(y back). The package is schedulefree 1.4.1, its PyTorch classes
(SGDScheduleFree, AdamWScheduleFree), foreach=False.

usage: gen_modes.py OUT.json
"""
import json
import math
import sys

import schedulefree
import torch

SIZES = [5, 11]
CASES = [
    ("sgd", "schedulefree_sgd", schedulefree.SGDScheduleFree,
     {"lr": 0.25, "momentum": 0.8, "weight_decay": 0.01, "warmup_steps": 2}, 6),
    ("adamw", "schedulefree_adamw", schedulefree.AdamWScheduleFree,
     {"lr": 0.05, "betas": [0.9, 0.999], "weight_decay": 0.01, "warmup_steps": 2, "r": 0.5}, 6),
    ("adamw_beta1", "schedulefree_adamw", schedulefree.AdamWScheduleFree,
     {"lr": 0.02, "betas": [0.7, 0.99]}, 4),
]


def floats(t):
    return [float(x) for x in t.detach().flatten().tolist()]


def main(path):
    out = []
    total = sum(SIZES)
    for name, rule, cls, hyper, steps in CASES:
        init = torch.tensor([0.3 * math.cos(1.1 * i) + 0.5 for i in range(total)],
                            dtype=torch.float32)
        params = [torch.nn.Parameter(t.clone()) for t in init.split(SIZES)]
        opt = cls(params, foreach=False, **hyper)
        opt.train()
        for s in range(steps):
            g = torch.tensor([math.sin(0.7 * i + 1.3 * s) * (1 + i % 3) for i in range(total)],
                             dtype=torch.float32)
            for p, gt in zip(params, g.split(SIZES)):
                p.grad = gt.clone()
            opt.step()
        y = torch.cat([p.detach().clone().flatten() for p in params])
        z = torch.cat([opt.state[p]["z"].flatten() for p in params])
        opt.eval()
        x = torch.cat([p.detach().clone().flatten() for p in params])
        opt.train()
        y_back = torch.cat([p.detach().clone().flatten() for p in params])
        out.append({"name": name, "rule": rule, "hyper": hyper, "sizes": SIZES, "steps": steps,
                    "init": floats(init), "y": floats(y), "z": floats(z), "x": floats(x),
                    "y_back": floats(y_back)})
    with open(path, "w") as f:
        json.dump({"schedulefree": schedulefree.__version__ if hasattr(schedulefree, "__version__")
                   else "1.4.1", "torch": torch.__version__, "cases": out}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
