//! What the rules do, beyond matching each other:
//!
//! (a) every rule lowers the loss of an elongated quadratic and of
//!     Rosenbrock's function, on the CPU and the GPU;
//! (b) zero gradients without weight decay leave every parameter bit for
//!     bit as it was;
//! (c) PyTorch's momentum with the learning rate kept out of the buffer
//!     (`b ← γb + g; θ ← θ − ηb`) and the textbook velocity
//!     (`v ← γv + ηg; θ ← θ − v`) agree while the learning rate is
//!     constant and part ways when it changes; PyTorch's Nesterov form is
//!     the textbook look-ahead Nesterov under a change of variables;
//! (d) `from_buffers` steps the caller's buffers in place and touches no
//!     byte beyond the layout;
//! (e) Rprop's `lr` is its initial step size: the one in force at the
//!     first step counts, later changes do nothing, as in torch.
//!
//! Needs a GPU adapter: without one the GPU tests fail with
//! [`wgpu_optim::Error::NoAdapter`]'s text, which says what to install.

mod common;
use common::{cases, ctx, params_flat, Backend, Envelope, Rng};
use wgpu_optim::{
    Config, CpuOptimizer, GpuContext, GpuOptimizer, GpuOptions, Optimizer, Rprop, Sgd,
};

const EPS: f64 = f32::EPSILON as f64;

/// An optimizer of `config` on `backend` (tests that run on both talk to
/// it through [`Optimizer`]).
fn new(backend: &Backend, config: impl Into<Config>, params: &[&[f32]]) -> Box<dyn Optimizer> {
    backend.build(config, params).unwrap()
}

/// The CPU and the GPU (default options).
fn backends() -> [Backend; 2] {
    Backend::both(GpuOptions::default())
}

// ---------------------------------------------------------------------------
// (a) Every rule lowers the loss.

/// f(x, y) = x² + 10y²: minimum 0 at the origin, curvatures 2 and 20
/// (condition number 10).
fn quadratic(p: &[f32]) -> (f64, [f32; 2]) {
    let (x, y) = (p[0] as f64, p[1] as f64);
    (x * x + 10.0 * y * y, [(2.0 * x) as f32, (20.0 * y) as f32])
}

/// Rosenbrock's f(x, y) = (1 − x)² + 100(y − x²)²: minimum 0 at (1, 1) at
/// the end of a long curved valley.
fn rosenbrock(p: &[f32]) -> (f64, [f32; 2]) {
    let (x, y) = (p[0] as f64, p[1] as f64);
    let r = y - x * x;
    (
        (1.0 - x).powi(2) + 100.0 * r * r,
        [
            (-2.0 * (1.0 - x) - 400.0 * x * r) as f32,
            (200.0 * r) as f32,
        ],
    )
}

/// Each rule with a learning rate suited to each problem, from the table
/// (tests/common/cases.rs, `descent`): (name, config on the quadratic,
/// config on Rosenbrock). On Rosenbrock the curvature at the start
/// (−1.5, 2) is about 1900, so plain SGD needs lr < 2/1900 ≈ 1e-3.
fn descent_configs() -> Vec<(&'static str, Config, Config)> {
    cases::table().into_iter().flat_map(|r| r.descent).collect()
}

type Problem = fn(&[f32]) -> (f64, [f32; 2]);

/// Runs `steps` steps from `start`, the gradient computed on the host from
/// the parameters read back each step; returns the loss at the start, half
/// way and at the end.
fn descend(opt: &mut dyn Optimizer, f: Problem, steps: usize) -> (f64, f64, f64) {
    let mut p = params_flat(&*opt);
    let f0 = f(&p).0;
    let mut half = f64::NAN;
    for s in 0..steps {
        if s == steps / 2 {
            half = f(&p).0;
        }
        let (_, g) = f(&p);
        opt.step(&[&g]).unwrap();
        p = params_flat(&*opt);
    }
    (f0, half, f(&p).0)
}

