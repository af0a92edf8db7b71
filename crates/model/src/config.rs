//! Hyperparameters read from GGUF metadata and cross-checked against tensor shapes.
//!
//! Supported families and their quirks:
//! - `llama` (SmolLM2, Llama 3.x): no biases; the GGUF converter permutes Q/K rows so RoPE rotates *interleaved*
//!   pairs (2i, 2i+1); Llama 3's frequency scaling arrives as the tensor `rope_freqs.weight` (one divisor per
//!   pair); the LM head may be tied to the token embedding.
//! - `qwen2` (Qwen2.5): biases on Q, K and V; RoPE rotates *halves* (i, i + rope_dim/2), the NeoX pairing.

use crate::{ModelError, Result};
use personascope_gguf::Gguf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Which elements of a head RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairing {
    /// (2i, 2i+1): llama.cpp's "normal" mode, right for GGUF Llama files (Q/K rows were permuted at conversion).
    Interleaved,
    /// (i, i + rope_dim/2): NeoX / Hugging Face `rotate_half`, used by Qwen2.
    Halves,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    /// Decoder blocks, N. Residual-stream positions are numbered 0..=N (0 = embeddings).
    pub n_layers: usize,
    /// Residual width d.
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Dimensions of each head that RoPE rotates (the rest pass through).
    pub rope_dim: usize,
    pub rope_pairing: RopePairing,
    /// Linear RoPE scaling: positions are divided by this (1 = none).
    pub rope_linear_scale: f32,
    pub qkv_bias: bool,
    /// The LM head is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
}

/// Largest accepted width (residual, FFN, attention dims) and head size: far above any model this tool runs,
/// small enough that products of a few of them fit a 32-bit `usize` (wasm32) where they size one buffer.
const MAX_WIDTH: usize = 1 << 20;
/// Largest accepted block count and context length.
const MAX_LAYERS: usize = 1 << 12;
const MAX_CONTEXT: usize = 1 << 24;

fn count(g: &Gguf, key: &str) -> Result<usize> {
    count_below(g, key, 1 << 31)
}

/// A positive count from `key`, at most `max`.
fn count_below(g: &Gguf, key: &str, max: usize) -> Result<usize> {
    let v = g.get_u64(key)?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v <= max)
        .ok_or_else(|| ModelError::Config(format!("`{key}` = {v} is not a usable size (1 to {max})")))
}

/// A float from `key` (or `default` when absent) that is finite and passes `ok`; `what` says the accepted range.
fn float(g: &Gguf, key: &str, default: Option<f64>, ok: fn(f64) -> bool, what: &str) -> Result<f32> {
    let v = match (g.get(key), default) {
        (None, Some(d)) => d,
        _ => g.get_f64(key)?,
    };
    if v.is_finite() && ok(v) && (v as f32).is_finite() {
        Ok(v as f32)
    } else {
        // Shortest readable form: 1e300 and -1e-5 rather than their 300-digit or f32-widened expansions.
        let odd = |x: f64| x.is_finite() && x != 0.0 && !(1e-3..1e6).contains(&x.abs());
        let shown = match g.get(key) {
            // A stored f32 is shown as f32 (-1e-5, not its f64 widening -9.999999747378752e-6).
            Some(personascope_gguf::Value::F32(x)) if odd(f64::from(*x)) => format!("{x:e}"),
            Some(personascope_gguf::Value::F32(x)) => x.to_string(),
            _ if odd(v) => format!("{v:e}"),
            _ => v.to_string(),
        };
        Err(ModelError::Config(format!("`{key}` = {shown} is not usable: it must be {what}")))
    }
}

