// gate = silu(gate) * up, element-wise over n * d_ff (the SwiGLU activation), in place in `gate`.
// Twin: personascope_model::ops::silu_gate. Defines: WG (threads per workgroup). The grid may be 2-D (x * y
// workgroups) when there are more than 65535 workgroups of elements.

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

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
    let g = gate[i];
    // exp of a non-positive number only: exp(-g) overflows for g < -88, and WGSL may assume no infinities.
    let e = exp(-abs(g));
    gate[i] = select(g * e, g, g >= 0.0) / (1.0 + e) * up[i];
}
