//! In-place adds: the residual add `y += x` and the row bias add `y[r, c] += bias[c]`. Twins:
//! `personascope_model::ops::add` and `ops::add_bias`.

use crate::kernel::{grid_1d, uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};

/// Threads per workgroup, one element each.
pub const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Elements of y.
    pub len: u32,
    /// Bias length (row length of y) for the bias add; 0 for the residual add.
    pub cols: u32,
    pub _pad: [u32; 2],
}

impl Params {
    /// y += x over `len` elements.
    pub fn residual(len: u32) -> Self {
        Params { len, cols: 0, _pad: [0; 2] }
    }

    /// y [rows, cols] += bias [cols] for every row.
    pub fn bias(rows: u32, cols: u32) -> Result<Self> {
        match rows.checked_mul(cols) {
            Some(len) if cols > 0 => Ok(Params { len, cols, _pad: [0; 2] }),
            _ => Err(GpuError::Unsupported(format!("add_bias: {rows} rows of {cols}"))),
        }
    }
}

fn defines(bias: bool) -> Defines {
    Defines::from([("WG", WORKGROUP.to_string()), ("BIAS", u32::from(bias).to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines(false), defines(true)]
}

/// Both adds; `bias` is the `BIAS` variant.
pub struct Add {
    pub residual: Kernel,
    pub bias: Kernel,
}

impl Add {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Add {
            residual: Kernel::new(gpu, "add", &defines(false), "main").await?,
            bias: Kernel::new(gpu, "add", &defines(true), "main").await?,
        })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "add params", p)
    }

    /// Binds (params, y [len] rw, x [len]) for the residual add, f32.
    pub fn bind(&self, gpu: &Gpu, params: &wgpu::Buffer, y: &wgpu::Buffer, x: &wgpu::Buffer) -> wgpu::BindGroup {
        self.residual.bind(gpu, &[params, y, x])
    }

    /// Binds (params, y [rows, cols] rw, bias [cols]) for the bias add, f32.
    pub fn bind_bias(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        y: &wgpu::Buffer,
        bias: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.bias.bind(gpu, &[params, y, bias])
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        self.residual.dispatch(pass, bind, grid_1d(p.len, WORKGROUP));
    }

    pub fn dispatch_bias(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        self.bias.dispatch(pass, bind, grid_1d(p.len, WORKGROUP));
    }
}
