//! The model on the GPU: weights uploaded once, every pipeline and bind group created at load, and a forward
//! pass recorded into one command encoder per step with the persona operations inside it.
//!
//! Buffers (f32 unless noted; B = the prompt batch, tokens processed per submit):
//! - `x` [B, d] residual stream; `xn` [B, d] normed input of a sub-layer; `q`/`att` [B, n_heads*hd];
//!   `k`/`v` [B, kv_dim]; `gate`/`up` [B, d_ff]; `last` [d] final-normed last row; `logits` [vocab].
//! - `k_cache`/`v_cache` per block [max_positions, kv_dim]; `ids` (u32) [max_positions]: every token of the
//!   sequence; the sampler writes the next token here and the next step's embedding gather reads it, so a
//!   sampled id never has to travel through the CPU.
//! - `capture` [N+1, d]: the last token's residual at every residual index (copied by the accumulate kernel);
//!   `units` [T, N+1, d] and `mask`: monitored trait directions; `out` (u32): the sampler's record followed by
//!   the projection scores [T, N+1], read back once per step with the token.
//!
//! One decode step = sample (from the previous logits, writing ids[pos]) -> embed ids[pos] -> N blocks
//! (rms_norm, q/k/v matmul (+bias), rope + KV write, attention, o matmul accumulating into x, rms_norm,
//! gate/up matmul, silu_gate, down matmul accumulating into x, then steering and capture hooks) -> final norm of
//! the last row -> LM head -> project scores; one submit, one small readback.

use crate::kernel::{read_buffer, staging, storage, storage_f32, storage_zeroed, uniform};
use crate::kernels::accumulate::{self, Accumulate};
use crate::kernels::attention::{self, Attention, AttentionShape};
use crate::kernels::embed::{self, Embed};
use crate::kernels::matmul::{self, Epilogue, Io, Matmul, MatmulBind};
use crate::kernels::project::{self, Project};
use crate::kernels::rms_norm::{self, RmsNorm};
use crate::kernels::rope::{self, Rope, RopeShape};
use crate::kernels::sample::{self, Sample};
use crate::kernels::silu_gate::{self, SiluGate};
use crate::kernels::steer::{self, SteerKernel};
use crate::profile::{Profiler, Rec};
use crate::quant::{GpuMatrix, PackedFormat, PackedMatrix};
use crate::{Gpu, GpuError, Result};
use personascope_gguf::Gguf;
use personascope_model::{ops, ChatTemplate, Config, SamplingParams, Steer, Tokenizer};
use std::collections::HashMap;

/// Sizes chosen by the embedder.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// KV-cache rows (the longest sequence); clamped to the model's context length.
    pub max_positions: usize,
    /// Prompt tokens processed per submit.
    pub batch: usize,
    /// Most trait vectors monitored at once.
    pub max_traits: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_positions: 2048, batch: 64, max_traits: 16 }
    }
}

/// A uniform buffer and the value it holds, rewritten only when the value changes.
struct Uniform<T> {
    buffer: wgpu::Buffer,
    value: T,
}

impl<T: bytemuck::Pod + PartialEq> Uniform<T> {
    fn new(gpu: &Gpu, label: &str, value: T) -> Self {
        Uniform { buffer: uniform(gpu, label, &value), value }
    }

    fn set(&mut self, gpu: &Gpu, value: T) {
        if value != self.value {
            gpu.queue.write_buffer(&self.buffer, 0, bytemuck::bytes_of(&value));
            self.value = value;
        }
    }
}

/// A matrix product wired to its buffers: one bind group per row part.
struct Product {
    /// Shared with the embedding gather when the LM head is tied to it (uploaded once).
    matrix: std::sync::Arc<GpuMatrix>,
    kernel: (PackedFormat, Epilogue),
    /// Per part: uniform and bind group.
    parts: Vec<(Uniform<matmul::Params>, MatmulBind)>,
}

struct Block {
    attn_norm: wgpu::BindGroup,
    ffn_norm: wgpu::BindGroup,
    q: Product,
    k: Product,
    v: Product,
    o: Product,
    gate: Product,
    up: Product,
    down: Product,
    rope: wgpu::BindGroup,
    attention: wgpu::BindGroup,
    silu: wgpu::BindGroup,
    // Kept alive for the bind groups.
    _buffers: Vec<wgpu::Buffer>,
}

struct Kernels {
    rms_norm: RmsNorm,
    rope: Rope,
    attention: Attention,
    silu: SiluGate,
    sample: Sample,
    project: Project,
    steer: SteerKernel,
    accumulate: Accumulate,
    matmul: HashMap<(PackedFormat, bool, bool), Matmul>,
    embed: HashMap<PackedFormat, Embed>,
}

struct Buffers {
    x: wgpu::Buffer,
    xn: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    att: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    last: wgpu::Buffer,
    last_normed: wgpu::Buffer,
    logits: wgpu::Buffer,
    ids: wgpu::Buffer,
    work: wgpu::Buffer,
    capture: wgpu::Buffer,
    sums: wgpu::Buffer,
    out: wgpu::Buffer,
    /// Two, so that step k+1 can be in flight while step k's record is read.
    staging: [wgpu::Buffer; 2],
}

