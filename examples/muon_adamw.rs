//! The usual Muon recipe on the CPU backend: Muon for the hidden weight
//! matrices, AdamW for everything else (the input layer's and the head's
//! weights, the biases), with the gradients of both clipped together to
//! one global norm, as one `torch.nn.utils.clip_grad_norm_` over all the
//! model's parameters would.
//!
//! ```sh
//! cargo run --release --example muon_adamw
//! ```
//!
//! A student MLP (16 → 32 → 32 → 4, tanh) learns a fixed random teacher
//! of the same shape by mean squared error; the backward pass is written
//! out by hand. Muon gets the 32 × 32 hidden matrix; the input layer and
//! the head go to AdamW with the biases, as Keller Jordan's recipe has it
//! (Muon is for hidden layers). It runs in well under a second (a few
//! seconds unoptimized) and exits with an error if the loss did not fall.

use wgpu_optim::{AdamW, CpuOptimizer, Muon, Shape};

const IN: usize = 16;
const HIDDEN: usize = 32;
const OUT: usize = 4;
const BATCH: usize = 16;
const STEPS: usize = 300;
// Below the first steps' gradient norms: those are clipped.
const MAX_NORM: f64 = 0.5;

/// A small deterministic generator (xorshift), so that the run needs no
/// dependency and is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// The model's tensors, in the order their gradients are returned:
/// `w1` (HIDDEN × IN), `b1`, `w2` (HIDDEN × HIDDEN), `b2`, `wo` (OUT ×
/// HIDDEN), `bo`; weights row-major as torch's `Linear.weight` (out × in).
struct Mlp<'a> {
    w1: &'a [f32],
    b1: &'a [f32],
    w2: &'a [f32],
    b2: &'a [f32],
    wo: &'a [f32],
    bo: &'a [f32],
}

/// `tanh(w·x + b)` of a layer of `out` units.
fn layer(w: &[f32], b: &[f32], x: &[f32], out: usize, tanh: bool) -> Vec<f32> {
    (0..out)
        .map(|o| {
            let z = b[o]
                + w[o * x.len()..(o + 1) * x.len()]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| w * x)
                    .sum::<f32>();
            if tanh {
                z.tanh()
            } else {
                z
            }
        })
        .collect()
}

impl Mlp<'_> {
    fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let h1 = layer(self.w1, self.b1, x, HIDDEN, true);
        let h2 = layer(self.w2, self.b2, &h1, HIDDEN, true);
        let y = layer(self.wo, self.bo, &h2, OUT, false);
        (h1, h2, y)
    }

    /// The mean of `½‖y − t‖²` over the batch, and its gradients
    /// `[w1, b1, w2, b2, wo, bo]`.
    fn loss_and_grads(&self, xs: &[Vec<f32>], ts: &[Vec<f32>]) -> (f32, Vec<Vec<f32>>) {
        let mut g = vec![
            vec![0.0; HIDDEN * IN],
            vec![0.0; HIDDEN],
            vec![0.0; HIDDEN * HIDDEN],
            vec![0.0; HIDDEN],
            vec![0.0; OUT * HIDDEN],
            vec![0.0; OUT],
        ];
        let mut loss = 0.0;
        let n = xs.len() as f32;
        for (x, t) in xs.iter().zip(ts) {
            let (h1, h2, y) = self.forward(x);
            let dy: Vec<f32> = y.iter().zip(t).map(|(y, t)| (y - t) / n).collect();
            loss += y
                .iter()
                .zip(t)
                .map(|(y, t)| 0.5 * (y - t).powi(2))
                .sum::<f32>()
                / n;
            // Each layer: the weight's gradient is δ·inputᵀ, the input's
            // wᵀ·δ, through tanh' = 1 − tanh².
            let back = |w: &[f32], gw: &mut [f32], gb: &mut [f32], d: &[f32], input: &[f32]| {
                let mut d_in = vec![0.0f32; input.len()];
                for (o, &d) in d.iter().enumerate() {
                    gb[o] += d;
                    for (i, &x) in input.iter().enumerate() {
                        gw[o * input.len() + i] += d * x;
                        d_in[i] += w[o * input.len() + i] * d;
                    }
                }
                d_in
            };
            let (gw1, rest) = g.split_at_mut(1);
            let (gb1, rest) = rest.split_at_mut(1);
            let (gw2, rest) = rest.split_at_mut(1);
            let (gb2, rest) = rest.split_at_mut(1);
            let (gwo, gbo) = rest.split_at_mut(1);
            let dh2 = back(self.wo, &mut gwo[0], &mut gbo[0], &dy, &h2);
            let dz2: Vec<f32> = dh2
                .iter()
                .zip(&h2)
                .map(|(d, h)| d * (1.0 - h * h))
                .collect();
            let dh1 = back(self.w2, &mut gw2[0], &mut gb2[0], &dz2, &h1);
            let dz1: Vec<f32> = dh1
                .iter()
                .zip(&h1)
                .map(|(d, h)| d * (1.0 - h * h))
                .collect();
            back(self.w1, &mut gw1[0], &mut gb1[0], &dz1, x);
        }
        (loss, g)
    }
}

