//! Monitor projections: `scores[t, l] = h_l . v_hat[t, l]` for the current token over every trait and residual
//! index in one dispatch, written into the out record next to the sampled token. Twin: [`crate::twins::project`];
//! CPU reference: [`personascope_model::Projection`] (NaN where a trait is not monitored).
//!
//! Out record: the sampler's record takes words `0..sample::OUT_WORDS` and the scores follow at
//! `scores_offset = sample::OUT_WORDS` (f32 bits, `t * layers + l`), so one readback of
//! `4 * (OUT_WORDS + traits * layers)` bytes per step carries the token and every score.

use crate::kernel::{grid_1d, uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};

/// Lanes (threads) per score.
pub const LANES: u32 = 32;
/// Scores per workgroup (workgroup = `LANES * SLOTS` threads).
pub const SLOTS: u32 = 8;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub traits: u32,
    /// Residual indices per trait: N + 1.
    pub layers: u32,
    pub d: u32,
    /// `out[scores_offset + t * layers + l]` receives the score's f32 bits.
    pub scores_offset: u32,
}

impl Params {
    pub fn slots(&self) -> u32 {
        self.traits * self.layers
    }

    /// Checks buffer lengths (elements): capture [layers, d], vectors [traits, layers, d], mask, out.
    pub fn check(&self, capture_len: usize, vectors_len: usize, mask_len: usize, out_len: usize) -> Result<()> {
        let slots = self.traits as u64 * self.layers as u64;
        let ok = self.layers as u64 * self.d as u64 <= capture_len as u64
            && slots * self.d as u64 <= vectors_len as u64
            && slots.div_ceil(32) <= mask_len as u64
            && self.scores_offset as u64 + slots <= out_len as u64;
        if ok {
            Ok(())
        } else {
            Err(GpuError::Validation {
                what: "project".into(),
                msg: format!(
                    "{self:?} with capture {capture_len}, vectors {vectors_len}, mask {mask_len}, out {out_len}"
                ),
            })
        }
    }
}

/// Trait directions laid out for the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    /// Unit vectors [traits, layers, d]; zeros where a slot is off.
    pub units: Vec<f32>,
    /// Bit `t * layers + l` set where trait t is monitored at residual index l.
    pub mask: Vec<u32>,
}

/// Packs raw directions `vectors[t][l]` (as [`personascope_model::Projection::new`] takes them): each is
/// normalized the same way; a slot is on when its vector exists, has length `d` and a nonzero norm.
pub fn pack(vectors: &[Vec<Option<Vec<f32>>>], layers: usize, d: usize) -> Packed {
    let slots = vectors.len() * layers;
    let mut units = vec![0f32; slots * d];
    let mut mask = vec![0u32; slots.div_ceil(32).max(1)];
    for (t, per_layer) in vectors.iter().enumerate() {
        for (l, v) in per_layer.iter().take(layers).enumerate() {
            let Some(v) = v.as_ref().filter(|v| v.len() == d) else { continue };
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                let s = t * layers + l;
                for (u, x) in units[s * d..(s + 1) * d].iter_mut().zip(v) {
                    *u = x / norm;
                }
                mask[s / 32] |= 1 << (s % 32);
            }
        }
    }
    Packed { units, mask }
}

fn defines() -> Defines {
    Defines::from([("SLOTS", SLOTS.to_string()), ("WG", (SLOTS * LANES).to_string())])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

pub struct Project {
    pub kernel: Kernel,
}

impl Project {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Project { kernel: Kernel::new(gpu, "project", &defines(), "main").await? })
    }

    pub fn params(gpu: &Gpu, p: &Params) -> wgpu::Buffer {
        uniform(gpu, "project params", p)
    }

    /// Binds (params, capture f32 [layers, d], units f32 [traits, layers, d], mask u32, out u32 rw).
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        capture: &wgpu::Buffer,
        units: &wgpu::Buffer,
        mask: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, capture, units, mask, out])
    }

    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, p: &Params) {
        self.kernel.dispatch(pass, bind, grid_1d(p.slots(), SLOTS));
    }
}
