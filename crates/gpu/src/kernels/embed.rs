//! Embedding gather: `y[t, :] = W[ids[ids_offset + t], :]` dequantized, with the ids in a GPU buffer (the sampler
//! writes them). A split matrix is gathered with one dispatch per part; each part writes the tokens whose row it
//! holds, and the first part writes zeros for ids outside the matrix. Twin: `PackedMatrix::dequantize_row`.

use crate::kernel::{uniform, Kernel};
use crate::quant::{GpuMatrix, GpuPart, PackedFormat};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_tokens: u32,
    pub cols: u32,
    /// Index of token 0's id in the ids buffer.
    pub ids_offset: u32,
    /// First row of the bound part, and its row count.
    pub part_row0: u32,
    pub part_rows: u32,
    /// Rows of the whole matrix.
    pub total_rows: u32,
    pub y_offset: u32,
    /// Elements between tokens of y.
    pub y_stride: u32,
    /// 1 on the first part: ids outside the matrix give zeros there (instead of stale values).
    pub zero_invalid: u32,
    pub _pad: [u32; 3],
}

/// Threads per workgroup, one per element of a row.
pub const WORKGROUP: u32 = 64;

const MAX_GROUPS: u32 = 65_535;

pub fn defines(format: PackedFormat) -> Defines {
    let mut d = format.defines();
    d.insert("WG", WORKGROUP.to_string());
    d
}

pub fn variants() -> Vec<Defines> {
    PackedFormat::ALL.into_iter().map(defines).collect()
}

pub struct Embed {
    pub format: PackedFormat,
    pub kernel: Kernel,
}

impl Embed {
    pub async fn new(gpu: &Gpu, format: PackedFormat) -> Result<Self> {
        Ok(Embed { format, kernel: Kernel::new(gpu, "embed", &defines(format), "main").await? })
    }

    /// The uniform for part `part` of `m`: `n_tokens` ids from `ids_offset`, rows written to `y` from `y_offset`
    /// every `y_stride` elements.
    pub fn params(
        &self,
        m: &GpuMatrix,
        part: usize,
        n_tokens: u32,
        ids_offset: u32,
        y_offset: u32,
        y_stride: u32,
    ) -> Result<Params> {
        if m.format != self.format {
            return Err(GpuError::Unsupported(format!("a {} matrix on a {} embed kernel", m.format, self.format)));
        }
        let p = m
            .parts
            .get(part)
            .ok_or_else(|| GpuError::Unsupported(format!("part {part} of a matrix of {} parts", m.parts.len())))?;
        Ok(Params {
            n_tokens,
            cols: m.cols as u32,
            ids_offset,
            part_row0: p.rows.start as u32,
            part_rows: p.rows.len() as u32,
            total_rows: m.rows as u32,
            y_offset,
            y_stride,
            zero_invalid: (part == 0) as u32,
            _pad: [0; 3],
        })
    }

    /// [`Embed::params`] in a fresh uniform buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn params_buffer(
        &self,
        gpu: &Gpu,
        m: &GpuMatrix,
        part: usize,
        n_tokens: u32,
        ids_offset: u32,
        y_offset: u32,
        y_stride: u32,
    ) -> Result<wgpu::Buffer> {
        Ok(uniform(gpu, "embed params", &self.params(m, part, n_tokens, ids_offset, y_offset, y_stride)?))
    }

    /// Binds (params, the part's codes and scales, ids (u32), y).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        part: &GpuPart,
        ids: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        let mut entries = vec![(0, params), (1, &part.codes), (3, ids), (4, y)];
        if !self.format.is_plain() {
            entries.push((2, &part.scales));
        }
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        self.kernel.bind_entries(gpu, &entries)
    }

    /// Records the gather for `params` (the values last written to the bound uniform).
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, params: &Params) {
        if params.n_tokens == 0 || params.cols == 0 {
            return;
        }
        let tokens = params.n_tokens;
        self.kernel.dispatch(
            pass,
            bind,
            [params.cols.div_ceil(WORKGROUP), tokens.min(MAX_GROUPS), tokens.div_ceil(MAX_GROUPS)],
        );
    }
}
