// Causal attention with grouped KV heads over the KV cache, for the n rows of a ragged batch: a row at position p
// sees its sequence's keys 0..=p, which lie in two parts of the cache (the row table says where): positions below
// prefix_len in a shared prefix's region from prefix_base, the rest in the sequence's own region from own_base.
// One workgroup per (head, row). Keys go in tiles of WG: each thread scores one key of the tile,
// then every thread runs the same online softmax (running max and sum) over the tile's scores and accumulates its
// own output dims, so no scores buffer grows with the context and there is no final cross-thread combine. Scores
// are double-buffered in workgroup memory: one barrier per tile.
// Twin: personascope_model::ops::Heads::attend (the same two parts). Defines: WG (threads per workgroup), DPT (output dims per thread:
// head_dim <= WG * DPT).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // 1 / sqrt(head_dim).
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One row of a ragged batch: the engine's row table (crates/gpu/src/rows.rs), key j at prefix_base + j below
// prefix_len and at own_base + (j - prefix_len) above.
${ROW}

fn key_row(r: Row, j: u32) -> u32 {
    if (j < r.prefix_len) {
        return r.prefix_base + j;
    }
    return r.own_base + (j - r.prefix_len);
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;       // [n, n_heads * head_dim]
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<f32>>; // [max_positions, n_kv_heads * head_dim]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;       // [max_positions, n_kv_heads * head_dim]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;     // [n, n_heads * head_dim]
@group(0) @binding(5) var<storage, read> rows: array<Row>;          // [n]

const WG: u32 = ${WG}u;
const DPT: u32 = ${DPT}u;

var<workgroup> q_sh: array<vec4<f32>, WG * DPT / 4u>;
// Two halves of WG scores, used by alternate tiles.
var<workgroup> scores: array<f32, 2u * WG>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.x;
    let t = wg.y;
    let hd = p.head_dim;
    let hd4 = hd / 4u;
    let kv_dim = p.n_kv_heads * hd;
    let kv_off = (h / (p.n_heads / p.n_kv_heads)) * hd;
    let q_row = (t * p.n_heads + h) * hd;
    for (var i = lid; i < hd4; i += WG) {
        q_sh[i] = q[q_row / 4u + i];
    }
    workgroupBarrier();

    let row = rows[t];
    let n_keys = row.pos + 1u;
    // A large finite floor instead of -inf: WGSL implementations may assume no infinities.
    var m = -1e30;
    var l = 0.0;
    var acc: array<f32, DPT>;
    var buf = 0u;
    for (var start = 0u; start < n_keys; start += WG) {
        let cnt = min(WG, n_keys - start);
        if (lid < cnt) {
            let kb = (key_row(row, start + lid) * kv_dim + kv_off) / 4u;
            var s = vec4<f32>(0.0);
            for (var i = 0u; i < hd4; i++) {
                s = fma(q_sh[i], k_cache[kb + i], s);
            }
            scores[buf + lid] = (s.x + s.y + s.z + s.w) * p.scale;
        }
        // The only barrier per tile: the next tile writes the other half of `scores`, and a thread can only get
        // two tiles ahead after every thread has passed the next barrier, i.e. finished reading this half.
        workgroupBarrier();
        var m_new = m;
        for (var j = 0u; j < cnt; j++) {
            m_new = max(m_new, scores[buf + j]);
        }
        let corr = exp(m - m_new);
        l *= corr;
        for (var i = 0u; i < DPT; i++) {
            acc[i] *= corr;
        }
        for (var j = 0u; j < cnt; j++) {
            let e = exp(scores[buf + j] - m_new);
            l += e;
            let vb = key_row(row, start + j) * kv_dim + kv_off;
            for (var i = 0u; i < DPT; i++) {
                let d = lid + i * WG;
                if (d < hd) {
                    acc[i] = fma(e, v_cache[vb + d], acc[i]);
                }
            }
        }
        m = m_new;
        buf = WG - buf;
    }
    let inv = 1.0 / l;
    for (var i = 0u; i < DPT; i++) {
        let d = lid + i * WG;
        if (d < hd) {
            out[q_row + d] = acc[i] * inv;
        }
    }
}
