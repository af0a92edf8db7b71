//! RoPE on q and k in place for the rows of a ragged batch, fused with the KV-cache write: each row's position and
//! cache row come from the row table ([`crate::rows::Row`]). Twin: `personascope_model::ops::rope` per row (plus the
//! cache append of the CPU forward pass).

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};
use personascope_model::RopePairing;

/// Threads per workgroup; one thread per (token, head, element pair).
pub const WORKGROUP: u32 = 64;

/// What stays fixed for a model: head layout, rotation and cache size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeShape {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Rotated dims per head (<= head_dim, even); the inv_freq buffer holds rope_dim / 2 values.
    pub rope_dim: u32,
    pub pairing: RopePairing,
    /// Positions are divided by this (1 = none).
    pub linear_scale: f32,
    /// Rows of each KV-cache buffer.
    pub max_positions: u32,
}

/// The uniform, rewritten when the number of rows changes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_tokens: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub rope_half: u32,
    pub _pad: u32,
    /// 0: `RopePairing::Interleaved`, 1: `RopePairing::Halves`.
    pub halves: u32,
    pub linear_scale: f32,
}

impl Params {
    /// Checks the shape for `n_tokens` rows (their cache rows are checked where the row table is built).
    pub fn new(shape: &RopeShape, n_tokens: u32) -> Result<Self> {
        let s = shape;
        let bad = |msg: String| Err(GpuError::Unsupported(format!("rope: {msg}")));
        if s.n_heads == 0 || s.n_kv_heads == 0 || s.head_dim == 0 || !s.head_dim.is_multiple_of(2) {
            return bad(format!("{} heads, {} kv heads, head_dim {}", s.n_heads, s.n_kv_heads, s.head_dim));
        }
        if !s.rope_dim.is_multiple_of(2) || s.rope_dim > s.head_dim {
            return bad(format!("rope_dim {} with head_dim {}", s.rope_dim, s.head_dim));
        }
        if !(s.linear_scale.is_finite() && s.linear_scale > 0.0) {
            return bad(format!("linear scale {}", s.linear_scale));
        }
        // Workgroup x covers one token's pairs, y the tokens: both within the 65535 per-dimension limit.
        let pairs = s.n_heads.checked_add(s.n_kv_heads).and_then(|h| h.checked_mul(s.head_dim / 2));
        if n_tokens > 65535 || pairs.is_none_or(|p| p.div_ceil(WORKGROUP) > 65535) {
            return bad(format!(
                "{n_tokens} tokens of {} + {} heads: too large for one dispatch",
                s.n_heads, s.n_kv_heads
            ));
        }
        Ok(Params {
            n_tokens,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            rope_half: s.rope_dim / 2,
            _pad: 0,
            halves: u32::from(s.pairing == RopePairing::Halves),
            linear_scale: s.linear_scale,
        })
    }
}

pub fn variants() -> Vec<Defines> {
    vec![Defines::from([("WG", WORKGROUP.to_string()), ("ROW", crate::rows::ROW_WGSL.to_string())])]
}

pub struct Rope {
    pub kernel: Kernel,
}

impl Rope {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Rope { kernel: Kernel::new(gpu, "rope", &variants()[0], "main").await? })
    }

    /// A uniform buffer holding `p`; later steps rewrite it with `queue.write_buffer(buf, 0, bytes_of(&p))`.
    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "rope params", p)
    }

    /// Binds (params, q [n, n_heads*hd] rw, k [n, kv_dim] rw, v [n, kv_dim], inv_freq [rope_dim/2],
    /// k_cache [max_positions, kv_dim] rw, v_cache [max_positions, kv_dim] rw, all f32, kv_dim = n_kv_heads*hd;
    /// rows [n] of [`crate::rows::Row`]).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        rows: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, q, k, v, inv_freq, k_cache, v_cache, rows])
    }

    /// Records the kernel for the sizes in `p` (the values the bound uniform holds).
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        let pairs = (p.n_heads + p.n_kv_heads) * (p.head_dim / 2);
        self.kernel.dispatch(pass, bind, [pairs.div_ceil(WORKGROUP), p.n_tokens, 1]);
    }
}
