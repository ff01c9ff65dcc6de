#!/usr/bin/env python3
"""Record the learning rate and momentum that torch.optim.lr_scheduler puts in
force at every optimizer step, for many schedule configurations, as JSON.

usage: python3 gen_schedules.py [OUT.json]   (default: schedules.json beside this file)

Each case: {"name", "optimizer": "sgd" | "adam", "lr", "momentum" (SGD's) or
"beta1" (Adam's betas[0]), "schedule" (the crate's JSON form: "kind" and the
torch keyword arguments, as `Schedule::from_json` reads it), "steps",
"lr_per_step", "momentum_per_step"}. Entry s is the value in force for
optimizer step s (0 = the first), read from param_groups[0] before
optimizer.step(); scheduler.step() follows each optimizer.step() but the
last, as PyTorch documents. Needs only `torch`.

Two forms beyond `Schedule::from_json`'s, for what JSON cannot carry:
- "lambda" (LambdaLR) and "multiplicative" (MultiplicativeLR) name their
  function in "lr_lambda", a key of LAMBDAS below; tests/schedule.rs has the
  same functions as Rust closures, with the same float operations;
- "plateau" (ReduceLROnPlateau) has "metrics", the metric it is stepped with
  after each optimizer step (as the golden cases have it); null is NaN.
"""
import json
import os
import sys
import warnings

import torch

S = torch.optim.lr_scheduler


# The functions of the "lambda" and "multiplicative" cases, by name: each
# uses only operations whose float result Rust's f64 reproduces exactly
# (Python's float ** int is C pow on two doubles, as f64::powf).
LAMBDAS = {
    "pow_0.95": lambda e: 0.95 ** e,
    "warmup_5": lambda e: (e + 1) / 5 if e < 5 else 1.0,
    "inverse": lambda e: 1.0 / (1.0 + 0.1 * e),
    "zero_then_one": lambda e: 0.0 if e < 2 else 1.0,
    "times_0.9_every_3": lambda e: 0.9 if e % 3 == 0 else 1.0,
    "shrinking": lambda e: 1.0 - 0.01 * e,
    "grow_1.05": lambda e: 1.05,
}


def make(spec, opt):
    kind = spec["kind"]
    kw = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "none":
        return S.LambdaLR(opt, lambda _: 1.0)
    if kind == "constant":
        return S.ConstantLR(opt, **kw)
    if kind == "polynomial":
        return S.PolynomialLR(opt, **kw)
    if kind == "cosine_warm_restarts":
        return S.CosineAnnealingWarmRestarts(opt, **kw)
    if kind == "lambda":
        return S.LambdaLR(opt, LAMBDAS[kw["lr_lambda"]])
    if kind == "multiplicative":
        return S.MultiplicativeLR(opt, LAMBDAS[kw["lr_lambda"]])
    if kind == "plateau":
        kw.pop("metrics")
        return S.ReduceLROnPlateau(opt, **kw)
    if kind == "chained":
        return S.ChainedScheduler([make(s, opt) for s in kw["schedulers"]], optimizer=opt)
    if kind == "step":
        return S.StepLR(opt, **kw)
    if kind in ("multi_step", "multistep"):
        return S.MultiStepLR(opt, **kw)
    if kind == "exponential":
        return S.ExponentialLR(opt, **kw)
    if kind == "cosine":
        return S.CosineAnnealingLR(opt, **kw)
    if kind == "linear":
        return S.LinearLR(opt, **kw)
    if kind == "warmup_cosine":
        w = S.LinearLR(opt, start_factor=kw["start_factor"], total_iters=kw["warmup_steps"])
        c = S.CosineAnnealingLR(opt, T_max=kw["T_max"], eta_min=kw.get("eta_min", 0.0))
        return S.SequentialLR(opt, [w, c], milestones=[kw["warmup_steps"]])
    if kind == "sequential":
        subs = [make(s, opt) for s in kw.get("schedulers", kw.get("schedules"))]
        return S.SequentialLR(opt, subs, milestones=kw["milestones"])
    if kind == "cyclic":
        return S.CyclicLR(opt, **kw)
    if kind == "one_cycle":
        return S.OneCycleLR(opt, **kw)
    raise ValueError(kind)


