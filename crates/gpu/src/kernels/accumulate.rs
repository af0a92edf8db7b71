//! Running sums for response averages at one residual index, inside the forward call's compute pass: each entry of
//! one list of the lists buffer ([`crate::rows`]) is a run of consecutive rows of one sequence whose positions lie
//! in its mean range, added in order to that sequence's sum in the wave's results. The sums stay on the GPU across
//! the forward calls of a wave. Twin: [`crate::twins::accumulate`] (bit-identical).

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, Result};

/// Threads per workgroup, one element each.
pub const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub d: u32,
    /// Word of the list's directory entry in the lists buffer.
    pub dir: u32,
    pub _pad: [u32; 2],
}

fn defines() -> Defines {
    Defines::from([("WG", WORKGROUP.to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

pub struct Accumulate {
    pub kernel: Kernel,
}

impl Accumulate {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Accumulate { kernel: Kernel::new(gpu, "accumulate", &defines(), "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "accumulate params", p)
    }

    /// Binds (params, x f32 [rows, d], sums f32 rw, lists u32).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        sums: &wgpu::Buffer,
        lists: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, x, sums, lists])
    }

    /// Records the kernel for a list of `count` runs of width `d`.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, d: u32, count: u32) {
        if count > 0 {
            self.kernel.dispatch(pass, bind, [d.div_ceil(WORKGROUP).max(1), count.min(65535), 1]);
        }
    }
}
