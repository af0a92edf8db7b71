// Next-token choice on the GPU: greedy argmax, or a draw with repetition penalty, temperature, top-k and top-p,
// from a logits row [vocab], for several sequences at once: workgroup y is the sequence, with its own Params, and its
// WG threads loop over the vocabulary. Twin:
// personascope_gpu::twins::sample (same thresholds, same integer arithmetic, same token).
//
// Everything that decides the token is exact integer arithmetic or correctly rounded f32 subtract / multiply, so
// the twin and every adapter agree bit for bit, with one exception: the repetition penalty divides positive
// logits, and WGSL allows division 2.5 ulp (lavapipe rounds correctly), so a penalized logit may differ in its
// last bit on other adapters. Further:
// - logits are ordered by a u32 key (f32 total order, as f32::total_cmp); NaN is never a candidate;
// - top-k and top-p thresholds are found by a radix search over keys (256 buckets a pass, 4 passes), then over
//   indices when tokens tie at the threshold, counting tokens or summing integer weights exactly;
// - weights are 2^((x - max) * log2(e) / T) in fixed point (2^24 = the most likely token) from an exact table
//   with linear interpolation; tokens below 2^-24 of the most likely one weigh 0;
// - the draw uses 64 random bits from a hash of (seed, step) and walks tokens in the order thread-major
//   (i mod WG, then i div WG), a fixed order, so no RNG state lives on the GPU.
// Defines: WG (threads = histogram buckets; the twin assumes 256), EXP2_TABLE (257 u32:
// round(2^24 * 2^(-j/256))).

struct Params {
    vocab: u32,
    // Element offset of the logits row inside `logits` (the last row after a prefill).
    logits_offset: u32,
    // The repetition-penalty context is ids[ctx_start .. ctx_start + ctx_len].
    ctx_start: u32,
    ctx_len: u32,
    // ids[write_index] = the chosen token (the next step's embedding gather reads it there).
    write_index: u32,
    // out[out_offset .. +4] = (token, step, candidates, status).
    out_offset: u32,
    step: u32,
    // 1: temperature 0, argmax.
    greedy: u32,
    seed_lo: u32,
    seed_hi: u32,
    // 0 = off.
    top_k: u32,
    // round(top_p * 65536); 65536 = off.
    top_p_q16: u32,
    // log2(e) / temperature.
    exp_scale: f32,
    repetition_penalty: f32,
    // tokens[token_index] = the chosen token too (row of the next forward call).
    token_index: u32,
    // This sequence's scratch: work[work_offset .. + vocab].
    work_offset: u32,
}

// One Params per sequence sampled in this dispatch; workgroup y is the sequence.
@group(0) @binding(0) var<storage, read> params: array<Params>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
// Scratch [sequences, vocab]: the penalized logits (unused when the penalty is 1).
@group(0) @binding(3) var<storage, read_write> work: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;
// The next forward call's input ids: tokens[token_index] = the chosen token.
@group(0) @binding(5) var<storage, read_write> tokens: array<u32>;

const STATUS_SAMPLED: u32 = 0u;
const STATUS_GREEDY: u32 = 1u;
// No token had a nonzero weight (all logits NaN / -inf, or an infinite max): the argmax is used.
const STATUS_FALLBACK: u32 = 2u;

const EXP2 = array<u32, 257>(${EXP2_TABLE});

var<workgroup> tab: array<u32, 257>;
// Three rotating reduction slots: a round adds into one while thread 0 clears the next, so each reduction needs
// a single barrier (the slot cleared was last read two rounds ago).
var<workgroup> red_n: array<atomic<u32>, 3>;
var<workgroup> red_lo: array<atomic<u32>, 3>;
var<workgroup> red_hi: array<atomic<u32>, 3>;
var<workgroup> g_max: atomic<u32>;
var<workgroup> g_idx: atomic<u32>;
var<workgroup> t_max: atomic<u32>;
var<workgroup> t_min: atomic<u32>;
var<workgroup> chunk: array<vec2<u32>, ${WG}>;
var<workgroup> chosen: u32;
// Double-buffered histograms of the radix search (one bucket per thread) and its result, broadcast by thread 0.
var<workgroup> h_n: array<array<atomic<u32>, ${WG}>, 2>;
var<workgroup> h_lo: array<array<atomic<u32>, ${WG}>, 2>;
var<workgroup> h_hi: array<array<atomic<u32>, ${WG}>, 2>;
var<workgroup> res: array<u32, 8>;
var<workgroup> shared_params: Params;
var<private> hpass: u32;