def run(case):
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    if case["optimizer"] == "sgd":
        opt = torch.optim.SGD([p], lr=case["lr"], momentum=case["momentum"])
    else:
        opt = torch.optim.Adam([p], lr=case["lr"], betas=(case["beta1"], 0.999))
    sched = make(case["schedule"], opt)
    lrs, moms = [], []
    for s in range(case["steps"]):
        g = opt.param_groups[0]
        lrs.append(float(g["lr"]))
        moms.append(float(g["betas"][0] if "betas" in g else g["momentum"]))
        p.grad = torch.ones_like(p)
        opt.step()
        if s + 1 < case["steps"]:  # (OneCycleLR with pct_start=1 divides by zero one step past its end)
            if case["schedule"]["kind"] == "plateau":
                m = case["schedule"]["metrics"][s]
                sched.step(float("nan") if m is None else m)
            else:
                sched.step()
    return dict(case, lr_per_step=lrs, momentum_per_step=moms)


def sgd(name, schedule, steps, lr=0.1, momentum=0.9):
    return {"name": name, "optimizer": "sgd", "lr": lr, "momentum": momentum,
            "schedule": schedule, "steps": steps}


def adam(name, schedule, steps, lr=0.001, beta1=0.9):
    return {"name": name, "optimizer": "adam", "lr": lr, "beta1": beta1,
            "schedule": schedule, "steps": steps}


LIN = lambda sf, ef, n: {"kind": "linear", "start_factor": sf, "end_factor": ef, "total_iters": n}
COS = lambda t, eta: {"kind": "cosine", "T_max": t, "eta_min": eta}
CONST = lambda f, n: {"kind": "constant", "factor": f, "total_iters": n}
POLY = lambda n, p: {"kind": "polynomial", "total_iters": n, "power": p}
WARM = lambda t0, tm, eta: {"kind": "cosine_warm_restarts", "T_0": t0, "T_mult": tm, "eta_min": eta}
LAMBDA = lambda name: {"kind": "lambda", "lr_lambda": name}
MULT = lambda name: {"kind": "multiplicative", "lr_lambda": name}
EXP = lambda g: {"kind": "exponential", "gamma": g}


def plateau(metrics, **kw):
    return dict({"kind": "plateau"}, **kw, metrics=metrics)


# A loss that falls, flattens, wobbles and rises: reductions, patience,
# cooldown and the threshold all come into play.
LOSS = [round(2.0 * 0.93 ** s + 0.05 * ((s * 7) % 5) / 5 + (0.004 * (s - 40) if s > 40 else 0.0), 6)
        for s in range(80)]
ACC = [round(0.5 + 0.4 * (1 - 0.9 ** s) - 0.02 * ((s * 3) % 4) / 4, 6) for s in range(60)]

