// Matrix product on packed weights (crates/gpu/src/quant.rs): y[t, r] = sum_c W[r, c] x[t, c], for one row-range
// part of W. CPU twins: personascope_gguf::dot_row and PackedMatrix::dequantize_row.
//
// A workgroup computes ROWS rows for TOKENS tokens; TPR threads split each row by vec4<u32> chunks of codes (EPC
// elements, one scale group or half of one), so neighbouring threads read neighbouring 16-byte chunks. Each chunk
// is decoded once into registers and dotted with every token of the tile: with TOKENS = 8 prompt processing reads
// the weights once per 8 tokens. Per chunk the scale is factored out: sum(q x) * scale + sum(x) * min. One barrier:
// partial sums go to workgroup memory and one thread per (row, token) adds its row's TPR partials.
//
// Defines: Q4 / Q8 / PLAIN (4-bit codes, 8-bit codes, f32 values), SIGNED (two's-complement codes, no min), GROUP
// (elements per scale pair), EPC (elements per chunk), ROWS, TPR, WG = ROWS * TPR, TOKENS, SOLO (TPR = 1: one
// thread per row, no reduction), BIAS (y += b[r]), ACCUMULATE (y[t, r] += result: the residual add), SUBGROUPS
// (reduce with subgroupAdd instead of the workgroup-memory sum; needs the subgroups feature), SLOTS (with
// SUBGROUPS: the most subgroups a workgroup can have, WG / the adapter's smallest subgroup size), WHOLE (with
// SUBGROUPS: WG <= the smallest subgroup size, so the workgroup is one subgroup: no workgroup memory, no barrier),
// PARTIALS (workgroup memory: WG * TOKENS, or with SUBGROUPS SLOTS * ROWS * TOKENS).
//
// The subgroup reduction assumes neither a subgroup size nor a layout of invocations in subgroups: for each
// (row, token) of the workgroup every invocation adds its partial if it works on that row and 0 otherwise, so one
// subgroupAdd gives that subgroup's share of the row whatever lanes it holds. The shares meet in workgroup memory,
// one value per subgroup (@builtin(subgroup_id); in a browser that built-in needs the WGSL `subgroup_id` language
// feature, Chrome 144+).

