//! The digits data the main crate's train example ships (scikit-learn's
//! `load_digits`: 1797 8×8 images, 64 features in 0..=16, and a label), a
//! small MLP over it in burn, and the helpers the example and the tests
//! share.

#![allow(dead_code)]

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation::relu, Device, Int, Tensor, TensorData};

/// Features scaled to [0, 1] (row-major, 64 a sample) and labels.
pub struct Digits {
    pub x: Vec<f32>,
    pub y: Vec<i64>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// The rows `idx`, as a batch on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let mut x = Vec::with_capacity(idx.len() * 64);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(&self.x[64 * i..64 * i + 64]);
            y.push(self.y[i]);
        }
        (
            Tensor::from_data(TensorData::new(x, [idx.len(), 64]), device),
            Tensor::from_data(TensorData::new(y, [idx.len()]), device),
        )
    }
}

/// The data, split by a fixed shuffle into 1500 training samples and 297
/// held out.
pub fn load() -> (Digits, Digits) {
    let text = include_str!("../../../../examples/data/digits.csv");
    let mut rows: Vec<(Vec<f32>, i64)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<f32> = l.split(',').map(|s| s.trim().parse().unwrap()).collect();
            (v[..64].iter().map(|p| p / 16.0).collect(), v[64] as i64)
        })
        .collect();
    // Fisher–Yates with a fixed LCG: the same split every run.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    for i in (1..rows.len()).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rows.swap(i, (s >> 33) as usize % (i + 1));
    }
    let test = rows.split_off(1500);
    let pack = |r: Vec<(Vec<f32>, i64)>| Digits {
        x: r.iter().flat_map(|(x, _)| x.iter().copied()).collect(),
        y: r.iter().map(|(_, y)| *y).collect(),
    };
    (pack(rows), pack(test))
}

/// 64 → hidden → 10, ReLU.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(hidden: usize, device: &Device) -> Self {
        Mlp {
            fc1: LinearConfig::new(64, hidden).init(device),
            fc2: LinearConfig::new(hidden, 10).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }

    /// Mean cross-entropy of a batch.
    pub fn loss(&self, x: Tensor<2>, y: Tensor<1, Int>) -> Tensor<1> {
        let device = x.device();
        CrossEntropyLossConfig::new()
            .init(&device)
            .forward(self.forward(x), y)
    }

    /// Fraction of `data` classified right.
    pub fn accuracy(&self, data: &Digits, device: &Device) -> f64 {
        let idx: Vec<usize> = (0..data.len()).collect();
        let (x, y) = data.batch(&idx, device);
        let pred = self.forward(x).argmax(1).squeeze_dim::<1>(1);
        let right: i64 = pred.equal(y).int().sum().into_scalar::<i64>();
        right as f64 / data.len() as f64
    }
}

/// The batches of one epoch: a shuffle of `n` by `seed`, in batches of
/// `size` (the last one short).
pub fn epoch_batches(n: usize, size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    for i in (1..n).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        idx.swap(i, (s >> 33) as usize % (i + 1));
    }
    idx.chunks(size).map(|c| c.to_vec()).collect()
}
