// Response averages and the monitor's capture without reading tokens back, at one residual index:
// - SUM (flags bit 0): sums[sum_offset + c] += x[row, c] for rows whose absolute position pos0 + row lies in
//   [start, end), rows added in order (one running f32 sum per element);
// - CAPTURE (flags bit 1): capture[capture_offset + c] = x[capture_row, c] (the last token's residual into the
//   capture slot of this layer, read by the projection kernel).
// Twin: personascope_gpu::twins::accumulate (bit-identical: the same adds in the same order).
// One thread per element. Defines: WG (threads per workgroup).

struct Params {
    rows: u32,
    d: u32,
    pos0: u32,
    start: u32,
    end: u32,
    // Element offset of row 0 inside x.
    x_offset: u32,
    sum_offset: u32,
    capture_offset: u32,
    capture_row: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> capture: array<f32>;

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = (wg.y * groups.x + wg.x) * ${WG}u + lid;
    if (c >= p.d) {
        return;
    }
    if ((p.flags & 1u) != 0u) {
        // Rows in range: [max(start, pos0), min(end, pos0 + rows)) - pos0.
        let a = max(p.start, p.pos0);
        let b = min(p.end, p.pos0 + p.rows);
        if (a < b) {
            var s = sums[p.sum_offset + c];
            for (var row = a - p.pos0; row < b - p.pos0; row++) {
                s += x[p.x_offset + row * p.d + c];
            }
            sums[p.sum_offset + c] = s;
        }
    }
    if ((p.flags & 2u) != 0u) {
        capture[p.capture_offset + c] = x[p.x_offset + p.capture_row * p.d + c];
    }
}
