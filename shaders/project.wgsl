// Monitor projections at one residual index for chosen rows of a ragged batch: for each entry (row, base) of one
// list of the forward call's lists buffer and each trait t monitored at this index,
// out[base + t * layers + layer] = x[row] . v_hat[t, layer], from unit trait vectors [traits, layers, d]. Slots
// whose bit is clear in `mask` are not written (the engine reads them as NaN, as the CPU plan leaves them).
// Twin: personascope_gpu::twins::project (same summation order).
// 32 lanes per (entry, trait) slot, SLOTS slots per workgroup: lane j sums elements j, j + 32, ... in order, then
// lane 0 adds the 32 partials in order. One barrier per workgroup. Defines: SLOTS (slots per workgroup),
// WG (= 32 * SLOTS).

struct Params {
    d: u32,
    dir: u32,
    layer: u32,
    layers: u32,
    traits: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> vectors: array<f32>;
// Bit s of mask[s / 32] enables trait t at residual index l, s = t * layers + l.
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> lists: array<u32>;

const LANES: u32 = 32u;

var<workgroup> partial: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot = (wg.y * groups.x + wg.x) * ${SLOTS}u + lid / LANES;
    let lane = lid % LANES;
    let first = lists[p.dir];
    let count = lists[p.dir + 1u];
    let slots = count * p.traits;
    var on = false;
    var t = 0u;
    var i = 0u;
    if (slot < slots) {
        i = slot / p.traits;
        t = slot % p.traits;
        let bit = t * p.layers + p.layer;
        on = ((mask[bit / 32u] >> (bit % 32u)) & 1u) == 1u;
    }
    var acc = 0.0;
    var row = 0u;
    var base = 0u;
    if (on) {
        row = lists[first + 2u * i];
        base = lists[first + 2u * i + 1u];
        let h = row * p.d;
        let v = (t * p.layers + p.layer) * p.d;
        for (var c = lane; c < p.d; c += LANES) {
            acc += x[h + c] * vectors[v + c];
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    if (lane == 0u && on) {
        var sum = 0.0;
        for (var j = 0u; j < LANES; j++) {
            sum += partial[lid + j];
        }
        out[base + t * p.layers + p.layer] = sum;
    }
}
