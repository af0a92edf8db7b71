//! `gate = silu(gate) * up`, element-wise, in place (the SwiGLU activation). Twin:
//! `personascope_model::ops::silu_gate`.

use crate::kernel::{grid_1d, uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, Result};

/// Threads per workgroup, one element each.
pub const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Elements: n * d_ff.
    pub len: u32,
    pub _pad: [u32; 3],
}

impl Params {
    pub fn new(len: u32) -> Self {
        Params { len, _pad: [0; 3] }
    }
}

pub fn variants() -> Vec<Defines> {
    vec![Defines::from([("WG", WORKGROUP.to_string())])]
}

pub struct SiluGate {
    pub kernel: Kernel,
}

impl SiluGate {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(SiluGate { kernel: Kernel::new(gpu, "silu_gate", &variants()[0], "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "silu_gate params", p)
    }

    /// Binds (params, gate [len] rw, up [len]), f32.
    pub fn bind(&self, gpu: &Gpu, params: &wgpu::Buffer, gate: &wgpu::Buffer, up: &wgpu::Buffer) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, gate, up])
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        self.kernel.dispatch(pass, bind, grid_1d(p.len, WORKGROUP));
    }
}
