// In-place adds: y += x element-wise over len values (the residual add), or with BIAS, y[r, c] += x[c] for rows
// of `cols` values. Twins: personascope_model::ops::add and ops::add_bias.
// Defines: WG (threads per workgroup), BIAS. The grid may be 2-D (x * y workgroups) when there are more than 65535
// workgroups of elements.

struct Params {
    len: u32,
    // Row length of y for BIAS (the length of x); unused otherwise.
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * groups.x + wg.x) * ${WG}u + lid;
    if (i >= p.len) {
        return;
    }
#if BIAS
    y[i] += x[i % p.cols];
#else
    y[i] += x[i];
#endif
}
