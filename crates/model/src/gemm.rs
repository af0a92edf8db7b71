//! f32 matrix product for several input rows (prompt processing, batches): out[t, r] = sum_c W[r, c] x[t, c].
//!
//! The weight rows are dequantized a chunk at a time into f32 scratch (once per chunk, reused for every input
//! row), then multiplied in register tiles of `MR` weight rows by up to `NR` input rows, eight columns per step.
//! Both operands are contiguous along c, so a tile keeps `MR * NR` eight-lane accumulators and reduces each to
//! one output at the end. Chunks of weight rows run in parallel where the `parallel` feature is on.

use personascope_gguf::{dequantize, GgmlType};

/// Weight rows per register tile. The scratch for a chunk is padded to a whole number of tiles with zero rows,
/// so the kernels only ever see full `MR`-row panels.
const MR: usize = 4;
/// Input rows per register tile: 4 x 3 eight-lane accumulators plus the three x vectors fill the 16 AVX2
/// registers. Fewer input rows (1 or 2) are handled by narrower instances of the same kernel.
const NR: usize = 3;
/// Weight rows per parallel task: small enough to give every thread several tasks on a 192-row matrix, large
/// enough that rayon's overhead is negligible.
const CHUNK_ROWS: usize = 32;
/// Floats of x per cache block (256 KiB): the input rows of a block stay in L2 while every panel of the chunk
/// passes over them, instead of streaming all of x from memory once per panel.
const X_BLOCK_FLOATS: usize = 64 * 1024;

/// Which tile kernel to run. Outside this module only `PORTABLE` can be named; the others come from
/// `Kernel::detect` (and `available` in tests), which return them only on a CPU that has their instructions, so
/// holding a `Kernel` is proof that they are available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernel(Imp);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// Plain Rust, for every target (vectorized by the compiler for the target's baseline).
    pub(crate) const PORTABLE: Kernel = Kernel(Imp::Portable);

    /// The fastest kernel this CPU supports (feature detection is cached by std, so this is cheap per call).
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel(Imp::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernel(Imp::Avx2Fma);
            }
        }
        Kernel::PORTABLE
    }

    /// Every kernel this CPU supports, slowest first, so tests and the microbenchmark can run each one.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        #[allow(unused_mut)] // only x86-64 adds any
        let mut k = vec![Kernel::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                k.push(Kernel(Imp::Avx2Fma));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                k.push(Kernel(Imp::Avx512));
            }
        }
        k
    }
}

/// out[t * rows + r] = sum_c W[r, c] x[t, c] for `n = x.len() / cols` input rows, where weight row r is `row(r)`
/// stored in type `ty` (`cols` elements). A row that fails to dequantize (impossible once the model's sizes are
/// validated at load) yields NaN outputs rather than a panic.
pub(crate) fn matmul<'a>(
    kernel: Kernel,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row: impl Fn(usize) -> &'a [u8] + Sync,
    x: &[f32],
    out: &mut [f32],
) {
    if rows == 0 || cols == 0 {
        out.fill(0.0);
        return;
    }
    let n = x.len() / cols;
    debug_assert_eq!(out.len(), n * rows);
    // The output is [n, rows] but a task owns a range of weight rows, i.e. one segment of every output row.
    // Splitting each output row at the chunk boundaries hands every task its own n disjoint segments, so tasks
    // write their results in place (no [rows, n] buffer and transpose) without sharing a mutable slice.
    let chunks = rows.div_ceil(CHUNK_ROWS);
    let mut parts: Vec<Vec<&mut [f32]>> = (0..chunks).map(|_| Vec::with_capacity(n)).collect();
    for out_t in out.chunks_exact_mut(rows).take(n) {
        for (part, seg) in parts.iter_mut().zip(out_t.chunks_mut(CHUNK_ROWS)) {
            part.push(seg);
        }
    }
    let task = |scratch: &mut Vec<f32>, ci: usize, mut segs: Vec<&mut [f32]>| {
        let r0 = ci * CHUNK_ROWS;
        let m = CHUNK_ROWS.min(rows - r0);
        let panels = m.div_ceil(MR);
        scratch.resize(panels * MR * cols, 0.0);
        for (i, w) in scratch.chunks_exact_mut(cols).enumerate() {
            if i >= m {
                // Padding rows of the last panel: computed like the others, never written out.
                w.fill(0.0);
            } else if dequantize(ty, row(r0 + i), w).is_err() {
                w.fill(f32::NAN);
            }
        }
        chunk(kernel, scratch, panels, cols, x, n, &mut segs);
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        parts.into_par_iter().enumerate().for_each_init(Vec::new, |s, (ci, segs)| task(s, ci, segs));
    }
    #[cfg(not(feature = "parallel"))]
    {
        let mut scratch = Vec::new();
        for (ci, segs) in parts.into_iter().enumerate() {
            task(&mut scratch, ci, segs);
        }
    }
}

