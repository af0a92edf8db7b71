//! Steering at one residual index: `x[row] += alpha_i * v_i` for the entries whose absolute position range holds
//! the row, several vectors in one dispatch (one dispatch per steered layer). Twin: [`crate::twins::steer`]; CPU
//! reference: [`personascope_model::Steer`].

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};
use personascope_model::Steer;

/// Threads per workgroup, one element of a row each.
pub const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Rows (tokens) in x.
    pub rows: u32,
    pub d: u32,
    /// Absolute position of row 0.
    pub pos0: u32,
    /// This layer's entries are `entries[first .. first + count]`.
    pub first: u32,
    pub count: u32,
    /// Element offset of row 0 inside x.
    pub x_offset: u32,
    pub _pad: [u32; 2],
}

/// One steering vector at one layer (16 bytes, the shader's `Entry`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Entry {
    /// Element offset of the vector (`d` values) inside the vectors buffer.
    pub offset: u32,
    pub alpha: f32,
    /// Absolute positions `start .. end` are steered (`end = u32::MAX` for "to the end").
    pub start: u32,
    pub end: u32,
}

/// A layer's slice of the entries buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerEntries {
    /// Residual index (0..=N).
    pub layer: u32,
    pub first: u32,
    pub count: u32,
}

impl LayerEntries {
    /// The uniform for steering `rows` tokens from absolute position `pos0` in x at `x_offset`.
    pub fn params(&self, rows: u32, d: u32, pos0: u32, x_offset: u32) -> Params {
        Params { rows, d, pos0, first: self.first, count: self.count, x_offset, _pad: [0; 2] }
    }
}

/// Steering laid out for the kernel: every vector once in `vectors`, entries grouped by layer (ascending) in the
/// order the CPU hook applies them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Packed {
    pub vectors: Vec<f32>,
    pub entries: Vec<Entry>,
    pub layers: Vec<LayerEntries>,
}

/// Packs a CPU [`Steer`] for width `d`. Vectors of another length are skipped, as the CPU hook skips them;
/// positions beyond u32 saturate.
pub fn pack(steer: &Steer, d: usize) -> Packed {
    let mut out = Packed::default();
    let mut layers: Vec<usize> = steer.0.iter().filter(|s| s.vector.len() == d).map(|s| s.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    for layer in layers {
        let first = out.entries.len() as u32;
        for s in steer.0.iter().filter(|s| s.layer == layer && s.vector.len() == d) {
            out.entries.push(Entry {
                offset: out.vectors.len() as u32,
                alpha: s.alpha,
                start: sat(s.positions.start),
                end: sat(s.positions.end),
            });
            out.vectors.extend_from_slice(&s.vector);
        }
        out.layers.push(LayerEntries { layer: sat(layer), first, count: out.entries.len() as u32 - first });
    }
    out
}

impl Params {
    /// Checks buffer lengths (elements) against every index the kernel touches.
    pub fn check(&self, x_len: usize, vectors_len: usize, entries: &[Entry]) -> Result<()> {
        let bad = |msg: String| Err(GpuError::Validation { what: "steer".into(), msg });
        let x_end = self.x_offset as u64 + self.rows as u64 * self.d as u64;
        if x_end > x_len as u64 {
            return bad(format!("{} rows of {} at {} past {x_len}", self.rows, self.d, self.x_offset));
        }
        let range = (self.first as usize)..(self.first as usize).saturating_add(self.count as usize);
        let Some(mine) = entries.get(range) else {
            return bad(format!("entries {}+{} past {}", self.first, self.count, entries.len()));
        };
        if let Some(e) = mine.iter().find(|e| e.offset as u64 + self.d as u64 > vectors_len as u64) {
            return bad(format!("vector at {} past {vectors_len}", e.offset));
        }
        Ok(())
    }
}

fn defines() -> Defines {
    Defines::from([("WG", WORKGROUP.to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

pub struct SteerKernel {
    pub kernel: Kernel,
}

impl SteerKernel {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(SteerKernel { kernel: Kernel::new(gpu, "steer", &defines(), "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "steer params", p)
    }

    /// Binds (params, x f32 [rows, d] rw, vectors f32, entries [`Entry`]).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        vectors: &wgpu::Buffer,
        entries: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, x, vectors, entries])
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        self.kernel.dispatch(pass, bind, [p.d.div_ceil(WORKGROUP).max(1), p.rows.clamp(1, 65535), 1]);
    }
}
