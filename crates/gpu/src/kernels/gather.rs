//! Copies chosen rows of the residual stream to other places: the captures of one residual index into the wave's
//! results, or the rows whose logits are wanted into the LM head's input. Which rows and where come from one list
//! of the forward call's lists buffer ([`crate::rows`]). Twin: [`crate::twins::gather`].

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

pub(crate) fn defines() -> Defines {
    Defines::from([("WG", WORKGROUP.to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

/// A kernel that walks one list of the lists buffer over rows of width `d`: the gather (this module) and the running
/// sums ([`super::accumulate`]) share this shape of uniform, binding and dispatch.
pub struct ListKernel {
    pub kernel: Kernel,
}

pub type Gather = ListKernel;

impl ListKernel {
    /// The row gather (`gather.wgsl`).
    pub async fn gather(gpu: &Gpu) -> Result<Self> {
        Ok(ListKernel { kernel: Kernel::new(gpu, "gather", &defines(), "main").await? })
    }

    /// The running sums (`accumulate.wgsl`).
    pub async fn accumulate(gpu: &Gpu) -> Result<Self> {
        Ok(ListKernel { kernel: Kernel::new(gpu, "accumulate", &defines(), "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "list kernel params", p)
    }

    /// Binds (params, src f32 [rows, d], dst f32 rw (the gather's copies, or the sums), lists u32).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        lists: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, src, dst, lists])
    }

    /// Records the kernel for a list of `count` entries of width `d`.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, d: u32, count: u32) {
        if count > 0 {
            self.kernel.dispatch(pass, bind, [d.div_ceil(WORKGROUP).max(1), count.min(65535), 1]);
        }
    }
}