/// One chunk: `w` holds `panels * MR` dequantized rows of `cols`; `out[t][i]` receives row i's output for input
/// row t (segments may be shorter than `panels * MR`: the padding rows are dropped).
fn chunk(kernel: Kernel, w: &[f32], panels: usize, cols: usize, x: &[f32], n: usize, out: &mut [&mut [f32]]) {
    // A multiple of 12, so every kernel's tiles (3 or 4 input rows) divide a full block.
    let block = (X_BLOCK_FLOATS / cols / 12).max(1) * 12;
    let mut t0 = 0;
    while t0 < n {
        let t1 = n.min(t0 + block);
        for p in 0..panels {
            let panel = &w[p * MR * cols..(p + 1) * MR * cols];
            match kernel.0 {
                Imp::Portable => panel_portable(panel, cols, x, t0..t1, p * MR, out),
                // SAFETY: a `Kernel` holds `Avx2Fma` only when `Kernel::detect` found AVX2 and FMA on this CPU.
                #[cfg(target_arch = "x86_64")]
                Imp::Avx2Fma => unsafe { avx2::panel(panel, cols, x, t0..t1, p * MR, out) },
                // SAFETY: a `Kernel` holds `Avx512` only when `Kernel::detect` found AVX-512F on this CPU.
                #[cfg(target_arch = "x86_64")]
                Imp::Avx512 => unsafe { avx512::panel(panel, cols, x, t0..t1, p * MR, out) },
            }
        }
        t0 = t1;
    }
}

/// Writes a tile's sums: `sums[i][j]` is weight row `r + i` against input row `t + j`.
#[inline(always)]
fn store<const N: usize>(sums: [[f32; N]; MR], out: &mut [&mut [f32]], t: usize, r: usize) {
    for (j, o) in out[t..t + N].iter_mut().enumerate() {
        for (i, s) in sums.iter().enumerate() {
            if let Some(v) = o.get_mut(r + i) {
                *v = s[j];
            }
        }
    }
}

/// The portable kernel over one panel (`MR` rows of `cols`) and input rows `ts`, in tiles of `NR` input rows.
fn panel_portable(panel: &[f32], cols: usize, x: &[f32], ts: std::ops::Range<usize>, r: usize, out: &mut [&mut [f32]]) {
    let mut t = ts.start;
    while t < ts.end {
        let xs = |j: usize| &x[(t + j) * cols..(t + j + 1) * cols];
        match ts.end - t {
            1 => store(tile_portable::<1>(panel, cols, [xs(0)]), out, t, r),
            2 => store(tile_portable::<2>(panel, cols, [xs(0), xs(1)]), out, t, r),
            _ => store(tile_portable::<NR>(panel, cols, [xs(0), xs(1), xs(2)]), out, t, r),
        }
        t += NR.min(ts.end - t);
    }
}

/// `MR` x `N` dot products with eight lanes per pair, written so the compiler can vectorize the lanes.
#[inline(always)]
fn tile_portable<const N: usize>(panel: &[f32], cols: usize, xs: [&[f32]; N]) -> [[f32; N]; MR] {
    let mut acc = [[[0f32; 8]; N]; MR];
    let body = cols / 8 * 8;
    for c in (0..body).step_by(8) {
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let w = &panel[i * cols + c..i * cols + c + 8];
            for (acc_ij, xj) in acc_i.iter_mut().zip(&xs) {
                let xv = &xj[c..c + 8];
                for l in 0..8 {
                    acc_ij[l] += w[l] * xv[l];
                }
            }
        }
    }
    let mut sums = [[0f32; N]; MR];
    for (i, (s_i, acc_i)) in sums.iter_mut().zip(&acc).enumerate() {
        for (j, (s, a)) in s_i.iter_mut().zip(acc_i).enumerate() {
            *s = a.iter().sum::<f32>() + tail(&panel[i * cols + body..(i + 1) * cols], &xs[j][body..]);
        }
    }
    sums
}