/// `a * b`, or an error naming the product when it exceeds [`MAX_WIDTH`].
fn width(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b)
        .filter(|&p| p <= MAX_WIDTH)
        .ok_or_else(|| ModelError::Config(format!("{what} = {a} x {b} exceeds {MAX_WIDTH}")))
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch_name = g.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let k = |suffix: &str| format!("{arch_name}.{suffix}");
        let n_layers = count_below(g, &k("block_count"), MAX_LAYERS)?;
        // Every block has at least 9 tensors: a block count the tensor table cannot hold is refused before
        // anything is sized by it.
        if n_layers > g.tensors().len() / 9 {
            return Err(ModelError::Config(format!(
                "`{}` = {n_layers} blocks, but the file has only {} tensors",
                k("block_count"),
                g.tensors().len()
            )));
        }
        let d_model = count_below(g, &k("embedding_length"), MAX_WIDTH)?;
        let n_heads = count_below(g, &k("attention.head_count"), MAX_WIDTH)?;
        let n_kv_heads = match g.get(&k("attention.head_count_kv")) {
            Some(_) => count_below(g, &k("attention.head_count_kv"), MAX_WIDTH)?,
            None => n_heads,
        };
        let d_ff = count_below(g, &k("feed_forward_length"), MAX_WIDTH)?;
        let context_length = count_below(g, &k("context_length"), MAX_CONTEXT)?;
        let head_dim = match g.get(&k("attention.key_length")) {
            Some(_) => count_below(g, &k("attention.key_length"), MAX_WIDTH)?,
            None => d_model / n_heads,
        };
        if head_dim == 0 {
            return Err(ModelError::Config(format!("{n_heads} attention heads do not divide the width {d_model}")));
        }
        width(n_heads, head_dim, "query width (heads x head dimension)")?;
        width(n_kv_heads, head_dim, "key/value width (key/value heads x head dimension)")?;
        if n_heads % n_kv_heads != 0 {
            return Err(ModelError::Config(format!(
                "{n_heads} attention heads are not a multiple of {n_kv_heads} key/value heads"
            )));
        }
        let rope_dim = match g.get(&k("rope.dimension_count")) {
            Some(_) => count(g, &k("rope.dimension_count"))?,
            None => head_dim,
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::Config(format!(
                "rope dimension {rope_dim} does not fit head dimension {head_dim}"
            )));
        }
        let rms_eps = float(g, &k("attention.layer_norm_rms_epsilon"), None, |v| v > 0.0 && v < 1.0, "in (0, 1)")?;
        let rope_base = float(g, &k("rope.freq_base"), Some(10_000.0), |v| v > 1.0, "finite and above 1")?;
        let rope_linear_scale = match g.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => 1.0,
            Some("linear") => float(g, &k("rope.scaling.factor"), None, |v| v > 0.0, "finite and positive")?,
            // Llama 3 files carry their scaling as the `rope_freqs.weight` tensor; the key may still say "llama3".
            Some("llama3") if g.tensor("rope_freqs.weight").is_some() => 1.0,
            Some(other) => return Err(ModelError::Config(format!("RoPE scaling `{other}` is not supported"))),
        };
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::Tensor { name: "token_embd.weight".into(), msg: "missing".into() })?;
        let vocab_size = match embd.dims.as_slice() {
            // Token ids are u32; a dimension that does not fit usize (wasm32) cannot match.
            [d, v] if usize::try_from(*d) == Ok(d_model) && *v > 0 && *v <= u64::from(u32::MAX) => *v as usize,
            dims => {
                return Err(ModelError::Tensor {
                    name: "token_embd.weight".into(),
                    msg: format!("shape {dims:?}, expected [{d_model}, vocab]"),
                })
            }
        };
        Ok(Config {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff,
            vocab_size,
            context_length,
            rms_eps,
            rope_base,
            rope_dim,
            rope_pairing: match arch {
                Arch::Llama => RopePairing::Interleaved,
                Arch::Qwen2 => RopePairing::Halves,
            },
            rope_linear_scale,
            qkv_bias: arch == Arch::Qwen2,
            tied_embeddings: g.tensor("output.weight").is_none(),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