/// Steering uploaded for the kernel: the vectors and entries, and per steered residual index its uniform and
/// bind group.
struct SteerState {
    layers: Vec<(usize, steer::LayerEntries, Uniform<steer::Params>, wgpu::BindGroup)>,
    _buffers: [wgpu::Buffer; 2],
}

struct MonitorState {
    traits: usize,
    params: Uniform<project::Params>,
    bind: wgpu::BindGroup,
    _buffers: [wgpu::Buffer; 2],
}

/// A submitted decode step whose record is not read yet.
struct Pending {
    slot: usize,
    bytes: u64,
    submission: wgpu::SubmissionIndex,
}

/// What one decode step returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOut {
    pub token: u32,
    /// Projection scores [trait][residual index] of this token's residuals (empty without a monitor).
    pub scores: Vec<Vec<f32>>,
}

/// A model on the GPU.
pub struct GpuModel {
    pub gpu: Gpu,
    pub config: Config,
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub name: String,
    pub options: EngineOptions,
    kernels: Kernels,
    buffers: Buffers,
    embed: (std::sync::Arc<GpuMatrix>, Vec<(Uniform<embed::Params>, wgpu::BindGroup)>),
    blocks: Vec<Block>,
    final_norm: (Uniform<rms_norm::Params>, wgpu::BindGroup),
    lm_head: Product,
    norm_params: Uniform<rms_norm::Params>,
    rope_params: Uniform<rope::Params>,
    attention_params: Uniform<attention::Params>,
    silu_params: Uniform<silu_gate::Params>,
    capture: Vec<(Uniform<accumulate::Params>, wgpu::BindGroup)>,
    sample: (Uniform<sample::Params>, wgpu::BindGroup),
    steer: Option<SteerState>,
    monitor: Option<MonitorState>,
    rope_shape: RopeShape,
    attention_shape: AttentionShape,
    /// Positions processed (the next token's position).
    pos: usize,
    /// Bytes of GPU memory allocated for weights, caches and activations.
    pub gpu_bytes: u64,
    _keep: Vec<wgpu::Buffer>,
}

fn tensor<'a>(g: &'a Gguf, name: &str) -> Result<&'a personascope_gguf::TensorInfo> {
    g.tensor(name).ok_or_else(|| {
        GpuError::Model(personascope_model::ModelError::Tensor { name: name.into(), msg: "missing".into() })
    })
}

