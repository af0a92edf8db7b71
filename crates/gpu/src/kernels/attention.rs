//! Causal attention with grouped KV heads over the KV cache, for the rows of a ragged batch: a row at position p
//! attends to its sequence's keys 0..=p, found through the row table ([`crate::rows::Row`]: a shared prefix's region,
//! then the sequence's own). Online softmax, so any context length works without a scores buffer.
//! Twin: `personascope_model::ops::Heads::attend`.
//!
//! Two designs: on GPUs a workgroup per (head, row) that scores a tile of keys in parallel; on CPU adapters
//! (lavapipe, SwiftShader), where a workgroup's invocations are SIMD lanes and every lane's load counts, one
//! invocation per (row, KV head) that runs the whole softmax for the query heads sharing that KV head
//! ([`Attention::for_model`], `PERSONASCOPE_ATTENTION=tiled|solo` to override natively).

use crate::kernel::{uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};

/// Threads per workgroup: one workgroup per (head, token), one key per thread per tile of WORKGROUP keys.
pub const WORKGROUP: u32 = 64;

/// Output dims per thread of each compiled variant: head_dim <= WORKGROUP * dims (64, 128 and 256).
const DIMS_PER_THREAD: [u32; 3] = [1, 2, 4];

/// What stays fixed for a model: head layout and cache size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
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
    /// 1 / sqrt(head_dim).
    pub scale: f32,
    pub _pad: [u32; 3],
}

impl Params {
    /// Checks the shape for `n_tokens` rows (their key rows are checked where the row table is built).
    pub fn new(shape: &AttentionShape, n_tokens: u32) -> Result<Self> {
        let s = shape;
        let bad = |msg: String| Err(GpuError::Unsupported(format!("attention: {msg}")));
        if s.n_kv_heads == 0 || s.n_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) || s.n_heads > 65535 {
            return bad(format!("{} heads over {} kv heads", s.n_heads, s.n_kv_heads));
        }
        // vec4 loads of q and k rows.
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(4) || s.head_dim > max_head_dim() {
            return bad(format!("head_dim {} (needs a multiple of 4, at most {})", s.head_dim, max_head_dim()));
        }
        if n_tokens > 65535 {
            return bad(format!("{n_tokens} rows in one dispatch"));
        }
        Ok(Params {
            n_tokens,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
            _pad: [0; 3],
        })
    }
}

fn max_head_dim() -> u32 {
    WORKGROUP * DIMS_PER_THREAD[DIMS_PER_THREAD.len() - 1]
}

fn defines(dims_per_thread: u32) -> Defines {
    Defines::from([
        ("WG", WORKGROUP.to_string()),
        ("DPT", dims_per_thread.to_string()),
        ("ROW", crate::rows::ROW_WGSL.to_string()),
        ("SOLO", "0".to_string()),
    ])
}

/// Invocations per workgroup of the one-invocation-per-(row, KV head) design: one 256-bit SIMD group of lavapipe.
pub const SOLO_WORKGROUP: u32 = 8;

/// The most query-head x vec4 values one solo pipeline unrolls (G * head_dim / 4): beyond it (no model the
/// project runs comes near) the tiled kernel is used.
const SOLO_MAX_UNROLL: u32 = 256;

fn solo_defines(group: u32, head_dim: u32) -> Defines {
    Defines::from([
        ("WG", SOLO_WORKGROUP.to_string()),
        ("G", group.to_string()),
        ("HD4", (head_dim / 4).to_string()),
        ("ROW", crate::rows::ROW_WGSL.to_string()),
        ("SOLO", "1".to_string()),
    ])
}

/// Whether [`Attention::for_model`] picks the solo design on `gpu`.
fn solo_for(gpu: &Gpu) -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    match std::env::var("PERSONASCOPE_ATTENTION").as_deref().map(str::trim) {
        Ok("tiled") => return false,
        Ok("solo") => return true,
        _ => {}
    }
    gpu.adapter.device_type == wgpu::DeviceType::Cpu
}

/// The tiled variants, and the solo ones of the head layouts of SmolLM2 (3 query heads per KV head, 64 dims),
/// Qwen2.5-0.5B (7, 64), Qwen2.5-1.5B (6, 128), Llama 3.2 1B (4, 64) and a small odd one (1, 20).
pub fn variants() -> Vec<Defines> {
    let solo = [(3, 64), (7, 64), (6, 128), (4, 64), (1, 20)].map(|(g, hd)| solo_defines(g, hd));
    DIMS_PER_THREAD.iter().map(|&d| defines(d)).chain(solo).collect()
}

