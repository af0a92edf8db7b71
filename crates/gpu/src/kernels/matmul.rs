//! Matrix products on packed weights: `y[t, r] (+)= sum_c W[r, c] x[t, c] (+ b[r])` for one row-range part of a
//! [`GpuMatrix`] at a time (dispatch every part into its slice of y). Twin: `personascope_gguf::dot_row`.
//!
//! Two pipelines per format and epilogue: a matrix-vector one for decode (one token per workgroup) and a tiled
//! one for prompts (up to [`TOKENS`] tokens per workgroup, so weights are read once per tile, not per token).
//!
//! Decode shapes with several threads per row reduce their partial sums with `subgroupAdd` when the device has
//! subgroups ([`subgroups_for`], [`reduces_with_subgroups`]), through workgroup memory otherwise;
//! `PERSONASCOPE_NO_SUBGROUPS=1` forces the portable reduction natively.

use crate::kernel::{uniform, Kernel};
use crate::quant::{GpuMatrix, GpuPart, PackedFormat};
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Rows in this part.
    pub rows: u32,
    pub cols: u32,
    pub n_tokens: u32,
    /// This part's first row in the whole matrix: the column of y it writes first, and its index into b.
    pub row_offset: u32,
    /// Elements; a multiple of 4 (x is read as `vec4<f32>`).
    pub x_offset: u32,
    /// Elements between tokens of x; a multiple of 4.
    pub x_stride: u32,
    pub y_offset: u32,
    /// Elements between tokens of y.
    pub y_stride: u32,
}

/// Where x and y live in their buffers (elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    pub x_offset: u32,
    pub x_stride: u32,
    pub y_offset: u32,
    pub y_stride: u32,
}

impl Io {
    /// x [n, cols] and y [n, rows of the whole matrix], both from offset 0.
    pub fn dense(m: &GpuMatrix) -> Io {
        Io { x_offset: 0, x_stride: m.cols as u32, y_offset: 0, y_stride: m.rows as u32 }
    }
}

/// What is added to the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Epilogue {
    /// y += b[r] (binding 5).
    pub bias: bool,
    /// y[t, r] = y[t, r] + result: the residual add after attn_output and ffn_down.
    pub accumulate: bool,
}

/// Workgroup shape: `rows` rows per workgroup, `tpr` threads per row, `tokens` per workgroup, and with one thread
/// per row `rpt` rows per thread (a divisor of `rows`; 1 otherwise). Threads: rows * tpr / rpt <= 256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub rows: u32,
    pub tpr: u32,
    pub tokens: u32,
    pub rpt: u32,
}

impl Shape {
    /// Threads per workgroup.
    pub fn threads(self) -> u32 {
        self.rows * self.tpr / self.rpt.max(1)
    }

    /// Whether the shader can run this shape.
    pub fn valid(self) -> bool {
        self.rows > 0
            && self.tpr > 0
            && self.tokens > 0
            && self.rpt > 0
            && self.rows.is_multiple_of(self.rpt)
            && (self.rpt == 1 || self.tpr == 1)
            && self.threads() <= 256
    }
}

/// Tokens per workgroup of the prompt pipelines: each weight chunk read serves 8 tokens.
pub const TOKENS: u32 = 8;
/// Decode on GPUs: 4 rows x 16 threads = 64 threads per workgroup; the 16 threads of a row read 256 contiguous
/// bytes per step (coalesced), and 4 rows per workgroup still give small matrices (576 rows) 144 workgroups.
pub const DECODE: Shape = Shape { rows: 4, tpr: 16, tokens: 1, rpt: 1 };
/// Prompts on GPUs: as decode, 8 tokens per workgroup.
pub const PROMPT: Shape = Shape { rows: 4, tpr: 16, tokens: TOKENS, rpt: 1 };
/// Decode on CPU adapters (lavapipe, SwiftShader): one thread per row, no reduction and no barrier, 8 rows per
/// thread and 8 threads (one 256-bit SIMD group of lavapipe) per workgroup. Their SIMD lanes are invocations, and
/// there a storage load costs per lane and component even when every lane reads the same address, so reading x
/// is what limits the product; a thread with 8 rows reads it once for all 8. On lavapipe
/// (`examples/matmul_bench.rs`, SmolLM2's Q4_1 matrices) 1.8-2.1x faster than one row per thread.
pub const CPU_DECODE: Shape = Shape { rows: 64, tpr: 1, tokens: 1, rpt: 8 };
/// Prompts on CPU adapters: 16 rows per thread, 8 tokens per tile, 8 threads. On lavapipe 4.5-5x faster than one
/// row per thread (about 22 GFLOP/s on 2 cores against 4.3); more rows per thread no longer helped, fewer than 8
/// threads left SIMD lanes idle.
pub const CPU_PROMPT: Shape = Shape { rows: 128, tpr: 1, tokens: TOKENS, rpt: 16 };

