//! RMSNorm over rows: `y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w`. Twin: `personascope_model::ops::rms_norm`.

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, Result};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
    pub _pad: u32,
}

/// Threads per row: one workgroup reduces one row.
pub const WORKGROUP: u32 = 64;

pub fn variants() -> Vec<Defines> {
    vec![Defines::from([("WG", WORKGROUP.to_string())])]
}

pub struct RmsNorm {
    pub kernel: Kernel,
}

impl RmsNorm {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(RmsNorm { kernel: Kernel::new(gpu, "rms_norm", &variants()[0], "main").await? })
    }

    pub fn params(gpu: &Gpu, rows: u32, cols: u32, eps: f32) -> wgpu::Buffer {
        uniform(gpu, "rms_norm params", &Params { rows, cols, eps, _pad: 0 })
    }

    /// Binds (params, x [rows, cols], w [cols], y [rows, cols]).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, x, w, y])
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, rows: u32) {
        self.kernel.dispatch(pass, bind, [rows, 1, 1]);
    }
}
