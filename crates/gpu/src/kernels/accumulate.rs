//! Running sums for response averages and the monitor's capture row, at one residual index, inside the step's
//! compute pass. Twin: [`crate::twins::accumulate`] (bit-identical).
//!
//! Capture: use this kernel's [`CAPTURE`] flag (fused with the sum when both are wanted) while the decode step is
//! one compute pass: `copy_buffer_to_buffer` cannot be recorded inside a compute pass, and splitting the pass at
//! every layer costs more than this dispatch. A buffer copy is the better tool only outside a pass (e.g. a whole
//! [N+1, d] capture copied to a staging buffer for readback).

use crate::kernel::{grid_1d, uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};

/// Threads per workgroup, one element each.
pub const WORKGROUP: u32 = 64;

/// `flags` bit: add the rows in range to the running sum.
pub const SUM: u32 = 1;
/// `flags` bit: copy row `capture_row` into the capture slot.
pub const CAPTURE: u32 = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub d: u32,
    /// Absolute position of row 0.
    pub pos0: u32,
    /// Rows at absolute positions `start .. end` are summed.
    pub start: u32,
    pub end: u32,
    /// Element offset of row 0 inside x.
    pub x_offset: u32,
    /// Element offset of this layer's running sum (`d` values; e.g. `layer * d`).
    pub sum_offset: u32,
    /// Element offset of this layer's capture slot (`d` values; e.g. `layer * d`, the projection kernel's layout).
    pub capture_offset: u32,
    /// Row of x copied (usually `rows - 1`, the last token).
    pub capture_row: u32,
    /// [`SUM`] | [`CAPTURE`].
    pub flags: u32,
    pub _pad: [u32; 2],
}

impl Params {
    /// Checks buffer lengths (elements) against every index the kernel touches.
    pub fn check(&self, x_len: usize, sums_len: usize, capture_len: usize) -> Result<()> {
        let d = self.d as u64;
        let mut ok = self.x_offset as u64 + self.rows as u64 * d <= x_len as u64;
        if self.flags & SUM != 0 {
            ok &= self.sum_offset as u64 + d <= sums_len as u64;
        }
        if self.flags & CAPTURE != 0 {
            ok &= self.capture_row < self.rows && self.capture_offset as u64 + d <= capture_len as u64;
        }
        if ok {
            Ok(())
        } else {
            Err(GpuError::Validation {
                what: "accumulate".into(),
                msg: format!("{self:?} with x {x_len}, sums {sums_len}, capture {capture_len}"),
            })
        }
    }
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

    /// Binds (params, x f32 [rows, d], sums f32 rw, capture f32 rw). A part the flags leave off may get any small
    /// buffer other than x.
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        sums: &wgpu::Buffer,
        capture: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, x, sums, capture])
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        self.kernel.dispatch(pass, bind, grid_1d(p.d, WORKGROUP));
    }
}
