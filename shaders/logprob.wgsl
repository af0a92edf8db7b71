// Log-probabilities of given next tokens from rows of logits, only the wanted values leaving the GPU: for each entry
// (i, target, off) of one list of the forward call's lists buffer, out[off] = logits[row0 + i][target] - max -
// log(sum(exp(logits[row0 + i] - max))), the log-softmax at the target. The list's (first word, count) sit at word
// `dir`. Twin: personascope_model::plan::log_prob (which sums in f64; here a fixed-order f32 tree).
// One workgroup per entry (workgroup x), WG threads striding the vocabulary. Defines: WG (threads per workgroup,
// a power of two).

struct Params {
    vocab: u32,
    dir: u32,
    // Logits row of the chunk's entry 0.
    row0: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> lists: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = lists[p.dir];
    let count = lists[p.dir + 1u];
    let i = wg.x;
    // The engine dispatches one workgroup per entry; a stray one reads nothing and writes nothing (the barriers
    // below stay in uniform control flow).
    let valid = i < count;
    let e = first + 4u * i;
    var base = 0u;
    var n = 0u;
    if (valid) {
        base = (p.row0 + lists[e]) * p.vocab;
        n = p.vocab;
    }
    // A large finite floor instead of -inf: WGSL implementations may assume no infinities.
    var m = -3.0e38;
    for (var j = lid; j < n; j += ${WG}u) {
        m = max(m, logits[base + j]);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = ${WG}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var j = lid; j < n; j += ${WG}u) {
        sum += exp(logits[base + j] - mx);
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = ${WG}u / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u && valid) {
        let wanted = lists[e + 1u];
        out[lists[e + 2u]] = logits[base + wanted] - mx - log(red[0]);
    }
}
