//! The operations of the forward pass, one function each. They are the CPU twins of the WGSL kernels in
//! `shaders/`: the GPU engine's parity tests compare each kernel with the function of the same name here.

use crate::config::{Config, RopePairing};
use personascope_gguf::dot_f32 as dot;

/// out = x / sqrt(mean(x^2) + eps) * w, row by row (rows of w.len()).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / w.len() as f64;
        let scale = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = xv * scale * wv;
        }
    }
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

/// Causal attention with grouped key/value heads. `q`: [n, n_heads * hd] for positions pos0..pos0+n;
/// `k_cache`, `v_cache`: [pos0 + n, n_kv_heads * hd]; `out`: [n, n_heads * hd].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    out: &mut [f32],
) {
    let shape = Heads { n_heads, n_kv_heads, hd };
    for_each_head(out, hd, |idx, o| {
        let t = idx / n_heads;
        shape.attend(
            idx % n_heads,
            &q[t * n_heads * hd..(t + 1) * n_heads * hd],
            &[(k_cache, v_cache)],
            pos0 + t + 1,
            o,
        )
    });
}

/// Attention head shapes.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub hd: usize,
}

impl Heads {
    /// Head `h` of one query row (`q_row`: [n_heads * hd]) over its first `n_keys` keys, which lie in `parts` in
    /// position order (each part [rows, n_kv_heads * hd]: a shared prefix's cache, then the sequence's own). This is
    /// the CPU twin of `attention.wgsl`, which reads a row's keys from the same two parts.
    pub fn attend(&self, h: usize, q_row: &[f32], parts: &[(&[f32], &[f32])], n_keys: usize, o: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for (checked just above).
            return unsafe { self.attend_avx2(h, q_row, parts, n_keys, o) };
        }
        self.attend_impl(h, q_row, parts, n_keys, o)
    }

    /// The same code compiled for AVX2 + FMA (the dot products and the weighted sum vectorize 8 wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, h: usize, q_row: &[f32], parts: &[(&[f32], &[f32])], n_keys: usize, o: &mut [f32]) {
        self.attend_impl(h, q_row, parts, n_keys, o)
    }

    #[inline(always)]
    fn attend_impl(&self, h: usize, q_row: &[f32], parts: &[(&[f32], &[f32])], n_keys: usize, o: &mut [f32]) {
        let (hd, kv_dim) = (self.hd, self.n_kv_heads * self.hd);
        let kv_off = (h / (self.n_heads / self.n_kv_heads)) * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let qh = &q_row[h * hd..(h + 1) * hd];
        // (keys, values) row slices of this head, in position order across the parts, the first n_keys of them.
        let mut scores = Vec::with_capacity(n_keys);
        let mut rows: Vec<(&[f32], &[f32])> = Vec::with_capacity(n_keys);
        'parts: for (k, v) in parts {
            let count = (k.len() / kv_dim).min(v.len() / kv_dim);
            for j in 0..count {
                if rows.len() == n_keys {
                    break 'parts;
                }
                let at = j * kv_dim + kv_off;
                rows.push((&k[at..at + hd], &v[at..at + hd]));
            }
        }
        let mut max = f32::NEG_INFINITY;
        for (k, _) in &rows {
            let s = dot(qh, k) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (e, (_, v)) in scores.iter().zip(&rows) {
            let p = e / sum;
            for (oi, vi) in o.iter_mut().zip(v.iter()) {
                *oi += p * vi;
            }
        }
    }
}

/// Runs `f(index, chunk)` for every `hd`-sized chunk of `out` (one attention head of one row), in parallel where
/// the `parallel` feature is on.
pub fn for_each_head(out: &mut [f32], hd: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| f(i, o));
    }
    #[cfg(not(feature = "parallel"))]
    for (i, o) in out.chunks_mut(hd).enumerate() {
        f(i, o);
    }
}

/// gate = silu(gate) * up, element-wise (the SwiGLU feed-forward activation).
pub fn silu_gate(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Rotates the first `2 * inv_freq.len()` elements of every head of `x` ([n, heads * hd]) for positions
/// pos0.., pairing elements as `pairing` says. Angles are computed in f32 like Hugging Face's.
pub fn rope(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    pos0: usize,
    inv_freq: &[f32],
    pairing: RopePairing,
    linear_scale: f32,
) {
    let half = inv_freq.len();
    // The angles depend on the position and the pair only: computed once per row, applied to every head.
    let mut sc = vec![(0f32, 0f32); half];
    for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let pos = (pos0 + t) as f32 / linear_scale;
        for (v, &f) in sc.iter_mut().zip(inv_freq) {
            let (sin, cos) = ((pos * f) as f64).sin_cos();
            *v = (sin as f32, cos as f32);
        }
        for head in row.chunks_exact_mut(hd) {
            for (i, &(sin, cos)) in sc.iter().enumerate() {
                let (a, b) = match pairing {
                    RopePairing::Interleaved => (2 * i, 2 * i + 1),
                    RopePairing::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// RoPE inverse frequency of each rotated pair: base^(-2i/rope_dim), divided by Llama 3's per-pair factor
/// (`rope_freqs.weight`) when the file has one.
pub fn rope_inv_freq(config: &Config, rope_freqs: Option<&[f32]>) -> Vec<f32> {
    (0..config.rope_dim / 2)
        .map(|i| {
            let f = (config.rope_base as f64).powf(-(2.0 * i as f64) / config.rope_dim as f64);
            let div = rope_freqs.and_then(|r| r.get(i)).map_or(1.0, |&r| r as f64);
            (f / div) as f32
        })
        .collect()
}
