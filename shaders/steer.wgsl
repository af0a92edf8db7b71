// Steering at one residual index for the rows of a ragged batch: x[row] += alpha_i * v_i for every entry i of this
// index that belongs to the row's sequence and whose position range [start_i, end_i) holds the row's position,
// entries applied in order (as the CPU plan adds them). Rows no entry covers are not written.
// Twin: personascope_gpu::twins::steer. The row count is word 0 of the lists buffer (the forward call's header).
// One thread per element of a row; workgroups along y walk the rows. Defines: WG (threads per workgroup).

struct Params {
    d: u32,
    // This residual index's entries are entries[first .. first + count].
    first: u32,
    count: u32,
    _pad0: u32,
}

struct Entry {
    // Element offset of the vector [d] inside `vectors`.
    offset: u32,
    alpha: f32,
    start: u32,
    end: u32,
    // Wave sequence the entry steers.
    seq: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One row of a ragged batch: the engine's row table (crates/gpu/src/rows.rs), key j at prefix_base + j below
// prefix_len and at own_base + (j - prefix_len) above.
${ROW}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> vectors: array<f32>;
@group(0) @binding(3) var<storage, read> entries: array<Entry>;
@group(0) @binding(4) var<storage, read> rows: array<Row>;
@group(0) @binding(5) var<storage, read> lists: array<u32>;

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = wg.x * ${WG}u + lid;
    let n_rows = lists[0];
    if (c >= p.d) {
        return;
    }
    for (var r = wg.y; r < n_rows; r += groups.y) {
        let row = rows[r];
        let i = r * p.d + c;
        var v = x[i];
        var hit = false;
        for (var e = p.first; e < p.first + p.count; e++) {
            let en = entries[e];
            if (en.seq == row.seq && row.pos >= en.start && row.pos < en.end) {
                v += en.alpha * vectors[en.offset + c];
                hit = true;
            }
        }
        if (hit) {
            x[i] = v;
        }
    }
}
