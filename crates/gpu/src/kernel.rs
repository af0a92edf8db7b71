//! Compute pipelines built from a shader and its defines, and the buffer plumbing every kernel shares.

use crate::shader::{self, Defines, Target};
use crate::{Gpu, GpuError, Result};

/// One compiled kernel entry point. Its bind group 0 holds the kernel's buffers in binding order.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

pub fn target() -> Target {
    if cfg!(target_arch = "wasm32") {
        Target::Web
    } else {
        Target::Native
    }
}

impl Kernel {
    /// Compiles `entry` of shader `name` with `defines`. Shader and pipeline errors come back as errors, not as a
    /// panic in the device's error handler.
    pub async fn new(gpu: &Gpu, name: &str, defines: &Defines, entry: &str) -> Result<Self> {
        let src = shader::source(name)
            .ok_or_else(|| GpuError::Shader { shader: name.into(), msg: "no such shader".into() })?;
        let text = shader::preprocess(name, src, defines, target())
            .map_err(|msg| GpuError::Shader { shader: name.into(), msg })?;
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(text.into()),
        });
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(GpuError::Shader { shader: format!("{name}:{entry} {defines:?}"), msg: e.to_string() });
        }
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Kernel { name: format!("{name}:{entry}"), pipeline, layout })
    }

    /// A bind group with `buffers` at bindings 0, 1, ... (whole buffers).
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.bind_entries(gpu, &entries)
    }

    pub fn bind_entries(&self, gpu: &Gpu, entries: &[wgpu::BindGroupEntry<'_>]) -> wgpu::BindGroup {
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.name),
            layout: &self.layout,
            entries,
        })
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, groups: [u32; 3]) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
}

/// Workgroup counts covering `threads` one-dimensional work items with `wg` threads per workgroup, split into x * y
/// when x alone would exceed 65535 (the WebGPU default per dimension). Shaders index with
/// `(workgroup_id.y * num_workgroups.x + workgroup_id.x) * WG + local_invocation_index` and skip indices past the
/// end.
pub fn grid_1d(threads: u32, wg: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    let groups = threads.div_ceil(wg.max(1)).max(1);
    let x = groups.min(MAX);
    [x, groups.div_ceil(x), 1]
}

/// A storage buffer holding `data` (copyable both ways so tests and readbacks can use it).
pub fn storage(gpu: &Gpu, label: &str, data: &[u8]) -> wgpu::Buffer {
    // WebGPU rejects zero-sized bindings; an empty tensor still gets 4 bytes.
    let padded;
    let contents = if !data.len().is_multiple_of(4) || data.is_empty() {
        padded = {
            let mut v = data.to_vec();
            v.resize(data.len().div_ceil(4).max(1) * 4, 0);
            v
        };
        &padded[..]
    } else {
        data
    };
    gpu.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

pub fn storage_f32(gpu: &Gpu, label: &str, data: &[f32]) -> wgpu::Buffer {
    storage(gpu, label, bytemuck::cast_slice(data))
}

/// A zeroed storage buffer of `size` bytes (rounded up to 4).
pub fn storage_zeroed(gpu: &Gpu, label: &str, size: u64) -> wgpu::Buffer {
    gpu.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.div_ceil(4).max(1) * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A uniform buffer initialised with `value`; rewritten with `queue.write_buffer` when the values change.
pub fn uniform<T: bytemuck::Pod>(gpu: &Gpu, label: &str, value: &T) -> wgpu::Buffer {
    gpu.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::bytes_of(value),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    })
}

/// A buffer the CPU can map for reading.
pub fn staging(gpu: &Gpu, label: &str, size: u64) -> wgpu::Buffer {
    gpu.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.div_ceil(4).max(1) * 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Maps `staging` (already filled by a submitted copy) and returns its first `len` bytes. Natively it blocks on
/// the device; in the browser it awaits the map callback.
pub async fn read_staging(gpu: &Gpu, staging: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
    read_staging_after(gpu, staging, len, None).await
}

/// [`read_staging`] that, natively, waits only for `submission` (so later submissions keep the GPU busy while
/// the CPU reads this one); `None` waits for everything submitted.
pub async fn read_staging_after(
    gpu: &Gpu,
    staging: &wgpu::Buffer,
    len: u64,
    submission: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (tx, rx) = oneshot();
    let slice = staging.slice(..len.div_ceil(4) * 4);
    let s = slot.clone();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        if let Ok(mut g) = s.lock() {
            *g = Some(r);
        }
        tx.send();
    });
    #[cfg(not(target_arch = "wasm32"))]
    gpu.device
        .poll(wgpu::PollType::Wait { submission_index: submission, timeout: None })
        .map_err(|e| GpuError::Readback { what: "poll".into(), msg: e.to_string() })?;
    #[cfg(target_arch = "wasm32")]
    let _ = (gpu, submission);
    rx.await;
    let result = slot.lock().ok().and_then(|mut g| g.take());
    match result {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(GpuError::Readback { what: "map".into(), msg: e.to_string() }),
        None => return Err(GpuError::Readback { what: "map".into(), msg: "callback never ran".into() }),
    }
    let bytes = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback { what: "mapped range".into(), msg: e.to_string() })?;
        view[..len as usize].to_vec()
    };
    staging.unmap();
    Ok(bytes)
}

/// Copies `len` bytes of `buffer` from `offset` to a fresh staging buffer and reads them (tests, one-off reads).
pub async fn read_buffer(gpu: &Gpu, buffer: &wgpu::Buffer, offset: u64, len: u64) -> Result<Vec<u8>> {
    let st = staging(gpu, "readback", len);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, offset, &st, 0, len.div_ceil(4) * 4);
    gpu.queue.submit([enc.finish()]);
    read_staging(gpu, &st, len).await
}

pub async fn read_f32(gpu: &Gpu, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<f32>> {
    let bytes = read_buffer(gpu, buffer, 0, 4 * count as u64).await?;
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// A minimal one-shot signal usable on both targets without an async runtime.
fn oneshot() -> (Signal, SignalFuture) {
    let shared = std::sync::Arc::new(std::sync::Mutex::new((false, None::<std::task::Waker>)));
    (Signal(shared.clone()), SignalFuture(shared))
}

type Shared = std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>;
struct Signal(Shared);
struct SignalFuture(Shared);

impl Signal {
    fn send(self) {
        if let Ok(mut g) = self.0.lock() {
            g.0 = true;
            if let Some(w) = g.1.take() {
                w.wake();
            }
        }
    }
}

impl std::future::Future for SignalFuture {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.0.lock() {
            Ok(mut g) if !g.0 => {
                g.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
            _ => std::task::Poll::Ready(()),
        }
    }
}