pub struct Attention {
    pub kernel: Kernel,
    /// The largest head_dim this pipeline handles.
    pub max_head_dim: u32,
    /// For the solo design, the (query heads per KV head, head_dim) it was compiled for.
    pub solo: Option<(u32, u32)>,
}

impl Attention {
    /// The variant for head_dim <= 128 (SmolLM2, Qwen2.5, Llama 3.2).
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Self::for_head_dim(gpu, 128).await
    }

    /// The smallest variant that handles `head_dim` (<= 256): fewer idle threads and registers.
    pub async fn for_head_dim(gpu: &Gpu, head_dim: u32) -> Result<Self> {
        let dims = DIMS_PER_THREAD.iter().copied().find(|&d| head_dim <= WORKGROUP * d).ok_or_else(|| {
            GpuError::Unsupported(format!("attention: head_dim {head_dim} (at most {})", max_head_dim()))
        })?;
        let kernel = Kernel::new(gpu, "attention", &defines(dims), "main").await?;
        Ok(Attention { kernel, max_head_dim: WORKGROUP * dims, solo: None })
    }

    /// The kernel for a model's head layout: the solo design on CPU adapters when the layout allows it, the tiled
    /// one otherwise.
    pub async fn for_model(gpu: &Gpu, n_heads: u32, n_kv_heads: u32, head_dim: u32) -> Result<Self> {
        if solo_for(gpu) {
            if let Ok(k) = Self::solo(gpu, n_heads, n_kv_heads, head_dim).await {
                return Ok(k);
            }
        }
        Self::for_head_dim(gpu, head_dim).await
    }

    /// The solo design for exactly this head layout (errors when it cannot run it).
    pub async fn solo(gpu: &Gpu, n_heads: u32, n_kv_heads: u32, head_dim: u32) -> Result<Self> {
        let shape = AttentionShape { n_heads, n_kv_heads, head_dim, max_positions: 1 };
        Params::new(&shape, 1)?;
        let group = n_heads / n_kv_heads;
        if group * head_dim / 4 > SOLO_MAX_UNROLL {
            return Err(GpuError::Unsupported(format!(
                "solo attention: {group} heads x {head_dim} dims per KV head (at most {} vec4 values)",
                SOLO_MAX_UNROLL
            )));
        }
        let kernel = Kernel::new(gpu, "attention", &solo_defines(group, head_dim), "main").await?;
        Ok(Attention { kernel, max_head_dim: head_dim, solo: Some((group, head_dim)) })
    }

    /// A uniform buffer holding `p`; later steps rewrite it with `queue.write_buffer(buf, 0, bytes_of(&p))`.
    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "attention params", p)
    }

    /// Binds (params, q [n, n_heads*hd], k_cache [max_positions, kv_dim], v_cache [max_positions, kv_dim],
    /// out [n, n_heads*hd] written, all f32, kv_dim = n_kv_heads*hd; rows [n] of [`crate::rows::Row`]).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        rows: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, q, k_cache, v_cache, out, rows])
    }

    /// Records the kernel for the sizes in `p` (the values the bound uniform holds). `p.head_dim` must be at most
    /// `self.max_head_dim`; larger heads would be left partly unwritten, so they are not dispatched.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) -> Result<()> {
        if let Some((group, head_dim)) = self.solo {
            if p.n_kv_heads == 0 || p.n_heads / p.n_kv_heads != group || p.head_dim != head_dim {
                return Err(GpuError::Unsupported(format!(
                    "attention: {} heads over {} of {} dims on a pipeline built for {group} per KV head of {head_dim}",
                    p.n_heads, p.n_kv_heads, p.head_dim
                )));
            }
            let groups = (p.n_tokens * p.n_kv_heads).div_ceil(SOLO_WORKGROUP);
            if groups > 65535 {
                return Err(GpuError::Unsupported(format!("attention: {} rows in one dispatch", p.n_tokens)));
            }
            self.kernel.dispatch(pass, bind, [groups, 1, 1]);
            return Ok(());
        }
        if p.head_dim > self.max_head_dim {
            return Err(GpuError::Unsupported(format!(
                "attention: head_dim {} on a pipeline built for at most {}",
                p.head_dim, self.max_head_dim
            )));
        }
        self.kernel.dispatch(pass, bind, [p.n_heads, p.n_tokens, 1]);
        Ok(())
    }
}
