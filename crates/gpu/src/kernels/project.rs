//! Monitor projections at one residual index for chosen rows of a ragged batch: `out[base + t * layers + l] =
//! x[row] . v_hat[t, l]` for every entry (row, base) of one list of the lists buffer ([`crate::rows`]) and every
//! trait monitored at that index. Twin: [`crate::twins::project`]; CPU reference: the plan's `project` in
//! `personascope_model::PlanHook` (NaN where a trait is not monitored: the engine fills those slots itself).

use crate::kernel::{grid_1d, uniform, Kernel};
use crate::shader::Defines;
use crate::{Gpu, Result};

/// Lanes (threads) per score.
pub const LANES: u32 = 32;
/// Scores per workgroup (workgroup = `LANES * SLOTS` threads).
pub const SLOTS: u32 = 8;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub d: u32,
    /// Word of the list's directory entry in the lists buffer.
    pub dir: u32,
    /// The residual index projected.
    pub layer: u32,
    /// Residual indices per trait: N + 1.
    pub layers: u32,
    pub traits: u32,
    pub _pad: [u32; 3],
}

/// Trait directions laid out for the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    /// Unit vectors [traits, layers, d]; zeros where a slot is off.
    pub units: Vec<f32>,
    /// Bit `t * layers + l` set where trait t is monitored at residual index l.
    pub mask: Vec<u32>,
}

impl Packed {
    /// Whether trait `t` is monitored at residual index `l` of `layers`.
    pub fn on(&self, t: usize, l: usize, layers: usize) -> bool {
        let s = t * layers + l;
        self.mask.get(s / 32).is_some_and(|w| (w >> (s % 32)) & 1 == 1)
    }
}

/// Packs unit directions `units[t][l]` (as `personascope_model::plan::units` makes them); a slot is on when its
/// direction exists and has length `d`.
pub fn pack(units: &[Vec<Option<Vec<f32>>>], layers: usize, d: usize) -> Packed {
    let slots = units.len() * layers;
    let mut out = vec![0f32; slots * d];
    let mut mask = vec![0u32; slots.div_ceil(32).max(1)];
    for (t, per_layer) in units.iter().enumerate() {
        for (l, v) in per_layer.iter().take(layers).enumerate() {
            let Some(v) = v.as_ref().filter(|v| v.len() == d) else { continue };
            let s = t * layers + l;
            out[s * d..(s + 1) * d].copy_from_slice(v);
            mask[s / 32] |= 1 << (s % 32);
        }
    }
    Packed { units: out, mask }
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

    /// Binds (params, x f32 [rows, d], units f32 [traits, layers, d], mask u32, out f32 rw, lists u32).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        units: &wgpu::Buffer,
        mask: &wgpu::Buffer,
        out: &wgpu::Buffer,
        lists: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, x, units, mask, out, lists])
    }

    /// Records the kernel for a list of `count` entries and `traits` traits.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, count: u32, traits: u32) {
        if count > 0 && traits > 0 {
            self.kernel.dispatch(pass, bind, grid_1d(count * traits, SLOTS));
        }
    }
}
