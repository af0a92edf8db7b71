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

fn defines() -> Defines {
    Defines::from([("WG", WORKGROUP.to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

pub struct Gather {
    pub kernel: Kernel,
}

impl Gather {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Gather { kernel: Kernel::new(gpu, "gather", &defines(), "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "gather params", p)
    }

    /// Binds (params, src f32 [rows, d], dst f32 rw, lists u32).
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
