//! Steering at one residual index for the rows of a ragged batch: `x[row] += alpha_i * v_i` for the entries that
//! belong to the row's sequence and whose absolute position range holds the row, several vectors in one dispatch
//! (one dispatch per steered index). Twin: [`crate::twins::steer`]; CPU reference: the plan's `steer` entries in
//! `personascope_model::PlanHook`.

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, Result};
use personascope_model::Steering;

/// Threads per workgroup, one element of a row each.
pub const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub d: u32,
    /// This index's entries are `entries[first .. first + count]`.
    pub first: u32,
    pub count: u32,
    pub _pad: u32,
}

/// One steering vector of one sequence at one residual index (32 bytes, the shader's `Entry`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Entry {
    /// Element offset of the vector (`d` values) inside the vectors buffer.
    pub offset: u32,
    pub alpha: f32,
    /// Absolute positions `start .. end` are steered (`end = u32::MAX` for "to the end").
    pub start: u32,
    pub end: u32,
    /// Wave index of the sequence steered.
    pub seq: u32,
    pub _pad: [u32; 3],
}

/// A residual index's slice of the entries buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerEntries {
    /// Residual index (0..=N).
    pub layer: u32,
    pub first: u32,
    pub count: u32,
}

/// Steering laid out for the kernel: every distinct vector once in `vectors`, entries grouped by residual index
/// (ascending) and, within one, in the order of the sequences and of their plans (the order the CPU adds them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Packed {
    pub vectors: Vec<f32>,
    pub entries: Vec<Entry>,
    pub layers: Vec<LayerEntries>,
}

/// Packs `(sequence, steering)` pairs for width `d`; positions beyond u32 saturate.
pub fn pack<'a>(steering: impl IntoIterator<Item = (usize, &'a Steering)>, d: usize) -> Packed {
    let all: Vec<(usize, &Steering)> = steering.into_iter().filter(|(_, s)| s.vector.len() == d).collect();
    let mut out = Packed::default();
    let sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    // Eval steers hundreds of sequences with the same few vectors: each is uploaded once.
    let mut seen: std::collections::HashMap<Vec<u32>, u32> = std::collections::HashMap::new();
    let mut layers: Vec<usize> = all.iter().map(|(_, s)| s.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    for layer in layers {
        let first = out.entries.len() as u32;
        for (seq, s) in all.iter().filter(|(_, s)| s.layer == layer) {
            let bits: Vec<u32> = s.vector.iter().map(|x| x.to_bits()).collect();
            let offset = *seen.entry(bits).or_insert_with(|| {
                let o = out.vectors.len() as u32;
                out.vectors.extend_from_slice(&s.vector);
                o
            });
            out.entries.push(Entry {
                offset,
                alpha: s.alpha,
                start: sat(s.positions.start),
                end: sat(s.positions.end),
                seq: sat(*seq),
                _pad: [0; 3],
            });
        }
        out.layers.push(LayerEntries { layer: sat(layer), first, count: out.entries.len() as u32 - first });
    }
    out
}

fn defines() -> Defines {
    Defines::from([("WG", WORKGROUP.to_string()), ("ROW", crate::rows::ROW_WGSL.to_string())])
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

    /// Binds (params, x f32 [rows, d] rw, vectors f32, entries [`Entry`], rows [`crate::rows::Row`], lists u32:
    /// word 0 is the row count).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        vectors: &wgpu::Buffer,
        entries: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        lists: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, x, vectors, entries, rows, lists])
    }

    /// Records the kernel for `rows` rows of width `d`.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, d: u32, rows: u32) {
        self.kernel.dispatch(pass, bind, [d.div_ceil(WORKGROUP).max(1), rows.clamp(1, 65535), 1]);
    }
}
