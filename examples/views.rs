//! An optimizer over tensors that live where a framework's memory pool put
//! them: a few tensors at 256-byte-aligned offsets in two pooled parameter
//! buffers and two gradient buffers (as burn's wgpu backend places them),
//! stepped in place with `GpuOptimizer::from_views`. Small enough for
//! lavapipe: `cargo run --example views`.

use wgpu_optim::{AdamW, GpuContext, GpuOptimizer, Result, TensorView};

fn main() -> Result<()> {
    let ctx = GpuContext::new()?;
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let pool = |label: &str| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 64 << 10,
            usage,
            mapped_at_creation: false,
        })
    };
    let weight_pools = [pool("weights 0"), pool("weights 1")];
    let grad_pools = [pool("grads 0"), pool("grads 1")];

    // A layer's weights and bias, then another's: each tensor in the next
    // 256-byte slot of its pool, as an allocator hands them out.
    let lengths = [512usize, 16, 1024, 16, 300];
    let place = |pools: &[wgpu::Buffer; 2]| -> Vec<TensorView> {
        let mut next = [0u64; 2];
        lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = i % 2;
                let at = next[p];
                next[p] = (at + n as u64 * 4).div_ceil(256) * 256;
                TensorView::new(pools[p].clone(), at, n)
            })
            .collect()
    };
    let (params, grads) = (place(&weight_pools), place(&grad_pools));

    // What the framework's forward and backward passes would have written.
    for (i, (p, g)) in params.iter().zip(&grads).enumerate() {
        let w: Vec<f32> = (0..p.len).map(|k| ((k + i) % 7) as f32 * 0.1).collect();
        let d: Vec<f32> = (0..g.len)
            .map(|k| ((k * 3 + i) % 5 + 1) as f32 * 0.01)
            .collect();
        ctx.queue()
            .write_buffer(&p.buffer, p.offset, bytemuck::cast_slice(&w));
        ctx.queue()
            .write_buffer(&g.buffer, g.offset, bytemuck::cast_slice(&d));
    }

    let mut opt = GpuOptimizer::from_views(&ctx, AdamW::default(), params, grads)?;
    println!(
        "{} tensors in {} parameter buffers: {} dispatches a step",
        lengths.len(),
        opt.param_buffers().len(),
        opt.dispatches_per_step()
    );
    let before = opt.read_params()?;
    for _ in 0..3 {
        // The gradients are already in the pools: nothing is uploaded.
        opt.step_device()?;
    }
    let after = opt.read_params()?;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        println!("tensor {i}: element 1 went from {:.4} to {:.4}", b[1], a[1]);
    }
    Ok(())
}