/// The environment variable that overrides the adapter-based choice of [`shapes_for`]: `gpu` or `cpu`. A
/// diagnostic: with `gpu` a CPU adapter (lavapipe) runs the shapes real GPUs run, subgroup reduction included.
pub const SHAPES_ENV: &str = "PERSONASCOPE_MATMUL_SHAPES";

/// The (decode, prompt) shapes [`Matmul::new`] picks for `gpu`: coalesced rows on GPUs, a thread per row on CPUs
/// (unless [`SHAPES_ENV`] says otherwise).
pub fn shapes_for(gpu: &Gpu) -> (Shape, Shape) {
    #[cfg(not(target_arch = "wasm32"))]
    match std::env::var(SHAPES_ENV).as_deref().map(str::trim) {
        Ok("gpu") => return (DECODE, PROMPT),
        Ok("cpu") => return (CPU_DECODE, CPU_PROMPT),
        _ => {}
    }
    if gpu.adapter.device_type == wgpu::DeviceType::Cpu {
        (CPU_DECODE, CPU_PROMPT)
    } else {
        (DECODE, PROMPT)
    }
}

/// Most workgroups per dispatch dimension (WebGPU default limit).
const MAX_GROUPS: u32 = 65_535;

/// The smallest subgroup size WebGPU allows an adapter to report; used when an adapter reports less (or nothing).
pub const MIN_SUBGROUP_SIZE: u32 = 4;

/// The environment variable that, set to `1`, keeps the portable (workgroup-memory) reduction on a device with
/// subgroups: to compare the two, or to rule out a driver's subgroup bug.
pub const NO_SUBGROUPS_ENV: &str = "PERSONASCOPE_NO_SUBGROUPS";

/// The smallest subgroup size of `gpu` when its matmuls should reduce with subgroups: the device has the feature
/// and [`NO_SUBGROUPS_ENV`] is not `1`. `None` means the portable reduction.
pub fn subgroups_for(gpu: &Gpu) -> Option<u32> {
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var(NO_SUBGROUPS_ENV).is_ok_and(|v| v.trim() == "1") {
        return None;
    }
    gpu.caps.subgroups.then(|| subgroup_min(gpu))
}

/// The smallest subgroup size `gpu` may run a pipeline with.
fn subgroup_min(gpu: &Gpu) -> u32 {
    gpu.adapter.subgroup_min_size.max(MIN_SUBGROUP_SIZE)
}

/// Whether a pipeline of `shape` reduces with subgroups when they are offered: only decode shapes with several
/// threads per row. One thread per row has nothing to reduce, and the reduction costs ROWS x TOKENS subgroupAdds
/// per invocation (each row masked in turn, so that no lane layout is assumed): 4 for decode, 32 for a prompt tile
/// of 8 tokens, more than the workgroup-memory sum they would replace.
pub fn reduces_with_subgroups(shape: Shape) -> bool {
    shape.tpr > 1 && shape.tokens == 1
}

/// The defines of one pipeline. `subgroup_min` (the device's smallest subgroup size) selects the subgroup
/// reduction where [`reduces_with_subgroups`] `shape`; it is ignored otherwise.
pub fn defines(format: PackedFormat, epilogue: Epilogue, shape: Shape, subgroup_min: Option<u32>) -> Defines {
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let wg = shape.threads();
    let subgroup_min = subgroup_min.filter(|_| reduces_with_subgroups(shape)).map(|m| m.max(1));
    // Subgroups per workgroup are at most WG / the smallest size; one value per subgroup and (row, token) is kept.
    let slots = subgroup_min.map_or(wg, |m| wg.div_ceil(m));
    let mut d = format.defines();
    d.insert("ROWS", shape.rows.to_string());
    d.insert("TPR", shape.tpr.to_string());
    d.insert("WG", wg.to_string());
    d.insert("TOKENS", shape.tokens.to_string());
    d.insert("RPT", shape.rpt.max(1).to_string());
    // vec4s of x per weight chunk, for the unrolled one-thread-per-row path.
    let nq = d.get("EPC").and_then(|e| e.parse::<u32>().ok()).map_or(1, |e| (e / 4).max(1));
    d.insert("NQ", nq.to_string());
    d.insert("SOLO", flag(shape.tpr == 1));
    d.insert("SUBGROUPS", flag(subgroup_min.is_some()));
    d.insert("SLOTS", slots.to_string());
    d.insert("WHOLE", flag(subgroup_min.is_some_and(|m| wg <= m)));
    // Workgroup memory: a value per thread and token, or with subgroups a value per subgroup, row and token.
    let partials = if subgroup_min.is_some() { slots * shape.rows } else { wg } * shape.tokens;
    d.insert("PARTIALS", partials.to_string());
    d.insert("BIAS", flag(epilogue.bias));
    d.insert("ACCUMULATE", flag(epilogue.accumulate));
    d
}