fn main() -> Result<(), wgpu_optim::Error> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // The teacher: a random network of the same shape, larger weights.
    let teacher: Vec<Vec<f32>> = [
        (HIDDEN * IN, 0.5),
        (HIDDEN, 0.1),
        (HIDDEN * HIDDEN, 0.25),
        (HIDDEN, 0.1),
        (OUT * HIDDEN, 0.25),
        (OUT, 0.1),
    ]
    .iter()
    .map(|&(n, s)| rng.vec(n, s))
    .collect();
    let teach = |x: &[f32]| {
        Mlp {
            w1: &teacher[0],
            b1: &teacher[1],
            w2: &teacher[2],
            b2: &teacher[3],
            wo: &teacher[4],
            bo: &teacher[5],
        }
        .forward(x)
        .2
    };

    // The student: Muon holds the hidden matrix (with its 2-D shape),
    // AdamW the input layer, the head and the biases.
    let w2 = rng.vec(HIDDEN * HIDDEN, 1.0 / (HIDDEN as f32).sqrt());
    let mut muon = CpuOptimizer::with_shapes(
        Muon {
            lr: 0.02,
            weight_decay: 0.01,
            ..Muon::default()
        },
        &[&w2],
        &[Shape::matrix(HIDDEN, HIDDEN)],
    )?;
    let rest = [
        rng.vec(HIDDEN * IN, 1.0 / (IN as f32).sqrt()),
        vec![0.0; HIDDEN],
        vec![0.0; HIDDEN],
        rng.vec(OUT * HIDDEN, 1.0 / (HIDDEN as f32).sqrt()),
        vec![0.0; OUT],
    ];
    let mut adamw = CpuOptimizer::new(
        AdamW {
            lr: 3e-3,
            weight_decay: 0.01,
            ..AdamW::default()
        },
        &rest.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    )?;

    let start = std::time::Instant::now();
    let (mut first, mut last) = (None, 0.0);
    let mut clipped_steps = 0;
    for step in 0..STEPS {
        let xs: Vec<Vec<f32>> = (0..BATCH).map(|_| rng.vec(IN, 1.0)).collect();
        let ts: Vec<Vec<f32>> = xs.iter().map(|x| teach(x)).collect();
        let model = Mlp {
            w1: adamw.param(0),
            b1: adamw.param(1),
            w2: muon.param(0),
            b2: adamw.param(2),
            wo: adamw.param(3),
            bo: adamw.param(4),
        };
        let (loss, mut g) = model.loss_and_grads(&xs, &ts);
        first.get_or_insert(loss);
        last = loss;

        // One global norm over both optimizers' gradients, as
        // clip_grad_norm_ takes it over all the model's parameters:
        // scale = max_norm / (norm + 1e-6), applied when below 1.
        let norm = g
            .iter()
            .flatten()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let scale = MAX_NORM / (norm + 1e-6);
        if scale < 1.0 {
            clipped_steps += 1;
            for x in g.iter_mut().flatten() {
                *x = (f64::from(*x) * scale) as f32;
            }
        }
        muon.step(&[&g[2]])?;
        adamw.step(&[&g[0], &g[1], &g[3], &g[4], &g[5]])?;
        if step % 50 == 0 {
            println!("step {step:>4}  loss {loss:.5}  grad norm {norm:.4}");
        }
    }
    let first = first.unwrap_or(0.0);
    println!(
        "{STEPS} steps in {:.2?}: loss {first:.5} -> {last:.5} ({clipped_steps} steps clipped to norm {MAX_NORM})",
        start.elapsed()
    );
    // A NaN loss fails too.
    if last.is_nan() || last >= first / 4.0 {
        return Err(wgpu_optim::Error::InvalidOptions(format!(
            "the loss did not fall: {first} -> {last}"
        )));
    }
    Ok(())
}
