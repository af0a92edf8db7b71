//! The model on the GPU: weights uploaded once, every pipeline and bind group created at load, and forward calls
//! over ragged batches of rows (many sequences, each with its own positions and KV rows) recorded into one command
//! encoder each, with the persona operations of every sequence's plan inside the pass.
//!
//! Buffers (f32 unless noted; B = rows per forward call, H = LM-head rows per chunk and most generating
//! sequences per wave):
//! - `x` [B, d] residual stream; `xn` [B, d] normed input of a sub-layer; `q`/`att` [B, n_heads*hd];
//!   `k`/`v` [B, kv_dim]; `gate`/`up` [B, d_ff]; `tokens` (u32) [B] the call's input ids (the sampler writes them
//!   for a decode step, so a sampled id never travels through the CPU before it is used);
//! - `rows` [B] the row table and `lists` (u32) the call's hook lists ([`crate::rows`]);
//! - per block a KV cache [max_positions, kv_dim], shared by the sequences of a wave (each has its own region);
//! - `head_x`/`head_normed` [H, d] the rows whose logits are wanted, `logits` [H, vocab];
//! - `history` (u32) every generating sequence's tokens (the repetition-penalty context); `work` [H, vocab] the
//!   sampler's scratch; `out` the wave's results (captures, sums, projections, log-probabilities) followed by the
//!   decode step's records and scores, read back once per wave and once per step.
//!
//! One forward call = (sample) -> embed tokens -> hooks(0) -> per block (rms_norm, q/k/v matmul (+bias), rope + KV
//! write, attention, o matmul accumulating into x, rms_norm, gate/up matmul, silu_gate, down matmul accumulating
//! into x, hooks(l+1)) -> per head chunk (gather rows, final norm, LM head, log-probabilities); one submit.
//! hooks(L) = steering, then captures, sums and projections, each one dispatch over every row of the call.

use crate::kernel::{staging, storage, storage_f32, storage_zeroed, uniform};
use crate::kernels::accumulate::{self, Accumulate};
use crate::kernels::attention::{self, Attention, AttentionShape};
use crate::kernels::embed::{self, Embed};
use crate::kernels::gather::{self, Gather};
use crate::kernels::logprob::{self, Logprob};
use crate::kernels::matmul::{self, Epilogue, Io, Matmul, MatmulBind};
use crate::kernels::project::{self, Project};
use crate::kernels::rms_norm::{self, RmsNorm};
use crate::kernels::rope::{self, Rope, RopeShape};
use crate::kernels::sample::{self, Sample};
use crate::kernels::silu_gate::{self, SiluGate};
use crate::kernels::steer::{self, SteerKernel};
use crate::profile::{Profiler, Rec};
use crate::quant::{GpuMatrix, PackedFormat, PackedMatrix};
use crate::rows::{Layout, List, Lists, Row};
use crate::{Gpu, GpuError, Result};
use personascope_gguf::Gguf;
use personascope_model::{ops, ChatTemplate, Config, Tokenizer};
use std::collections::HashMap;

/// Sizes chosen by the embedder.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// KV-cache rows shared by the sequences of a wave (and so the longest sequence); clamped to the model's
    /// context length.
    pub max_positions: usize,
    /// Rows processed per forward call (per submit).
    pub batch: usize,
    /// Most trait vectors monitored at once.
    pub max_traits: usize,
    /// LM-head rows computed at once, and the most sequences generating together.
    pub head_rows: usize,
    /// f32 values of results a wave may return (captures, sums, projections, log-probabilities).
    pub out_floats: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_positions: 2048, batch: 256, max_traits: 16, head_rows: 32, out_floats: 1 << 22 }
    }
}

/// A uniform buffer and the value it holds, rewritten only when the value changes.
pub(crate) struct Uniform<T> {
    pub buffer: wgpu::Buffer,
    pub value: T,
}

impl<T: bytemuck::Pod + PartialEq> Uniform<T> {
    pub fn new(gpu: &Gpu, label: &str, value: T) -> Self {
        Uniform { buffer: uniform(gpu, label, &value), value }
    }

    pub fn set(&mut self, gpu: &Gpu, value: T) {
        if value != self.value {
            gpu.queue.write_buffer(&self.buffer, 0, bytemuck::bytes_of(&value));
            self.value = value;
        }
    }
}

