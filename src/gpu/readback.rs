//! Read-backs: blocking copies of a buffer to the host, and the
//! asynchronous map of the step counters' staging buffers.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

pub(super) struct Readback {
    pub(super) buffer: wgpu::Buffer,
    pub(super) done: std::sync::Arc<std::sync::Mutex<Option<bool>>>,
}

/// Maps a staging buffer the counters were copied to; the result arrives
/// when the device is next polled after the copy has run.
pub(super) fn map_counters(buffer: wgpu::Buffer) -> Readback {
    let done = std::sync::Arc::new(std::sync::Mutex::new(None));
    let d = done.clone();
    buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        if let Ok(mut d) = d.lock() {
            *d = Some(r.is_ok());
        }
    });
    Readback { buffer, done }
}

/// Copies `len` bytes at `offset` of `buffer` into a mappable buffer and
/// reads them, in pieces of at most 64 MiB.
pub(crate) fn read_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: u64,
) -> Result<Vec<f32>> {
    const PIECE: u64 = 64 << 20;
    let mut out = Vec::with_capacity((len / 4) as usize);
    let mut done = 0;
    while done < len {
        let size = PIECE.min(len - done);
        let staging = ctx.scoped("reading back", || {
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("readback"),
                });
            encoder.copy_buffer_to_buffer(buffer, offset + done, &staging, 0, size);
            ctx.queue.submit(Some(encoder.finish()));
            staging
        })?;
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait()?;
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                if let Some(reason) = ctx.lost() {
                    return Err(Error::DeviceLost {
                        during: "reading back",
                        reason,
                    });
                }
                return Err(Error::Readback(e.to_string()));
            }
            None => return Err(Error::Readback("the map callback never ran".into())),
        }
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            out.extend_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
        done += size;
    }
    if let Some(reason) = ctx.lost() {
        return Err(Error::DeviceLost {
            during: "reading back",
            reason,
        });
    }
    Ok(out)
}