var<private> rounds: u32;
// Candidate thresholds: a token is in the top-k set when key > kk or (key == kk and index <= ki); likewise top-p.
var<private> kk: u32;
var<private> ki: u32;
var<private> pk: u32;
var<private> pi: u32;
var<private> mx: f32;

// u64 as vec2(lo, hi).
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x >= b.x);
}

fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    return vec2<u32>((ll & 0xffffu) | (mid << 16u), ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u));
}

// (a * b) mod 2^64.
fn mul64x32(a: vec2<u32>, b: u32) -> vec2<u32> {
    let w = mul_wide(a.x, b);
    return vec2<u32>(w.x, w.y + a.y * b);
}

// (a * b) >> 64.
fn mulhi64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let p00 = mul_wide(a.x, b.x);
    let p01 = mul_wide(a.x, b.y);
    let p10 = mul_wide(a.y, b.x);
    let p11 = mul_wide(a.y, b.y);
    let s1 = add64(vec2<u32>(p00.y, 0u), vec2<u32>(p01.x, 0u));
    let c1 = add64(s1, vec2<u32>(p10.x, 0u)).y;
    let s2 = add64(add64(vec2<u32>(p01.y, 0u), vec2<u32>(p10.y, 0u)), add64(vec2<u32>(p11.x, 0u), vec2<u32>(c1, 0u)));
    return vec2<u32>(s2.x, p11.y + s2.y);
}

fn is_nan(b: u32) -> bool {
    return (b & 0x7fffffffu) > 0x7f800000u;
}

// Monotone map of f32 bits onto u32 (the order of f32::total_cmp).
fn tkey(b: u32) -> u32 {
    return select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
}

fn from_key(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k >> 31u) == 1u));
}

fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

fn val(p: Params, i: u32) -> f32 {
    if (p.repetition_penalty != 1.0) {
        return work[p.work_offset + i];
    }
    return logits[p.logits_offset + i];
}

// Fixed-point 2^((x - max) * exp_scale); 2^24 at the max.
fn weight(p: Params, x: f32) -> u32 {
    let t = (x - mx) * p.exp_scale;
    if (is_nan(bitcast<u32>(t)) || t <= -24.0) {
        return 0u;
    }
    let q = u32(-t * 1048576.0);
    let r = q & 0xfffffu;
    let j = r >> 12u;
    let a = tab[j];
    let v = a - (((a - tab[j + 1u]) * (r & 0xfffu)) >> 12u);
    return v >> (q >> 20u);
}

fn in_k(i: u32, k: u32) -> bool {
    return k > kk || (k == kk && i <= ki);
}

fn in_p(i: u32, k: u32) -> bool {
    return k > pk || (k == pk && i <= pi);
}

struct Red {
    n: u32,
    m: vec2<u32>,
}