/// The columns after the last whole group of eight (only F32/F16/BF16 rows can have any).
#[inline(always)]
fn tail(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{store, tail, MR, NR};
    use std::arch::x86_64::*;

    /// The AVX2 + FMA kernel over one panel and input rows `ts`; same contract as `panel_portable`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel(
        panel: &[f32],
        cols: usize,
        x: &[f32],
        ts: std::ops::Range<usize>,
        r: usize,
        out: &mut [&mut [f32]],
    ) {
        let mut t = ts.start;
        while t < ts.end {
            let xs = |j: usize| &x[(t + j) * cols..(t + j + 1) * cols];
            match ts.end - t {
                1 => store(tile::<1>(panel, cols, [xs(0)]), out, t, r),
                2 => store(tile::<2>(panel, cols, [xs(0), xs(1)]), out, t, r),
                _ => store(tile::<NR>(panel, cols, [xs(0), xs(1), xs(2)]), out, t, r),
            }
            t += NR.min(ts.end - t);
        }
    }

    /// `MR` x `N` dot products: one eight-lane FMA accumulator per pair, reduced once at the end.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tile<const N: usize>(panel: &[f32], cols: usize, xs: [&[f32]; N]) -> [[f32; N]; MR] {
        // Bounds for the unchecked loads below: the panel holds MR rows and every x row `cols` floats.
        assert!(panel.len() >= MR * cols && xs.iter().all(|xj| xj.len() >= cols));
        let body = cols / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); N]; MR];
        let mut c = 0;
        while c < body {
            let mut xv = [_mm256_setzero_ps(); N];
            for (v, xj) in xv.iter_mut().zip(&xs) {
                // SAFETY: c + 8 <= body <= cols <= xj.len() (asserted above); loadu has no alignment need.
                *v = unsafe { _mm256_loadu_ps(xj.as_ptr().add(c)) };
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                // SAFETY: i * cols + c + 8 <= MR * cols <= panel.len() (asserted above).
                let w = unsafe { _mm256_loadu_ps(panel.as_ptr().add(i * cols + c)) };
                for (a, v) in acc_i.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(w, *v, *a);
                }
            }
            c += 8;
        }
        let mut sums = [[0f32; N]; MR];
        for (i, (s_i, acc_i)) in sums.iter_mut().zip(&acc).enumerate() {
            for (j, (s, a)) in s_i.iter_mut().zip(acc_i).enumerate() {
                *s = hsum(*a) + tail(&panel[i * cols + body..(i + 1) * cols], &xs[j][body..]);
            }
        }
        sums
    }

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{store, MR};
    use std::arch::x86_64::*;

    /// Input rows per tile: 4 x 4 sixteen-lane accumulators. (4 x 6 would fit the 32 registers, but the compiler
    /// then spills accumulators and it measured slower than AVX2.)
    const NR: usize = 4;

    /// The AVX-512 kernel over one panel and input rows `ts`; same contract as `panel_portable`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel(
        panel: &[f32],
        cols: usize,
        x: &[f32],
        ts: std::ops::Range<usize>,
        r: usize,
        out: &mut [&mut [f32]],
    ) {
        let mut t = ts.start;
        while t < ts.end {
            let xs = |j: usize| &x[(t + j) * cols..(t + j + 1) * cols];
            match ts.end - t {
                1 => store(tile::<1>(panel, cols, [xs(0)]), out, t, r),
                2 => store(tile::<2>(panel, cols, [xs(0), xs(1)]), out, t, r),
                3 => store(tile::<3>(panel, cols, [xs(0), xs(1), xs(2)]), out, t, r),
                _ => store(tile::<NR>(panel, cols, [xs(0), xs(1), xs(2), xs(3)]), out, t, r),
            }
            t += NR.min(ts.end - t);
        }
    }

    /// One sixteen-column step of a tile; `mask` selects the columns that exist (all but in the last step).
    ///
    /// # Safety
    /// Columns `c..c + 16` under `mask` must lie within `cols`, the panel must hold `MR` rows of `cols` and every
    /// x row at least `cols` floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn step<const N: usize>(
        acc: &mut [[__m512; N]; MR],
        panel: &[f32],
        cols: usize,
        xs: &[&[f32]; N],
        c: usize,
        mask: __mmask16,
    ) {
        let mut xv = [_mm512_setzero_ps(); N];
        for (v, xj) in xv.iter_mut().zip(xs) {
            // SAFETY: the masked lanes are columns below `cols` of a row of at least `cols` floats (caller);
            // lanes outside the mask are not read.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, xj.as_ptr().add(c)) };
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            // SAFETY: as above, within row i of the panel (i < MR).
            let w = unsafe { _mm512_maskz_loadu_ps(mask, panel.as_ptr().add(i * cols + c)) };
            for (a, v) in acc_i.iter_mut().zip(&xv) {
                *a = _mm512_fmadd_ps(w, *v, *a);
            }
        }
    }

    /// `MR` x `N` dot products: one sixteen-lane FMA accumulator per pair, reduced once at the end.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tile<const N: usize>(panel: &[f32], cols: usize, xs: [&[f32]; N]) -> [[f32; N]; MR] {
        // Bounds for the unchecked loads in `step`: the panel holds MR rows and every x row `cols` floats.
        assert!(panel.len() >= MR * cols && xs.iter().all(|xj| xj.len() >= cols));
        let mut acc = [[_mm512_setzero_ps(); N]; MR];
        let body = cols / 16 * 16;
        let mut c = 0;
        while c < body {
            // SAFETY: c + 16 <= body <= cols; panel and x sizes asserted above.
            unsafe { step(&mut acc, panel, cols, &xs, c, !0) };
            c += 16;
        }
        if c < cols {
            // SAFETY: the mask keeps the cols - c < 16 columns that remain.
            unsafe { step(&mut acc, panel, cols, &xs, c, (1u16 << (cols - c)) - 1) };
        }
        let mut sums = [[0f32; N]; MR];
        for (s_i, acc_i) in sums.iter_mut().zip(&acc) {
            for (s, a) in s_i.iter_mut().zip(acc_i) {
                *s = _mm512_reduce_add_ps(*a);
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;
    use crate::weights::QMatrix;

    /// Random but valid stored rows of `ty`: random bytes, with every f16/bf16/f32 field set to a finite value of
    /// moderate size (random bits there could be NaN or infinite).
    fn random_rows(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let row_bytes = ty.bytes_for(cols as u64).expect("whole blocks") as usize;
        let mut b: Vec<u8> = (0..rows * row_bytes).map(|_| rng.next_u64() as u8).collect();
        // Sign, exponent in [lo, lo + 8), random mantissa.
        let f16 = |rng: &mut Rng, lo: u64| -> [u8; 2] {
            let r = rng.next_u64();
            (((r & 1) << 15 | (lo + (r >> 1) % 8) << 10 | (r >> 8) & 0x3ff) as u16).to_le_bytes()
        };
        let mut set_f16 = |b: &mut [u8], at: usize, lo: u64| b[at..at + 2].copy_from_slice(&f16(rng, lo));
        match ty {
            GgmlType::F32 => {
                for v in b.chunks_exact_mut(4) {
                    // Uniform in [-1, 1) from the random bytes already there.
                    let u = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                    v.copy_from_slice(&((u as f64 / (1u64 << 31) as f64 - 1.0) as f32).to_le_bytes());
                }
            }
            GgmlType::F16 => {
                for i in (0..b.len()).step_by(2) {
                    set_f16(&mut b, i, 11);
                }
            }
            GgmlType::BF16 => {
                for v in b.chunks_exact_mut(2) {
                    // bf16 exponent 123..=130 (2^-4..2^3): set bits 7..14, keep the random sign and mantissa.
                    let e = 123 + (v[1] as u16 & 7);
                    let h = (v[1] as u16 & 0x80) << 8 | e << 7 | (v[0] as u16 & 0x7f);
                    v.copy_from_slice(&h.to_le_bytes());
                }
            }
            _ => {
                let (ts, fields): (usize, &[usize]) = match ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (ty.type_size(), &[0]),
                    GgmlType::Q6K => (ty.type_size(), &[208]),
                    _ => (ty.type_size(), &[0, 2]),
                };
                for blk in b.chunks_exact_mut(ts) {
                    for &at in fields {
                        // Scales around 2^-8..2^-1, so decoded values stay near unit size.
                        set_f16(blk, at, 7);
                    }
                }
            }
        }
        b
    }

    fn random_x(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// Checks `got` ([n, rows]) against dequantize + f64 dot: |got - exact| <= 1e-5 * sum_c |W[r, c] x[t, c]|.
    fn check(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], got: &[f32], what: &str) {
        let rb = w.len() / rows;
        let n = x.len() / cols;
        let mut wf = vec![0f32; cols];
        for r in 0..rows {
            dequantize(ty, &w[r * rb..(r + 1) * rb], &mut wf).expect("valid row");
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let exact: f64 = wf.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = wf.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let g = got[t * rows + r] as f64;
                assert!(
                    (g - exact).abs() <= 1e-5 * mag.max(f64::MIN_POSITIVE),
                    "{what} {ty} rows {rows} cols {cols} n {n}: out[{t}, {r}] = {g}, expected {exact} (|W||x| {mag})"
                );
            }
        }
    }

    fn run(kernel: Kernel, ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        let rb = w.len() / rows;
        // Start from NaN so an output the kernel never writes fails the check.
        let mut out = vec![f32::NAN; x.len() / cols * rows];
        matmul(kernel, ty, rows, cols, |r| &w[r * rb..(r + 1) * rb], x, &mut out);
        out
    }

    fn kernels() -> Vec<Kernel> {
        Kernel::available()
    }

    #[test]
    fn matches_f64_reference_on_awkward_shapes() {
        let mut rng = Rng::new(7);
        let cases: &[(GgmlType, &[usize])] = &[
            (GgmlType::F32, &[1, 7, 37, 100]),
            (GgmlType::F16, &[37, 64]),
            (GgmlType::BF16, &[9, 96]),
            (GgmlType::Q8_0, &[32, 64, 96, 576]),
            (GgmlType::Q4_0, &[32, 96]),
            (GgmlType::Q4_1, &[32, 64, 96, 576]),
            (GgmlType::Q5_0, &[64]),
            (GgmlType::Q5_1, &[96]),
            (GgmlType::Q4K, &[256, 512]),
            (GgmlType::Q5K, &[256]),
            (GgmlType::Q6K, &[256, 768]),
        ];
        for kernel in kernels() {
            for &(ty, widths) in cases {
                for &cols in widths {
                    for rows in 1..=13 {
                        for n in [2, 3, 4, 5, 7, 11, 17] {
                            let w = random_rows(&mut rng, ty, rows, cols);
                            let x = random_x(&mut rng, n * cols);
                            let got = run(kernel, ty, &w, rows, cols, &x);
                            check(ty, &w, rows, cols, &x, &got, &format!("{kernel:?}"));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn several_chunks_and_x_blocks() {
        // Rows over CHUNK_ROWS (several tasks, a partial last chunk); n * cols over X_BLOCK_FLOATS (several x
        // blocks, a partial last one).
        let mut rng = Rng::new(11);
        let (rows, cols) = (3 * CHUNK_ROWS + 5, 576);
        let n = X_BLOCK_FLOATS / cols + 40;
        let w = random_rows(&mut rng, GgmlType::Q4_1, rows, cols);
        let x = random_x(&mut rng, n * cols);
        for kernel in kernels() {
            let got = run(kernel, GgmlType::Q4_1, &w, rows, cols, &x);
            check(GgmlType::Q4_1, &w, rows, cols, &x, &got, &format!("{kernel:?}"));
        }
    }

    #[test]
    fn kernels_agree_on_every_type() {
        let mut rng = Rng::new(3);
        for ty in GgmlType::ALL {
            let cols = 2 * ty.block_size().max(64);
            let (rows, n) = (10, 8);
            let w = random_rows(&mut rng, ty, rows, cols);
            let x = random_x(&mut rng, n * cols);
            for kernel in kernels() {
                let got = run(kernel, ty, &w, rows, cols, &x);
                check(ty, &w, rows, cols, &x, &got, &format!("{kernel:?}"));
            }
        }
    }

    #[test]
    fn undecodable_row_gives_nan_not_panic() {
        // Rows one block short for `cols`: dequantize refuses them.
        let (rows, cols, n) = (6, 64, 3);
        let w = vec![0u8; rows * 34];
        let x = vec![1f32; n * cols];
        for kernel in kernels() {
            let mut out = vec![0f32; n * rows];
            matmul(kernel, GgmlType::Q8_0, rows, cols, |r| &w[r * 34..(r + 1) * 34], &x, &mut out);
            assert!(out.iter().all(|v| v.is_nan()), "{kernel:?}: {out:?}");
        }
    }

    #[test]
    fn qmatrix_matmul_matches_reference_path() {
        // Through `QMatrix::matmul` (the detected kernel), with the matrix at an offset inside a larger file.
        let mut rng = Rng::new(5);
        let (rows, cols, n) = (45, 96, 9);
        let ty = GgmlType::Q4_1;
        let mut file = vec![0u8; 13];
        let w = random_rows(&mut rng, ty, rows, cols);
        file.extend_from_slice(&w);
        let m = QMatrix { ty, rows, cols, bytes: 13..file.len(), row_bytes: w.len() / rows };
        let x = random_x(&mut rng, n * cols);
        let (mut got, mut old) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
        m.matmul(&file, &x, &mut got);
        m.matmul_reference(&file, &x, &mut old);
        check(ty, &w, rows, cols, &x, &got, "QMatrix::matmul");
        check(ty, &w, rows, cols, &x, &old, "matmul_reference");
    }

    /// CPU time of this process (all threads) in seconds, from /proc/self/stat (Linux; clock ticks of 10 ms, the
    /// usual USER_HZ). None elsewhere.
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut f = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
        // Fields after the command name start at 3 (state); utime and stime are fields 14 and 15.
        let utime: f64 = f.nth(11)?.parse().ok()?;
        let stime: f64 = f.next()?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    /// Microbenchmark, old path against every kernel, on the SmolLM2-135M FFN shapes:
    /// `cargo test --release -p personascope-model gemm_microbench -- --ignored --nocapture`.
    /// Wall: best of five rounds of ~0.2 s (GFLOP/s of the whole call, all threads). CPU: flops per CPU-second over
    /// all rounds (per core), which other processes on the machine disturb less than wall time.
    #[test]
    #[ignore = "timing, not a check"]
    fn gemm_microbench() {
        let mut rng = Rng::new(1);
        let ty = GgmlType::Q4_1;
        for (rows, cols) in [(576, 1536), (1536, 576)] {
            let file = random_rows(&mut rng, ty, rows, cols);
            let m = QMatrix { ty, rows, cols, bytes: 0..file.len(), row_bytes: file.len() / rows };
            // Dequantizing alone, single-threaded: the part of the work that does not shrink as n grows.
            let mut w = vec![0f32; cols];
            let reps = 20;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                for r in 0..rows {
                    dequantize(ty, m.row(&file, r), &mut w).expect("valid row");
                }
            }
            let ns = t0.elapsed().as_secs_f64() * 1e9 / (reps * rows * cols) as f64;
            println!("{rows}x{cols} Q4_1: dequantize {ns:.2} ns/element (one thread)");
            for n in [16, 64, 256] {
                let x = random_x(&mut rng, n * cols);
                let mut out = vec![0f32; n * rows];
                let flop = 2.0 * (rows * cols * n) as f64;
                let mut time = |f: &mut dyn FnMut(&mut [f32])| -> (f64, f64) {
                    let reps = (2e9 / flop).ceil() as usize;
                    let mut best = f64::MAX;
                    let c0 = cpu_seconds().unwrap_or(0.0);
                    for _ in 0..5 {
                        let t0 = std::time::Instant::now();
                        for _ in 0..reps {
                            f(&mut out);
                        }
                        best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
                    }
                    let cpu = cpu_seconds().unwrap_or(f64::NAN) - c0;
                    (flop / best / 1e9, 5.0 * reps as f64 * flop / cpu / 1e9)
                };
                let (old, old_cpu) = time(&mut |o| m.matmul_reference(&file, &x, o));
                let mut wall = format!("{rows}x{cols} Q4_1 n={n:3} wall: old {old:6.1}");
                let mut cpu = format!("{rows}x{cols} Q4_1 n={n:3} cpu:  old {old_cpu:6.1}");
                for k in Kernel::available() {
                    let (g, g_cpu) = time(&mut |o| matmul(k, ty, rows, cols, |r| m.row(&file, r), &x, o));
                    wall += &format!(", {:?} {g:6.1} ({:.1}x)", k.0, g / old);
                    cpu += &format!(", {:?} {g_cpu:6.1} ({:.1}x)", k.0, g_cpu / old_cpu);
                }
                println!("{wall} GFLOP/s\n{cpu} GFLOP/s per core");
            }
        }
    }
}