/// Every format x epilogue x {decode, prompt} x {GPU, CPU adapter}, and each shape that [`reduces_with_subgroups`]
/// also with subgroups: several per workgroup (the smallest size WebGPU allows) and one per workgroup.
pub fn variants() -> Vec<Defines> {
    let mut v = Vec::new();
    for format in PackedFormat::ALL {
        for (bias, accumulate) in [(false, false), (true, false), (false, true), (true, true)] {
            let epilogue = Epilogue { bias, accumulate };
            for shape in [DECODE, PROMPT, CPU_DECODE, CPU_PROMPT] {
                v.push(defines(format, epilogue, shape, None));
                if reduces_with_subgroups(shape) {
                    v.push(defines(format, epilogue, shape, Some(MIN_SUBGROUP_SIZE)));
                    v.push(defines(format, epilogue, shape, Some(shape.threads())));
                }
            }
        }
    }
    v
}

/// Workgroup grid for `rows` rows and `n_tokens` tokens: row blocks on x, continued on y past 65,535 (the shader
/// numbers them `wg.x + 65535 * wg.y`), token tiles on z.
fn grid(shape: Shape, rows: u32, n_tokens: u32) -> [u32; 3] {
    let blocks = rows.div_ceil(shape.rows);
    [blocks.min(MAX_GROUPS), blocks.div_ceil(MAX_GROUPS), n_tokens.div_ceil(shape.tokens)]
}

/// The two bind groups of one (part, x, y, bias) binding: decode and prompt pipelines have their own layouts.
#[derive(Debug)]
pub struct MatmulBind {
    decode: wgpu::BindGroup,
    prompt: wgpu::BindGroup,
}

pub struct Matmul {
    pub format: PackedFormat,
    pub epilogue: Epilogue,
    decode_shape: Shape,
    prompt_shape: Shape,
    decode: Kernel,
    prompt: Kernel,
    /// Whether the (decode, prompt) pipelines reduce with subgroups.
    subgroups: (bool, bool),
}

impl Matmul {
    /// The kernel for `format` and `epilogue`, with the workgroup shapes of [`shapes_for`] `gpu` and the reduction
    /// of [`subgroups_for`] `gpu`.
    pub async fn new(gpu: &Gpu, format: PackedFormat, epilogue: Epilogue) -> Result<Self> {
        let (decode, prompt) = shapes_for(gpu);
        Self::with_shapes(gpu, format, epilogue, decode, prompt).await
    }

    /// With other workgroup shapes than the defaults (tests, benchmarks), the reduction of [`subgroups_for`] `gpu`.
    /// Shapes outside [`variants`] compile but are not validated by the naga test.
    pub async fn with_shapes(
        gpu: &Gpu,
        format: PackedFormat,
        epilogue: Epilogue,
        decode_shape: Shape,
        prompt_shape: Shape,
    ) -> Result<Self> {
        let subgroups = subgroups_for(gpu).is_some();
        Self::with_options(gpu, format, epilogue, decode_shape, prompt_shape, subgroups).await
    }

