#!/usr/bin/env python3
"""What torch does with NaN and infinite gradients, for tests/nan_propagation.rs.

For every rule of the crate and its main option variants, each run feeds
gradients that hold NaN, +inf or -inf in a few elements, at the first step or
at a later one, and records the parameters and every state tensor after each
step, as torch.optim computes them in float32 (the plain for-loop
implementation, foreach=False). LAMB, which torch lacks, is written out below
in the form of NVIDIA Apex FusedLAMB and optax.lamb (see
tests/data/golden/FORMAT.md, "LAMB"), with their test for a zero norm
(`!= 0`, so a NaN norm gives a NaN trust ratio) and DeepSpeed's clamp of the
ratio as torch.clamp (NaN passes through).

usage: gen_nonfinite.py OUT.safetensors

The file holds, all float32 and flat (the tensors of `sizes` one after the
other), for case c and run r:
  {c}/{r}/init                parameters before the first step
  {c}/{r}/grad/{s}            the gradient of step s (0-based), before clipping
  {c}/{r}/param/{s}           parameters after step s
  {c}/{r}/state/{name}/{s}    state tensor `name` (torch's name) after step s
Metadata key "nonfinite": JSON {"torch", "sizes", "cases": [{"name", "rule",
"hyper" (torch keyword arguments), "clip_grad_norm" (max_norm of
torch.nn.utils.clip_grad_norm_ before every step, or null),
"trust_ratio_clamp" (LAMB, [min, max] or null), "state" (names)}], "runs":
[{"name", "steps", "bad_step", "bad": [[flat index, "nan"|"inf"|"-inf"]]}]}.
"""
import json
import sys

import torch
from safetensors.torch import save_file

SIZES = [7, 4, 9]

# Where the non-finite values go (flat indices): "mixed" puts NaN in tensor 0
# and both infinities in tensor 1, leaving tensor 2 finite (LAMB's per-tensor
# trust ratio keeps it so); "inf" has no NaN, +inf in tensor 0 and -inf in
# tensor 2 (clipping turns a total norm of inf into a scale of 0, and 0·inf
# into NaN).
PATTERNS = {
    "mixed": [[2, "nan"], [8, "inf"], [10, "-inf"]],
    "inf": [[5, "inf"], [15, "-inf"]],
}
RUNS = [
    {"name": "mixed_first", "steps": 3, "bad_step": 0, "bad": PATTERNS["mixed"]},
    {"name": "mixed_later", "steps": 4, "bad_step": 2, "bad": PATTERNS["mixed"]},
    {"name": "inf_first", "steps": 3, "bad_step": 0, "bad": PATTERNS["inf"]},
    {"name": "inf_later", "steps": 4, "bad_step": 2, "bad": PATTERNS["inf"]},
]