fn packed(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<PackedMatrix> {
    let t = tensor(g, name)?;
    let dims_ok = match t.dims.as_slice() {
        [c, r] => *c as usize == cols && *r as usize == rows,
        [c] => *c as usize == cols && rows == 1,
        _ => false,
    };
    if !dims_ok {
        return Err(GpuError::Model(personascope_model::ModelError::Tensor {
            name: name.into(),
            msg: format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
        }));
    }
    PackedMatrix::pack(name, t.ty, rows, cols, g.tensor_data(t))
}

fn vector(g: &Gguf, name: &str) -> Result<Vec<f32>> {
    g.tensor_f32(name).map_err(|e| GpuError::Model(e.into()))
}

impl GpuModel {
    /// Loads a GGUF model (the file's bytes) onto `gpu`. Checks that weights, caches and activations fit the
    /// device's buffer limits before allocating them.
    pub async fn load(gpu: Gpu, file: &[u8], options: EngineOptions) -> Result<Self> {
        Self::load_with_progress(gpu, file, options, &mut |_, _| {}).await
    }

    /// [`GpuModel::load`], calling `progress(done, total)` as the weights go up: once per block, then once for the
    /// embedding and head (a page's upload bar).
    pub async fn load_with_progress(
        gpu: Gpu,
        file: &[u8],
        options: EngineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        // Allocation failures anywhere in the load come back as one error that says how much was asked for.
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let model = Self::load_inner(gpu, file, options, progress).await;
        let refused = oom.pop().await;
        let model = model?;
        match refused {
            None => Ok(model),
            Some(e) => Err(GpuError::AllocationFailed { needed: model.gpu_bytes, msg: e.to_string() }),
        }
    }

    async fn load_inner(
        gpu: Gpu,
        file: &[u8],
        options: EngineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let g = Gguf::parse(file).map_err(|e| GpuError::Model(e.into()))?;
        let config = Config::from_gguf(&g)?;
        let tokenizer = std::sync::Arc::new(Tokenizer::from_gguf(&g)?);
        let template = ChatTemplate::from_gguf(&g)?;
        let name = g.get("general.name").and_then(|v| v.as_str()).unwrap_or(config.arch.name()).to_string();
        let c = config.clone();
        let options = EngineOptions {
            max_positions: options.max_positions.clamp(1, c.context_length),
            batch: options.batch.clamp(1, 512),
            max_traits: options.max_traits.clamp(1, 64),
        };
        let (d, qd, kvd, ff, b) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff, options.batch);
        let cache_bytes = (options.max_positions * kvd * 4) as u64;
        if cache_bytes > gpu.max_binding() {
            return Err(GpuError::OutOfMemory {
                what: format!("a KV cache of {} positions", options.max_positions),
                needed: cache_bytes,
                available: gpu.max_binding(),
            });
        }
        let mut gpu_bytes = 0u64;

        // Kernels shared by every layer.
        let mut kernels = Kernels {
            rms_norm: RmsNorm::new(&gpu).await?,
            rope: Rope::new(&gpu).await?,
            attention: Attention::for_head_dim(&gpu, c.head_dim as u32).await?,
            silu: SiluGate::new(&gpu).await?,
            sample: Sample::new(&gpu).await?,
            project: Project::new(&gpu).await?,
            steer: SteerKernel::new(&gpu).await?,
            accumulate: Accumulate::new(&gpu).await?,
            matmul: HashMap::new(),
            embed: HashMap::new(),
        };

        let f = |n: usize| (n * 4) as u64;
        let bufs = Buffers {
            x: storage_zeroed(&gpu, "x", f(b * d)),
            xn: storage_zeroed(&gpu, "xn", f(b * d)),
            q: storage_zeroed(&gpu, "q", f(b * qd)),
            k: storage_zeroed(&gpu, "k", f(b * kvd)),
            v: storage_zeroed(&gpu, "v", f(b * kvd)),
            att: storage_zeroed(&gpu, "att", f(b * qd)),
            gate: storage_zeroed(&gpu, "gate", f(b * ff)),
            up: storage_zeroed(&gpu, "up", f(b * ff)),
            last: storage_zeroed(&gpu, "last", f(d)),
            last_normed: storage_zeroed(&gpu, "last normed", f(d)),
            logits: storage_zeroed(&gpu, "logits", f(c.vocab_size)),
            ids: storage_zeroed(&gpu, "ids", f(options.max_positions + 1)),
            work: storage_zeroed(&gpu, "sample work", f(c.vocab_size)),
            capture: storage_zeroed(&gpu, "capture", f((c.n_layers + 1) * d)),
            sums: storage_zeroed(&gpu, "sums", f((c.n_layers + 1) * d)),
            out: storage_zeroed(&gpu, "out", f(sample::OUT_WORDS as usize + options.max_traits * (c.n_layers + 1))),
            staging: [0, 1].map(|i| {
                staging(
                    &gpu,
                    &format!("out staging {i}"),
                    f(sample::OUT_WORDS as usize + options.max_traits * (c.n_layers + 1)),
                )
            }),
        };
        gpu_bytes += f(b * (2 * d + 2 * qd + 2 * kvd + 2 * ff) + 2 * d + 2 * c.vocab_size + options.max_positions)
            + f(2 * (c.n_layers + 1) * d);

        // Uniforms shared by every layer (all blocks have the same shapes); values are set per forward call.
        let norm_params =
            Uniform::new(&gpu, "norm", rms_norm::Params { rows: 1, cols: d as u32, eps: c.rms_eps, _pad: 0 });
        let rope_shape = RopeShape {
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            rope_dim: c.rope_dim as u32,
            pairing: c.rope_pairing,
            linear_scale: c.rope_linear_scale,
            max_positions: options.max_positions as u32,
        };
        let attention_shape = AttentionShape {
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            max_positions: options.max_positions as u32,
        };
        let rope_params = Uniform::new(&gpu, "rope", rope::Params::new(&rope_shape, 0, 1)?);
        let attention_params = Uniform::new(&gpu, "attention", attention::Params::new(&attention_shape, 0, 1)?);
        let silu_params = Uniform::new(&gpu, "silu", silu_gate::Params::new(ff as u32));
        let rope_freqs = match g.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(&g, "rope_freqs.weight")?),
            None => None,
        };
        let inv_freq = storage_f32(&gpu, "inv_freq", &ops::rope_inv_freq(&c, rope_freqs.as_deref()));

        let mut keep = Vec::new();
        let mut blocks = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let attn_norm = storage_f32(&gpu, &n("attn_norm"), &vector(&g, &n("attn_norm.weight"))?);
            let ffn_norm = storage_f32(&gpu, &n("ffn_norm"), &vector(&g, &n("ffn_norm.weight"))?);
            let bias = |s: &str| -> Result<Option<wgpu::Buffer>> {
                Ok(if c.qkv_bias { Some(storage_f32(&gpu, &n(s), &vector(&g, &n(s))?)) } else { None })
            };
            let (bq, bk, bv) = (bias("attn_q.bias")?, bias("attn_k.bias")?, bias("attn_v.bias")?);
            let k_cache = storage_zeroed(&gpu, &n("k_cache"), cache_bytes);
            let v_cache = storage_zeroed(&gpu, &n("v_cache"), cache_bytes);
            gpu_bytes += 2 * cache_bytes + f(2 * d);
            let plain = Epilogue { bias: false, accumulate: false };
            let with_bias = Epilogue { bias: c.qkv_bias, accumulate: false };
            let accumulate = Epilogue { bias: false, accumulate: true };
            macro_rules! product {
                ($name:expr, $rows:expr, $cols:expr, $ep:expr, $x:expr, $y:expr, $b:expr) => {{
                    let m = packed(&g, &n($name), $rows, $cols)?;
                    gpu_bytes += m.gpu_bytes();
                    let matrix = std::sync::Arc::new(GpuMatrix::upload(&gpu, &n($name), &m)?);
                    Self::product(&gpu, &mut kernels, &n($name), matrix, $ep, $x, $y, $b).await?
                }};
            }
            let q = product!("attn_q.weight", qd, d, with_bias, &bufs.xn, &bufs.q, bq.as_ref());
            let k = product!("attn_k.weight", kvd, d, with_bias, &bufs.xn, &bufs.k, bk.as_ref());
            let v = product!("attn_v.weight", kvd, d, with_bias, &bufs.xn, &bufs.v, bv.as_ref());
            let o = product!("attn_output.weight", d, qd, accumulate, &bufs.att, &bufs.x, None);
            let gate = product!("ffn_gate.weight", ff, d, plain, &bufs.xn, &bufs.gate, None);
            let up = product!("ffn_up.weight", ff, d, plain, &bufs.xn, &bufs.up, None);
            let down = product!("ffn_down.weight", d, ff, accumulate, &bufs.gate, &bufs.x, None);
            blocks.push(Block {
                attn_norm: kernels.rms_norm.bind(&gpu, &norm_params.buffer, &bufs.x, &attn_norm, &bufs.xn),
                ffn_norm: kernels.rms_norm.bind(&gpu, &norm_params.buffer, &bufs.x, &ffn_norm, &bufs.xn),
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
                rope: kernels.rope.bind(
                    &gpu,
                    &rope_params.buffer,
                    &bufs.q,
                    &bufs.k,
                    &bufs.v,
                    &inv_freq,
                    &k_cache,
                    &v_cache,
                ),
                attention: kernels.attention.bind(
                    &gpu,
                    &attention_params.buffer,
                    &bufs.q,
                    &k_cache,
                    &v_cache,
                    &bufs.att,
                ),
                silu: kernels.silu.bind(&gpu, &silu_params.buffer, &bufs.gate, &bufs.up),
                _buffers: [Some(attn_norm), Some(ffn_norm), bq, bk, bv, Some(k_cache), Some(v_cache)]
                    .into_iter()
                    .flatten()
                    .collect(),
            });
            progress(l + 1, c.n_layers + 1);
        }

        // Embedding (also the LM head when tied) and the head.
        let embd = packed(&g, "token_embd.weight", c.vocab_size, d)?;
        let embed_matrix = std::sync::Arc::new(GpuMatrix::upload(&gpu, "token_embd", &embd)?);
        gpu_bytes += embd.gpu_bytes();
        if let std::collections::hash_map::Entry::Vacant(e) = kernels.embed.entry(embd.format) {
            e.insert(Embed::new(&gpu, embd.format).await?);
        }
        let embed_kernel = &kernels.embed[&embd.format];
        let mut embed_parts = Vec::new();
        for (i, part) in embed_matrix.parts.iter().enumerate() {
            let p = Uniform::new(&gpu, "embed", embed_kernel.params(&embed_matrix, i, 1, 0, 0, d as u32)?);
            let bind = embed_kernel.bind(&gpu, &p.buffer, part, &bufs.ids, &bufs.x);
            embed_parts.push((p, bind));
        }
        let output_norm = storage_f32(&gpu, "output_norm", &vector(&g, "output_norm.weight")?);
        let final_norm_params =
            Uniform::new(&gpu, "final norm", rms_norm::Params { rows: 1, cols: d as u32, eps: c.rms_eps, _pad: 0 });
        let final_norm =
            kernels.rms_norm.bind(&gpu, &final_norm_params.buffer, &bufs.last, &output_norm, &bufs.last_normed);
        let head = if c.tied_embeddings {
            embed_matrix.clone()
        } else {
            let m = packed(&g, "output.weight", c.vocab_size, d)?;
            gpu_bytes += m.gpu_bytes();
            std::sync::Arc::new(GpuMatrix::upload(&gpu, "output", &m)?)
        };
        let lm_head = Self::product(
            &gpu,
            &mut kernels,
            "lm_head",
            head,
            Epilogue { bias: false, accumulate: false },
            &bufs.last_normed,
            &bufs.logits,
            None,
        )
        .await?;

        progress(c.n_layers + 1, c.n_layers + 1);

        // Capture of the last token's residual at every residual index (feeds the projection and `residuals`).
        let mut capture = Vec::with_capacity(c.n_layers + 1);
        for l in 0..=c.n_layers {
            let p = accumulate::Params {
                rows: 1,
                d: d as u32,
                pos0: 0,
                start: 0,
                end: 0,
                x_offset: 0,
                sum_offset: (l * d) as u32,
                capture_offset: (l * d) as u32,
                capture_row: 0,
                flags: accumulate::CAPTURE,
                _pad: [0; 2],
            };
            let u = Uniform::new(&gpu, "capture", p);
            let bind = kernels.accumulate.bind(&gpu, &u.buffer, &bufs.x, &bufs.sums, &bufs.capture);
            capture.push((u, bind));
        }
        let sample_params =
            Uniform::new(&gpu, "sample", sample::Params::new(&SamplingParams::greedy(), c.vocab_size as u32)?);
        let sample_bind =
            kernels.sample.bind(&gpu, &sample_params.buffer, &bufs.logits, &bufs.ids, &bufs.work, &bufs.out);
        keep.push(inv_freq);
        keep.push(output_norm);

        Ok(GpuModel {
            gpu,
            config,
            tokenizer,
            template,
            name,
            options,
            kernels,
            buffers: bufs,
            embed: (embed_matrix, embed_parts),
            blocks,
            final_norm: (final_norm_params, final_norm),
            lm_head,
            norm_params,
            rope_params,
            attention_params,
            silu_params,
            capture,
            sample: (sample_params, sample_bind),
            steer: None,
            monitor: None,
            rope_shape,
            attention_shape,
            pos: 0,
            gpu_bytes,
            _keep: keep,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn product(
        gpu: &Gpu,
        kernels: &mut Kernels,
        label: &str,
        matrix: std::sync::Arc<GpuMatrix>,
        epilogue: Epilogue,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
    ) -> Result<Product> {
        let key = (matrix.format, epilogue.bias, epilogue.accumulate);
        if let std::collections::hash_map::Entry::Vacant(e) = kernels.matmul.entry(key) {
            e.insert(Matmul::new(gpu, matrix.format, epilogue).await?);
        }
        let kernel = &kernels.matmul[&key];
        let mut parts = Vec::with_capacity(matrix.parts.len());
        for (i, part) in matrix.parts.iter().enumerate() {
            let params = Uniform::new(gpu, label, kernel.params(&matrix, i, 1, Io::dense(&matrix))?);
            let bind = kernel.bind(gpu, &params.buffer, part, x, y, bias)?;
            parts.push((params, bind));
        }
        let format = matrix.format;
        Ok(Product { matrix, kernel: (format, epilogue), parts })
    }
}

impl GpuModel {
    /// Positions processed so far (the next token's position).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets the sequence (the KV cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Steering applied from now on: `alpha * v` added after the residual index of each entry, for its positions
    /// (the same semantics as the CPU [`Steer`] hook). An empty `Steer` turns steering off.
    pub fn set_steering(&mut self, steer: &Steer) -> Result<()> {
        let c = &self.config;
        if let Some(s) = steer.0.iter().find(|s| s.layer > c.n_layers || s.vector.len() != c.d_model) {
            return Err(GpuError::Unsupported(format!(
                "steering vector for residual index {} of length {} (model: indices 0..={}, width {})",
                s.layer,
                s.vector.len(),
                c.n_layers,
                c.d_model
            )));
        }
        let packed = steer::pack(steer, c.d_model);
        if packed.entries.is_empty() {
            self.steer = None;
            return Ok(());
        }
        let vectors = storage_f32(&self.gpu, "steer vectors", &packed.vectors);
        let entries = storage(&self.gpu, "steer entries", bytemuck::cast_slice(&packed.entries));
        let mut layers = Vec::new();
        for le in &packed.layers {
            let p = Uniform::new(&self.gpu, "steer", le.params(1, c.d_model as u32, 0, 0));
            let bind = self.kernels.steer.bind(&self.gpu, &p.buffer, &self.buffers.x, &vectors, &entries);
            layers.push((le.layer as usize, *le, p, bind));
        }
        self.steer = Some(SteerState { layers, _buffers: [vectors, entries] });
        Ok(())
    }

    /// Trait directions monitored from now on: `vectors[t][l]` (raw; normalized here) at residual index l.
    /// Every processed token's projections are returned with it. An empty list turns monitoring off.
    pub fn set_monitor(&mut self, vectors: &[Vec<Option<Vec<f32>>>]) -> Result<()> {
        let c = &self.config;
        if vectors.is_empty() {
            self.monitor = None;
            return Ok(());
        }
        if vectors.len() > self.options.max_traits {
            return Err(GpuError::Unsupported(format!(
                "{} monitored traits (at most {})",
                vectors.len(),
                self.options.max_traits
            )));
        }
        let layers = c.n_layers + 1;
        let packed = project::pack(vectors, layers, c.d_model);
        let units = storage_f32(&self.gpu, "monitor units", &packed.units);
        let mask = storage(&self.gpu, "monitor mask", bytemuck::cast_slice(&packed.mask));
        let p = project::Params {
            traits: vectors.len() as u32,
            layers: layers as u32,
            d: c.d_model as u32,
            scores_offset: sample::OUT_WORDS,
        };
        let params = Uniform::new(&self.gpu, "project", p);
        let bind = self.kernels.project.bind(
            &self.gpu,
            &params.buffer,
            &self.buffers.capture,
            &units,
            &mask,
            &self.buffers.out,
        );
        self.monitor = Some(MonitorState { traits: vectors.len(), params, bind, _buffers: [units, mask] });
        Ok(())
    }

    /// Keeps running sums of the residual at every residual index over the tokens at absolute positions in
    /// `positions` (e.g. the response tokens, for the persona method's response average), from now on; the sums
    /// start at zero. `None` stops summing. The sums never leave the GPU until [`GpuModel::read_sums`].
    pub fn set_sum_range(&mut self, positions: Option<std::ops::Range<usize>>) {
        let sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&self.buffers.sums, 0, None);
        self.gpu.queue.submit([enc.finish()]);
        for (u, _) in &mut self.capture {
            let mut p = u.value;
            match &positions {
                Some(r) => {
                    p.flags = accumulate::CAPTURE | accumulate::SUM;
                    p.start = sat(r.start);
                    p.end = sat(r.end);
                }
                None => p.flags = accumulate::CAPTURE,
            }
            u.set(&self.gpu, p);
        }
    }

    /// The running sums [N+1][d] (see [`GpuModel::set_sum_range`]).
    pub async fn read_sums(&self) -> Result<Vec<Vec<f32>>> {
        let d = self.config.d_model;
        let flat = crate::kernel::read_f32(&self.gpu, &self.buffers.sums, (self.config.n_layers + 1) * d).await?;
        Ok(flat.chunks_exact(d).map(<[f32]>::to_vec).collect())
    }

    /// Writes every per-call uniform for `n` tokens at positions `pos0..`.
    fn set_uniforms(&mut self, pos0: usize, n: usize) -> Result<()> {
        let gpu = &self.gpu;
        let c = &self.config;
        let (pos0_u, n_u) = (pos0 as u32, n as u32);
        self.norm_params.set(gpu, rms_norm::Params { rows: n_u, cols: c.d_model as u32, eps: c.rms_eps, _pad: 0 });
        self.rope_params.set(gpu, rope::Params::new(&self.rope_shape, pos0_u, n_u)?);
        self.attention_params.set(gpu, attention::Params::new(&self.attention_shape, pos0_u, n_u)?);
        self.silu_params.set(gpu, silu_gate::Params::new(n_u * c.d_ff as u32));
        let embed_kernel = self
            .kernels
            .embed
            .get(&self.embed.0.format)
            .ok_or_else(|| GpuError::Unsupported("embedding kernel missing".into()))?;
        for (i, (u, _)) in self.embed.1.iter_mut().enumerate() {
            u.set(gpu, embed_kernel.params(&self.embed.0, i, n_u, pos0_u, 0, c.d_model as u32)?);
        }
        for b in &mut self.blocks {
            for prod in [&mut b.q, &mut b.k, &mut b.v, &mut b.o, &mut b.gate, &mut b.up, &mut b.down] {
                let kernel = &self.kernels.matmul[&(prod.kernel.0, prod.kernel.1.bias, prod.kernel.1.accumulate)];
                for (i, (u, _)) in prod.parts.iter_mut().enumerate() {
                    u.set(gpu, kernel.params(&prod.matrix, i, n_u, Io::dense(&prod.matrix))?);
                }
            }
        }
        for (u, _) in &mut self.capture {
            let mut p = u.value;
            p.rows = n_u;
            p.pos0 = pos0_u;
            p.capture_row = n_u - 1;
            u.set(gpu, p);
        }
        if let Some(s) = &mut self.steer {
            for (_, le, u, _) in &mut s.layers {
                u.set(gpu, le.params(n_u, c.d_model as u32, pos0_u, 0));
            }
        }
        Ok(())
    }

    /// Records the blocks for the tokens whose ids are at ids[pos0..pos0+n] (uniforms already set), then the final
    /// norm of the last row, the LM head and the projection.
    fn record_forward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        n: usize,
        sample_first: bool,
        mut prof: Option<&mut Profiler>,
    ) -> Result<()> {
        let k = &self.kernels;
        let c = &self.config;
        {
            let mut rec = Rec::new(enc, prof.as_deref_mut());
            if sample_first {
                rec.run("sample", |p| k.sample.dispatch(p, &self.sample.1));
            }
            let embed_kernel = &k.embed[&self.embed.0.format];
            rec.run("embed", |p| {
                for (u, bind) in &self.embed.1 {
                    embed_kernel.dispatch(p, bind, &u.value);
                }
            });
            self.record_hooks(&mut rec, 0);
            for (l, b) in self.blocks.iter().enumerate() {
                rec.run("rms_norm", |p| k.rms_norm.dispatch(p, &b.attn_norm, n as u32));
                rec.run("matmul q", |p| self.record_product(p, &b.q));
                rec.run("matmul k", |p| self.record_product(p, &b.k));
                rec.run("matmul v", |p| self.record_product(p, &b.v));
                rec.run("rope", |p| k.rope.dispatch(p, &b.rope, &self.rope_params.value));
                let mut attention = Ok(());
                rec.run("attention", |p| {
                    attention = k.attention.dispatch(p, &b.attention, &self.attention_params.value)
                });
                attention?;
                rec.run("matmul o", |p| self.record_product(p, &b.o));
                rec.run("rms_norm", |p| k.rms_norm.dispatch(p, &b.ffn_norm, n as u32));
                rec.run("matmul gate", |p| self.record_product(p, &b.gate));
                rec.run("matmul up", |p| self.record_product(p, &b.up));
                rec.run("silu_gate", |p| k.silu.dispatch(p, &b.silu, &self.silu_params.value));
                rec.run("matmul down", |p| self.record_product(p, &b.down));
                self.record_hooks(&mut rec, l + 1);
            }
        }
        let d4 = (c.d_model * 4) as u64;
        enc.copy_buffer_to_buffer(&self.buffers.x, (n as u64 - 1) * d4, &self.buffers.last, 0, d4);
        {
            let mut rec = Rec::new(enc, prof);
            rec.run("rms_norm", |p| k.rms_norm.dispatch(p, &self.final_norm.1, 1));
            rec.run("lm_head", |p| self.record_product(p, &self.lm_head));
            if let Some(m) = &self.monitor {
                rec.run("project", |p| k.project.dispatch(p, &m.bind, &m.params.value));
            }
        }
        Ok(())
    }

    fn record_product(&self, pass: &mut wgpu::ComputePass<'_>, prod: &Product) {
        let kernel = &self.kernels.matmul[&(prod.kernel.0, prod.kernel.1.bias, prod.kernel.1.accumulate)];
        for (u, bind) in &prod.parts {
            kernel.dispatch(pass, bind, &u.value);
        }
    }

    /// Steering, then capture, at residual index `layer` (so the monitor sees the steered stream, as the CPU path
    /// does with `(Steer, Projection)`).
    fn record_hooks(&self, rec: &mut Rec<'_>, layer: usize) {
        if let Some(s) = &self.steer {
            for (l, _, u, bind) in &s.layers {
                if *l == layer {
                    rec.run("steer", |p| self.kernels.steer.dispatch(p, bind, &u.value));
                }
            }
        }
        let (u, bind) = &self.capture[layer];
        rec.run("capture", |p| self.kernels.accumulate.dispatch(p, bind, &u.value));
    }

    fn check_room(&self, n: usize) -> Result<()> {
        self.gpu.health()?;
        let max = self.options.max_positions;
        if self.pos + n > max {
            return Err(GpuError::Model(personascope_model::ModelError::ContextFull { needed: self.pos + n, max }));
        }
        Ok(())
    }

    /// Processes `tokens` at positions `position()..` in batches. Afterwards the logits of the last token, its
    /// residuals (capture) and, with a monitor, its projections are on the GPU, ready to read or sample from.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        self.check_room(tokens.len())?;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(GpuError::Model(personascope_model::ModelError::TokenOutOfRange {
                id,
                vocab: self.config.vocab_size,
            }));
        }
        self.gpu.queue.write_buffer(&self.buffers.ids, (self.pos * 4) as u64, bytemuck::cast_slice(tokens));
        for chunk in tokens.chunks(self.options.batch) {
            let n = chunk.len();
            self.set_uniforms(self.pos, n)?;
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            self.record_forward(&mut enc, n, false, None)?;
            self.gpu.queue.submit([enc.finish()]);
            self.pos += n;
        }
        Ok(())
    }

    /// One decode step: samples the next token from the current logits on the GPU (writing it to the token
    /// buffer), runs it through the model, and returns it with its projection scores. `step` seeds the sampler's
    /// counter-based random stream (use 0, 1, 2, ... within a reply).
    pub async fn step(&mut self, params: &SamplingParams, step: u32) -> Result<StepOut> {
        let pending = self.submit_step(params, step)?;
        self.finish_step(pending).await
    }

    /// Records and submits decode step `step` (see [`GpuModel::step`]) without waiting for it.
    fn submit_step(&mut self, params: &SamplingParams, step: u32) -> Result<Pending> {
        self.check_room(1)?;
        let pos = self.pos;
        let mut sp = sample::Params::new(params, self.config.vocab_size as u32)?;
        sp.ctx_start = 0;
        sp.ctx_len = pos as u32;
        sp.write_index = pos as u32;
        sp.out_offset = 0;
        sp.step = step;
        self.sample.0.set(&self.gpu, sp);
        self.set_uniforms(pos, 1)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.record_forward(&mut enc, 1, true, None)?;
        let words =
            sample::OUT_WORDS as usize + self.monitor.as_ref().map_or(0, |m| m.traits * (self.config.n_layers + 1));
        let slot = (step % 2) as usize;
        enc.copy_buffer_to_buffer(&self.buffers.out, 0, &self.buffers.staging[slot], 0, (words * 4) as u64);
        let submission = self.gpu.queue.submit([enc.finish()]);
        self.pos += 1;
        Ok(Pending { slot, bytes: (words * 4) as u64, submission })
    }

    /// Waits for a submitted step and decodes its record.
    async fn finish_step(&self, p: Pending) -> Result<StepOut> {
        let staging = &self.buffers.staging[p.slot];
        let bytes = crate::kernel::read_staging_after(&self.gpu, staging, p.bytes, Some(p.submission)).await?;
        self.gpu.health()?;
        let w: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let record = sample::Record::from_words(&w)
            .ok_or_else(|| GpuError::Readback { what: "sample record".into(), msg: "short read".into() })?;
        Ok(StepOut { token: record.token, scores: self.scores_from(&w) })
    }

    fn scores_from(&self, words: &[u32]) -> Vec<Vec<f32>> {
        let Some(m) = &self.monitor else { return Vec::new() };
        let layers = self.config.n_layers + 1;
        (0..m.traits)
            .map(|t| {
                (0..layers)
                    .map(|l| {
                        let i = sample::OUT_WORDS as usize + t * layers + l;
                        words.get(i).map_or(f32::NAN, |&b| f32::from_bits(b))
                    })
                    .collect()
            })
            .collect()
    }

    /// Projection scores [trait][residual index] of the last processed token (e.g. the last prompt token: the
    /// pre-generation reading).
    pub async fn read_scores(&self) -> Result<Vec<Vec<f32>>> {
        let Some(m) = &self.monitor else { return Ok(Vec::new()) };
        let words = sample::OUT_WORDS as usize + m.traits * (self.config.n_layers + 1);
        let bytes = read_buffer(&self.gpu, &self.buffers.out, 0, (words * 4) as u64).await?;
        let w: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(self.scores_from(&w))
    }

    /// The logits of the last processed token.
    pub async fn read_logits(&self) -> Result<Vec<f32>> {
        crate::kernel::read_f32(&self.gpu, &self.buffers.logits, self.config.vocab_size).await
    }

    /// The last processed token's residual at every residual index: [N+1][d] (index 0 = embeddings).
    pub async fn read_residuals(&self) -> Result<Vec<Vec<f32>>> {
        let d = self.config.d_model;
        let flat = crate::kernel::read_f32(&self.gpu, &self.buffers.capture, (self.config.n_layers + 1) * d).await?;
        Ok(flat.chunks_exact(d).map(<[f32]>::to_vec).collect())
    }
}

