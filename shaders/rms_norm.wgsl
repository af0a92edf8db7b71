// RMSNorm, one workgroup per row: y = x / sqrt(mean(x^2) + eps) * w.
// Twin: personascope_model::ops::rms_norm. Defines: WG (threads per workgroup, a power of two).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x;
    let base = row * p.cols;
    var sum = 0.0;
    for (var c = lid; c < p.cols; c += ${WG}u) {
        let v = x[base + c];
        sum += v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = ${WG}u / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += ${WG}u) {
        y[base + c] = x[base + c] * scale * w[c];
    }
}
