use wgpu_optim::*;
fn main() -> Result<()> {
    let ctx = GpuContext::new()?;
    println!("{}", ctx.adapter_label());
    for w in [1u32, 4] {
        for cfg in [
            RuleKind::Sgd,
            RuleKind::Adagrad,
            RuleKind::RmsProp,
            RuleKind::Adam,
            RuleKind::AdamW,
        ] {
            let cfg = cfg.default_config();
            let n = 1757;
            let p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut c = CpuOptimizer::new(cfg.clone(), &[&p[..1000], &p[1000..]])?;
            let mut g = GpuOptimizer::with_options(
                &ctx,
                cfg.clone(),
                &[&p[..1000], &p[1000..]],
                GpuOptions {
                    max_chunk_elements: Some(512),
                    vector_width: Some(w),
                    skip_bounds_checks: w == 4,
                },
            )?;
            for s in 0..20 {
                let gr: Vec<f32> = (0..n)
                    .map(|i| ((i * 7 + s * 13) as f32 * 0.11).cos())
                    .collect();
                c.step(&[&gr[..1000], &gr[1000..]])?;
                g.step(&[&gr[..1000], &gr[1000..]])?;
            }
            let a = c.params_flat();
            let b = g.read_params_flat()?;
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            println!(
                "{:?} dispatches {} max err {err:e} moved {}",
                cfg.kind(),
                g.dispatches_per_step(),
                (a[0] - p[0]).abs()
            );
        }
    }
    Ok(())
}