struct Params {
    rows: u32,       // rows in this part
    cols: u32,
    n_tokens: u32,
    row_offset: u32, // this part's first row in the whole matrix: its column in y and its index in b
    x_offset: u32,   // elements, a multiple of 4
    x_stride: u32,   // elements between tokens of x, a multiple of 4
    y_offset: u32,
    y_stride: u32,   // elements between tokens of y
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<vec4<u32>>;
#if !PLAIN
@group(0) @binding(2) var<storage, read> scales: array<u32>;
#endif
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

const NQ: u32 = ${EPC}u / 4u; // vec4<f32> of x per chunk

#if !SOLO
#if !WHOLE
var<workgroup> partials: array<f32, ${PARTIALS}>;
#endif
#endif

#if Q4
// Elements 8k..8k+3 and 8k+4..8k+7 of a chunk from its word k.
fn lo(w: u32) -> vec4<f32> {
#if SIGNED
    return vec4<f32>((vec4<i32>(bitcast<i32>(w)) << vec4<u32>(28u, 24u, 20u, 16u)) >> vec4<u32>(28u));
#else
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
#endif
}
fn hi(w: u32) -> vec4<f32> {
#if SIGNED
    return vec4<f32>((vec4<i32>(bitcast<i32>(w)) << vec4<u32>(12u, 8u, 4u, 0u)) >> vec4<u32>(28u));
#else
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
#endif
}
#endif

#if Q8
// Elements 4k..4k+3 of a chunk from its word k.
fn bytes4(w: u32) -> vec4<f32> {
#if SIGNED
    return vec4<f32>((vec4<i32>(bitcast<i32>(w)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
#else
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
#endif
}
#endif

// The epilogue: bias, residual add, and the write into this part's columns of y.
fn store(rr: u32, tok: u32, sum: f32) {
    var v = sum;
#if BIAS
    v += bias[p.row_offset + rr];
#endif
    let yi = p.y_offset + tok * p.y_stride + p.row_offset + rr;
#if ACCUMULATE
    v = y[yi] + v;
#endif
    y[yi] = v;
}

#if SOLO
// The k-th vec4 of a chunk's elements, decoded (k is a constant after unrolling).
fn part(w: vec4<u32>, k: u32) -> vec4<f32> {
#if Q4
    let word = w[k / 2u];
    if (k % 2u == 0u) {
        return lo(word);
    }
    return hi(word);
#endif
#if Q8
    return bytes4(w[k]);
#endif
#if PLAIN
    return bitcast<vec4<f32>>(w);
#endif
}

// One thread, RPT consecutive rows from `rf`, TOKENS tokens from `tok0` (CPU adapters). Their SIMD lanes are
// invocations, and a storage load costs per lane and component whether or not the address is uniform, so the
// loads of x are what limit the product: each x chunk loaded serves RPT rows, and each weight chunk TOKENS tokens.
// Everything per row and token is a named value in unrolled code: a private array indexed in a loop can end up in
// memory, reached lane by lane. Rows past the end read the last row (no divergent branch in the loop) and are not
// stored; so are tokens past the end.
fn solo(rf: u32, tok0: u32) {
#if PLAIN
    let chunks = (p.cols + 3u) / 4u;
#else
    let chunks = p.cols / ${EPC}u;
    let n_super = (p.cols + 255u) / 256u;
    let srow_len = 2u * n_super + p.cols / ${GROUP}u;
#endif
    let tok_last = min(tok0 + ${TOKENS}u, p.n_tokens) - 1u;
#unroll J RPT
    let row${J} = min(rf + ${J}u, p.rows - 1u);
#unroll T TOKENS
    var a${J}_${T} = 0.0;
#endunroll
#endunroll
    for (var c = 0u; c < chunks; c++) {
#if PLAIN
        // A row not a multiple of 4 wide: its zero padding must not meet the next token's x (0 * inf).
        let valid = vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.cols);
#else
        let e0 = c * ${EPC}u;
#endif
#unroll J RPT
        let w${J} = codes[row${J} * chunks + c];
#unroll K NQ
        let q${J}_${K} = part(w${J}, ${K}u);
#endunroll
#if !PLAIN
        let srow${J} = row${J} * srow_len;
        let sb${J} = srow${J} + 2u * (e0 / 256u);
        let sub${J} = unpack2x16float(scales[srow${J} + 2u * n_super + e0 / ${GROUP}u]);
        let scale${J} = bitcast<f32>(scales[sb${J}]) * sub${J}.x;
#if !SIGNED
        let mn${J} = bitcast<f32>(scales[sb${J} + 1u]) * sub${J}.y;
#endif
#endif
#endunroll
#unroll T TOKENS
        {
            let xb = (p.x_offset + min(tok0 + ${T}u, tok_last) * p.x_stride) / 4u + c * NQ;
            var sx = vec4<f32>(0.0);
#unroll K NQ
#if PLAIN
            let x${K} = select(vec4<f32>(0.0), x[xb + ${K}u], valid);
#else
            let x${K} = x[xb + ${K}u];
#endif
            sx += x${K};
#endunroll
            let sxs = (sx.x + sx.y) + (sx.z + sx.w);
#unroll J RPT
            var d${J} = vec4<f32>(0.0);
#unroll K NQ
            d${J} += q${J}_${K} * x${K};
#endunroll
            let dot${J} = (d${J}.x + d${J}.y) + (d${J}.z + d${J}.w);
#if PLAIN
            a${J}_${T} += dot${J};
#else
#if SIGNED
            a${J}_${T} += dot${J} * scale${J};
#else
            a${J}_${T} += dot${J} * scale${J} + sxs * mn${J};
#endif
#endif
#endunroll
        }
#endunroll
    }
#unroll J RPT
#unroll T TOKENS
    if (rf + ${J}u < p.rows && tok0 + ${T}u < p.n_tokens) {
        store(rf + ${J}u, tok0 + ${T}u, a${J}_${T});
    }
#endunroll
#endunroll
}
#endif

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
#if !WHOLE
    @builtin(subgroup_id) sg_id: u32,
#endif
#endif
) {
    // Row blocks past the 65,535 workgroups of one dimension continue on y.
    let r0 = (wg.x + wg.y * 65535u) * ${ROWS}u;
    // Workgroup-uniform: the padding workgroups of a 2-D dispatch leave before the barrier, all together.
    if (r0 >= p.rows) {
        return;
    }
    let tok0 = wg.z * ${TOKENS}u;
#if SOLO
    solo(r0 + tid * ${RPT}u, tok0);
#else
    let i = tid / ${TPR}u;
    let lane = tid % ${TPR}u;
    let r = r0 + i;
#if PLAIN
    let chunks = (p.cols + 3u) / 4u;
#else
    let chunks = p.cols / ${EPC}u;
    let n_super = (p.cols + 255u) / 256u;
    let srow = r * (2u * n_super + p.cols / ${GROUP}u);
#endif
    var acc: array<f32, ${TOKENS}>;
    if (r < p.rows) {
        for (var c = lane; c < chunks; c += ${TPR}u) {
            let w = codes[r * chunks + c];
            // Decoded once into registers (named values, not an array, so no compiler has to promote one), reused
            // for every token of the tile.
#if Q4
            let q0 = lo(w.x);
            let q1 = hi(w.x);
            let q2 = lo(w.y);
            let q3 = hi(w.y);
            let q4 = lo(w.z);
            let q5 = hi(w.z);
            let q6 = lo(w.w);
            let q7 = hi(w.w);
#endif
#if Q8
            let q0 = bytes4(w.x);
            let q1 = bytes4(w.y);
            let q2 = bytes4(w.z);
            let q3 = bytes4(w.w);
#endif
#if PLAIN
            let q0 = bitcast<vec4<f32>>(w);
            // A row not a multiple of 4 wide: its zero padding must not meet the next token's x (0 * inf).
            let valid = vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.cols);
#else
            let e0 = c * ${EPC}u;
            let sb = srow + 2u * (e0 / 256u);
            let sub = unpack2x16float(scales[srow + 2u * n_super + e0 / ${GROUP}u]);
            let scale = bitcast<f32>(scales[sb]) * sub.x;
#if !SIGNED
            let mn = bitcast<f32>(scales[sb + 1u]) * sub.y;
#endif
#endif
            for (var t = 0u; t < ${TOKENS}u; t++) {
                let tok = tok0 + t;
                if (tok < p.n_tokens) {
                    let xb = (p.x_offset + tok * p.x_stride) / 4u + c * NQ;
#if Q4
                    let x0 = x[xb];
                    let x1 = x[xb + 1u];
                    let x2 = x[xb + 2u];
                    let x3 = x[xb + 3u];
                    let x4 = x[xb + 4u];
                    let x5 = x[xb + 5u];
                    let x6 = x[xb + 6u];
                    let x7 = x[xb + 7u];
                    let d = (q0 * x0 + q1 * x1) + (q2 * x2 + q3 * x3) + (q4 * x4 + q5 * x5) + (q6 * x6 + q7 * x7);
                    let sx = (x0 + x1) + (x2 + x3) + (x4 + x5) + (x6 + x7);
#endif
#if Q8
                    let x0 = x[xb];
                    let x1 = x[xb + 1u];
                    let x2 = x[xb + 2u];
                    let x3 = x[xb + 3u];
                    let d = (q0 * x0 + q1 * x1) + (q2 * x2 + q3 * x3);
                    let sx = (x0 + x1) + (x2 + x3);
#endif
#if PLAIN
                    let d = q0 * select(vec4<f32>(0.0), x[xb], valid);
#endif
                    let dot_q = d.x + d.y + d.z + d.w;
#if PLAIN
                    acc[t] += dot_q;
#else
#if SIGNED
                    acc[t] += dot_q * scale;
#else
                    acc[t] += dot_q * scale + (sx.x + sx.y + sx.z + sx.w) * mn;
#endif
#endif
                }
            }
        }
    }
#if SUBGROUPS
    // Every invocation takes part in every subgroupAdd (rows past the end contribute zeros), in uniform control flow.
    for (var ri = 0u; ri < ${ROWS}u; ri++) {
        for (var t = 0u; t < ${TOKENS}u; t++) {
            let share = subgroupAdd(select(0.0, acc[t], i == ri));
#if WHOLE
            if (sg_lane == 0u && r0 + ri < p.rows && tok0 + t < p.n_tokens) {
                store(r0 + ri, tok0 + t, share);
            }
#else
            if (sg_lane == 0u && sg_id < ${SLOTS}u) {
                partials[sg_id * ${ROWS}u * ${TOKENS}u + ri * ${TOKENS}u + t] = share;
            }
#endif
        }
    }
#if !WHOLE
    workgroupBarrier();
    if (tid < ${ROWS}u * ${TOKENS}u) {
        let ri = tid / ${TOKENS}u;
        let t = tid % ${TOKENS}u;
        if (r0 + ri < p.rows && tok0 + t < p.n_tokens) {
            // Every slot, not num_subgroups of them: lavapipe reports floor(WG / size) there, missing a partial
            // last subgroup. Slots of subgroups that do not exist hold zeros (workgroup memory starts zeroed).
            var s = 0.0;
            for (var g = 0u; g < ${SLOTS}u; g++) {
                s += partials[g * ${ROWS}u * ${TOKENS}u + tid];
            }
            store(r0 + ri, tok0 + t, s);
        }
    }
#endif
#else
    for (var t = 0u; t < ${TOKENS}u; t++) {
        partials[t * ${WG}u + tid] = acc[t];
    }
    workgroupBarrier();
    if (tid < ${ROWS}u * ${TOKENS}u) {
        let ri = tid / ${TOKENS}u;
        let t = tid % ${TOKENS}u;
        let rr = r0 + ri;
        let tok = tok0 + t;
        if (rr < p.rows && tok < p.n_tokens) {
            // Four independent sums, so the adds of a long row need not wait on each other.
            let base = t * ${WG}u + ri * ${TPR}u;
            var s = vec4<f32>(0.0);
            for (var l = 0u; l + 3u < ${TPR}u; l += 4u) {
                s += vec4<f32>(partials[base + l], partials[base + l + 1u], partials[base + l + 2u], partials[base + l + 3u]);
            }
            for (var l = ${TPR}u / 4u * 4u; l < ${TPR}u; l++) {
                s.x += partials[base + l];
            }
            store(rr, tok, (s.x + s.y) + (s.z + s.w));
        }
    }
#endif
#endif
}
