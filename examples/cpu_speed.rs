use std::time::Instant;
use wgpu_optim::*;
fn main() -> Result<()> {
    let n = 16 << 20;
    let p: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32) * 1e-3).collect();
    let g: Vec<f32> = (0..n).map(|i| ((i % 777) as f32) * 1e-3 - 0.3).collect();
    for cfg in [
        Config::from(AdamW::default()),
        Sgd {
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
        Adagrad::default().into(),
    ] {
        let mut o = CpuOptimizer::new(cfg.clone(), &[&p])?;
        let mut t = vec![];
        for _ in 0..12 {
            let s = Instant::now();
            o.step_flat(&g)?;
            t.push(s.elapsed().as_secs_f64());
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = t[6];
        println!(
            "{:?} median {:.2} ms  {:.1} GB/s",
            cfg.kind(),
            med * 1e3,
            cfg.bytes_per_param() as f64 * n as f64 / med / 1e9
        );
    }
    // raw copy bandwidth
    let src = vec![1.0f32; n * 4];
    let mut dst = vec![0.0f32; n * 4];
    let mut t = vec![];
    for _ in 0..5 {
        let s = Instant::now();
        dst.copy_from_slice(&src);
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "memcpy 1 thread {:.1} GB/s (r+w) {}",
        2.0 * 16.0 * n as f64 / t[2] / 1e9,
        dst[5]
    );
    Ok(())
}