/// A matrix product wired to its buffers: one bind group per row part.
pub(crate) struct Product {
    /// Shared with the embedding gather when the LM head is tied to it (uploaded once).
    pub matrix: std::sync::Arc<GpuMatrix>,
    pub kernel: (PackedFormat, Epilogue),
    /// Per part: uniform and bind group.
    pub parts: Vec<(Uniform<matmul::Params>, MatmulBind)>,
}

pub(crate) struct Block {
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

pub(crate) struct Kernels {
    pub rms_norm: RmsNorm,
    pub rope: Rope,
    pub attention: Attention,
    pub silu: SiluGate,
    pub sample: Sample,
    pub project: Project,
    pub steer: SteerKernel,
    pub accumulate: Accumulate,
    pub gather: Gather,
    pub logprob: Logprob,
    pub matmul: HashMap<(PackedFormat, bool, bool), Matmul>,
    pub embed: HashMap<PackedFormat, Embed>,
}

pub(crate) struct Buffers {
    pub x: wgpu::Buffer,
    xn: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    att: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    pub tokens: wgpu::Buffer,
    pub rows: wgpu::Buffer,
    pub lists: wgpu::Buffer,
    pub head_x: wgpu::Buffer,
    head_normed: wgpu::Buffer,
    pub logits: wgpu::Buffer,
    pub history: wgpu::Buffer,
    pub work: wgpu::Buffer,
    pub out: wgpu::Buffer,
    /// Readback of the wave's results.
    pub out_staging: wgpu::Buffer,
    /// Two, so that step k+1 can be in flight while step k's record is read.
    pub step_staging: [wgpu::Buffer; 2],
    pub sample_params: wgpu::Buffer,
}

/// Steering of a wave uploaded for the kernel: per steered residual index its uniform and bind group.
pub(crate) struct SteerState {
    pub layers: Vec<(usize, Uniform<steer::Params>, wgpu::BindGroup)>,
    pub _buffers: [wgpu::Buffer; 2],
}

/// The monitored directions of the current waves, and per residual index the projection's bind group.
pub(crate) struct MonitorState {
    pub units: std::sync::Arc<personascope_model::Units>,
    pub packed: project::Packed,
    pub traits: usize,
    pub binds: Vec<(Uniform<project::Params>, wgpu::BindGroup)>,
    pub _buffers: [wgpu::Buffer; 2],
}

/// Per-call uniforms of one LM-head chunk.
pub(crate) struct HeadChunk {
    gather: (Uniform<gather::Params>, wgpu::BindGroup),
    norm: (Uniform<rms_norm::Params>, wgpu::BindGroup),
    lm_head: Product,
    logprob: (Uniform<logprob::Params>, wgpu::BindGroup),
}

/// What one head chunk of a forward call computes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChunkPlan {
    /// Rows gathered (LM-head rows).
    pub rows: u32,
    /// Logits row the chunk's first row lands in.
    pub row0: u32,
    /// Log-probabilities taken from it.
    pub logprobs: u32,
}

/// One forward call as recorded.
pub(crate) struct CallPlan {
    pub rows: u32,
    /// Blocks run.
    pub blocks: usize,
    /// Sequences sampled before the blocks (a decode step), 0 for none.
    pub sample: u32,
    pub lists: Lists,
    pub chunks: Vec<ChunkPlan>,
}

/// What one decode step returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOut {
    pub token: u32,
    /// Projection scores [trait][residual index] of this token's residuals (empty without a monitor).
    pub scores: Vec<Vec<f32>>,
}

/// A recorder that counts the dispatches it records.
pub(crate) struct Counted<'a> {
    rec: Rec<'a>,
    count: u64,
}

impl Counted<'_> {
    fn run(&mut self, name: &'static str, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        self.count += 1;
        self.rec.run(name, f);
    }
}