/// Streaming callback: (token id, its text, its scores [trait][residual index]) -> go on or stop.
pub type OnToken<'a> = dyn FnMut(u32, &str, &[Vec<f32>]) -> personascope_model::Flow + 'a;

/// A finished GPU generation.
#[derive(Debug, Clone)]
pub struct GpuGeneration {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: personascope_model::StopReason,
    /// Projection scores [token][trait][residual index] of every generated token (empty without a monitor).
    pub scores: Vec<Vec<Vec<f32>>>,
    /// Projection scores [trait][residual index] of the last prompt token, from the prefill (empty without a
    /// monitor): the pre-generation reading, at the cost of one small read-back.
    pub prompt_scores: Vec<Vec<f32>>,
}

impl GpuModel {
    /// Generates a reply to `prompt_ids` from position 0 (the cache is reset), streaming each token's text and
    /// scores through `on_token`; stops at an end-of-turn token (not included), `max_tokens`, the cache size,
    /// or when `on_token` returns `Flow::Stop`.
    pub async fn generate(
        &mut self,
        prompt_ids: &[u32],
        max_tokens: usize,
        params: &SamplingParams,
        on_token: &mut OnToken<'_>,
    ) -> Result<GpuGeneration> {
        use personascope_model::{Flow, StopReason};
        if prompt_ids.is_empty() {
            return Err(GpuError::Unsupported("generation needs a non-empty prompt".into()));
        }
        params.validate()?;
        self.reset();
        self.prefill(prompt_ids).await?;
        let prompt_scores = if self.monitor.is_some() { self.read_scores().await? } else { Vec::new() };
        let stop_ids = self.tokenizer.stop_ids().to_vec();
        let tokenizer = self.tokenizer.clone();
        let mut stream = tokenizer.stream();
        let (mut ids, mut text, mut scores) = (Vec::new(), String::new(), Vec::new());
        // Step k+1 is submitted before step k's token is read back, so the GPU never waits for the CPU. When step
        // k turns out to end the reply, step k+1 was wasted work on a sequence that is reset before reuse.
        let can_submit = |model: &Self, count: usize| count < max_tokens && model.pos < model.options.max_positions;
        let mut pending = if can_submit(self, 0) { Some(self.submit_step(params, 0)?) } else { None };
        let stop = loop {
            let Some(current) = pending.take() else {
                break if ids.len() >= max_tokens { StopReason::MaxTokens } else { StopReason::ContextFull };
            };
            let next = ids.len() + 1;
            if can_submit(self, next) {
                pending = Some(self.submit_step(params, next as u32)?);
            }
            let out = self.finish_step(current).await?;
            if stop_ids.contains(&out.token) {
                break StopReason::EndOfTurn;
            }
            ids.push(out.token);
            let piece = stream.push(out.token)?;
            text.push_str(&piece);
            let flow = on_token(out.token, &piece, &out.scores);
            scores.push(out.scores);
            if flow == Flow::Stop {
                break StopReason::Cancelled;
            }
        };
        text.push_str(&stream.finish());
        Ok(GpuGeneration { prompt_ids: prompt_ids.to_vec(), ids, text, stop, scores, prompt_scores })
    }
}

