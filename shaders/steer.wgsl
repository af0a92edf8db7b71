// Steering at one residual index: x[row] += alpha_i * v_i for every active entry i whose position range
// [start_i, end_i) holds the row's absolute position pos0 + row, entries applied in order (as
// personascope_model::Steer adds them). Rows no entry covers are not written. Twin: personascope_gpu::twins::steer.
// One thread per element of a row; workgroups along y walk the rows. Defines: WG (threads per workgroup).

struct Params {
    rows: u32,
    d: u32,
    // Absolute position of row 0.
    pos0: u32,
    // This layer's entries are entries[first .. first + count].
    first: u32,
    count: u32,
    // Element offset of row 0 inside x.
    x_offset: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Entry {
    // Element offset of the vector [d] inside `vectors`.
    offset: u32,
    alpha: f32,
    start: u32,
    end: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> vectors: array<f32>;
@group(0) @binding(3) var<storage, read> entries: array<Entry>;

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = wg.x * ${WG}u + lid;
    if (c >= p.d) {
        return;
    }
    for (var row = wg.y; row < p.rows; row += groups.y) {
        let pos = p.pos0 + row;
        let i = p.x_offset + row * p.d + c;
        var v = x[i];
        var hit = false;
        for (var e = p.first; e < p.first + p.count; e++) {
            let en = entries[e];
            if (pos >= en.start && pos < en.end) {
                v += en.alpha * vectors[en.offset + c];
                hit = true;
            }
        }
        if (hit) {
            x[i] = v;
        }
    }
}
