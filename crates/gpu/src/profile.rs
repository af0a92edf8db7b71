//! Per-kernel GPU time from timestamp queries (`bench --profile`): each dispatch gets its own compute pass with
//! timestamps at its start and end. Only for measurement: splitting passes costs time of its own.

use crate::kernel::{read_staging, staging};
use crate::{Gpu, GpuError, Result};

pub struct Profiler {
    set: wgpu::QuerySet,
    capacity: u32,
    names: Vec<&'static str>,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    period_ns: f32,
}

impl Profiler {
    /// Room for `capacity` dispatches. Errors when the adapter has no timestamp queries.
    pub fn new(gpu: &Gpu, capacity: u32) -> Result<Self> {
        if !gpu.caps.timestamps {
            return Err(GpuError::Unsupported(format!("{} has no timestamp queries", gpu.describe())));
        }
        let count = (2 * capacity).min(wgpu::QUERY_SET_MAX_QUERIES);
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = u64::from(count) * 8;
        let resolve = gpu.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Ok(Profiler {
            set,
            capacity: count / 2,
            names: Vec::new(),
            resolve,
            staging: staging(gpu, "profile staging", bytes),
            period_ns: gpu.queue.get_timestamp_period(),
        })
    }

    /// Resolves the recorded timestamps into the readback buffer (call once, after the last dispatch).
    pub fn finish(&self, enc: &mut wgpu::CommandEncoder) {
        let n = 2 * self.names.len() as u32;
        if n > 0 {
            enc.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, u64::from(n) * 8);
        }
    }

    /// (kernel, nanoseconds) of every profiled dispatch, in order; clears the profiler for the next run.
    pub async fn read(&mut self, gpu: &Gpu) -> Result<Vec<(&'static str, f64)>> {
        let n = self.names.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let bytes = read_staging(gpu, &self.staging, (n * 16) as u64).await?;
        let ticks: Vec<u64> =
            bytes.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect();
        let out = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.period_ns as f64))
            .collect();
        self.names.clear();
        Ok(out)
    }
}

/// Where dispatches are recorded: one shared pass (normal), or one timed pass each (profiling).
// The pass is large but lives on the stack for one recording; boxing it would allocate every step.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Rec<'a> {
    One(wgpu::ComputePass<'a>),
    Each { enc: &'a mut wgpu::CommandEncoder, prof: &'a mut Profiler },
}

impl<'a> Rec<'a> {
    pub fn new(enc: &'a mut wgpu::CommandEncoder, prof: Option<&'a mut Profiler>) -> Self {
        match prof {
            Some(prof) => Rec::Each { enc, prof },
            None => Rec::One(enc.begin_compute_pass(&Default::default())),
        }
    }

    /// Records `f` as the work of kernel `name`.
    pub fn run(&mut self, name: &'static str, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        match self {
            Rec::One(pass) => f(pass),
            Rec::Each { enc, prof } => {
                let i = prof.names.len() as u32;
                let timestamps = (i < prof.capacity).then(|| wgpu::ComputePassTimestampWrites {
                    query_set: &prof.set,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                });
                let timed = timestamps.is_some();
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(name),
                    timestamp_writes: timestamps,
                });
                f(&mut pass);
                drop(pass);
                if timed {
                    prof.names.push(name);
                }
            }
        }
    }
}