/// Thresholds:
///
/// * quadratic, from (3, 1), f0 = 19, 300 steps: f ≤ f0/100. Gradient
///   descent contracts each coordinate by |1 − 2ηλ| per step, so 300 steps
///   of any of the stable learning rates here leave far less; the adaptive
///   rules with a constant learning rate end up hovering within about `lr`
///   of the minimum, f ≈ 11·lr² ≤ 0.03 = f0/600 for lr = 0.05.
/// * Rosenbrock, from (−1.5, 2), f0 = 12.5, 1000 steps: f < f0/2 = 6.25.
///   Half of f0 is the valley term 100(y − x²)² and half is (1 − x)²; going
///   below 6.25 needs both reaching the valley and moving along it towards
///   (1, 1), which is the slow part (plain SGD, held back to lr = 5e-4 by
///   the curvature of the valley's walls, gets to about 4.5). And the loss
///   must still be falling: f(end) < f(half way).
#[test]
fn every_rule_lowers_the_loss() {
    let mut lines = Vec::new();
    for backend in backends() {
        for (name, on_quadratic, on_rosenbrock) in descent_configs() {
            let mut opt = new(&backend, on_quadratic, &[&[3.0, 1.0]]);
            let (f0, _, end) = descend(&mut *opt, quadratic, 300);
            assert_eq!(f0, 19.0);
            assert!(
                end <= f0 / 100.0,
                "{name} ({}) on the quadratic: {f0} -> {end}",
                backend.name()
            );
            let mut opt = new(&backend, on_rosenbrock, &[&[-1.5, 2.0]]);
            let (r0, half, rend) = descend(&mut *opt, rosenbrock, 1000);
            assert!((r0 - 12.5).abs() < 1e-9);
            assert!(
                rend < r0 / 2.0 && rend < half,
                "{name} ({}) on Rosenbrock: {r0} -> {half} (half way) -> {rend}",
                backend.name()
            );
            lines.push(format!(
                "{name:>13} {:>3}: quadratic 19 -> {end:.2e}, rosenbrock 12.5 -> {half:.3} -> {rend:.3}",
                backend.name()
            ));
        }
    }
    println!("{}", lines.join("\n"));
}

// ---------------------------------------------------------------------------
// (b) Zero gradients.

