// Embedding gather from packed weights (crates/gpu/src/quant.rs): y[t, :] = row ids[t] of the matrix, for the
// part of the matrix bound here (dispatch once per part; a part writes only the tokens whose row it holds).
// CPU twin: PackedMatrix::dequantize_row. The ids are read from a storage buffer (the GPU sampler writes them).
//
// Defines: Q4 / Q8 / PLAIN, SIGNED, GROUP, EPC (as in matmul.wgsl), WG (threads per workgroup).

struct Params {
    n_tokens: u32,
    cols: u32,
    ids_offset: u32,   // index of token 0's id in ids
    part_row0: u32,    // first row of the bound part
    part_rows: u32,
    total_rows: u32,   // rows of the whole matrix
    y_offset: u32,
    y_stride: u32,     // elements between tokens of y
    zero_invalid: u32, // 1 on one part only: ids outside the matrix give a row of zeros there
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
#if !PLAIN
@group(0) @binding(2) var<storage, read> scales: array<u32>;
#endif
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    // One thread per element: x over the row, tokens on y and, past 65,535, on z.
    let e = gid.x;
    let t = gid.y + gid.z * 65535u;
    if (e >= p.cols || t >= p.n_tokens) {
        return;
    }
    let id = ids[p.ids_offset + t];
    let yi = p.y_offset + t * p.y_stride + e;
    if (id < p.part_row0 || id - p.part_row0 >= p.part_rows) {
        if (p.zero_invalid != 0u && id >= p.total_rows) {
            y[yi] = 0.0;
        }
        return;
    }
    let r = id - p.part_row0;
    // Rows start on vec4<u32> boundaries.
    let row_words = (p.cols + ${EPC}u - 1u) / ${EPC}u * 4u;
#if PLAIN
    y[yi] = bitcast<f32>(codes[r * row_words + e]);
#else
    let bits = 32u / (${EPC}u / 4u);
    let per_word = ${EPC}u / 4u;
    let word = codes[r * row_words + e / per_word];
    let shift = bits * (e % per_word);
#if SIGNED
    let code = f32(extractBits(bitcast<i32>(word), shift, bits));
#else
    let code = f32(extractBits(word, shift, bits));
#endif
    let n_super = (p.cols + 255u) / 256u;
    let srow = r * (2u * n_super + p.cols / ${GROUP}u);
    let sb = srow + 2u * (e / 256u);
    let sub = unpack2x16float(scales[srow + 2u * n_super + e / ${GROUP}u]);
#if SIGNED
    y[yi] = code * (bitcast<f32>(scales[sb]) * sub.x);
#else
    y[yi] = code * (bitcast<f32>(scales[sb]) * sub.x) + bitcast<f32>(scales[sb + 1u]) * sub.y;
#endif
#endif
}