    /// As [`Matmul::with_shapes`], with the reduction chosen by the caller: `subgroups` on a device without the
    /// feature is an error, never a silent fall back (tests rely on that).
    pub async fn with_options(
        gpu: &Gpu,
        format: PackedFormat,
        epilogue: Epilogue,
        decode_shape: Shape,
        prompt_shape: Shape,
        subgroups: bool,
    ) -> Result<Self> {
        for s in [decode_shape, prompt_shape] {
            if !s.valid() {
                return Err(GpuError::Unsupported(format!("matmul workgroup shape {s:?}")));
            }
        }
        if subgroups && !gpu.caps.subgroups {
            return Err(GpuError::Unsupported(format!(
                "subgroup matmul on {}, which has no subgroups",
                gpu.describe()
            )));
        }
        let min = subgroups.then(|| subgroup_min(gpu));
        Ok(Matmul {
            format,
            epilogue,
            decode_shape,
            prompt_shape,
            decode: Kernel::new(gpu, "matmul", &defines(format, epilogue, decode_shape, min), "main").await?,
            prompt: Kernel::new(gpu, "matmul", &defines(format, epilogue, prompt_shape, min), "main").await?,
            subgroups: (
                subgroups && reduces_with_subgroups(decode_shape),
                subgroups && reduces_with_subgroups(prompt_shape),
            ),
        })
    }

    /// Whether the (decode, prompt) pipelines were compiled with the subgroup reduction (only shapes that
    /// [`reduces_with_subgroups`] ever are).
    pub fn subgroups(&self) -> (bool, bool) {
        self.subgroups
    }

    /// The uniform for part `part` of `m` and `n_tokens` tokens. Errors on a part that does not exist, a format
    /// this kernel was not built for, or x offsets that are not multiples of 4.
    pub fn params(&self, m: &GpuMatrix, part: usize, n_tokens: u32, io: Io) -> Result<Params> {
        if m.format != self.format {
            return Err(GpuError::Unsupported(format!("a {} matrix on a {} matmul kernel", m.format, self.format)));
        }
        let p = m
            .parts
            .get(part)
            .ok_or_else(|| GpuError::Unsupported(format!("part {part} of a matrix of {} parts", m.parts.len())))?;
        let stride_ok = io.x_stride as usize >= m.cols || n_tokens <= 1;
        if !io.x_offset.is_multiple_of(4) || !io.x_stride.is_multiple_of(4) || !stride_ok {
            return Err(GpuError::Unsupported(format!(
                "matmul x offset {} / stride {} (multiples of 4, stride >= {} cols)",
                io.x_offset, io.x_stride, m.cols
            )));
        }
        let rows = p.rows.len() as u32;
        Ok(Params {
            rows,
            cols: m.cols as u32,
            n_tokens,
            row_offset: p.rows.start as u32,
            x_offset: io.x_offset,
            x_stride: io.x_stride,
            y_offset: io.y_offset,
            y_stride: io.y_stride,
        })
    }

    /// [`Matmul::params`] in a fresh uniform buffer.
    pub fn params_buffer(&self, gpu: &Gpu, m: &GpuMatrix, part: usize, n_tokens: u32, io: Io) -> Result<wgpu::Buffer> {
        Ok(uniform(gpu, "matmul params", &self.params(m, part, n_tokens, io)?))
    }

    /// Binds (params, the part's codes and scales, x, y, and b when the epilogue adds a bias: b spans the whole
    /// matrix's rows). Errors if b is missing or given when not expected.
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        part: &GpuPart,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
    ) -> Result<MatmulBind> {
        if bias.is_some() != self.epilogue.bias {
            return Err(GpuError::Unsupported(format!(
                "matmul built {} a bias, bound {} one",
                if self.epilogue.bias { "with" } else { "without" },
                if bias.is_some() { "with" } else { "without" }
            )));
        }
        let mut entries = vec![(0, params), (1, &part.codes), (3, x), (4, y)];
        if !self.format.is_plain() {
            entries.push((2, &part.scales));
        }
        if let Some(b) = bias {
            entries.push((5, b));
        }
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        Ok(MatmulBind {
            decode: self.decode.bind_entries(gpu, &entries),
            prompt: self.prompt.bind_entries(gpu, &entries),
        })
    }

    /// Records the product for `params` (the values last written to the bound uniform): the decode pipeline for
    /// one token, the tiled one for more.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &MatmulBind, params: &Params) {
        if params.rows == 0 || params.n_tokens == 0 {
            return;
        }
        let (kernel, group, shape) = if params.n_tokens == 1 {
            (&self.decode, &bind.decode, self.decode_shape)
        } else {
            (&self.prompt, &bind.prompt, self.prompt_shape)
        };
        kernel.dispatch(pass, group, grid(shape, params.rows, params.n_tokens));
    }
}