/// A model on the GPU.
pub struct GpuModel {
    pub gpu: Gpu,
    pub config: Config,
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub name: String,
    /// The sizes the buffers were made for: read-only after load (a larger `max_positions` than the buffers
    /// hold would pass the engine's room checks and overrun them).
    pub(crate) options: EngineOptions,
    pub(crate) kernels: Kernels,
    pub(crate) buffers: Buffers,
    embed: (std::sync::Arc<GpuMatrix>, Vec<(Uniform<embed::Params>, wgpu::BindGroup)>),
    blocks: Vec<Block>,
    heads: Vec<HeadChunk>,
    norm_params: Uniform<rms_norm::Params>,
    rope_params: Uniform<rope::Params>,
    attention_params: Uniform<attention::Params>,
    silu_params: Uniform<silu_gate::Params>,
    /// Per residual index: the capture gather and the sum, reading their lists from the lists buffer.
    capture: Vec<(Uniform<gather::Params>, wgpu::BindGroup)>,
    sums: Vec<(Uniform<accumulate::Params>, wgpu::BindGroup)>,
    sample_bind: wgpu::BindGroup,
    pub(crate) steer: Option<SteerState>,
    pub(crate) monitor: Option<MonitorState>,
    pub(crate) rope_shape: RopeShape,
    pub(crate) attention_shape: AttentionShape,
    pub(crate) layout: Layout,
    /// The wave being run (see `wave.rs`).
    pub(crate) wave: crate::wave::WaveState,
    /// Bytes of every GPU buffer the load made: weights, caches, activations, uniforms and staging buffers.
    pub gpu_bytes: u64,
    /// How many buffers those are (readbacks make short-lived ones later; they are not counted here).
    pub gpu_buffers: u64,
    /// Submits and dispatches recorded so far.
    pub(crate) submits: u64,
    pub(crate) dispatches: u64,
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
    /// The sizes this engine was loaded with (clamped to the model and the device).
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

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
        let mut model = model?;
        if let Some(e) = refused {
            return Err(GpuError::AllocationFailed { needed: model.gpu_bytes, msg: e.to_string() });
        }
        // As the CPU loader does: weights that give non-finite logits fail the load, not the first chat.
        let token = model.tokenizer.bos_id().unwrap_or(0);
        let logits = model.logits(&[token]).await?;
        personascope_model::broken_logits(&logits)?;
        Ok(model)
    }

    async fn load_inner(
        gpu: Gpu,
        file: &[u8],
        options: EngineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let g = Gguf::parse(file).map_err(|e| GpuError::Model(e.into()))?;
        let config = Config::from_gguf(&g)?;
        personascope_model::check_tensors(&g, &config)?;
        let tokenizer = std::sync::Arc::new(Tokenizer::from_gguf(&g)?);
        let template = ChatTemplate::from_gguf(&g)?;
        let name = g.get("general.name").and_then(|v| v.as_str()).unwrap_or(config.arch.name()).to_string();
        let c = config.clone();
        let max_binding = gpu.max_binding();
        let logits_row = (c.vocab_size * 4) as u64;
        // The logits of H rows must fit one binding.
        let head_cap = (max_binding / logits_row.max(1)).max(1) as usize;
        let batch = options.batch.clamp(1, 512);
        let options = EngineOptions {
            max_positions: options.max_positions.clamp(1, c.context_length),
            batch,
            max_traits: options.max_traits.clamp(1, 64),
            head_rows: options.head_rows.clamp(1, 256).min(head_cap).min(batch),
            out_floats: options.out_floats.clamp(1 << 16, (max_binding / 8) as usize),
        };
        let (d, qd, kvd, ff, b, h) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff, options.batch, options.head_rows);
        let layers = c.n_layers + 1;
        // Sizes in u64: on wasm32 a product of a few sizes overflows usize.
        let fits = |what: String, elements: u64| -> Result<()> {
            let needed = elements.saturating_mul(4);
            if needed > max_binding {
                return Err(GpuError::OutOfMemory { what, needed, available: max_binding });
            }
            Ok(())
        };
        let n64 = |n: usize| n as u64;
        let cache_bytes = n64(options.max_positions) * n64(kvd) * 4;
        fits(format!("a KV cache of {} positions", options.max_positions), n64(options.max_positions) * n64(kvd))?;
        for (what, width) in [("hidden", d), ("query", qd), ("key/value", kvd), ("feed-forward", ff)] {
            fits(format!("{what} activations of a batch of {b} tokens"), n64(b) * n64(width))?;
        }
        fits(format!("the logits of {h} rows"), n64(h) * n64(c.vocab_size))?;
        // Every buffer goes through the Gpu's counting helpers: the memory figure is what was made during the load.
        let made_before = gpu.buffers_made();

        // Kernels shared by every layer.
        let mut kernels = Kernels {
            rms_norm: RmsNorm::new(&gpu).await?,
            rope: Rope::new(&gpu).await?,
            attention: Attention::for_model(&gpu, c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32).await?,
            silu: SiluGate::new(&gpu).await?,
            sample: Sample::new(&gpu).await?,
            project: Project::new(&gpu).await?,
            steer: SteerKernel::new(&gpu).await?,
            accumulate: Accumulate::accumulate(&gpu).await?,
            gather: Gather::gather(&gpu).await?,
            logprob: Logprob::new(&gpu).await?,
            matmul: HashMap::new(),
            embed: HashMap::new(),
        };

        let chunks = b.div_ceil(h);
        let layout = Layout { layers, chunks };
        let f = |n: usize| n as u64 * 4;
        let step_words = crate::wave::step_words(h, options.max_traits, layers);
        fits(format!("the token history of {h} rows"), n64(h) * n64(options.max_positions))?;
        let history = h * options.max_positions;
        let lists_words = Lists::capacity(layout, b, b);
        let bufs = Buffers {
            x: storage_zeroed(&gpu, "x", f(b * d)),
            xn: storage_zeroed(&gpu, "xn", f(b * d)),
            q: storage_zeroed(&gpu, "q", f(b * qd)),
            k: storage_zeroed(&gpu, "k", f(b * kvd)),
            v: storage_zeroed(&gpu, "v", f(b * kvd)),
            att: storage_zeroed(&gpu, "att", f(b * qd)),
            gate: storage_zeroed(&gpu, "gate", f(b * ff)),
            up: storage_zeroed(&gpu, "up", f(b * ff)),
            tokens: storage_zeroed(&gpu, "tokens", f(b)),
            rows: storage_zeroed(&gpu, "rows", (b * std::mem::size_of::<Row>()) as u64),
            lists: storage_zeroed(&gpu, "lists", f(lists_words)),
            head_x: storage_zeroed(&gpu, "head x", f(h * d)),
            head_normed: storage_zeroed(&gpu, "head normed", f(h * d)),
            logits: storage_zeroed(&gpu, "logits", f(h * c.vocab_size)),
            history: storage_zeroed(&gpu, "history", f(history)),
            work: storage_zeroed(&gpu, "sample work", f(h * c.vocab_size)),
            out: storage_zeroed(&gpu, "out", f(options.out_floats + step_words)),
            out_staging: staging(&gpu, "out staging", f(options.out_floats)),
            step_staging: [0, 1].map(|i| staging(&gpu, &format!("step staging {i}"), f(step_words))),
            sample_params: storage_zeroed(&gpu, "sample params", (h * std::mem::size_of::<sample::Params>()) as u64),
        };

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
        let rope_params = Uniform::new(&gpu, "rope", rope::Params::new(&rope_shape, 1)?);
        let attention_params = Uniform::new(&gpu, "attention", attention::Params::new(&attention_shape, 1)?);
        let silu_params = Uniform::new(&gpu, "silu", silu_gate::Params::new(ff as u32));
        let rope_freqs = match g.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(&g, "rope_freqs.weight")?),
            None => None,
        };
        let inv_freq = storage_f32(&gpu, "inv_freq", &ops::rope_inv_freq(&c, rope_freqs.as_deref()));

        let mut keep = Vec::new();
        let mut blocks = Vec::new();
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
            let plain = Epilogue { bias: false, accumulate: false };
            let with_bias = Epilogue { bias: c.qkv_bias, accumulate: false };
            let accumulate = Epilogue { bias: false, accumulate: true };
            macro_rules! product {
                ($name:expr, $rows:expr, $cols:expr, $ep:expr, $x:expr, $y:expr, $b:expr) => {{
                    let m = packed(&g, &n($name), $rows, $cols)?;
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
                    &bufs.rows,
                ),
                attention: kernels.attention.bind(
                    &gpu,
                    &attention_params.buffer,
                    &bufs.q,
                    &k_cache,
                    &v_cache,
                    &bufs.att,
                    &bufs.rows,
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
        if let std::collections::hash_map::Entry::Vacant(e) = kernels.embed.entry(embd.format) {
            e.insert(Embed::new(&gpu, embd.format).await?);
        }
        let embed_kernel = &kernels.embed[&embd.format];
        let mut embed_parts = Vec::new();
        for (i, part) in embed_matrix.parts.iter().enumerate() {
            let p = Uniform::new(&gpu, "embed", embed_kernel.params(&embed_matrix, i, 1, 0, 0, d as u32)?);
            let bind = embed_kernel.bind(&gpu, &p.buffer, part, &bufs.tokens, &bufs.x);
            embed_parts.push((p, bind));
        }
        let output_norm = storage_f32(&gpu, "output_norm", &vector(&g, "output_norm.weight")?);
        let head = if c.tied_embeddings {
            embed_matrix.clone()
        } else {
            let m = packed(&g, "output.weight", c.vocab_size, d)?;
            std::sync::Arc::new(GpuMatrix::upload(&gpu, "output", &m)?)
        };
        // One set of uniforms per head chunk a forward call may have: each chunk's values differ within a call.
        let mut heads = Vec::with_capacity(chunks);
        for ci in 0..chunks {
            let gp = Uniform::new(
                &gpu,
                "head gather",
                gather::Params { d: d as u32, dir: layout.dir(List::Head(ci)) as u32, _pad: [0; 2] },
            );
            let gb = kernels.gather.bind(&gpu, &gp.buffer, &bufs.x, &bufs.head_x, &bufs.lists);
            let np =
                Uniform::new(&gpu, "head norm", rms_norm::Params { rows: 1, cols: d as u32, eps: c.rms_eps, _pad: 0 });
            let nb = kernels.rms_norm.bind(&gpu, &np.buffer, &bufs.head_x, &output_norm, &bufs.head_normed);
            let lm_head = Self::product(
                &gpu,
                &mut kernels,
                "lm_head",
                head.clone(),
                Epilogue { bias: false, accumulate: false },
                &bufs.head_normed,
                &bufs.logits,
                None,
            )
            .await?;
            let lp = Uniform::new(
                &gpu,
                "logprob",
                logprob::Params {
                    vocab: c.vocab_size as u32,
                    dir: layout.dir(List::Logprob(ci)) as u32,
                    row0: 0,
                    _pad: 0,
                },
            );
            let lb = kernels.logprob.bind(&gpu, &lp.buffer, &bufs.logits, &bufs.lists, &bufs.out);
            heads.push(HeadChunk { gather: (gp, gb), norm: (np, nb), lm_head, logprob: (lp, lb) });
        }
        progress(c.n_layers + 1, c.n_layers + 1);

        // Captures and sums of every residual index, reading their lists from the lists buffer.
        let mut capture = Vec::with_capacity(layers);
        let mut sums = Vec::with_capacity(layers);
        for l in 0..layers {
            let p = Uniform::new(
                &gpu,
                "capture",
                gather::Params { d: d as u32, dir: layout.dir(List::Capture(l)) as u32, _pad: [0; 2] },
            );
            let bind = kernels.gather.bind(&gpu, &p.buffer, &bufs.x, &bufs.out, &bufs.lists);
            capture.push((p, bind));
            let p = Uniform::new(
                &gpu,
                "sum",
                accumulate::Params { d: d as u32, dir: layout.dir(List::Sum(l)) as u32, _pad: [0; 2] },
            );
            let bind = kernels.accumulate.bind(&gpu, &p.buffer, &bufs.x, &bufs.out, &bufs.lists);
            sums.push((p, bind));
        }
        let sample_bind = kernels.sample.bind(
            &gpu,
            &bufs.sample_params,
            &bufs.logits,
            &bufs.history,
            &bufs.work,
            &bufs.out,
            &bufs.tokens,
        );
        keep.push(inv_freq);
        keep.push(output_norm);

        let made = gpu.buffers_made();
        let (gpu_buffers, gpu_bytes_made) = (made.0 - made_before.0, made.1 - made_before.1);
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
            heads,
            norm_params,
            rope_params,
            attention_params,
            silu_params,
            capture,
            sums,
            sample_bind,
            steer: None,
            monitor: None,
            rope_shape,
            attention_shape,
            layout,
            wave: Default::default(),
            gpu_bytes: gpu_bytes_made,
            gpu_buffers,
            submits: 0,
            dispatches: 0,
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

    /// Steering of the current wave, `(sequence, entry)` pairs (replacing the previous wave's).
    pub(crate) fn upload_steering<'a>(
        &mut self,
        steering: impl IntoIterator<Item = (usize, &'a personascope_model::Steering)>,
    ) {
        let c = &self.config;
        let packed = steer::pack(steering, c.d_model);
        if packed.entries.is_empty() {
            self.steer = None;
            return;
        }
        let vectors = storage_f32(&self.gpu, "steer vectors", &packed.vectors);
        let entries = storage(&self.gpu, "steer entries", bytemuck::cast_slice(&packed.entries));
        let mut layers = Vec::new();
        for le in &packed.layers {
            let p = Uniform::new(
                &self.gpu,
                "steer",
                steer::Params { d: c.d_model as u32, first: le.first, count: le.count, _pad: 0 },
            );
            let bind = self.kernels.steer.bind(
                &self.gpu,
                &p.buffer,
                &self.buffers.x,
                &vectors,
                &entries,
                &self.buffers.rows,
                &self.buffers.lists,
            );
            layers.push((le.layer as usize, p, bind));
        }
        self.steer = Some(SteerState { layers, _buffers: [vectors, entries] });
    }

    /// The monitored unit directions from now on (unchanged when the same set is given again); None turns
    /// monitoring off.
    pub(crate) fn upload_monitor(&mut self, units: Option<&std::sync::Arc<personascope_model::Units>>) -> Result<()> {
        let Some(units) = units.filter(|u| !u.is_empty()) else {
            self.monitor = None;
            return Ok(());
        };
        if self.monitor.as_ref().is_some_and(|m| std::sync::Arc::ptr_eq(&m.units, units)) {
            return Ok(());
        }
        if units.len() > self.options.max_traits {
            return Err(GpuError::Unsupported(format!(
                "{} monitored traits (at most {})",
                units.len(),
                self.options.max_traits
            )));
        }
        let c = &self.config;
        let layers = c.n_layers + 1;
        let packed = project::pack(units, layers, c.d_model);
        let ubuf = storage_f32(&self.gpu, "monitor units", &packed.units);
        let mask = storage(&self.gpu, "monitor mask", bytemuck::cast_slice(&packed.mask));
        let mut binds = Vec::with_capacity(layers);
        for l in 0..layers {
            let p = Uniform::new(
                &self.gpu,
                "project",
                project::Params {
                    d: c.d_model as u32,
                    dir: self.layout.dir(List::Project(l)) as u32,
                    layer: l as u32,
                    layers: layers as u32,
                    traits: units.len() as u32,
                    _pad: [0; 3],
                },
            );
            let bind = self.kernels.project.bind(
                &self.gpu,
                &p.buffer,
                &self.buffers.x,
                &ubuf,
                &mask,
                &self.buffers.out,
                &self.buffers.lists,
            );
            binds.push((p, bind));
        }
        self.monitor =
            Some(MonitorState { units: units.clone(), packed, traits: units.len(), binds, _buffers: [ubuf, mask] });
        Ok(())
    }

    /// Writes every per-call uniform for a call of `n` rows and its head chunks.
    pub(crate) fn set_call_uniforms(&mut self, n: usize, chunks: &[ChunkPlan]) -> Result<()> {
        let gpu = &self.gpu;
        let c = &self.config;
        let n_u = n as u32;
        self.norm_params.set(gpu, rms_norm::Params { rows: n_u, cols: c.d_model as u32, eps: c.rms_eps, _pad: 0 });
        self.rope_params.set(gpu, rope::Params::new(&self.rope_shape, n_u)?);
        self.attention_params.set(gpu, attention::Params::new(&self.attention_shape, n_u)?);
        self.silu_params.set(gpu, silu_gate::Params::new(n_u * c.d_ff as u32));
        let embed_kernel = self
            .kernels
            .embed
            .get(&self.embed.0.format)
            .ok_or_else(|| GpuError::Unsupported("embedding kernel missing".into()))?;
        for (i, (u, _)) in self.embed.1.iter_mut().enumerate() {
            u.set(gpu, embed_kernel.params(&self.embed.0, i, n_u, 0, 0, c.d_model as u32)?);
        }
        for b in &mut self.blocks {
            for prod in [&mut b.q, &mut b.k, &mut b.v, &mut b.o, &mut b.gate, &mut b.up, &mut b.down] {
                let kernel = &self.kernels.matmul[&(prod.kernel.0, prod.kernel.1.bias, prod.kernel.1.accumulate)];
                for (i, (u, _)) in prod.parts.iter_mut().enumerate() {
                    u.set(gpu, kernel.params(&prod.matrix, i, n_u, Io::dense(&prod.matrix))?);
                }
            }
        }
        let vocab = c.vocab_size as u32;
        for (chunk, head) in chunks.iter().zip(self.heads.iter_mut()) {
            head.norm
                .0
                .set(gpu, rms_norm::Params { rows: chunk.rows, cols: c.d_model as u32, eps: c.rms_eps, _pad: 0 });
            let kernel = &self.kernels.matmul[&(head.lm_head.kernel.0, false, false)];
            for (i, (u, _)) in head.lm_head.parts.iter_mut().enumerate() {
                let mut io = Io::dense(&head.lm_head.matrix);
                io.y_offset = chunk.row0 * vocab;
                u.set(gpu, kernel.params(&head.lm_head.matrix, i, chunk.rows, io)?);
            }
            let mut lp = head.logprob.0.value;
            lp.row0 = chunk.row0;
            head.logprob.0.set(gpu, lp);
        }
        Ok(())
    }

    /// Uploads the call's row table, tokens (None: the sampler writes them) and lists, sets the uniforms, records
    /// the call and submits it. Returns the submission.
    pub(crate) fn submit_call(
        &mut self,
        rows: &[Row],
        tokens: Option<&[u32]>,
        call: &CallPlan,
        tail: Option<(&wgpu::Buffer, u64, &wgpu::Buffer, u64)>,
    ) -> Result<wgpu::SubmissionIndex> {
        self.gpu.health()?;
        if rows.is_empty() || rows.len() > self.options.batch || call.chunks.len() > self.heads.len() {
            return Err(GpuError::Unsupported(format!(
                "a forward call of {} rows and {} head chunks (at most {} and {})",
                rows.len(),
                call.chunks.len(),
                self.options.batch,
                self.heads.len()
            )));
        }
        let q = &self.gpu.queue;
        q.write_buffer(&self.buffers.rows, 0, bytemuck::cast_slice(rows));
        if let Some(t) = tokens {
            q.write_buffer(&self.buffers.tokens, 0, bytemuck::cast_slice(t));
        }
        let words = call.lists.words();
        q.write_buffer(&self.buffers.lists, 0, bytemuck::cast_slice(&words));
        self.set_call_uniforms(rows.len(), &call.chunks)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.dispatches += self.record_call(&mut enc, call, None)?;
        if let Some((src, src_off, dst, bytes)) = tail {
            enc.copy_buffer_to_buffer(src, src_off, dst, 0, bytes);
        }
        self.submits += 1;
        Ok(self.gpu.queue.submit([enc.finish()]))
    }

    /// Records one forward call (uniforms and buffers already written); returns the dispatches recorded.
    pub(crate) fn record_call(
        &self,
        enc: &mut wgpu::CommandEncoder,
        call: &CallPlan,
        prof: Option<&mut Profiler>,
    ) -> Result<u64> {
        let k = &self.kernels;
        let n = call.rows;
        let d = self.config.d_model as u32;
        let mut r = Counted { rec: Rec::new(enc, prof), count: 0 };
        if call.sample > 0 {
            r.run("sample", |p| k.sample.dispatch(p, &self.sample_bind, call.sample));
        }
        let embed_kernel = &k.embed[&self.embed.0.format];
        r.run("embed", |p| {
            for (u, bind) in &self.embed.1 {
                embed_kernel.dispatch(p, bind, &u.value);
            }
        });
        self.record_hooks(&mut r, call, 0);
        for (l, b) in self.blocks.iter().enumerate().take(call.blocks) {
            r.run("rms_norm", |p| k.rms_norm.dispatch(p, &b.attn_norm, n));
            r.run("matmul q", |p| self.record_product(p, &b.q));
            r.run("matmul k", |p| self.record_product(p, &b.k));
            r.run("matmul v", |p| self.record_product(p, &b.v));
            r.run("rope", |p| k.rope.dispatch(p, &b.rope, &self.rope_params.value));
            let mut attention = Ok(());
            r.run("attention", |p| attention = k.attention.dispatch(p, &b.attention, &self.attention_params.value));
            attention?;
            r.run("matmul o", |p| self.record_product(p, &b.o));
            r.run("rms_norm", |p| k.rms_norm.dispatch(p, &b.ffn_norm, n));
            r.run("matmul gate", |p| self.record_product(p, &b.gate));
            r.run("matmul up", |p| self.record_product(p, &b.up));
            r.run("silu_gate", |p| k.silu.dispatch(p, &b.silu, &self.silu_params.value));
            r.run("matmul down", |p| self.record_product(p, &b.down));
            self.record_hooks(&mut r, call, l + 1);
        }
        for (ci, chunk) in call.chunks.iter().enumerate() {
            let h = &self.heads[ci];
            r.run("head gather", |p| k.gather.dispatch(p, &h.gather.1, d, chunk.rows));
            r.run("rms_norm", |p| k.rms_norm.dispatch(p, &h.norm.1, chunk.rows));
            r.run("lm_head", |p| self.record_product(p, &h.lm_head));
            if chunk.logprobs > 0 {
                r.run("logprob", |p| k.logprob.dispatch(p, &h.logprob.1, chunk.logprobs));
            }
        }
        Ok(r.count)
    }

    /// Steering, then captures, sums and projections at residual index `layer` (so the reads see the steered
    /// stream, as the CPU plan does).
    fn record_hooks(&self, r: &mut Counted<'_>, call: &CallPlan, layer: usize) {
        let k = &self.kernels;
        let (d, n) = (self.config.d_model as u32, call.rows);
        if let Some(s) = &self.steer {
            for (l, _, bind) in &s.layers {
                if *l == layer {
                    r.run("steer", |p| k.steer.dispatch(p, bind, d, n));
                }
            }
        }
        let captured = call.lists.count(List::Capture(layer));
        if captured > 0 {
            r.run("capture", |p| k.gather.dispatch(p, &self.capture[layer].1, d, captured));
        }
        let summed = call.lists.count(List::Sum(layer));
        if summed > 0 {
            r.run("sum", |p| k.accumulate.dispatch(p, &self.sums[layer].1, d, summed));
        }
        let projected = call.lists.count(List::Project(layer));
        if let (Some(m), true) = (&self.monitor, projected > 0) {
            r.run("project", |p| k.project.dispatch(p, &m.binds[layer].1, projected, m.traits as u32));
        }
    }

    fn record_product(&self, pass: &mut wgpu::ComputePass<'_>, prod: &Product) {
        let kernel = &self.kernels.matmul[&(prod.kernel.0, prod.kernel.1.bias, prod.kernel.1.accumulate)];
        for (u, bind) in &prod.parts {
            kernel.dispatch(pass, bind, &u.value);
        }
    }

    /// Writes `params` (one per sampled sequence) for the next call's sampler.
    pub(crate) fn write_sample_params(&self, params: &[sample::Params]) {
        self.gpu.queue.write_buffer(&self.buffers.sample_params, 0, bytemuck::cast_slice(params));
    }

    /// Writes a generating sequence's tokens into its history region.
    pub(crate) fn write_history(&self, base: usize, tokens: &[u32]) {
        self.gpu.queue.write_buffer(&self.buffers.history, (base * 4) as u64, bytemuck::cast_slice(tokens));
    }

    /// Clears the first `floats` values of the out buffer (sums start at zero).
    pub(crate) fn clear_out(&mut self, floats: usize) {
        if floats == 0 {
            return;
        }
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&self.buffers.out, 0, Some(((floats * 4) as u64).div_ceil(4) * 4));
        self.submits += 1;
        self.gpu.queue.submit([enc.finish()]);
    }

    /// The logits of head row `row` as last computed.
    pub async fn read_logits_row(&self, row: usize) -> Result<Vec<f32>> {
        let vocab = self.config.vocab_size;
        let bytes =
            crate::kernel::read_buffer(&self.gpu, &self.buffers.logits, (row * vocab * 4) as u64, (vocab * 4) as u64)
                .await?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// Per-kernel GPU time of processing `prompt` (one sequence, one call per `batch` rows) and of one greedy decode
    /// step after it, with `plan`'s steering and projections onto `monitor`, from timestamp queries, each dispatch in
    /// its own pass: (kernel, milliseconds summed over its dispatches), largest first; decode first.
    pub async fn profile(
        &mut self,
        prompt: &[u32],
        plan: personascope_model::Plan,
        monitor: Option<std::sync::Arc<personascope_model::Units>>,
    ) -> Result<(Vec<(String, f64)>, Vec<(String, f64)>)> {
        let mut prof = Profiler::new(&self.gpu, 4096)?;
        let (prefill, decode) = crate::wave::profile(self, prompt, plan, monitor, &mut prof).await?;
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