CASES = [
    sgd("none", {"kind": "none"}, 20),
    # StepLR
    sgd("step_7_0.3", {"kind": "step", "step_size": 7, "gamma": 0.3}, 60),
    sgd("step_1_0.9", {"kind": "step", "step_size": 1, "gamma": 0.9}, 120, lr=0.05),
    adam("step_default_gamma", {"kind": "step", "step_size": 10}, 45),
    # MultiStepLR (a repeated milestone decays twice; milestone 0 hits step 0)
    sgd("multi_step_dup", {"kind": "multi_step", "milestones": [5, 12, 12, 30], "gamma": 0.5}, 50),
    sgd("multi_step_zero", {"kind": "multi_step", "milestones": [0, 3], "gamma": 0.1}, 10),
    adam("multi_step_default_gamma", {"kind": "multi_step", "milestones": [2, 9, 17]}, 25),
    # ExponentialLR
    sgd("exponential_0.97", {"kind": "exponential", "gamma": 0.97}, 600, lr=0.3),
    adam("exponential_1.001", {"kind": "exponential", "gamma": 1.001}, 200),
    # CosineAnnealingLR, well past T_max (the recursive form goes back up)
    sgd("cosine_10_eta", COS(10, 0.001), 65),
    sgd("cosine_7_zero", COS(7, 0.0), 40),
    sgd("cosine_1", COS(1, 0.01), 9),
    sgd("cosine_eta_above_base", COS(6, 0.2), 30),
    adam("cosine_1000_long", COS(1000, 1e-6), 3100, lr=0.002),
    adam("cosine_333", COS(333, 0.0), 1400, lr=0.004),
    # LinearLR
    sgd("linear_warmup", LIN(0.1, 1.0, 10), 30),
    sgd("linear_decay_to_zero", LIN(1.0, 0.0, 20), 30),
    adam("linear_partial", LIN(0.5, 0.25, 4), 12),
    adam("linear_defaults", {"kind": "linear"}, 10),
    adam("linear_long", LIN(0.001, 1.0, 500), 520),
    # SequentialLR
    adam("warmup_cosine", {"kind": "warmup_cosine", "start_factor": 0.1, "warmup_steps": 8,
                           "T_max": 32, "eta_min": 1e-5}, 40, lr=0.002),
    adam("seq_linear_cosine_past_tmax",
         {"kind": "sequential", "schedules": [LIN(0.01, 1.0, 5), COS(12, 3e-4)], "milestones": [5]}, 45),
    sgd("seq_linear_step_exponential",
        {"kind": "sequential", "schedules": [LIN(0.2, 1.0, 5), {"kind": "step", "step_size": 4, "gamma": 0.5},
                                             {"kind": "exponential", "gamma": 0.9}], "milestones": [5, 25]}, 50),
    sgd("seq_constant_cosine",
        {"kind": "sequential", "schedules": [{"kind": "none"}, COS(20, 0.0)], "milestones": [10]}, 40),
    adam("seq_cosine_first",
         {"kind": "sequential", "schedules": [COS(10, 1e-4), LIN(0.5, 1.0, 6)], "milestones": [7]}, 25),
    sgd("seq_four",
        {"kind": "sequential",
         "schedules": [{"kind": "exponential", "gamma": 1.05},
                       {"kind": "multi_step", "milestones": [0, 4, 4, 9], "gamma": 0.7},
                       COS(8, 0.002), LIN(0.3, 0.9, 3)],
         "milestones": [6, 20, 35]}, 50),
    sgd("seq_early_milestone_linear",
        {"kind": "sequential", "schedules": [LIN(0.1, 1.0, 10), COS(15, 0.0)], "milestones": [4]}, 30),
    adam("seq_milestone_zero",
         {"kind": "sequential", "schedules": [{"kind": "exponential", "gamma": 0.5}, COS(10, 1e-3)],
          "milestones": [0]}, 30, lr=0.07),
    sgd("seq_milestone_zero_three",
        {"kind": "sequential", "schedules": [LIN(0.5, 1.0, 3), COS(9, 0.01), LIN(0.1, 1.0, 4)],
         "milestones": [0, 12]}, 30),
    # CyclicLR
    sgd("cyclic_triangular_momentum",
        {"kind": "cyclic", "base_lr": 0.001, "max_lr": 0.05, "step_size_up": 5}, 45),
    sgd("cyclic_triangular2_six_cycles",
        {"kind": "cyclic", "base_lr": 0.002, "max_lr": 0.1, "step_size_up": 3, "step_size_down": 5,
         "mode": "triangular2", "base_momentum": 0.85, "max_momentum": 0.95}, 52),
    adam("cyclic_triangular2_adam",
         {"kind": "cyclic", "base_lr": 1e-4, "max_lr": 1e-3, "step_size_up": 4, "mode": "triangular2"}, 40),
    adam("cyclic_exp_range_adam",
         {"kind": "cyclic", "base_lr": 5e-4, "max_lr": 5e-3, "step_size_up": 4, "step_size_down": 2,
          "mode": "exp_range", "gamma": 0.99}, 60),
    sgd("cyclic_exp_range_no_momentum",
        {"kind": "cyclic", "base_lr": 0.01, "max_lr": 0.2, "step_size_up": 7, "mode": "exp_range",
         "gamma": 0.95, "cycle_momentum": False}, 50),
    sgd("cyclic_step1",
        {"kind": "cyclic", "base_lr": 0.01, "max_lr": 0.02, "step_size_up": 1, "step_size_down": 1}, 12),
    adam("cyclic_long_down",
         {"kind": "cyclic", "base_lr": 0.0, "max_lr": 0.01, "step_size_up": 2, "step_size_down": 11,
          "base_momentum": 0.7, "max_momentum": 0.99}, 40),
    # OneCycleLR
    sgd("one_cycle_defaults", {"kind": "one_cycle", "max_lr": 0.1, "total_steps": 100}, 100),
    adam("one_cycle_linear", {"kind": "one_cycle", "max_lr": 0.01, "total_steps": 50,
                              "anneal_strategy": "linear"}, 50),
    sgd("one_cycle_three_phase", {"kind": "one_cycle", "max_lr": 0.5, "total_steps": 60,
                                  "three_phase": True}, 60),
    adam("one_cycle_three_phase_linear", {"kind": "one_cycle", "max_lr": 0.003, "total_steps": 33,
                                          "pct_start": 0.25, "anneal_strategy": "linear",
                                          "three_phase": True, "base_momentum": 0.8,
                                          "max_momentum": 0.9}, 33),
    adam("one_cycle_no_momentum", {"kind": "one_cycle", "max_lr": 0.01, "total_steps": 40,
                                   "cycle_momentum": False, "div_factor": 10.0,
                                   "final_div_factor": 100.0, "pct_start": 0.45}, 40, beta1=0.8),
    sgd("one_cycle_pct0", {"kind": "one_cycle", "max_lr": 0.2, "total_steps": 20, "pct_start": 0.0}, 20),
    sgd("one_cycle_pct1", {"kind": "one_cycle", "max_lr": 0.2, "total_steps": 10, "pct_start": 1.0}, 10),
    adam("one_cycle_one_step", {"kind": "one_cycle", "max_lr": 0.01, "total_steps": 1}, 1),
    adam("one_cycle_long", {"kind": "one_cycle", "max_lr": 0.004, "total_steps": 2000,
                            "pct_start": 0.1}, 2000),
    # ConstantLR
    sgd("constant_defaults", {"kind": "constant"}, 12),
    sgd("constant_half_10", CONST(0.5, 10), 25),
    adam("constant_one", CONST(1.0, 3), 8),
    adam("constant_tenth_1", CONST(0.1, 1), 6, lr=0.003),
    # PolynomialLR
    sgd("polynomial_defaults", {"kind": "polynomial"}, 12),
    adam("polynomial_40_2", POLY(40, 2.0), 50, lr=0.003),
    sgd("polynomial_sqrt", POLY(10, 0.5), 15),
    sgd("polynomial_power_0", POLY(6, 0.0), 10),
    adam("polynomial_cubic_long", POLY(300, 3.0), 320),
    # CosineAnnealingWarmRestarts
    sgd("warm_restarts_7_2", WARM(7, 2, 0.001), 60, lr=0.05),
    sgd("warm_restarts_5_1", WARM(5, 1, 0.0), 30),
    adam("warm_restarts_1_3", WARM(1, 3, 1e-5), 45),
    adam("warm_restarts_defaults", {"kind": "cosine_warm_restarts", "T_0": 10}, 35),
    sgd("warm_restarts_eta_above_base", WARM(4, 2, 0.3), 30),
    # LambdaLR and MultiplicativeLR
    sgd("lambda_pow", LAMBDA("pow_0.95"), 40),
    adam("lambda_warmup", LAMBDA("warmup_5"), 12),
    sgd("lambda_inverse", LAMBDA("inverse"), 30),
    sgd("lambda_zero_then_one", LAMBDA("zero_then_one"), 6),
    sgd("multiplicative_every_3", MULT("times_0.9_every_3"), 30),
    adam("multiplicative_shrinking", MULT("shrinking"), 60),
    # ChainedScheduler: each scheduler's step works on the lr the one
    # before it left, in the list's order
    adam("chained_constant_multistep",
         {"kind": "chained", "schedulers": [CONST(0.5, 10),
                                            {"kind": "multistep", "milestones": [20, 35], "gamma": 0.3}]},
         50, lr=0.002),
    sgd("chained_linear_exponential", {"kind": "chained", "schedulers": [LIN(0.1, 1.0, 5), EXP(0.97)]}, 40),
    sgd("chained_exponential_cosine", {"kind": "chained", "schedulers": [EXP(0.99), COS(10, 0.001)]}, 45),
    adam("chained_warm_restarts_then_constant",
         {"kind": "chained", "schedulers": [WARM(6, 1, 0.0), CONST(0.25, 8)]}, 25),
    adam("chained_constant_then_warm_restarts",
         {"kind": "chained", "schedulers": [CONST(0.25, 8), WARM(6, 1, 0.0)]}, 25),
    sgd("chained_multiplicative_step_poly",
        {"kind": "chained", "schedulers": [MULT("grow_1.05"), {"kind": "step", "step_size": 4, "gamma": 0.5},
                                           POLY(30, 1.5)]}, 35),
    sgd("chained_lambda_exponential", {"kind": "chained", "schedulers": [EXP(0.9), LAMBDA("warmup_5")]}, 12),
    sgd("chained_nested",
        {"kind": "chained", "schedulers": [{"kind": "chained", "schedulers": [CONST(0.5, 3), EXP(0.95)]},
                                           LIN(0.2, 1.0, 6)]}, 20),
    adam("chained_one", {"kind": "chained", "schedulers": [POLY(8, 2.0)]}, 12),
    # SequentialLR with the kinds above
    sgd("seq_constant_polynomial",
        {"kind": "sequential", "schedulers": [CONST(0.1, 3), POLY(20, 2.0)], "milestones": [5]}, 30),
    adam("seq_linear_warm_restarts",
         {"kind": "sequential", "schedulers": [LIN(0.01, 1.0, 5), WARM(8, 2, 1e-5)], "milestones": [5]}, 50),
    sgd("seq_exponential_multiplicative",
        {"kind": "sequential", "schedulers": [EXP(0.8), MULT("times_0.9_every_3")], "milestones": [6]}, 25),
    sgd("seq_lambda_constant",
        {"kind": "sequential", "schedulers": [LAMBDA("warmup_5"), CONST(0.5, 4), LAMBDA("inverse")],
         "milestones": [5, 15]}, 30),
    adam("seq_milestone_zero_polynomial",
         {"kind": "sequential", "schedulers": [CONST(0.5, 2), POLY(10, 1.0)], "milestones": [0]}, 15),
    # ReduceLROnPlateau, stepped with a metric
    sgd("plateau_defaults", plateau(LOSS), 80),
    sgd("plateau_min_rel", plateau(LOSS, mode="min", factor=0.5, patience=3, threshold=0.01,
                                   cooldown=2, min_lr=0.001), 80),
    adam("plateau_min_abs_patience_0",
         plateau(LOSS, factor=0.7, patience=0, threshold=0.005, threshold_mode="abs"), 80, lr=0.01),
    sgd("plateau_max_rel", plateau(ACC, mode="max", factor=0.3, patience=2, threshold=0.002), 60),
    sgd("plateau_max_abs_cooldown",
        plateau(ACC, mode="max", factor=0.5, patience=1, threshold=0.01, threshold_mode="abs", cooldown=4), 60),
    adam("plateau_min_lr_clamp", plateau(LOSS, factor=0.1, patience=1, min_lr=2e-5), 80),
    adam("plateau_eps_stops", plateau(LOSS, factor=0.5, patience=0, eps=3e-5), 80, lr=0.001),
    sgd("plateau_nan",
        plateau([1.0, 0.9, None, None, 0.8, None, None, None, 0.85, 0.7, None, 0.69, 0.6, 0.6, 0.6, 0.6],
                factor=0.5, patience=1), 16),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules.json")
    warnings.simplefilter("ignore")
    cases = [run(c) for c in CASES]
    with open(out, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
