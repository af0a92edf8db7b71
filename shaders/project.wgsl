// Monitor projections of the current token: scores[t, l] = h_l . v_hat[t, l] for every trait t < traits and
// residual index l < layers (N + 1), from a capture buffer [layers, d] and unit trait vectors [traits, layers, d].
// Slots whose bit is clear in `mask` get NaN (as personascope_model::Projection leaves unmonitored slots).
// Twin: personascope_gpu::twins::project (same summation order).
// 32 lanes per slot, SLOTS slots per workgroup: lane j sums elements j, j + 32, ... in order, then lane 0 adds the
// 32 partials in order. One barrier per workgroup. Defines: SLOTS (slots per workgroup), WG (= 32 * SLOTS).

struct Params {
    traits: u32,
    layers: u32,
    d: u32,
    // out[scores_offset + t * layers + l] (u32 words holding f32 bits).
    scores_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> capture: array<f32>;
@group(0) @binding(2) var<storage, read> vectors: array<f32>;
// Bit s of mask[s / 32] enables slot s = t * layers + l.
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const LANES: u32 = 32u;
const QUIET_NAN: u32 = 0x7fc00000u;

var<workgroup> partial: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot = (wg.y * groups.x + wg.x) * ${SLOTS}u + lid / LANES;
    let lane = lid % LANES;
    let slots = p.traits * p.layers;
    var on = false;
    if (slot < slots) {
        on = ((mask[slot / 32u] >> (slot % 32u)) & 1u) == 1u;
    }
    var acc = 0.0;
    if (on) {
        let h = (slot % p.layers) * p.d;
        let v = slot * p.d;
        for (var c = lane; c < p.d; c += LANES) {
            acc += capture[h + c] * vectors[v + c];
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    if (lane == 0u && slot < slots) {
        var score = QUIET_NAN;
        if (on) {
            var sum = 0.0;
            for (var j = 0u; j < LANES; j++) {
                sum += partial[lid + j];
            }
            score = bitcast<u32>(sum);
        }
        out[p.scores_offset + slot] = score;
    }
}