// Workgroup sums of a count and a u64 mass (each thread's mass < 2^48); one barrier.
fn reduce(lid: u32, n: u32, m: vec2<u32>) -> Red {
    let s = rounds % 3u;
    if (lid == 0u) {
        let z = (rounds + 1u) % 3u;
        atomicStore(&red_n[z], 0u);
        atomicStore(&red_lo[z], 0u);
        atomicStore(&red_hi[z], 0u);
    }
    rounds += 1u;
    if (n != 0u) {
        atomicAdd(&red_n[s], n);
    }
    if (m.x != 0u || m.y != 0u) {
        // Split so that neither 32-bit sum can overflow: low 16 bits, and the rest.
        atomicAdd(&red_lo[s], m.x & 0xffffu);
        atomicAdd(&red_hi[s], (m.x >> 16u) | (m.y << 16u));
    }
    workgroupBarrier();
    let hi = atomicLoad(&red_hi[s]);
    let m_all = add64(vec2<u32>(atomicLoad(&red_lo[s]), 0u), vec2<u32>(hi << 16u, hi >> 16u));
    return Red(atomicLoad(&red_n[s]), m_all);
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

// What a search sees of token i: (takes part, key, weight). Modes: 0 top-k by value (weight 1); 1 top-k ties at
// kk by index (key ~i, so the lowest index is the largest key); 2 top-p by value over the top-k set; 3 top-p ties
// at pk by index.
fn elem(p: Params, mode: u32, i: u32) -> vec3<u32> {
    let x = val(p, i);
    let b = bitcast<u32>(x);
    if (is_nan(b)) {
        return vec3<u32>(0u);
    }
    let k = tkey(b);
    switch mode {
        case 0u: {
            return vec3<u32>(1u, k, 1u);
        }
        case 1u: {
            return vec3<u32>(select(0u, 1u, k == kk), ~i, 1u);
        }
        case 2u: {
            if (in_k(i, k)) {
                return vec3<u32>(1u, k, weight(p, x));
            }
        }
        default: {
            if (k == pk && in_k(i, k)) {
                return vec3<u32>(1u, ~i, weight(p, x));
            }
        }
    }
    return vec3<u32>(0u);
}

struct Found {
    // The largest key K with F(K) >= goal, where F(K) = total weight of the tokens with key >= K.
    lo: u32,
    // F(K) and F(K + 1) (count and weight).
    at_lo: Red,
    at_hi1: Red,
}

// Radix search for the largest key K in [lo0, hi0] with F(K) >= goal, given F(lo0) = at_lo0 >= goal and
// F(hi0 + 1) < goal: each pass splits the range into 256 buckets (a histogram of counts and weights) and keeps
// the bucket where F crosses goal, so 4 passes cover 32 bits. Histograms are double-buffered: a pass clears the
// other one, so a pass needs two barriers. `on` false: nothing happens (the barriers still run).
fn search(p: Params, lid: u32, mode: u32, on: bool, lo0: u32, hi0: u32, at_lo0: Red, goal: vec2<u32>) -> Found {
    var lo = lo0;
    var hi = hi0;
    var at_lo = at_lo0;
    var at_hi1 = Red(0u, vec2<u32>(0u));
    for (var it = 0u; it < 4u; it++) {
        let busy = on && lo < hi;
        let cur = hpass % 2u;
        hpass += 1u;
        atomicStore(&h_n[1u - cur][lid], 0u);
        atomicStore(&h_lo[1u - cur][lid], 0u);
        atomicStore(&h_hi[1u - cur][lid], 0u);
        let shift = max(32u - countLeadingZeros(hi - lo), 8u) - 8u;
        var an = 0u;
        var am = vec2<u32>(0u);
        if (busy) {
            for (var i = lid; i < p.vocab; i += ${WG}u) {
                let e = elem(p, mode, i);
                if (e.x == 0u || e.y < lo) {
                    continue;
                }
                if (e.y > hi) {
                    an += 1u;
                    am = add64(am, vec2<u32>(e.z, 0u));
                    continue;
                }
                let bk = (e.y - lo) >> shift;
                atomicAdd(&h_n[cur][bk], 1u);
                // Weights < 2^25 split at 12 bits: no bucket sum can overflow for vocabularies below 2^20.
                atomicAdd(&h_lo[cur][bk], e.z & 0xfffu);
                if (e.z >= 4096u) {
                    atomicAdd(&h_hi[cur][bk], e.z >> 12u);
                }
            }
        }
        let above = reduce(lid, an, am);
        if (busy && lid == 0u) {
            // From the top bucket down, the first where F reaches goal (bucket 0 at the latest, as F(lo) >= goal).
            var cn = above.n;
            var cm = above.m;
            var b = (hi - lo) >> shift;
            loop {
                let nb = atomicLoad(&h_n[cur][b]);
                let hh = atomicLoad(&h_hi[cur][b]);
                let nm = add64(add64(cm, vec2<u32>(atomicLoad(&h_lo[cur][b]), 0u)), vec2<u32>(hh << 12u, hh >> 20u));
                if (ge64(nm, goal) || b == 0u) {
                    let blo = lo + (b << shift);
                    let wm1 = (1u << shift) - 1u;
                    let bhi = select(hi, blo + wm1, hi - blo > wm1);
                    res = array<u32, 8>(blo, bhi, cn, cm.x, cm.y, cn + nb, nm.x, nm.y);
                    break;
                }
                cn += nb;
                cm = nm;
                b -= 1u;
            }
        }
        workgroupBarrier();
        if (busy) {
            lo = res[0];
            hi = res[1];
            at_hi1 = Red(res[2], vec2<u32>(res[3], res[4]));
            at_lo = Red(res[5], vec2<u32>(res[6], res[7]));
        }
    }
    return Found(lo, at_lo, at_hi1);
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // The sequence's parameters, made uniform across the workgroup: every branch on them below holds barriers.
    if (lid == 0u) {
        shared_params = params[wg.y];
    }
    let p = workgroupUniformLoad(&shared_params);
    let vocab = p.vocab;
    for (var j = lid; j < 257u; j += ${WG}u) {
        tab[j] = EXP2[j];
    }
    if (lid == 0u) {
        for (var s = 0u; s < 3u; s++) {
            atomicStore(&red_n[s], 0u);
            atomicStore(&red_lo[s], 0u);
            atomicStore(&red_hi[s], 0u);
        }
        atomicStore(&g_max, 0u);
        atomicStore(&g_idx, 0xffffffffu);
        atomicStore(&t_max, 0u);
        atomicStore(&t_min, 0xffffffffu);
        chosen = 0u;
    }
    rounds = 0u;
    hpass = 0u;
    for (var h = 0u; h < 2u; h++) {
        atomicStore(&h_n[h][lid], 0u);
        atomicStore(&h_lo[h][lid], 0u);
        atomicStore(&h_hi[h][lid], 0u);
    }
    if (p.repetition_penalty != 1.0) {
        for (var i = lid; i < vocab; i += ${WG}u) {
            work[p.work_offset + i] = logits[p.logits_offset + i];
        }
        storageBarrier();
        // Duplicate ids write the same value (computed from the unpenalized logit), so each token is penalized
        // once, as in the CPU sampler.
        for (var j = lid; j < p.ctx_len; j += ${WG}u) {
            let id = ids[p.ctx_start + j];
            if (id < vocab) {
                let l = logits[p.logits_offset + id];
                work[p.work_offset + id] = select(l * p.repetition_penalty, l / p.repetition_penalty, l > 0.0);
            }
        }
        storageBarrier();
    }
    workgroupBarrier();

    // Pass 1: valid count, key range, and the argmax (largest value by `>`, so -0 == +0; lowest index on ties).
    var nv = 0u;
    var gb = 0u;
    var gi = 0u;
    var tmx = 0u;
    var tmn = 0xffffffffu;
    for (var i = lid; i < vocab; i += ${WG}u) {
        let b = bitcast<u32>(val(p, i));
        if (is_nan(b)) {
            continue;
        }
        nv += 1u;
        let k = tkey(b);
        tmx = max(tmx, k);
        tmn = min(tmn, k);
        let g = tkey(select(b, 0u, b == 0x80000000u));
        if (g > gb) {
            gb = g;
            gi = i;
        }
    }
    atomicMax(&g_max, gb);
    atomicMax(&t_max, tmx);
    atomicMin(&t_min, tmn);
    let n_valid = reduce(lid, nv, vec2<u32>(0u)).n;
    if (nv > 0u && gb == atomicLoad(&g_max)) {
        atomicMin(&g_idx, gi);
    }
    workgroupBarrier();
    var argmax = atomicLoad(&g_idx);
    // personascope_model::argmax returns 0 when logits[0] is NaN (nothing compares greater than it).
    if (n_valid == 0u || is_nan(bitcast<u32>(val(p, 0u)))) {
        argmax = 0u;
    }
    let key_max = atomicLoad(&t_max);
    let key_min = atomicLoad(&t_min);
    mx = from_key(key_max);
    kk = 0u;
    ki = 0xffffffffu;
    pk = 0u;
    pi = 0xffffffffu;

    // Top-k: the largest key K with count(key >= K) >= k, then the lowest-index ties at K up to k tokens.
    if (p.greedy == 0u && p.top_k > 0u) {
        let on = p.top_k < n_valid;
        let f = search(p, lid, 0u, on, key_min, key_max, Red(n_valid, vec2<u32>(n_valid, 0u)), vec2<u32>(p.top_k, 0u));
        let ties = f.at_lo.n - f.at_hi1.n;
        let tie = on && f.at_lo.n > p.top_k;
        kk = f.lo;
        let need = p.top_k - f.at_hi1.n;
        let fi = search(p, lid, 1u, tie, ~(vocab - 1u), 0xffffffffu, Red(ties, vec2<u32>(ties, 0u)), vec2<u32>(need, 0u));
        if (!on) {
            kk = 0u;
        }
        if (tie) {
            ki = ~fi.lo;
        }
    }

    // Top-p: the smallest prefix (by key, then index) of the top-k set whose mass reaches
    // ceil(mass(top-k set) * top_p_q16 / 65536).
    if (p.greedy == 0u && p.top_p_q16 < 65536u) {
        var ml = vec2<u32>(0u);
        var cl = 0u;
        for (var i = lid; i < vocab; i += ${WG}u) {
            let e = elem(p, 2u, i);
            cl += e.x;
            ml = add64(ml, vec2<u32>(e.z, 0u));
        }
        let total = reduce(lid, cl, ml);
        let scaled = add64(mul64x32(total.m, p.top_p_q16), vec2<u32>(0xffffu, 0u));
        var goal = vec2<u32>((scaled.x >> 16u) | (scaled.y << 16u), scaled.y >> 16u);
        if (goal.x == 0u && goal.y == 0u) {
            goal = vec2<u32>(1u, 0u);
        }
        let on = ge64(total.m, goal);
        let f = search(p, lid, 2u, on, max(kk, key_min), key_max, total, goal);
        let tie = on && f.at_lo.n - f.at_hi1.n > 1u;
        pk = f.lo;
        let ties = Red(f.at_lo.n - f.at_hi1.n, sub64(f.at_lo.m, f.at_hi1.m));
        let fi = search(p, lid, 3u, tie, ~(vocab - 1u), 0xffffffffu, ties, sub64(goal, f.at_hi1.m));
        if (!on) {
            pk = 0u;
        }
        if (tie) {
            pi = ~fi.lo;
        }
    }

    var candidates = 1u;
    var status = STATUS_GREEDY;
    if (p.greedy == 0u) {
        // The draw: R = floor(W * U / 2^64) for the total weight W and 64 random bits U; the token whose weight
        // interval, walked thread-major, holds R. Each thread first sums its own tokens.
        var ml = vec2<u32>(0u);
        var cl = 0u;
        for (var i = lid; i < vocab; i += ${WG}u) {
            let x = val(p, i);
            let b = bitcast<u32>(x);
            if (!is_nan(b)) {
                let k = tkey(b);
                if (in_k(i, k) && in_p(i, k)) {
                    cl += 1u;
                    ml = add64(ml, vec2<u32>(weight(p, x), 0u));
                }
            }
        }
        chunk[lid] = ml;
        let total = reduce(lid, cl, ml);
        let a = pcg(pcg(pcg(p.seed_lo) ^ p.seed_hi) ^ p.step);
        let u = vec2<u32>(pcg(a ^ 0x68bc21ebu), a);
        let goal = mulhi64(total.m, u);
        var start = vec2<u32>(0u);
        for (var s = 0u; s < lid; s++) {
            start = add64(start, chunk[s]);
        }
        if (ge64(goal, start) && !ge64(goal, add64(start, ml))) {
            var cum = start;
            for (var i = lid; i < vocab; i += ${WG}u) {
                let x = val(p, i);
                let b = bitcast<u32>(x);
                if (!is_nan(b)) {
                    let k = tkey(b);
                    if (in_k(i, k) && in_p(i, k)) {
                        let next = add64(cum, vec2<u32>(weight(p, x), 0u));
                        if (!ge64(goal, next)) {
                            chosen = i;
                            break;
                        }
                        cum = next;
                    }
                }
            }
        }
        workgroupBarrier();
        candidates = total.n;
        status = STATUS_SAMPLED;
        if (total.m.x == 0u && total.m.y == 0u) {
            status = STATUS_FALLBACK;
        }
    }
    if (lid == 0u) {
        var token = argmax;
        if (status == STATUS_SAMPLED) {
            token = chosen;
        }
        ids[p.write_index] = token;
        out[p.out_offset] = token;
        out[p.out_offset + 1u] = p.step;
        out[p.out_offset + 2u] = candidates;
        out[p.out_offset + 3u] = status;
        tokens[p.token_index] = token;
    }
}
