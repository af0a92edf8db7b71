// Response averages without reading rows back: for each entry (row_start, row_count, off) of one list of the forward
// call's lists buffer (a run of consecutive rows of one sequence inside its mean range, at one residual index),
// sums[off + c] += x[row, c] for its rows in order (one running f32 sum per element, kept across forward calls of
// a wave). The list's (first word, count) sit at word `dir`.
// Twin: personascope_gpu::twins::accumulate (bit-identical: the same adds in the same order).
// One thread per element; workgroup y is the entry. Defines: WG (threads per workgroup).

struct Params {
    d: u32,
    dir: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;
@group(0) @binding(3) var<storage, read> lists: array<u32>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x * ${WG}u + lid;
    let first = lists[p.dir];
    let count = lists[p.dir + 1u];
    let i = wg.y;
    if (c >= p.d || i >= count) {
        return;
    }
    let e = first + 4u * i;
    let start = lists[e];
    let n = lists[e + 1u];
    let off = lists[e + 2u];
    var s = sums[off + c];
    for (var r = start; r < start + n; r++) {
        s += x[r * p.d + c];
    }
    sums[off + c] = s;
}
