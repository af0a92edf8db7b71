// RoPE on q and k in place for the n rows of a ragged batch, fused with the KV-cache write: each row's position and
// the cache row its rotated k and (unrotated) v go to come from the row table (rows of many sequences, each with its
// own positions and KV region). One thread per element pair; workgroup y is the row.
// Twin: personascope_model::ops::rope per row (plus the cache append of the CPU forward pass).
// Defines: WG (threads per workgroup).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // rope_dim / 2: the number of rotated pairs per head, the length of inv_freq.
    rope_half: u32,
    _pad0: u32,
    // 0: pairs (2i, 2i+1) (GGUF llama); 1: pairs (i, i + rope_half) (NeoX / qwen2).
    halves: u32,
    // Positions are divided by this (linear RoPE scaling; 1 = none).
    linear_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> q: array<f32>;       // [n, n_heads * head_dim]
@group(0) @binding(2) var<storage, read_write> k: array<f32>;       // [n, n_kv_heads * head_dim]
@group(0) @binding(3) var<storage, read> v: array<f32>;             // [n, n_kv_heads * head_dim]
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;      // [rope_half]
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>; // [max_positions, n_kv_heads * head_dim]
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>; // [max_positions, n_kv_heads * head_dim]
@group(0) @binding(7) var<storage, read> rows: array<Row>;          // [n]

// One row of a ragged batch: the engine's row table (crates/gpu/src/rows.rs), key j at prefix_base + j below
// prefix_len and at own_base + (j - prefix_len) above.
${ROW}

// 2*pi split so that n * TWO_PI_A and n * TWO_PI_B are exact in f32 for |n| < 2^16 (angles up to about 4e5):
// Cody-Waite reduction keeps sin/cos accurate at large positions, where the built-ins of some GPUs lose digits.
const TWO_PI_A: f32 = 6.28125;
const TWO_PI_B: f32 = 0.00193023681640625;
const TWO_PI_C: f32 = 5.070363386039389e-06;
const INV_TWO_PI: f32 = 0.15915494;

fn rotate(x0: f32, x1: f32, angle: f32) -> vec2<f32> {
    let n = round(angle * INV_TWO_PI);
    let r = ((angle - n * TWO_PI_A) - n * TWO_PI_B) - n * TWO_PI_C;
    let s = sin(r);
    let c = cos(r);
    return vec2<f32>(x0 * c - x1 * s, x0 * s + x1 * c);
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.y;
    let half_hd = p.head_dim / 2u;
    let i = wg.x * ${WG}u + lid;
    if (t >= p.n_tokens || i >= (p.n_heads + p.n_kv_heads) * half_hd) {
        return;
    }
    let head = i / half_hd;
    let j = i % half_hd;
    // Pair j of the head: rotated for j < rope_half, copied through (k to the cache) beyond rope_dim.
    var a = 2u * j;
    var b = 2u * j + 1u;
    if (j < p.rope_half && p.halves != 0u) {
        a = j;
        b = j + p.rope_half;
    }
    let row = rows[t];
    let pos = f32(row.pos) / p.linear_scale;
    if (head < p.n_heads) {
        let base = (t * p.n_heads + head) * p.head_dim;
        if (j < p.rope_half) {
            let r = rotate(q[base + a], q[base + b], pos * inv_freq[j]);
            q[base + a] = r.x;
            q[base + b] = r.y;
        }
        return;
    }
    let kv_dim = p.n_kv_heads * p.head_dim;
    let off = (head - p.n_heads) * p.head_dim;
    let base = t * kv_dim + off;
    let cache = row.kv_row * kv_dim + off;
    var r = vec2<f32>(k[base + a], k[base + b]);
    if (j < p.rope_half) {
        r = rotate(r.x, r.y, pos * inv_freq[j]);
        k[base + a] = r.x;
        k[base + b] = r.y;
    }
    k_cache[cache + a] = r.x;
    k_cache[cache + b] = r.y;
    v_cache[cache + a] = v[base + a];
    v_cache[cache + b] = v[base + b];
}