/// With zero gradients and no weight decay every rule's update is an exact
/// zero: SGD's and the momentum's `lr·0`, Adagrad's and RMSprop's
/// `0 / (sqrt(0 or init) + eps)` (eps > 0), Adam's and NAdam's
/// `0 / (0 + eps)`, ASGD's `η·0` (its `θ·(1 − λ·η)` is `θ·1` only without
/// `lambd`, which counts as decay here); and `θ − 0 = θ` exactly. So the parameters stay bit for bit (all of them
/// normal numbers or +0 here: `maximize` negates the zero, and
/// `−0 − (−0)` would be +0).
#[test]
fn zero_gradients_leave_parameters_bit_for_bit() {
    // Every configuration of the table without weight decay (torch's
    // `weight_decay` 0, and ASGD's `lambd`, which decays θ by `1 − λ·η`;
    // a rule without the option counts as 0).
    let mut configs: Vec<Config> = Vec::new();
    for input in cases::inputs() {
        let h = cases::hyperparameters(&input.config);
        let decays = ["weight_decay", "lambd"]
            .iter()
            .any(|k| h.get(*k).is_some_and(|w| w.as_f64() != Some(0.0)));
        if !decays && !configs.contains(&input.config) {
            configs.push(input.config);
        }
    }
    let mut rng = Rng(5);
    let mut a = rng.vec(67);
    a[0] = 0.0;
    a[1] = 1e30;
    a[2] = -1e-30;
    a[3] = f32::MAX;
    a[4] = f32::MIN_POSITIVE;
    let b = rng.vec(130);
    let zeros_a = vec![0.0f32; a.len()];
    let zeros_b = vec![0.0f32; b.len()];
    let before: Vec<u32> = a.iter().chain(&b).map(|v| v.to_bits()).collect();
    for config in configs {
        for backend in backends() {
            let mut opt = new(&backend, config.clone(), &[&a, &b]);
            for step in 0..10 {
                if step == 5 {
                    opt.set_lr(1.0).unwrap();
                }
                opt.step(&[&zeros_a, &zeros_b]).unwrap();
            }
            let after: Vec<u32> = params_flat(&*opt).iter().map(|v| v.to_bits()).collect();
            assert!(
                after == before,
                "{:?} ({}) moved a parameter on zero gradients",
                config,
                backend.name()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// (c) Momentum forms.

/// Heavy ball. PyTorch (and `Sgd { momentum: γ, .. }`, dampening 0):
///
/// ```text
/// b₁ = g₀,  b_{t+1} = γ b_t + g_t,  θ_{t+1} = θ_t − η_t b_{t+1}
/// ```
///
/// Textbook velocity (Sutskever et al. 2013, Polyak):
///
/// ```text
/// v₀ = 0,   v_{t+1} = γ v_t + η_t g_t,  θ_{t+1} = θ_t − v_{t+1}
/// ```
///
/// With η constant, v_t = η b_t for all t by induction (v₁ = η g₀ = η b₁;
/// v_{t+1} = γ η b_t + η g_t = η b_{t+1}), so the parameters agree. When η
/// changes to η' before step k, PyTorch's very next step moves by
/// η' b_{k+1} = η'(γ b_k + g_k): the whole accumulated momentum is rescaled
/// at once. The textbook moves by γ v_k + η' g_k = γ η b_k + η' g_k: past
/// gradients keep the learning rate they were taken with, and the new rate
/// only reaches the velocity gradually. The two differ by (η' − η)·γ·b_k at
/// that step and by an amount that decays like γ^j for the steps after, so
/// the parameters part ways for good.
///
/// The gradients come from the generator (they do not depend on θ), so the
/// only differences are rounding. The optimizer rounds γ and η to f32 once;
/// the f64 loops below use the same rounded constants, so what is left is
/// f32 arithmetic against f64 arithmetic of the same recurrence. Per step
/// the optimizer rounds `γb`, `γb + g` (each ≤ ε/2 relative, so ≤ ε·B on b
/// with B = max|b|), `η·b` and `θ − ηb` (≤ ε/2·ηB + ε/2·Θ, Θ = max|θ|). An
/// error in b decays by γ per step, so b's accumulated error stays below
/// ε·B/(1 − γ), and it reaches θ multiplied by η each step. Over T steps:
///
/// ```text
/// |θ_f32 − θ_f64| ≤ T·ε·(Θ/2 + η·B·(1/2 + 1/(1 − γ))) ≤ T·ε·(Θ + η·B·(1 + 1/(1 − γ)))
/// ```
///
/// (The GPU may fuse `γb + g` or `θ − ηb` into one rounding: that only
/// removes terms.)
#[test]
fn folded_learning_rate_momentum_matches_the_textbook_velocity() {
    const N: usize = 64;
    const T: usize = 60;
    const CHANGE: usize = 30;
    let gamma = 0.9f32 as f64;
    let lr = 0.01f32 as f64;
    let lr2 = 0.05f32 as f64;
    let mut rng = Rng(11);
    let theta0 = rng.vec(N);
    let grads: Vec<Vec<f32>> = (0..T).map(|_| rng.vec(N)).collect();

    // η_t: constant, or changed to lr2 from step CHANGE on.
    for changed in [false, true] {
        let eta = |t: usize| if changed && t >= CHANGE { lr2 } else { lr };
        // The textbook loop and PyTorch's form, both in f64.
        let mut tb_theta: Vec<f64> = theta0.iter().map(|&v| v as f64).collect();
        let mut tb_v = vec![0.0f64; N];
        let mut pt_theta = tb_theta.clone();
        let mut pt_b = vec![0.0f64; N];
        let mut textbook = Vec::new();
        let mut pytorch = Vec::new();
        let (mut theta_max, mut b_max) = (0.0f64, 0.0f64);
        for (t, g) in grads.iter().enumerate() {
            for i in 0..N {
                let g = g[i] as f64;
                tb_v[i] = gamma * tb_v[i] + eta(t) * g;
                tb_theta[i] -= tb_v[i];
                pt_b[i] = if t == 0 { g } else { gamma * pt_b[i] + g };
                pt_theta[i] -= eta(t) * pt_b[i];
                theta_max = theta_max.max(pt_theta[i].abs()).max(tb_theta[i].abs());
                b_max = b_max.max(pt_b[i].abs()).max(tb_v[i].abs() / eta(t));
            }
            textbook.push(tb_theta.clone());
            pytorch.push(pt_theta.clone());
        }
        let tol = |steps: usize| {
            steps as f64 * EPS * (theta_max + lr.max(lr2) * b_max * (1.0 + 1.0 / (1.0 - gamma)))
        };

        for backend in backends() {
            let mut opt = new(
                &backend,
                Sgd {
                    lr,
                    momentum: gamma,
                    ..Sgd::default()
                },
                &[&theta0],
            );
            let (mut worst_pt, mut worst_tb_before, mut worst_tb_after) = (0.0f64, 0.0f64, 0.0f64);
            for (t, g) in grads.iter().enumerate() {
                if changed && t == CHANGE {
                    opt.set_lr(lr2).unwrap();
                }
                opt.step(&[g]).unwrap();
                let p = params_flat(&*opt);
                let dist = |reference: &[f64]| {
                    p.iter()
                        .zip(reference)
                        .map(|(&a, &b)| (a as f64 - b).abs())
                        .fold(0.0, f64::max)
                };
                let (d_pt, d_tb) = (dist(&pytorch[t]), dist(&textbook[t]));
                // Our optimizer is PyTorch's form, learning rate change or not.
                assert!(
                    d_pt <= tol(t + 1),
                    "{} step {t}: {d_pt:e} from PyTorch's form > {:e}",
                    backend.name(),
                    tol(t + 1)
                );
                worst_pt = worst_pt.max(d_pt / tol(t + 1));
                if changed && t >= CHANGE {
                    worst_tb_after = worst_tb_after.max(d_tb);
                } else {
                    // The textbook velocity agrees while the rate is constant.
                    assert!(
                        d_tb <= tol(t + 1),
                        "{} step {t}: {d_tb:e} from the textbook velocity > {:e}",
                        backend.name(),
                        tol(t + 1)
                    );
                    worst_tb_before = worst_tb_before.max(d_tb / tol(t + 1));
                }
            }
            if changed {
                // After the change the forms differ by far more than rounding.
                assert!(
                    worst_tb_after > 1000.0 * tol(T),
                    "{}: the forms should differ after the lr change, max {worst_tb_after:e} vs tolerance {:e}",
                    backend.name(),
                    tol(T)
                );
                println!(
                    "heavy ball ({}), lr {} -> {} at step {CHANGE}: distance to PyTorch's form at most \
                     {worst_pt:.3}x the tolerance; to the textbook velocity at most {worst_tb_before:.3}x \
                     before the change, then {worst_tb_after:.2e} ({:.0}x the tolerance {:.2e})",
                    backend.name(),
                    lr as f32,
                    lr2 as f32,
                    worst_tb_after / tol(T),
                    tol(T)
                );
            } else {
                println!(
                    "heavy ball ({}), constant lr: distance to the textbook velocity at most {:.3}x the tolerance",
                    backend.name(),
                    worst_tb_before.max(worst_pt)
                );
            }
        }
    }
}

/// Nesterov. PyTorch's form (`Sgd { nesterov: true, .. }`), with p its
/// parameters:
///
/// ```text
/// g_t = ∇f(p_t),  b_{t+1} = γ b_t + g_t (b₁ = g₀),  p_{t+1} = p_t − η(g_t + γ b_{t+1})
/// ```
///
/// Textbook Nesterov (Sutskever et al. 2013), in the same units as the
/// buffer (v = η b), with the gradient taken at the look-ahead point:
///
/// ```text
/// b_{t+1} = γ b_t + ∇f(θ_t − ηγ b_t),  θ_{t+1} = θ_t − η b_{t+1},  b₀ = 0
/// ```
///
/// Change of variables: φ_t = θ_t − ηγ b_t, the look-ahead point. Then
/// g_t = ∇f(φ_t) and
///
/// ```text
/// φ_{t+1} = θ_{t+1} − ηγ b_{t+1}
///         = θ_t − η b_{t+1} − ηγ b_{t+1}
///         = φ_t + ηγ b_t − η b_{t+1} − ηγ b_{t+1}
///         = φ_t + ηγ b_t − η(γ b_t + g_t) − ηγ b_{t+1}
///         = φ_t − η(g_t + γ b_{t+1}),
/// ```
///
/// which is PyTorch's update with p = φ, and φ₀ = θ₀ because b₀ = 0 (and
/// b₁ = γ·0 + g₀ = g₀ is PyTorch's first fill). So for constant η and γ,
/// PyTorch's parameters are exactly the textbook's look-ahead points, for
/// any f (not only quadratics). The test checks the identity in f64 on
/// Rosenbrock's function (rounding only, ~1e-12), then our CPU and GPU
/// optimizers against the f64 textbook on the quadratic.
///
/// Tolerance on the quadratic: here the gradient depends on the
/// parameters, so a rounding difference is fed back. Per coordinate of
/// curvature h the exact iteration is linear in (p, b):
/// b' = γb + hp, p' = p − η(hp + γb'), i.e. the matrix
/// M = [[1 − ηh(1 + γ), −ηγ²], [h, γ]]. Each step the f32 arithmetic
/// (the host's `h·p`, then `γb`, `+`, `γb'`, `+`, `η·`, `−`, each off by at
/// most half an ULP of a value bounded by P, B or G, the largest |p|, |b|,
/// |g| of the run) adds at most δ = 2ε·(P + B + G) to (p, b) in max-norm;
/// M carries an error made k steps ago
/// forward multiplied by at most ‖M^k‖∞. So after T steps
/// |p_f32 − φ_f64| ≤ δ·Σ_{k<T} ‖M^k‖∞, computed below.
#[test]
fn pytorch_nesterov_is_textbook_nesterov_at_the_look_ahead_point() {
    let gamma = 0.9f32 as f64;
    let eta = 0.01f32 as f64;
    const T: usize = 80;

    // The textbook in f64; returns the look-ahead points φ_t (t = 1..=T)
    // and the largest |b|, |g| seen.
    let textbook = |grad: &dyn Fn(f64, f64) -> (f64, f64), eta: f64, start: (f64, f64)| {
        let (mut th, mut b) = ([start.0, start.1], [0.0f64; 2]);
        let (mut b_max, mut g_max) = (0.0f64, 0.0f64);
        let mut phis = Vec::new();
        for _ in 0..T {
            let look = [th[0] - eta * gamma * b[0], th[1] - eta * gamma * b[1]];
            let g = grad(look[0], look[1]);
            let g = [g.0, g.1];
            for i in 0..2 {
                b[i] = gamma * b[i] + g[i];
                th[i] -= eta * b[i];
                b_max = b_max.max(b[i].abs());
                g_max = g_max.max(g[i].abs());
            }
            phis.push([th[0] - eta * gamma * b[0], th[1] - eta * gamma * b[1]]);
        }
        (phis, b_max, g_max)
    };
    // PyTorch's form in f64.
    let pytorch = |grad: &dyn Fn(f64, f64) -> (f64, f64), eta: f64, start: (f64, f64)| {
        let (mut p, mut b) = ([start.0, start.1], [0.0f64; 2]);
        let mut out = Vec::new();
        for t in 0..T {
            let g = grad(p[0], p[1]);
            let g = [g.0, g.1];
            for i in 0..2 {
                b[i] = if t == 0 { g[i] } else { gamma * b[i] + g[i] };
                p[i] -= eta * (g[i] + gamma * b[i]);
            }
            out.push(p);
        }
        out
    };

    // The identity itself, on a function that is not quadratic (with a
    // learning rate below 2/curvature there). Only f64 rounding separates
    // the two: ~T·10 operations on values of order 10, well below 1e-9.
    let rosen = |x: f64, y: f64| {
        let r = y - x * x;
        (-2.0 * (1.0 - x) - 400.0 * x * r, 200.0 * r)
    };
    let (phis, _, _) = textbook(&rosen, 2e-4, (-1.5, 2.0));
    let ps = pytorch(&rosen, 2e-4, (-1.5, 2.0));
    assert!(ps.iter().flatten().all(|v| v.is_finite()));
    assert!(
        (ps[T - 1][0] + 1.5).abs() > 0.1,
        "the Rosenbrock run should move: {:?}",
        ps[T - 1]
    );
    let identity_gap = phis
        .iter()
        .zip(&ps)
        .flat_map(|(a, b)| [(a[0] - b[0]).abs(), (a[1] - b[1]).abs()])
        .fold(0.0, f64::max);
    assert!(
        identity_gap < 1e-9,
        "PyTorch's Nesterov and the textbook's look-ahead points differ by {identity_gap:e} on Rosenbrock"
    );

    // Our optimizers against the textbook, on the quadratic.
    let quad = |x: f64, y: f64| (2.0 * x, 20.0 * y);
    let start = (3.0f32, 1.0f32);
    let (phis, b_max, g_max) = textbook(&quad, eta, (start.0 as f64, start.1 as f64));
    assert_eq!(
        pytorch(&quad, eta, (start.0 as f64, start.1 as f64)).len(),
        T
    );
    let p_max = phis
        .iter()
        .flat_map(|p| [p[0].abs(), p[1].abs()])
        .fold(3.0f64, f64::max);
    let amplification = [2.0f64, 20.0]
        .iter()
        .map(|&h| {
            let m = [
                [1.0 - eta * h * (1.0 + gamma), -eta * gamma * gamma],
                [h, gamma],
            ];
            let mut power = [[1.0f64, 0.0], [0.0, 1.0]];
            let mut sum = 0.0;
            for _ in 0..T {
                let row0: f64 = power[0][0].abs() + power[0][1].abs();
                sum += row0.max(power[1][0].abs() + power[1][1].abs());
                power = [
                    [
                        m[0][0] * power[0][0] + m[0][1] * power[1][0],
                        m[0][0] * power[0][1] + m[0][1] * power[1][1],
                    ],
                    [
                        m[1][0] * power[0][0] + m[1][1] * power[1][0],
                        m[1][0] * power[0][1] + m[1][1] * power[1][1],
                    ],
                ];
            }
            sum
        })
        .fold(0.0, f64::max);
    let delta = 2.0 * EPS * (p_max + b_max + g_max);
    let tol = delta * amplification;
    for backend in backends() {
        let mut opt = new(
            &backend,
            Sgd {
                lr: eta,
                momentum: gamma,
                nesterov: true,
                ..Sgd::default()
            },
            &[&[start.0, start.1]],
        );
        let mut worst = 0.0f64;
        for phi in &phis {
            let p = params_flat(&*opt);
            let (_, g) = quadratic(&p);
            opt.step(&[&g]).unwrap();
            let p = params_flat(&*opt);
            let d = (p[0] as f64 - phi[0])
                .abs()
                .max((p[1] as f64 - phi[1]).abs());
            worst = worst.max(d);
        }
        assert!(
            worst <= tol,
            "{}: Nesterov {worst:e} from the textbook look-ahead points > {tol:e}",
            backend.name()
        );
        println!(
            "nesterov ({}): {worst:.2e} from the textbook's look-ahead points over {T} steps \
             (tolerance {tol:.2e} = δ {delta:.2e} x amplification {amplification:.1}); \
             identity in f64 on Rosenbrock: {identity_gap:.1e}",
            backend.name()
        );
    }
}

// ---------------------------------------------------------------------------
// (d) The caller's buffers, in place.

fn read_back(ctx: &GpuContext, buf: &wgpu::Buffer) -> Vec<f32> {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size: buf.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    ctx.queue().submit(Some(enc.finish()));
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.wait().unwrap();
    let out = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    staging.unmap();
    out
}

/// A NaN with a payload: no arithmetic produces these bits, so finding
/// them unchanged means nothing wrote there.
const SENTINEL: u32 = 0x7FC0_BEEF;

#[test]
fn from_buffers_steps_the_callers_buffers_in_place() {
    let ctx = ctx();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    const STEPS: usize = 12;
    const EXTRA: usize = 37;
    // Every configuration of the table alone (no schedule, no clipping).
    let configs: Vec<Config> = cases::plain().into_iter().map(|i| i.config).collect();
    // 199 elements: the f32 kernel; 264: the vec4 kernel. Chunks of 64:
    // tensors straddle chunk boundaries.
    let layouts: [&[usize]; 2] = [&[5, 64, 130], &[4, 60, 200]];
    let mut rng = Rng(99);
    let mut checked = 0;
    for config in &configs {
        // The GPU-against-CPU bound of tests/gpu_vs_cpu.rs, `K` per rule.
        let (k_params, k_state) = cases::info(config.kind()).gpu_k;
        for lengths in layouts {
            let total: usize = lengths.iter().sum();
            let init = rng.vec(total);
            let bytes = ((total + EXTRA) * 4) as u64;
            let make = |label| {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let (params, grads) = (make("user params"), make("user grads"));
            let sentinel = vec![f32::from_bits(SENTINEL); EXTRA];
            let mut p_init = init.clone();
            p_init.extend_from_slice(&sentinel);
            ctx.queue()
                .write_buffer(&params, 0, bytemuck::cast_slice(&p_init));
            let mut g_init = vec![0.0f32; total];
            g_init.extend_from_slice(&sentinel);
            ctx.queue()
                .write_buffer(&grads, 0, bytemuck::cast_slice(&g_init));

            let mut opt = GpuOptimizer::from_buffers_with_options(
                ctx,
                config.clone(),
                lengths,
                params.clone(),
                grads.clone(),
                GpuOptions {
                    max_chunk_elements: Some(64),
                    ..GpuOptions::default()
                },
            )
            .unwrap();
            // LAMB's tile kernels take the width of the others (vec4 where
            // the total allows it): two tile passes per chunk and one for
            // the trust ratios.
            let lamb = matches!(config, Config::Lamb(_));
            assert_eq!(
                opt.vector_width(),
                if total.is_multiple_of(4) { 4 } else { 1 }
            );
            let chunks = total.div_ceil(64);
            assert_eq!(
                opt.dispatches_per_step(),
                if lamb { 2 * chunks + 1 } else { chunks }
            );
            assert!(opt.param_buffers() == vec![&params]);
            assert!(opt.grad_buffers() == vec![&grads]);

            let split = |flat: &[f32]| -> Vec<Vec<f32>> {
                let mut at = 0;
                lengths
                    .iter()
                    .map(|&n| {
                        at += n;
                        flat[at - n..at].to_vec()
                    })
                    .collect()
            };
            let init_tensors = split(&init);
            let refs: Vec<&[f32]> = init_tensors.iter().map(|t| t.as_slice()).collect();
            let mut cpu = CpuOptimizer::new(config.clone(), &refs).unwrap();
            let names = cpu.state_names().to_vec();
            let mut envelopes: Vec<Envelope> = std::iter::once(cpu.params_flat())
                .chain(names.iter().map(|n| cpu.state_flat(n).unwrap()))
                .map(Envelope::new)
                .collect();
            for step in 0..STEPS {
                let g = rng.vec(total);
                if step % 3 == 2 {
                    // Host gradients through the optimizer (write_grads into
                    // the caller's buffer, then the step).
                    let gt = split(&g);
                    let gr: Vec<&[f32]> = gt.iter().map(|t| t.as_slice()).collect();
                    opt.step(&gr).unwrap();
                } else {
                    // The caller writes the gradient buffer, as a backward
                    // pass would, and steps on the device.
                    ctx.queue()
                        .write_buffer(&grads, 0, bytemuck::cast_slice(&g));
                    opt.step_device().unwrap();
                }
                cpu.step_flat(&g).unwrap();
                envelopes[0].update(cpu.params_flat());
                for (k, n) in names.iter().enumerate() {
                    envelopes[k + 1].update(cpu.state_flat(n).unwrap());
                }
            }
            assert_eq!(opt.step_count(), STEPS as u64);

            let user_params = read_back(ctx, &params);
            let user_grads = read_back(ctx, &grads);
            assert_eq!(user_params.len(), total + EXTRA);
            // An element the CPU moved must have moved in the caller's
            // buffer.
            let mut moved = 0;
            for i in 0..total {
                let (gv, cv) = (user_params[i], cpu.params_flat()[i]);
                if cv.to_bits() != init[i].to_bits() {
                    moved += 1;
                    assert_ne!(
                        gv.to_bits(),
                        init[i].to_bits(),
                        "{:?} {lengths:?}: element {i} was not stepped in place",
                        config.kind()
                    );
                }
                let tol = STEPS as f64 * k_params * EPS * envelopes[0].scale(i);
                assert!(
                    (gv as f64 - cv as f64).abs() <= tol,
                    "{:?} {lengths:?}: element {i}: gpu {gv}, cpu {cv}",
                    config.kind()
                );
            }
            // Every element moves, but with the rules whose steps can bring
            // one back exactly (RuleInfo::exact_returns): most of them.
            let enough = if cases::info(config.kind()).exact_returns {
                moved * 2 >= total
            } else {
                moved == total
            };
            assert!(
                enough,
                "{:?} {lengths:?}: only {moved} of {total} parameters moved on the CPU",
                config.kind()
            );
            for (what, buf) in [("parameter", &user_params), ("gradient", &user_grads)] {
                for (k, v) in buf[total..].iter().enumerate() {
                    assert_eq!(
                        v.to_bits(),
                        SENTINEL,
                        "{:?} {lengths:?}: {what} buffer element {} beyond the layout was written",
                        config.kind(),
                        total + k
                    );
                }
            }
            // The optimizer reads the same buffer back.
            assert_eq!(
                opt.read_params_flat().unwrap(),
                user_params[..total].to_vec()
            );
            for (k, name) in names.iter().enumerate() {
                let (c, g) = (
                    cpu.state_flat(name).unwrap(),
                    opt.read_state_flat(name).unwrap(),
                );
                assert_eq!(c.len(), g.len());
                for i in 0..total {
                    let tol = STEPS as f64 * k_state * EPS * envelopes[k + 1].scale(i);
                    assert!(
                        (c[i] as f64 - g[i] as f64).abs() <= tol,
                        "{:?} {lengths:?}: {name}[{i}]: gpu {}, cpu {}",
                        config.kind(),
                        g[i],
                        c[i]
                    );
                }
            }
            checked += 1;
        }
    }
    println!(
        "from_buffers: {checked} optimizers stepped the caller's buffers in place, \
         {EXTRA} elements beyond each layout untouched"
    );
}

// ---------------------------------------------------------------------------
// (e) Rprop's learning rate.

/// torch's Rprop fills its step sizes with the group's `lr` when it creates
/// the state, at the first step, and never reads `lr` again. So an `lr` set
/// before the first step (a scheduler's first value) is the initial step
/// size and later ones change nothing. Three steps against torch's float32
/// run of them (bits from `torch.optim.Rprop(lr=0.01, foreach=False)` with
/// the group's lr set to 0.05 before the first step and to 1.0 before the
/// second), on the CPU and the GPU, and on both with `skip_nonfinite` and a
/// NaN first step, which leaves the next step the first (the GPU picks that
/// step's entry itself).
#[test]
fn rprop_lr_is_the_initial_step_size_only() {
    let grads: [[f32; 3]; 3] = [[1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [-1.0, -1.0, 2.0]];
    // After each step: parameters, step sizes (torch's bits); prev at the end.
    let params: [[u32; 3]; 3] = [
        [(-0.05f32).to_bits(), 0.05f32.to_bits(), 0],
        [3185657774, 1038174126, 0],
        [3185657774, 1044012598, 3175926989],
    ];
    let step_sizes: [[u32; 3]; 3] = [
        [0.05f32.to_bits(); 3],
        [1031127696, 1031127696, 1028443341],
        [1022739088, 1033073853, 1028443341],
    ];
    for skip_first in [false, true] {
        for backend in backends() {
            let rprop = Rprop {
                lr: 0.01,
                ..Rprop::default()
            };
            let mut opt = new(&backend, rprop, &[&[0.0; 3]]);
            if skip_first {
                opt.set_skip_nonfinite(true).unwrap();
                opt.set_lr(0.2).unwrap();
                opt.step(&[&[f32::NAN, 1.0, 1.0]]).unwrap();
                assert_eq!(opt.skipped_steps().unwrap(), 1);
            }
            opt.set_lr(0.05).unwrap();
            for (s, g) in grads.iter().enumerate() {
                if s == 1 {
                    opt.set_lr(1.0).unwrap();
                }
                opt.step(&[g]).unwrap();
                let label = format!("{} skip_first {skip_first} step {s}", backend.name());
                let bits = |v: Vec<Vec<f32>>| v[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(opt.read_params().unwrap()), params[s], "{label}");
                assert_eq!(
                    bits(opt.read_state("step_size").unwrap()),
                    step_sizes[s],
                    "{label}"
                );
            }
            assert_eq!(opt.read_state("prev").unwrap()[0], [0.0, -1.0, 2.0]);
        }
    }
}