impl GpuModel {
    /// Per-kernel GPU time of one decode step (greedy) and of processing `prompt` (fresh sequence), from timestamp
    /// queries, each dispatch in its own pass: (kernel, milliseconds summed over its dispatches), largest first.
    pub async fn profile(&mut self, prompt: &[u32]) -> Result<(Vec<(String, f64)>, Vec<(String, f64)>)> {
        let mut prof = Profiler::new(&self.gpu, 2048)?;
        self.reset();
        self.check_room(prompt.len() + 1)?;
        self.gpu.queue.write_buffer(&self.buffers.ids, 0, bytemuck::cast_slice(prompt));
        let mut prefill = Vec::new();
        for chunk in prompt.chunks(self.options.batch) {
            self.set_uniforms(self.pos, chunk.len())?;
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            self.record_forward(&mut enc, chunk.len(), false, Some(&mut prof))?;
            prof.finish(&mut enc);
            self.gpu.queue.submit([enc.finish()]);
            prefill.extend(prof.read(&self.gpu).await?);
            self.pos += chunk.len();
        }
        let mut sp = sample::Params::new(&SamplingParams::greedy(), self.config.vocab_size as u32)?;
        sp.ctx_len = self.pos as u32;
        sp.write_index = self.pos as u32;
        self.sample.0.set(&self.gpu, sp);
        self.set_uniforms(self.pos, 1)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.record_forward(&mut enc, 1, true, Some(&mut prof))?;
        prof.finish(&mut enc);
        self.gpu.queue.submit([enc.finish()]);
        let decode = prof.read(&self.gpu).await?;
        self.pos += 1;
        let total = |rows: Vec<(&'static str, f64)>| {
            let mut sums: Vec<(String, f64)> = Vec::new();
            for (name, ns) in rows {
                match sums.iter_mut().find(|(n, _)| n == name) {
                    Some(e) => e.1 += ns / 1e6,
                    None => sums.push((name.to_string(), ns / 1e6)),
                }
            }
            sums.sort_by(|a, b| b.1.total_cmp(&a.1));
            sums
        };
        Ok((total(decode), total(prefill)))
    }
}
