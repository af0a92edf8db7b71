// Copies chosen rows of the residual stream: dst[off_i + c] = src[row_i * d + c] for the entries (row_i, off_i) of
// one list of the forward call's lists buffer (captures at one residual index into the wave's results, or the rows
// whose logits are wanted into the LM head's input). The list's (first word, count) sit at word `dir`.
// Twin: personascope_gpu::twins::gather. One thread per element; workgroup y is the entry.
// Defines: WG (threads per workgroup).

struct Params {
    d: u32,
    dir: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
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
    let row = lists[first + 2u * i];
    let off = lists[first + 2u * i + 1u];
    dst[off + c] = src[row * p.d + c];
}