CASES = [
    ("sgd", "sgd", {"lr": 0.1}),
    ("sgd_momentum", "sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd_dampening", "sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("sgd_nesterov", "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd_weight_decay", "sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    ("sgd_maximize", "sgd", {"lr": 0.1, "maximize": True, "weight_decay": 0.1}),
    ("adagrad", "adagrad", {"lr": 0.1}),
    ("adagrad_options", "adagrad",
     {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1}),
    ("rmsprop", "rmsprop", {"lr": 0.01}),
    ("rmsprop_centered", "rmsprop", {"lr": 0.01, "centered": True}),
    ("rmsprop_momentum", "rmsprop", {"lr": 0.01, "momentum": 0.9}),
    ("rmsprop_centered_momentum", "rmsprop",
     {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    ("adam", "adam", {"lr": 0.01}),
    ("adam_amsgrad", "adam", {"lr": 0.01, "amsgrad": True}),
    ("adam_decay_maximize", "adam", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
    ("adamw", "adamw", {"lr": 0.01, "weight_decay": 0.1}),
    ("adamw_amsgrad", "adamw", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("lamb", "lamb", {"lr": 0.01, "weight_decay": 0.01}),
    ("lamb_clamp", "lamb", {"lr": 0.01, "weight_decay": 0.01}, None, [0.5, 2.0]),
    ("sgd_momentum_clip", "sgd", {"lr": 0.1, "momentum": 0.9}, 1.0),
    ("adagrad_clip", "adagrad", {"lr": 0.1}, 1.0),
    ("rmsprop_centered_clip", "rmsprop", {"lr": 0.01, "centered": True}, 1.0),
    ("adam_amsgrad_clip", "adam", {"lr": 0.01, "amsgrad": True}, 1.0),
    ("adamw_clip", "adamw", {"lr": 0.01, "weight_decay": 0.1}, 1.0),
    ("lamb_clip", "lamb", {"lr": 0.01, "weight_decay": 0.01}, 1.0),
    ("adadelta", "adadelta", {"lr": 1.0}),
    ("adadelta_options", "adadelta",
     {"lr": 0.5, "rho": 0.95, "eps": 1e-5, "weight_decay": 0.1, "maximize": True}),
    ("adadelta_clip", "adadelta", {"lr": 1.0}, 1.0),
    ("rprop", "rprop", {"lr": 0.01}),
    ("rprop_options", "rprop",
     {"lr": 0.05, "etas": [0.4, 1.3], "step_sizes": [1e-5, 0.5], "maximize": True}),
    ("rprop_clip", "rprop", {"lr": 0.01}, 1.0),
    ("lion", "lion", {"lr": 0.01}),
    ("lion_wd", "lion", {"lr": 0.01, "betas": [0.95, 0.98], "weight_decay": 0.1}),
    ("ademamix", "ademamix", {"lr": 0.01}),
    ("ademamix_warmup_decouple", "ademamix",
     {"lr": 0.01, "alpha": 8.0, "t_alpha_beta3": 3.0, "weight_decay": 0.1, "weight_decouple": True}),
    ("ademamix_l2_maximize", "ademamix", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
    ("lion_clip", "lion", {"lr": 0.01, "weight_decay": 0.1}, 1.0),
    ("ademamix_clip", "ademamix", {"lr": 0.01}, 1.0),
    # RAdam's rectification starts at step 6 (rho_t > 5), after these runs:
    # they take its unrectified branch, theta -= lr * m_hat.
    ("radam", "radam", {"lr": 0.01}),
    ("radam_decay_maximize", "radam", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
    ("radam_decoupled", "radam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam_clip", "radam", {"lr": 0.01}, 1.0),
    ("adamax", "adamax", {"lr": 0.01}),
    ("adamax_decay_maximize", "adamax", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
    ("adamax_clip", "adamax", {"lr": 0.01}, 1.0),
    ("nadam", "nadam", {"lr": 0.01}),
    ("nadam_decoupled_maximize", "nadam",
     {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    ("nadam_clip", "nadam", {"lr": 0.01, "weight_decay": 0.1}, 1.0),
    # t0 = 0 averages from the third step on (ax + (θ − ax)·μ), the default
    # t0 copies θ into ax: a NaN or an infinity of ax goes on differently.
    ("asgd", "asgd", {"lr": 0.01}),
    ("asgd_averaging", "asgd", {"lr": 0.01, "t0": 0}),
    ("asgd_decay_maximize", "asgd",
     {"lr": 0.01, "lambd": 0.1, "weight_decay": 0.1, "maximize": True, "t0": 0}),
    ("asgd_clip", "asgd", {"lr": 0.01, "t0": 0}, 1.0),
    # Schedule-free: z starts as a copy of the parameters at the first step,
    # so a NaN gradient there reaches z and y alike.
    ("schedulefree_sgd", "schedulefree_sgd", {"lr": 0.1}),
    ("schedulefree_sgd_options", "schedulefree_sgd",
     {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.1, "warmup_steps": 2, "r": 1.0}),
    ("schedulefree_sgd_clip", "schedulefree_sgd", {"lr": 0.1}, 1.0),
    ("schedulefree_adamw", "schedulefree_adamw", {"lr": 0.01}),
    ("schedulefree_adamw_options", "schedulefree_adamw",
     {"lr": 0.01, "weight_decay": 0.1, "warmup_steps": 2, "weight_lr_power": 1.0}),
    ("schedulefree_adamw_clip", "schedulefree_adamw", {"lr": 0.01}, 1.0),
]

TORCH_RULES = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adadelta": torch.optim.Adadelta,
    "rprop": torch.optim.Rprop,
    "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax,
}
VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def reference_package_optimizer(rule):
    """The rules torch lacks, from their reference packages (FORMAT.md of
    tests/data/golden), in float32: lion_pytorch.Lion (0.2.5, its PyTorch
    update, which takes no `foreach`) and pytorch_optimizer.AdEMAMix (4.1.0,
    its for-loop path)."""
    def make(params, foreach, **hyper):
        if rule == "lion":
            from lion_pytorch import Lion
            return Lion(params, use_triton=False, **hyper)
        from pytorch_optimizer import AdEMAMix
        return AdEMAMix(params, foreach=foreach, **hyper)
    return make


TORCH_RULES["lion"] = reference_package_optimizer("lion")
TORCH_RULES["ademamix"] = reference_package_optimizer("ademamix")
def nadam_and_asgd():
    """NAdam and ASGD step as torch.optim's own; their one-number state
    (mu_product; eta, mu) is not element-wise and not recorded."""
    TORCH_RULES.update(nadam=torch.optim.NAdam, asgd=torch.optim.ASGD)


nadam_and_asgd()


def schedule_free():
    """schedulefree.SGDScheduleFree and AdamWScheduleFree (1.4.1, the
    PyTorch classes, `foreach` as asked), put in train mode as the package
    requires before a step; their group-level k, lr_max and weight_sum are
    not element-wise and not recorded."""
    import schedulefree

    def make(cls):
        def build(params, foreach, **hyper):
            opt = cls(params, foreach=foreach, **hyper)
            opt.train()
            return opt
        return build

    TORCH_RULES.update(schedulefree_sgd=make(schedulefree.SGDScheduleFree),
                       schedulefree_adamw=make(schedulefree.AdamWScheduleFree))


schedule_free()


def lamb_step(params, grads, state, lr, betas, eps, wd, step, clamp):
    """LAMB in the form of Apex FusedLAMB (adam_w_mode, no internal clipping) and optax.lamb."""
    b1, b2 = betas
    for i, (p, g) in enumerate(zip(params, grads)):
        st = state.setdefault(i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        u = (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps) + wd * p
        pn, un = p.norm(), u.norm()
        # Apex: (update_norm != 0 && param_norm != 0) ? param_norm / update_norm : 1;
        # optax: where(param_norm == 0 | update_norm == 0, 1, ratio). A NaN norm is not 0.
        ratio = torch.where((pn == 0) | (un == 0), torch.ones_like(pn), pn / un)
        if clamp is not None:
            ratio = ratio.clamp(clamp[0], clamp[1])
        p.sub_(lr * ratio * u)


def split(flat):
    out, at = [], 0
    for n in SIZES:
        out.append(flat[at:at + n])
        at += n
    return out


def run(rule, hyper, clip, clamp, spec, seed):
    gen = torch.Generator().manual_seed(seed)
    total = sum(SIZES)
    init = torch.randn(total, generator=gen, dtype=torch.float32)
    grads = []
    for s in range(spec["steps"]):
        g = torch.randn(total, generator=gen, dtype=torch.float32)
        if s == spec["bad_step"]:
            for at, what in spec["bad"]:
                g[at] = VALUES[what]
        grads.append(g)
    params = [torch.nn.Parameter(t.clone()) for t in split(init)]
    if rule == "lamb":
        opt, lamb_state = None, {}
    else:
        opt = TORCH_RULES[rule](params, foreach=False, **hyper)
    out = {"init": init}
    for s, g in enumerate(grads):
        for p, gt in zip(params, split(g)):
            p.grad = gt.clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=False)
        if rule == "lamb":
            with torch.no_grad():
                lamb_step([p.data for p in params], [p.grad for p in params], lamb_state,
                          hyper["lr"], hyper.get("betas", (0.9, 0.999)), hyper.get("eps", 1e-6),
                          hyper.get("weight_decay", 0.01), s + 1, clamp)
            states = {k: [lamb_state[t][k] for t in range(len(SIZES))] for k in ("exp_avg", "exp_avg_sq")}
        else:
            opt.step()
            states = {}
            for p in params:
                for k, v in opt.state[p].items():
                    if k != "step" and torch.is_tensor(v) and v.numel() == p.numel():
                        states.setdefault(k, []).append(v)
        out[f"grad/{s}"] = g
        out[f"param/{s}"] = torch.cat([p.detach() for p in params])
        for k, vs in states.items():
            out[f"state/{k}/{s}"] = torch.cat([v.detach() for v in vs])
    return out, sorted(states)


def main(path):
    tensors, cases = {}, []
    for entry in CASES:
        name, rule, hyper = entry[:3]
        clip = entry[3] if len(entry) > 3 else None
        clamp = entry[4] if len(entry) > 4 else None
        names = None
        for k, spec in enumerate(RUNS):
            out, names = run(rule, hyper, clip, clamp, spec, seed=100 + k)
            for key, t in out.items():
                tensors[f"{name}/{spec['name']}/{key}"] = t.contiguous().clone()
        cases.append({"name": name, "rule": rule, "hyper": hyper, "clip_grad_norm": clip,
                      "trust_ratio_clamp": clamp, "state": names})
    meta = {"torch": torch.__version__, "sizes": SIZES, "cases": cases, "runs": RUNS}
    save_file(tensors, path, metadata={"nonfinite": json.dumps(meta)})


if __name__ == "__main__":
    main(sys.argv[1])
