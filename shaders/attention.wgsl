// Causal attention with grouped KV heads over the KV cache, for the n rows of a ragged batch: a row at position p
// sees its sequence's keys 0..=p, which lie in two parts of the cache (the row table says where): positions below
// prefix_len in a shared prefix's region from prefix_base, the rest in the sequence's own region from own_base.
// One workgroup per (head, row). Keys go in tiles of WG: each thread scores one key of the tile,
// then every thread runs the same online softmax (running max and sum) over the tile's scores and accumulates its
// own output dims, so no scores buffer grows with the context and there is no final cross-thread combine. Scores
// are double-buffered in workgroup memory: one barrier per tile.
// Twin: personascope_model::ops::Heads::attend (the same two parts). Defines: WG (threads per workgroup), DPT (output
// dims per thread: head_dim <= WG * DPT); SOLO selects the CPU-adapter design below instead, with G (query heads per
// KV head) and HD4 (head_dim / 4).

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
#if SOLO
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
#else
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;       // [max_positions, n_kv_heads * head_dim]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;     // [n, n_heads * head_dim]
#endif
@group(0) @binding(5) var<storage, read> rows: array<Row>;          // [n]

#if SOLO
// CPU adapters (lavapipe, SwiftShader): one invocation per (row, KV head) computes the G query heads that share
// the KV head, key after key, with a running max and sum per head. Their SIMD lanes are invocations and a storage
// load costs per lane and component, so the tiled kernel below (every thread reading every score and running the
// same exp) spends most of its time loading; here each key and value row is loaded once for G heads and each exp
// is computed once. Query, key, value and output rows are named vec4 values in unrolled code (HD4 = head_dim / 4,
// G = n_heads / n_kv_heads, both fixed per pipeline). q is scaled by 1/sqrt(head_dim) before the dots.
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n_tokens * p.n_kv_heads) {
        return;
    }
    let t = i / p.n_kv_heads;
    let g = i % p.n_kv_heads;
    let kv4 = p.n_kv_heads * ${HD4}u;
    let row = rows[t];
    let n_keys = row.pos + 1u;
    // Query heads g * G .. g * G + G - 1 are contiguous in q and out.
    let qb = (t * p.n_heads + g * ${G}u) * ${HD4}u;
#unroll H G
#unroll D HD4
    let q${H}_${D} = q[qb + ${H}u * ${HD4}u + ${D}u] * p.scale;
    var o${H}_${D} = vec4<f32>(0.0);
#endunroll
    // A large finite floor instead of -inf: WGSL implementations may assume no infinities.
    var m${H} = -1e30;
    var l${H} = 0.0;
#endunroll
    for (var j = 0u; j < n_keys; j++) {
        let kb = key_row(row, j) * kv4 + g * ${HD4}u;
#unroll D HD4
        let k${D} = k_cache[kb + ${D}u];
#endunroll
#unroll H G
        var s${H} = vec4<f32>(0.0);
#unroll D HD4
        s${H} = fma(q${H}_${D}, k${D}, s${H});
#endunroll
        let sc${H} = (s${H}.x + s${H}.y) + (s${H}.z + s${H}.w);
        let mx${H} = max(m${H}, sc${H});
        let c${H} = exp(m${H} - mx${H});
        let e${H} = exp(sc${H} - mx${H});
        l${H} = l${H} * c${H} + e${H};
        m${H} = mx${H};
#endunroll
#unroll D HD4
        let v${D} = v_cache[kb + ${D}u];
#unroll H G
        o${H}_${D} = fma(vec4<f32>(e${H}), v${D}, o${H}_${D} * c${H});
#endunroll
#endunroll
    }
#unroll H G
    let inv${H} = 1.0 / l${H};
#unroll D HD4
    out[qb + ${H}u * ${HD4}u + ${D}u] = o${H}_${D} * inv${H};
#endunroll
#endunroll
}
#else

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
#unroll I DPT
    var acc${I} = 0.0;
#endunroll
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
#unroll I DPT
        acc${I} *= corr;
#endunroll
        for (var j = 0u; j < cnt; j++) {
            let e = exp(scores[buf + j] - m_new);
            l += e;
            let vb = key_row(row, start + j) * kv_dim + kv_off;
#unroll I DPT
            if (lid + ${I}u * WG < hd) {
                acc${I} = fma(e, v_cache[vb + lid + ${I}u * WG], acc${I});
            }
#endunroll
        }
        m = m_new;
        buf = WG - buf;
    }
    let inv = 1.0 / l;
#unroll I DPT
    if (lid + ${I}u * WG < hd) {
        out[q_row + lid + ${I}u * WG] = acc${I} * inv;
    }
#endunroll
}
#endif
