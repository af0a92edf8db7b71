//! Log-probabilities of given next tokens from rows of logits (the log-softmax at the target), so that only the
//! wanted values are read back: one list of the forward call's lists buffer ([`crate::rows`]) per LM-head chunk.
//! Twin: `personascope_model::plan::log_prob`.

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, Result};

/// Threads per workgroup (a power of two); one workgroup per log-probability.
pub const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub vocab: u32,
    /// Word of the list's directory entry in the lists buffer.
    pub dir: u32,
    /// Logits row of the chunk's first head row.
    pub row0: u32,
    pub _pad: u32,
}

fn defines() -> Defines {
    Defines::from([("WG", WORKGROUP.to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

pub struct Logprob {
    pub kernel: Kernel,
}

impl Logprob {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Logprob { kernel: Kernel::new(gpu, "logprob", &defines(), "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "logprob params", p)
    }

    /// Binds (params, logits f32 [rows, vocab], lists u32, out f32 rw).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        logits: &wgpu::Buffer,
        lists: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, logits, lists, out])
    }

    /// Records the kernel for a list of `count` entries.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, count: u32) {
        if count > 0 {
            self.kernel.dispatch(pass, bind, [count.min(65535), 1, 1]);
        }
    }
}
