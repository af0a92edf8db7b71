//! The decode-on-GPU and persona kernels (sample, steer, gather, accumulate, project, logprob) against their CPU
//! twins in `personascope_gpu::twins` and the CPU references in `personascope_model` where one exists, on random
//! inputs of awkward sizes, for ragged batches: rows of several sequences in one call, the per-index lists read
//! from a lists buffer built by [`Lists`], the sampler with one params entry per sequence.

mod common;

use common::{assert_close, gpu, random};
use personascope_gpu::kernel::{read_buffer, read_f32, storage, storage_f32};
use personascope_gpu::kernels::accumulate::{self, Accumulate};
use personascope_gpu::kernels::gather::{self, Gather};
use personascope_gpu::kernels::logprob::{self, Logprob};
use personascope_gpu::kernels::project::{self, Project};
use personascope_gpu::kernels::sample::{self, Record, Sample};
use personascope_gpu::kernels::steer::{self, SteerKernel};
use personascope_gpu::rows::{Layout, List, Lists, Row};
use personascope_gpu::{twins, Gpu};
use personascope_model::{argmax, plan, Plan, PlanHook, ResidualHook, Sampler, SamplingParams, Steering};
use std::sync::OnceLock;

/// Projection vs its twin: the same summation order; only a fused multiply-add on the GPU can round differently,
/// a few ulps of the partial sums of d products of |x| <= 1 and |v_hat| <= 1.
const PROJECT_ABS: f32 = 2e-6;
const PROJECT_REL: f32 = 1e-5;
/// Projection vs an f64 dot product: f32 rounding of d-term sums whose terms sum to at most sqrt(d).
const PROJECT_F64_ABS: f32 = 1e-5;
const PROJECT_F64_REL: f32 = 1e-5;
/// Steering: x + alpha * v per entry in the same order; a fused multiply-add can change the last bit (values up
/// to about 5 here, ulp 4.8e-7).
const STEER_ABS: f32 = 2e-6;
const STEER_REL: f32 = 1e-6;
/// Running f32 sums of up to 12 values in [-1, 1] against f64: a few ulps of values up to 12.
const ACCUMULATE_F64_ABS: f32 = 2e-5;
/// Log-probabilities: a fixed-order f32 tree sum of exp against the twin's f64 sum, and the f32 subtraction at
/// values down to about -200 (ulp 1.5e-5).
const LOGPROB_ABS: f32 = 1e-4;

fn run(gpu: &Gpu, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        f(&mut pass);
    }
    gpu.queue.submit([enc.finish()]);
}

fn read_u32(gpu: &Gpu, b: &wgpu::Buffer, len: usize) -> Vec<u32> {
    let bytes = pollster::block_on(read_buffer(gpu, b, 0, 4 * len as u64)).expect("read back");
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn read(gpu: &Gpu, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    pollster::block_on(read_f32(gpu, b, len)).expect("read back")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn storage_u32(gpu: &Gpu, label: &str, words: &[u32]) -> wgpu::Buffer {
    storage(gpu, label, bytemuck::cast_slice(words))
}

/// The lists buffer of `lists` and its words.
fn lists_buffer(gpu: &Gpu, lists: &Lists) -> (wgpu::Buffer, Vec<u32>) {
    let words = lists.words();
    (storage_u32(gpu, "lists", &words), words)
}

/// A row of the table with only what the persona kernels read: position and sequence.
fn row(pos: u32, seq: u32) -> Row {
    Row { pos, seq, ..Row::default() }
}

// ---------------------------------------------------------------------------------------------------------------
// Steering

#[test]
fn steer_matches_twin_and_plan_hook() {
    let gpu = gpu();
    let k = pollster::block_on(SteerKernel::new(gpu)).expect("compile steer");
    let layers = 7usize;
    let mut worst = 0f32;
    for (d, seed) in [(576usize, 80u64), (96, 81), (33, 82)] {
        // Sequences 0, 1, 2 and 5 interleaved; sequence 5 has no entries (its row at position 12 lies in sequence
        // 0's ranges and must stay untouched), sequence 4 has entries but no rows.
        let rows = [
            row(10, 0),
            row(3, 1),
            row(11, 0),
            row(40, 2),
            row(12, 5),
            row(4, 1),
            row(12, 0),
            row(13, 0),
            row(41, 2),
            row(14, 0),
            row(5, 1),
        ];
        let n = rows.len();
        let (va, vb, vc, vd, ve) =
            (random(d, seed + 1), random(d, seed + 2), random(d, seed + 3), random(d, seed + 4), random(d, seed + 5));
        let st = |layer: usize, vector: &[f32], alpha: f32, positions: std::ops::Range<usize>| Steering {
            layer,
            vector: vector.to_vec(),
            alpha,
            positions,
        };
        // (sequence, steering): at index 3 overlapping ranges, a vector shared by two sequences, an open-ended
        // range, one that misses every row, one of a sequence without rows and one of the wrong length (dropped
        // by `pack`, as the CPU plan skips it); at index 5 two more.
        let steering: Vec<(usize, Steering)> = vec![
            (0, st(3, &va, 2.0, 12..15)),
            (1, st(3, &va, -1.5, 4..usize::MAX)),
            (0, st(3, &vb, 0.5, 0..14)),
            (2, st(5, &vc, 3.0, 40..41)),
            (0, st(3, &vd, 9.0, 1000..2000)),
            (4, st(3, &ve, 1.0, 0..usize::MAX)),
            (2, st(3, &vec![1.0; d + 2], 1.0, 0..usize::MAX)),
            (1, st(5, &vb, 1.0, 0..4)),
        ];
        let packed = steer::pack(steering.iter().map(|(s, st)| (*s, st)), d);
        let per_layer: Vec<_> = packed.layers.iter().map(|l| (l.layer, l.count)).collect();
        assert_eq!(per_layer, [(3, 5), (5, 2)], "d {d}: entries per index");
        assert_eq!(packed.vectors.len(), 5 * d, "d {d}: each distinct vector once");
        let vbuf = storage_f32(gpu, "vectors", &packed.vectors);
        let ebuf = storage(gpu, "entries", bytemuck::cast_slice(&packed.entries));
        let rbuf = storage(gpu, "rows", bytemuck::cast_slice(&rows));
        for le in &packed.layers {
            let p = steer::Params { d: d as u32, first: le.first, count: le.count, _pad: 0 };
            // (workgroups along y, row count in the lists header): one per row; fewer than the rows (each walks
            // several); a header that stops short of the last two rows.
            for (dispatched, n_rows) in [(n, n), (2, n), (n, n - 2)] {
                let x0 = random(n * d, seed + 10 * le.layer as u64 + dispatched as u64 + n_rows as u64);
                let layout = Layout { layers, chunks: 1 };
                let (lb, _) = lists_buffer(gpu, &Lists::new(layout, n_rows as u32));
                let xb = storage_f32(gpu, "x", &x0);
                let bind = k.bind(gpu, &SteerKernel::params(gpu, &p), &xb, &vbuf, &ebuf, &rbuf, &lb);
                run(gpu, |pass| k.dispatch(pass, &bind, d as u32, dispatched as u32));
                let got = read(gpu, &xb, x0.len());

                let mut want = x0.clone();
                twins::steer(&p, &mut want, &packed.vectors, &packed.entries, &rows, n_rows).expect("twin");
                // The CPU plan of each row's sequence, applied to that row alone at its position.
                let mut cpu = x0.clone();
                for (r, rw) in rows.iter().enumerate().take(n_rows) {
                    let mine = steering.iter().filter(|(s, _)| *s == rw.seq as usize).map(|(_, s)| s.clone());
                    let plan = Plan { steer: mine.collect(), ..Plan::default() };
                    let mut hook = PlanHook::new(&plan, None, layers - 1);
                    hook.on_residual(le.layer as usize, rw.pos as usize, &mut cpu[r * d..(r + 1) * d], d);
                }
                let what = format!("steer d {d} index {} ({dispatched} workgroups, {n_rows} rows)", le.layer);
                assert_close(&format!("{what} vs twin"), &got, &want, STEER_ABS, STEER_REL);
                assert_close(&format!("{what} vs plan hook"), &got, &cpu, STEER_ABS, STEER_REL);
                worst = worst.max(max_abs_diff(&got, &want)).max(max_abs_diff(&got, &cpu));
                // Rows no entry of their own sequence covers, and rows past the header's count, are bit for bit
                // untouched; every other row changed.
                for (r, rw) in rows.iter().enumerate() {
                    let covered = r < n_rows
                        && steering.iter().any(|(s, st)| {
                            *s == rw.seq as usize
                                && st.layer == le.layer as usize
                                && st.vector.len() == d
                                && st.positions.contains(&(rw.pos as usize))
                        });
                    let same = bits(&got[r * d..(r + 1) * d]) == bits(&x0[r * d..(r + 1) * d]);
                    assert_eq!(same, !covered, "{what}: row {r} (sequence {}, position {})", rw.seq, rw.pos);
                }
            }
        }
    }
    eprintln!("steer: max |gpu - twin or plan| {worst:e}");
}

// ---------------------------------------------------------------------------------------------------------------
// Gather

#[test]
fn gather_copies_listed_rows_to_their_offsets() {
    let gpu = gpu();
    let k = pollster::block_on(Gather::gather(gpu)).expect("compile gather");
    let layout = Layout { layers: 4, chunks: 2 };
    for (d, seed) in [(576usize, 60u64), (96, 61), (33, 62)] {
        let rows = 9usize;
        let src = random(rows * d, seed);
        let mut lists = Lists::new(layout, rows as u32);
        // Lists before the ones gathered, so those start neither at the header nor at each other.
        lists.push(List::Capture(1), &[3, 0]);
        lists.push(List::Sum(0), &[0, 2, 0, 0]);
        lists.push(List::Project(2), &[1, 0]);
        // Captures at index 2: offsets not multiples of d, out of order, one row twice.
        let d32 = d as u32;
        let captures = [(4u32, 3u32), (0, 3 + 2 * d32 + 5), (8, 3 + d32 + 1), (4, 3 + 3 * d32 + 9)];
        for (r, off) in captures {
            lists.push(List::Capture(2), &[r, off]);
        }
        // Head rows of chunk 1: rows 7, 2, 5 into head rows 0, 1, 2.
        for (i, r) in [7u32, 2, 5].into_iter().enumerate() {
            lists.push(List::Head(1), &[r, i as u32 * d32]);
        }
        let (lb, words) = lists_buffer(gpu, &lists);
        let (cap_dir, head_dir) = (layout.dir(List::Capture(2)), layout.dir(List::Head(1)));
        let header = layout.dir(List::Logprob(1)) + 2;
        assert!(cap_dir > 0 && words[cap_dir] as usize > header, "the capture list follows other lists");
        assert_eq!((words[cap_dir + 1], lists.count(List::Capture(2))), (4, 4));
        assert!(words[head_dir] > words[cap_dir], "head list after the capture list");

        let out_len = 3 * d + 3 * d + 20;
        let out0 = random(out_len, seed + 1);
        let head0 = vec![f32::NAN; 3 * d];
        let (ob, hb, sb) =
            (storage_f32(gpu, "out", &out0), storage_f32(gpu, "head", &head0), storage_f32(gpu, "x", &src));
        let cp = gather::Params { d: d as u32, dir: cap_dir as u32, _pad: [0; 2] };
        let hp = gather::Params { d: d as u32, dir: head_dir as u32, _pad: [0; 2] };
        let cbind = k.bind(gpu, &Gather::params(gpu, &cp), &sb, &ob, &lb);
        let hbind = k.bind(gpu, &Gather::params(gpu, &hp), &sb, &hb, &lb);
        run(gpu, |pass| {
            // Three workgroups more than the list has entries: they must write nothing.
            k.dispatch(pass, &cbind, d as u32, lists.count(List::Capture(2)) + 3);
            k.dispatch(pass, &hbind, d as u32, lists.count(List::Head(1)));
        });
        let (out, head) = (read(gpu, &ob, out_len), read(gpu, &hb, 3 * d));

        let (mut want_out, mut want_head) = (out0.clone(), head0.clone());
        twins::gather(&cp, &src, &mut want_out, &words).expect("twin");
        twins::gather(&hp, &src, &mut want_head, &words).expect("twin");
        assert_eq!(bits(&out), bits(&want_out), "d {d}: captures (and the words around them untouched)");
        assert_eq!(bits(&head), bits(&want_head), "d {d}: head rows");
        // Directly: each listed row at its offset, everything else as it was.
        for (r, off) in captures {
            let (r, off) = (r as usize, off as usize);
            assert_eq!(bits(&out[off..off + d]), bits(&src[r * d..(r + 1) * d]), "d {d}: row {r} at {off}");
        }
        let written = |i: usize| captures.iter().any(|&(_, o)| (o as usize..o as usize + d).contains(&i));
        assert!((0..out_len).filter(|&i| !written(i)).all(|i| out[i].to_bits() == out0[i].to_bits()));
        assert_eq!(bits(&head[d..2 * d]), bits(&src[2 * d..3 * d]));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Accumulate

#[test]
fn accumulate_sums_runs_over_two_calls_bit_identical_to_twin() {
    let gpu = gpu();
    let k = pollster::block_on(Accumulate::accumulate(gpu)).expect("compile accumulate");
    let layout = Layout { layers: 6, chunks: 1 };
    for (d, seed) in [(576usize, 90u64), (96, 91), (33, 92)] {
        let d32 = d as u32;
        // Sums of sequences A, B, C at index 4 and of D at index 2, at offsets that are not multiples of d.
        let (off_a, off_b, off_c, off_d) = (3u32, 3 + d32 + 2, 3 + 3 * d32 + 7, 3 + 2 * d32 + 5);
        let sums_len = 4 * d + 15;
        // Non-zero start: the kernel adds into the sums, it does not overwrite them.
        let sums0 = random(sums_len, seed);
        let sb = storage_f32(gpu, "sums", &sums0);
        let mut want = sums0.clone();
        let mut plain: Vec<f64> = sums0.iter().map(|&v| v as f64).collect();
        // Call 1: 10 rows (A's rows 0..4 of which 1..4 are in its range, B's rows 4..9 of which 5..9, C's row 9
        // outside its range: an empty run); D sums every row at index 2. Call 2: one decode row each for A, B, C.
        let calls = [
            (
                10,
                vec![
                    (List::Sum(4), [1, 3, off_a, 0]),
                    (List::Sum(4), [5, 4, off_b, 0]),
                    (List::Sum(4), [9, 0, off_c, 0]),
                    (List::Sum(2), [0, 10, off_d, 0]),
                ],
            ),
            (
                3,
                vec![
                    (List::Sum(4), [0, 1, off_a, 0]),
                    (List::Sum(4), [1, 1, off_b, 0]),
                    (List::Sum(4), [2, 1, off_c, 0]),
                ],
            ),
        ];
        for (ci, (n, entries)) in calls.iter().enumerate() {
            let x = random(n * d, seed + 100 + ci as u64);
            let mut lists = Lists::new(layout, *n as u32);
            // Something before the sums, so their lists start past the header.
            lists.push(List::Capture(0), &[0, 0]);
            for (list, e) in entries {
                lists.push(*list, e);
            }
            let (lb, words) = lists_buffer(gpu, &lists);
            let xb = storage_f32(gpu, "x", &x);
            let mut binds = Vec::new();
            for l in [List::Sum(2), List::Sum(4)] {
                let p = accumulate::Params { d: d32, dir: layout.dir(l) as u32, _pad: [0; 2] };
                binds.push((k.bind(gpu, &Accumulate::params(gpu, &p), &xb, &sb, &lb), lists.count(l)));
                twins::accumulate(&p, &x, &mut want, &words).expect("twin");
            }
            run(gpu, |pass| binds.iter().for_each(|(b, count)| k.dispatch(pass, b, d32, *count)));
            for (_, e) in entries {
                let (start, rows, off) = (e[0] as usize, e[1] as usize, e[2] as usize);
                for r in start..start + rows {
                    plain[off..off + d].iter_mut().zip(&x[r * d..(r + 1) * d]).for_each(|(a, &v)| *a += v as f64);
                }
            }
        }
        let sums = read(gpu, &sb, sums_len);
        assert_eq!(bits(&sums), bits(&want), "d {d}: running sums vs twin");
        let touched = |i: u32| [off_a, off_b, off_d].iter().any(|&o| (o..o + d32).contains(&i));
        for i in 0..sums_len {
            let changed = sums[i].to_bits() != sums0[i].to_bits();
            // C's slot only gets call 2's one row; every other summed slot more.
            let expect = touched(i as u32) || (off_c..off_c + d32).contains(&(i as u32));
            assert_eq!(changed, expect, "d {d}: word {i} changed {changed}");
        }
        let plain: Vec<f32> = plain.iter().map(|&v| v as f32).collect();
        assert_close(&format!("accumulate d {d} vs f64"), &sums, &plain, ACCUMULATE_F64_ABS, 0.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Project

/// Raw directions `[traits][layers]`: some absent, one of the wrong length, one zero (dropped by `plan::units`).
fn trait_vectors(traits: usize, layers: usize, d: usize, seed: u64) -> Vec<Vec<Option<Vec<f32>>>> {
    (0..traits)
        .map(|t| {
            (0..layers)
                .map(|l| {
                    if t == 1 && l == 1 {
                        Some(vec![1.0; d + 1])
                    } else if t == 0 && l == 2 {
                        Some(vec![0.0; d])
                    } else if (t * 7 + l * 3) % 5 == 0 {
                        None
                    } else {
                        Some(random(d, seed + (t * layers + l) as u64).iter().map(|v| v * 3.0).collect())
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn project_matches_twin_and_leaves_off_slots_untouched() {
    let gpu = gpu();
    let k = pollster::block_on(Project::new(gpu)).expect("compile project");
    let sentinel = 0xdead_beefu32;
    let mut worst = (0f32, 0f32);
    for (traits, layers, d, seed) in [(16usize, 31usize, 576usize, 70u64), (3, 5, 96, 71), (1, 3, 33, 72)] {
        let units = plan::units(&trait_vectors(traits, layers, d, seed));
        let packed = project::pack(&units, layers, d);
        for t in 0..traits {
            for l in 0..layers {
                let on = units[t][l].as_ref().is_some_and(|u| u.len() == d);
                assert_eq!(packed.on(t, l, layers), on, "slot ({t}, {l}) of the mask");
            }
        }
        let n = 6usize;
        let x = random(n * d, seed + 1000);
        let slots = traits * layers;
        // Out records of 3 projected rows (at 4, 4 + slots, 4 + 2 * slots), 3 spare words after them.
        let out_len = 4 + 3 * slots + 3;
        let base = |j: usize| (4 + j * slots) as u32;
        let layout = Layout { layers, chunks: 1 };
        let mut lists = Lists::new(layout, n as u32);
        lists.push(List::Capture(0), &[0, 0]);
        // Every index projects rows 3 and 0 into records 0 and 1; odd indices also row 5 into record 2; the last
        // index projects nothing.
        let mut listed: Vec<(usize, usize, usize)> = Vec::new();
        for l in 0..layers.saturating_sub(1).max(1) {
            let mut entries = vec![(3usize, 0usize), (0, 1)];
            if l % 2 == 1 {
                entries.push((5, 2));
            }
            for (r, j) in entries {
                lists.push(List::Project(l), &[r as u32, base(j)]);
                listed.push((l, r, j));
            }
        }
        let (lb, words) = lists_buffer(gpu, &lists);
        let (xb, ub) = (storage_f32(gpu, "x", &x), storage_f32(gpu, "units", &packed.units));
        let mb = storage_u32(gpu, "mask", &packed.mask);
        let ob = storage_u32(gpu, "out", &vec![sentinel; out_len]);
        let mut want = vec![f32::from_bits(sentinel); out_len];
        let mut binds = Vec::new();
        for l in 0..layers {
            let dir = layout.dir(List::Project(l)) as u32;
            let p = project::Params {
                d: d as u32,
                dir,
                layer: l as u32,
                layers: layers as u32,
                traits: traits as u32,
                _pad: [0; 3],
            };
            binds
                .push((k.bind(gpu, &Project::params(gpu, &p), &xb, &ub, &mb, &ob, &lb), lists.count(List::Project(l))));
            twins::project(&p, &x, &packed.units, &packed.mask, &mut want, &words).expect("twin");
        }
        run(gpu, |pass| binds.iter().for_each(|(b, count)| k.dispatch(pass, b, *count, traits as u32)));
        let got: Vec<f32> = read_u32(gpu, &ob, out_len).into_iter().map(f32::from_bits).collect();

        // The slots written: listed (index, row, record) for every trait on at that index; with an f64 dot.
        let mut on_slots = vec![None; out_len];
        for &(l, r, j) in &listed {
            for t in (0..traits).filter(|&t| packed.on(t, l, layers)) {
                let u = units[t][l].as_ref().expect("on slot has a direction");
                let dot: f64 = x[r * d..(r + 1) * d].iter().zip(u).map(|(&a, &b)| a as f64 * b as f64).sum();
                on_slots[base(j) as usize + t * layers + l] = Some(dot as f32);
            }
        }
        let off_listed =
            listed.iter().map(|&(l, _, _)| (0..traits).filter(|&t| !packed.on(t, l, layers)).count()).sum::<usize>();
        assert!(traits * layers == 1 || off_listed > 0, "the mask leaves some listed slots off");
        let what = format!("project {traits}x{layers}x{d}");
        let (mut g, mut tw, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..out_len {
            match on_slots[i] {
                Some(dot) => {
                    g.push(got[i]);
                    tw.push(want[i]);
                    f.push(dot);
                }
                None => {
                    assert_eq!(got[i].to_bits(), sentinel, "{what}: word {i} is no on slot and must stay untouched");
                    assert_eq!(want[i].to_bits(), sentinel, "{what}: twin wrote word {i}");
                }
            }
        }
        assert!(!g.is_empty());
        assert_close(&format!("{what} vs twin"), &g, &tw, PROJECT_ABS, PROJECT_REL);
        assert_close(&format!("{what} vs f64 dot"), &g, &f, PROJECT_F64_ABS, PROJECT_F64_REL);
        worst = (worst.0.max(max_abs_diff(&g, &tw)), worst.1.max(max_abs_diff(&g, &f)));
    }
    eprintln!("project: max |gpu - twin| {:e}, max |gpu - f64| {:e}", worst.0, worst.1);
}

// ---------------------------------------------------------------------------------------------------------------
// Log-probabilities

#[test]
fn logprob_matches_plan_log_prob() {
    let gpu = gpu();
    let k = pollster::block_on(Logprob::new(gpu)).expect("compile logprob");
    let layout = Layout { layers: 3, chunks: 2 };
    let mut worst = 0f32;
    for (vocab, n_rows, seed) in [(1007usize, 6usize, 110u64), (32003, 4, 111), (1, 2, 112)] {
        // Rows of different shapes: moderate, wide (|logits| up to 80), all near 3e4 (the max must be subtracted
        // before exp), flat, one spike.
        let mut logits = Vec::new();
        for r in 0..n_rows {
            let mut v = random(vocab, seed + r as u64);
            match r % 5 {
                0 => v.iter_mut().for_each(|x| *x *= 4.0),
                1 => v.iter_mut().for_each(|x| *x *= 80.0),
                2 => v.iter_mut().for_each(|x| *x = 3e4 + *x * 10.0),
                3 => v.iter_mut().for_each(|x| *x *= 0.01),
                _ => v[vocab / 3] = 50.0,
            }
            logits.extend(v);
        }
        let row = |r: usize| &logits[r * vocab..(r + 1) * vocab];
        // Chunk 0 covers logits rows 0..3, chunk 1 the rest (row0 = 3): entries (head row in the chunk, target,
        // out offset); several targets per row (argmax, smallest, first, last, another).
        let chunk0 = 3.min(n_rows);
        let mut lists = Lists::new(layout, n_rows as u32);
        lists.push(List::Head(0), &[0, 0]);
        let mut wanted: Vec<(usize, u32, u32)> = Vec::new();
        let mut next_off = 5u32;
        for r in 0..n_rows {
            let l = row(r);
            let min = (0..vocab).min_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap_or(0);
            let targets = [argmax(l), min, 0, vocab - 1, (r * 7919 + 13) % vocab];
            let (chunk, i) = if r < chunk0 { (0, r) } else { (1, r - chunk0) };
            for &t in targets.iter().take(if r % 2 == 0 { 5 } else { 3 }) {
                lists.push(List::Logprob(chunk), &[i as u32, t as u32, next_off, 0]);
                wanted.push((r, t as u32, next_off));
                next_off += 3;
            }
        }
        let out_len = next_off as usize + 4;
        let sentinel = -12345.0f32;
        let (lb, _) = lists_buffer(gpu, &lists);
        let (gb, ob) = (storage_f32(gpu, "logits", &logits), storage_f32(gpu, "out", &vec![sentinel; out_len]));
        let binds: Vec<_> = [(0usize, 0u32), (1, chunk0 as u32)]
            .into_iter()
            .map(|(c, row0)| {
                let dir = layout.dir(List::Logprob(c)) as u32;
                let p = logprob::Params { vocab: vocab as u32, dir, row0, _pad: 0 };
                (k.bind(gpu, &Logprob::params(gpu, &p), &gb, &lb, &ob), lists.count(List::Logprob(c)))
            })
            .collect();
        // Chunk 1 with two more workgroups than entries: they must write nothing.
        run(gpu, |pass| {
            k.dispatch(pass, &binds[0].0, binds[0].1);
            k.dispatch(pass, &binds[1].0, binds[1].1 + 2);
        });
        let got = read(gpu, &ob, out_len);
        for &(r, t, off) in &wanted {
            let want = plan::log_prob(row(r), t);
            let g = got[off as usize];
            let what = format!("logprob vocab {vocab} row {r} target {t}");
            assert!((g - want).abs() <= LOGPROB_ABS, "{what}: gpu {g} cpu {want}");
            worst = worst.max((g - want).abs());
        }
        for i in (0..out_len).filter(|&i| !wanted.iter().any(|w| w.2 as usize == i)) {
            assert_eq!(got[i], sentinel, "vocab {vocab}: word {i} written");
        }
    }
    eprintln!("logprob: largest |gpu - cpu| {worst:e}");
}

// ---------------------------------------------------------------------------------------------------------------
// Sampler

fn sampler_kernel() -> &'static Sample {
    static K: OnceLock<Sample> = OnceLock::new();
    K.get_or_init(|| pollster::block_on(Sample::new(gpu())).expect("compile sample"))
}

/// Initial words of the buffers a draw writes, so unwritten words can be told apart.
const OUT_INIT: u32 = 0xabcd_abcd;
const TOKENS_INIT: u32 = 0xeeee_eeee;
const WORK_INIT: f32 = 12345.5;

/// Everything a sampler dispatch leaves behind.
#[derive(Debug)]
struct Sampled {
    records: Vec<Record>,
    ids: Vec<u32>,
    tokens: Vec<u32>,
    out: Vec<u32>,
    work: Vec<f32>,
}

fn lens(params: &[sample::Params]) -> (usize, usize, usize) {
    let max = |f: &dyn Fn(&sample::Params) -> u32| params.iter().map(f).max().unwrap_or(0) as usize;
    let out = max(&|p| p.out_offset + sample::OUT_WORDS);
    let tokens = max(&|p| p.token_index + 1);
    let work = max(&|p| p.work_offset + p.vocab);
    (out, tokens, work)
}

/// Runs every `params` entry as one sequence of a single dispatch over the same logits, ids and scratch.
fn gpu_sample(logits: &[f32], ids: &[u32], params: &[sample::Params]) -> Sampled {
    let gpu = gpu();
    let k = sampler_kernel();
    let (out_len, tokens_len, work_len) = lens(params);
    for p in params {
        p.check(logits.len(), ids.len(), work_len, out_len, tokens_len).expect("params fit");
    }
    let (lb, ib) = (storage_f32(gpu, "logits", logits), storage_u32(gpu, "ids", ids));
    let work = storage_f32(gpu, "work", &vec![WORK_INIT; work_len]);
    let out = storage_u32(gpu, "out", &vec![OUT_INIT; out_len]);
    let tokens = storage_u32(gpu, "tokens", &vec![TOKENS_INIT; tokens_len]);
    let pb = Sample::params(gpu, params);
    let bind = k.bind(gpu, &pb, &lb, &ib, &work, &out, &tokens);
    run(gpu, |pass| k.dispatch(pass, &bind, params.len() as u32));
    let words = read_u32(gpu, &out, out_len);
    let records = params.iter().map(|p| Record::from_words(&words[p.out_offset as usize..]).expect("record")).collect();
    Sampled {
        records,
        ids: read_u32(gpu, &ib, ids.len()),
        tokens: read_u32(gpu, &tokens, tokens_len),
        out: words,
        work: read(gpu, &work, work_len),
    }
}

/// The penalized logits the kernel keeps in its scratch: `logits` row, each context id's logit divided (positive)
/// or multiplied (otherwise) by the penalty once.
fn penalized(p: &sample::Params, logits: &[f32], ids: &[u32]) -> Vec<f32> {
    let row = &logits[p.logits_offset as usize..][..p.vocab as usize];
    let mut v = row.to_vec();
    for &id in &ids[p.ctx_start as usize..][..p.ctx_len as usize] {
        if let Some(&l) = row.get(id as usize) {
            v[id as usize] = if l > 0.0 { l / p.repetition_penalty } else { l * p.repetition_penalty };
        }
    }
    v
}

/// The twin over the same entries (their regions do not overlap, so their order does not matter), and the
/// scratch the kernel must leave.
fn twin_sample(logits: &[f32], ids: &[u32], params: &[sample::Params]) -> Sampled {
    let (out_len, tokens_len, work_len) = lens(params);
    let mut ids = ids.to_vec();
    let (mut out, mut tokens) = (vec![OUT_INIT; out_len], vec![TOKENS_INIT; tokens_len]);
    let mut work = vec![WORK_INIT; work_len];
    for p in params.iter().filter(|p| p.repetition_penalty != 1.0) {
        work[p.work_offset as usize..][..p.vocab as usize].copy_from_slice(&penalized(p, logits, &ids));
    }
    let records =
        params.iter().map(|p| twins::sample(p, logits, &mut ids, &mut out, &mut tokens).expect("twin")).collect();
    Sampled { records, ids, tokens, out, work }
}

/// Kernel and twin agree on every record, every id and token written, every other word, and the scratch (NaN
/// where the twin has NaN).
fn assert_same(what: &str, got: &Sampled, want: &Sampled) {
    for (i, (g, w)) in got.records.iter().zip(&want.records).enumerate() {
        assert_eq!(g, w, "{what}: record {i}");
    }
    assert_eq!(got.records.len(), want.records.len());
    assert_eq!(got.ids, want.ids, "{what}: ids");
    assert_eq!(got.tokens, want.tokens, "{what}: tokens");
    assert_eq!(got.out, want.out, "{what}: out words");
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let bad = (0..want.work.len()).find(|&i| !same(got.work[i], want.work[i]));
    assert_eq!(bad.map(|i| (i, got.work[i], want.work[i])), None, "{what}: scratch");
}

/// Kernel against twin over `params`; returns the kernel's records.
fn sample_both(what: &str, logits: &[f32], ids: &[u32], params: &[sample::Params]) -> Vec<Record> {
    let got = gpu_sample(logits, ids, params);
    assert_same(what, &got, &twin_sample(logits, ids, params));
    got.records
}

fn sp(temperature: f32, top_k: usize, top_p: f32, repetition_penalty: f32, seed: u64) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, repetition_penalty, seed }
}

/// Params for sequence `j` of a dispatch: context ids[0..ctx] (shared, read only), its token written to
/// ids[ctx + j] and tokens[j], its record at 2 + 4j, its scratch at 3 + j * vocab.
fn at(s: &SamplingParams, vocab: usize, ctx: usize, step: u32, j: usize) -> sample::Params {
    let mut p = sample::Params::new(s, vocab as u32).expect("valid sampling params");
    p.ctx_len = ctx as u32;
    p.write_index = (ctx + j) as u32;
    p.out_offset = (2 + j * 4) as u32;
    p.step = step;
    p.token_index = j as u32;
    p.work_offset = (3 + j * vocab) as u32;
    p
}

/// Context ids for the penalty: repeats (penalized once) and a few ids past the vocabulary (ignored).
fn context(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let r = random(n, seed);
    let mut ids: Vec<u32> = r.iter().map(|v| ((v + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32).collect();
    if n > 4 {
        ids[1] = ids[0];
        ids[3] = vocab as u32 + 5;
    }
    ids
}

fn logits_for(vocab: usize, scale: f32, seed: u64) -> Vec<f32> {
    random(vocab, seed).iter().map(|v| v * scale).collect()
}

#[test]
fn sample_greedy_matches_cpu_argmax() {
    for (vocab, seed) in [(49152usize, 1u64), (1007, 2), (1, 3), (257, 4)] {
        let logits = logits_for(vocab, 8.0, seed);
        let ctx = context(vocab, 40.min(vocab), seed + 10);
        let settings = [sp(0.0, 0, 1.0, 1.0, 0), sp(0.0, 0, 1.0, 1.3, 0), sp(0.0, 5, 0.5, 0.7, 0)];
        let params: Vec<_> = settings.iter().enumerate().map(|(j, s)| at(s, vocab, ctx.len(), 0, j)).collect();
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        let got = sample_both(&format!("greedy vocab {vocab}"), &logits, &ids, &params);
        for (s, rec) in settings.iter().zip(&got) {
            let cpu = Sampler::new(s.clone()).expect("sampler").sample(&logits, &ctx);
            assert_eq!(rec.token, cpu, "vocab {vocab} {s:?}: GPU vs CPU Sampler");
            assert_eq!((rec.status, rec.candidates), (sample::STATUS_GREEDY, 1));
        }
        assert_eq!(got[0].token as usize, argmax(&logits));
    }
}

#[test]
fn sample_greedy_ties_nan_and_signed_zero() {
    let vocab = 1000 + 7;
    let base = logits_for(vocab, 4.0, 5);
    let mut cases: Vec<(Vec<f32>, &str)> = Vec::new();
    let mut tie = base.clone();
    for i in [900, 17, 512, 1006] {
        tie[i] = 9.0;
    }
    cases.push((tie, "ties at the max -> lowest index"));
    let mut zeros: Vec<f32> = base.iter().map(|v| -v.abs() - 1.0).collect();
    zeros[300] = 0.0;
    zeros[200] = -0.0;
    cases.push((zeros.clone(), "-0 == +0: lowest index"));
    zeros[200] = 0.0;
    zeros[100] = -0.0;
    cases.push((zeros, "-0 == +0 again"));
    let mut nan = base.clone();
    nan[3] = f32::NAN;
    nan[700] = f32::NAN;
    cases.push((nan, "NaN skipped"));
    let mut nan0 = base.clone();
    nan0[0] = f32::NAN;
    cases.push((nan0, "NaN at 0 -> 0, as argmax"));
    cases.push((vec![f32::NEG_INFINITY; vocab], "all -inf -> 0"));
    let mut inf = base.clone();
    inf[40] = f32::INFINITY;
    inf[30] = f32::INFINITY;
    cases.push((inf, "+inf ties"));
    // Every case a sequence of one dispatch, each on its own logits row.
    let logits: Vec<f32> = cases.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let greedy = sp(0.0, 0, 1.0, 1.0, 0);
    let params: Vec<_> = (0..cases.len())
        .map(|j| {
            let mut p = at(&greedy, vocab, 0, 0, j);
            p.logits_offset = (j * vocab) as u32;
            p
        })
        .collect();
    let ids = vec![0u32; cases.len()];
    let got = sample_both("greedy edge cases", &logits, &ids, &params);
    for ((l, what), rec) in cases.iter().zip(&got) {
        assert_eq!(rec.token as usize, argmax(l), "{what}: GPU vs argmax");
    }
}

#[test]
fn sample_matches_twin() {
    // (vocab, logit scale, settings): awkward sizes, sharp and flat distributions, ties at the top-k threshold.
    let settings = [
        sp(1.0, 0, 1.0, 1.0, 7),
        sp(0.7, 40, 0.9, 1.1, 8),
        sp(1.3, 0, 0.8, 1.0, 9),
        sp(0.5, 3, 1.0, 1.2, 10),
        sp(2.0, 200, 0.95, 0.9, 11),
        sp(1.0, 1, 1.0, 1.0, u64::MAX),
        sp(1e-3, 0, 1.0, 1.0, 12),
        sp(1.0, 0, 1e-6, 1.0, 13),
    ];
    for (vocab, scale, seed) in [(49152usize, 6.0f32, 20u64), (1007, 3.0, 21), (1007, 0.01, 22), (2, 1.0, 23)] {
        let mut logits = logits_for(vocab, scale, seed);
        if vocab > 100 {
            // Ties straddling the top-k / top-p thresholds.
            let v = logits[argmax(&logits)];
            for i in [5, 60, 61, 99] {
                logits[i] = v - 0.25;
            }
        }
        let ctx = context(vocab, 64.min(vocab), seed);
        let mut params = Vec::new();
        for (j, s) in settings.iter().enumerate() {
            for step in 0..3u32 {
                params.push(at(s, vocab, ctx.len(), step * 1000 + j as u32, params.len()));
            }
        }
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        let got = sample_both(&format!("vocab {vocab} scale {scale}"), &logits, &ids, &params);
        // Not all one token: the comparison covers real draws (with 2 tokens at these logits, all draws giving
        // the likelier one is plausible).
        if vocab <= 2 {
            continue;
        }
        let mut distinct: Vec<u32> = got.iter().map(|r| r.token).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "vocab {vocab} scale {scale}: every draw gave {distinct:?}");
    }
}

#[test]
fn sample_candidates_agree_with_cpu_sampler() {
    // The candidate set is the CPU sampler's: top-k then the smallest top-p prefix of the sorted softmax.
    for (vocab, scale, k, top_p, seed) in
        [(49152usize, 5.0f32, 40usize, 0.9f32, 30u64), (1007, 2.0, 0, 0.5, 31), (1007, 8.0, 100, 0.99, 32)]
    {
        let logits = logits_for(vocab, scale, seed);
        let s = sp(0.8, k, top_p, 1.0, seed);
        let mut idx: Vec<usize> = (0..vocab).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if k > 0 {
            idx.truncate(k);
        }
        let max = logits[idx[0]];
        let probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] - max) / 0.8) as f64).map(f64::exp).collect();
        let total: f64 = probs.iter().sum();
        let mut cum = 0.0;
        let keep = probs.iter().position(|q| {
            cum += q / total;
            cum >= top_p as f64
        });
        let kept = &idx[..keep.map_or(idx.len(), |i| i + 1)];
        let params: Vec<_> = (0..20).map(|j| at(&s, vocab, 0, j as u32, j)).collect();
        let ids = vec![0u32; params.len()];
        let got = sample_both(&format!("candidates vocab {vocab}"), &logits, &ids, &params);
        for r in &got {
            assert_eq!(r.candidates as usize, kept.len(), "vocab {vocab} k {k} p {top_p}");
            assert!(kept.contains(&(r.token as usize)), "token {} outside the CPU's candidates", r.token);
        }
    }
}

#[test]
fn top_k_one_is_greedy() {
    for (vocab, seed) in [(49152usize, 40u64), (1007, 41)] {
        let mut logits = logits_for(vocab, 4.0, seed);
        let ctx = context(vocab, 30, seed);
        let mut params = Vec::new();
        for j in 0..6 {
            let s = sp(0.3 + j as f32 * 0.4, 1, if j % 2 == 0 { 1.0 } else { 0.3 }, 1.15, seed + j as u64);
            params.push(at(&s, vocab, ctx.len(), j as u32, j));
        }
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        let greedy = Sampler::new(sp(0.0, 0, 1.0, 1.15, 0)).expect("sampler").sample(&logits, &ctx);
        let got = sample_both(&format!("top-k 1 vocab {vocab}"), &logits, &ids, &params);
        for r in &got {
            assert_eq!((r.token, r.candidates, r.status), (greedy, 1, sample::STATUS_SAMPLED));
        }
        // A tie at the max: top-k = 1 keeps the lower id, like greedy.
        let top = logits.iter().copied().fold(f32::MIN, f32::max) + 1.0;
        logits[vocab - 2] = top;
        logits[vocab / 2] = top;
        let params = [at(&sp(1.0, 1, 1.0, 1.0, 3), vocab, 0, 0, 0)];
        let got = sample_both(&format!("top-k 1 tie vocab {vocab}"), &logits, &[0], &params);
        assert_eq!(got[0].token as usize, vocab / 2);
    }
}

#[test]
fn top_k_and_top_p_split_ties_by_index() {
    let vocab = 1000 + 7;
    let mut logits: Vec<f32> = random(vocab, 45).iter().map(|v| v - 2.0).collect();
    for i in [800, 10, 500, 3, 999] {
        logits[i] = 2.0;
    }
    for i in [900, 7] {
        logits[i] = 3.0;
    }
    // top-k 4: both 3.0s and the two lowest-index 2.0s. A high temperature makes all four likely.
    let params: Vec<_> = (0..200).map(|j| at(&sp(50.0, 4, 1.0, 1.0, 5), vocab, 0, j as u32, j)).collect();
    let ids = vec![0u32; params.len()];
    let got = sample_both("top-k ties", &logits, &ids, &params);
    let mut tokens: Vec<u32> = got.iter().map(|r| r.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens, [3, 7, 10, 900]);
    assert!(got.iter().all(|r| r.candidates == 4));

    // top-p 0.5 over four equal tokens: the two lowest ids (each 1/4, together 1/2).
    let mut flat = vec![-40.0f32; vocab];
    for i in [600, 20, 300, 1000] {
        flat[i] = 10.0;
    }
    let params: Vec<_> = (0..100).map(|j| at(&sp(1.0, 0, 0.5, 1.0, 6), vocab, 0, j as u32, j)).collect();
    let got = sample_both("top-p ties", &flat, &ids[..100], &params);
    let mut tokens: Vec<u32> = got.iter().map(|r| r.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens, [20, 300]);
    assert!(got.iter().all(|r| r.candidates == 2));
}

#[test]
#[ignore = "timing on the test adapter: cargo test --test kernels_persona sample_timing -- --ignored --nocapture"]
fn sample_timing() {
    let vocab = 151_936;
    let logits = logits_for(vocab, 6.0, 99);
    let ctx = context(vocab, 512, 98);
    for (what, s) in [
        ("greedy", sp(0.0, 0, 1.0, 1.0, 0)),
        ("T=1", sp(1.0, 0, 1.0, 1.0, 1)),
        ("T=0.7 k=40 p=0.9 penalty 1.1", SamplingParams::default()),
        ("T=1 p=0.9", sp(1.0, 0, 0.9, 1.0, 1)),
    ] {
        let params: Vec<_> = (0..10).map(|j| at(&s, vocab, ctx.len(), j as u32, j)).collect();
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        gpu_sample(&logits, &ids, &params[..1]);
        let t = std::time::Instant::now();
        gpu_sample(&logits, &ids, &params);
        eprintln!("sample {what}, vocab {vocab}: {:.1} ms per sequence", t.elapsed().as_secs_f64() * 100.0);
    }
}

#[test]
fn sampling_is_reproducible_and_follows_the_distribution() {
    let vocab = 1000 + 7;
    let logits = logits_for(vocab, 3.0, 50);
    let s = sp(1.0, 0, 1.0, 1.0, 1234);
    let draws = 1500;
    // Half the draws vary the step, half the seed.
    let params: Vec<_> = (0..draws)
        .map(|j| {
            let mut p = at(&s, vocab, 0, (j % 750) as u32, j);
            if j >= 750 {
                p.seed_lo = 99 + j as u32;
            }
            p
        })
        .collect();
    let ids = vec![0u32; draws];
    let got = sample_both(&format!("{draws} draws"), &logits, &ids, &params);
    // Same seed and step, same token, whatever else the dispatch holds.
    let again = gpu_sample(&logits, &ids[..8], &params[..8]);
    assert_eq!(again.records, got[..8]);

    // Loose chi-square over 10 bins of about equal probability (9 degrees of freedom; 40 is p < 1e-5).
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let w: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
    let mut bin_of = vec![0usize; vocab];
    let mut cum = 0.0;
    for &i in &order {
        bin_of[i] = ((cum / total * 10.0) as usize).min(9);
        cum += w[i];
    }
    let mut expected = [0f64; 10];
    let mut seen = [0f64; 10];
    for i in 0..vocab {
        expected[bin_of[i]] += w[i] / total * draws as f64;
    }
    for r in &got {
        seen[bin_of[r.token as usize]] += 1.0;
    }
    let chi2: f64 = (0..10).filter(|&b| expected[b] > 0.0).map(|b| (seen[b] - expected[b]).powi(2) / expected[b]).sum();
    let mut distinct: Vec<u32> = got.iter().map(|r| r.token).collect();
    distinct.sort_unstable();
    distinct.dedup();
    eprintln!("chi2 {chi2:.1} over 10 bins, {} distinct tokens in {draws} draws", distinct.len());
    assert!(chi2 < 40.0, "draws do not follow the softmax: chi2 {chi2}, seen {seen:?}, expected {expected:?}");
    assert!(distinct.len() > 200, "only {} distinct tokens", distinct.len());
}

#[test]
fn sample_falls_back_when_nothing_has_weight() {
    let vocab = 1007;
    let mut nothing = vec![f32::NEG_INFINITY; vocab];
    nothing[9] = f32::NAN;
    let mut inf = logits_for(vocab, 1.0, 60);
    inf[77] = f32::INFINITY;
    // Both rows in one dispatch: row 0 has no finite logit, row 1 an infinite maximum.
    let logits: Vec<f32> = nothing.iter().chain(&inf).copied().collect();
    let mut params = vec![at(&sp(1.0, 0, 0.9, 1.0, 1), vocab, 0, 0, 0), at(&sp(1.0, 5, 1.0, 1.0, 1), vocab, 0, 0, 1)];
    params[1].logits_offset = vocab as u32;
    let got = sample_both("fallback", &logits, &[0, 0], &params);
    assert_eq!((got[0].token, got[0].status), (0, sample::STATUS_FALLBACK));
    assert_eq!((got[1].token, got[1].status), (77, sample::STATUS_FALLBACK));
}

#[test]
fn sample_params_reject_bad_input() {
    assert!(sample::Params::new(&sp(-1.0, 0, 1.0, 1.0, 0), 10).is_err());
    assert!(sample::Params::new(&sp(1.0, 0, 0.0, 1.0, 0), 10).is_err());
    assert!(sample::Params::new(&sp(1.0, 0, 1.0, 1.0, 0), 0).is_err());
    assert!(sample::Params::new(&sp(1.0, 0, 1.0, 1.0, 0), (1 << 20) + 1).is_err());
    let ok = sample::Params::new(&sp(1.0, 0, 1.0, 1.1, 0), 100).expect("valid");
    // (logits, ids, work, out, tokens) lengths.
    let fits = |p: &sample::Params| p.check(100, 1, 100, 4, 1).is_ok();
    assert!(fits(&ok));
    assert!(!fits(&sample::Params { ctx_len: 2, ..ok }), "context past the ids");
    assert!(!fits(&sample::Params { ctx_start: 1, ctx_len: 1, ..ok }), "context start past the ids");
    assert!(!fits(&sample::Params { write_index: 1, ..ok }), "write index past the ids");
    assert!(!fits(&sample::Params { logits_offset: 1, ..ok }), "logits row past the end");
    assert!(!fits(&sample::Params { work_offset: 1, ..ok }), "scratch past the work buffer");
    assert!(fits(&sample::Params { work_offset: 1, repetition_penalty: 1.0, ..ok }), "no scratch without a penalty");
    assert!(!fits(&sample::Params { token_index: 1, ..ok }), "token index past the tokens");
    assert!(!fits(&sample::Params { out_offset: 1, ..ok }), "record past the out buffer");
    assert!(!fits(&sample::Params { vocab: 0, ..ok }), "empty vocabulary");
    // The twin refuses what the check refuses.
    let (mut ids, mut out, mut tokens) = ([0u32], [0u32; 4], [0u32]);
    let bad = sample::Params { logits_offset: 1, ..ok };
    assert!(twins::sample(&bad, &[0.0; 100], &mut ids, &mut out, &mut tokens).is_err());
    let bad = sample::Params { token_index: 1, ..ok };
    assert!(twins::sample(&bad, &[0.0; 100], &mut ids, &mut out, &mut tokens).is_err());
    assert!(twins::sample(&ok, &[0.0; 100], &mut ids, &mut out, &mut tokens).is_ok());
}

/// Several sequences in one dispatch, as the engine samples a wave: each with its own params (greedy, penalties,
/// temperatures, top-k, top-p), its own logits row (two pairs share one), its own history region (the penalty
/// context, where its token is appended), its own scratch, record and token slot, none in sequence order. Three
/// decode steps on persistent ids: each step's token joins the next step's context. Kernel against twin, record
/// for record, and the greedy ones against the CPU sampler.
#[test]
fn several_sequences_per_dispatch_over_decode_steps() {
    let gpu = gpu();
    let k = sampler_kernel();
    let vocab = 1007usize;
    let n_rows = 5usize;
    // (settings, logits row, history start, history length)
    let seqs = [
        (sp(0.0, 0, 1.0, 1.0, 0), 2usize, 0usize, 17usize),
        (sp(0.0, 0, 1.0, 1.3, 0), 2, 40, 30),
        (sp(0.8, 40, 0.9, 1.1, 5), 0, 100, 64),
        (sp(1.2, 0, 0.7, 1.0, 6), 4, 200, 8),
        (sp(0.5, 3, 1.0, 1.2, 7), 1, 260, 50),
        (sp(1.0, 1, 1.0, 1.0, 8), 3, 330, 0),
        (sp(1.5, 200, 0.95, 0.9, 9), 0, 340, 20),
    ];
    let n = seqs.len();
    let steps = 3usize;
    let (work_slot, out_slot, token_slot) =
        ([3usize, 0, 6, 1, 5, 2, 4], [5usize, 2, 0, 6, 1, 4, 3], [1usize, 6, 3, 0, 2, 5, 4]);
    let mut ids = vec![0u32; 400];
    for (s, &(_, _, start, len)) in seqs.iter().enumerate() {
        assert!(s + 1 == n || start + len + steps <= seqs[s + 1].2, "history regions overlap");
        ids[start..start + len].copy_from_slice(&context(vocab, len, 400 + s as u64));
    }
    let params_at = |step: usize| -> Vec<sample::Params> {
        seqs.iter()
            .enumerate()
            .map(|(s, (set, row, start, len))| {
                let mut p = sample::Params::new(set, vocab as u32).expect("valid");
                p.logits_offset = (row * vocab) as u32;
                p.ctx_start = *start as u32;
                p.ctx_len = (len + step) as u32;
                p.write_index = (start + len + step) as u32;
                p.out_offset = (1 + 4 * out_slot[s]) as u32;
                p.step = (10 * s + step) as u32;
                p.token_index = token_slot[s] as u32;
                p.work_offset = (5 + work_slot[s] * vocab) as u32;
                p
            })
            .collect()
    };
    let p0 = params_at(0);
    let (out_len, tokens_len, work_len) = lens(&p0);
    let logits_len = n_rows * vocab;
    let (lb, ib) = (storage_f32(gpu, "logits", &vec![0.0; logits_len]), storage_u32(gpu, "ids", &ids));
    let work = storage_f32(gpu, "work", &vec![WORK_INIT; work_len]);
    let out = storage_u32(gpu, "out", &vec![OUT_INIT; out_len]);
    let tokens = storage_u32(gpu, "tokens", &vec![TOKENS_INIT; tokens_len]);
    let pb = Sample::params(gpu, &p0);
    let bind = k.bind(gpu, &pb, &lb, &ib, &work, &out, &tokens);
    let (mut t_ids, mut t_out, mut t_tokens) = (ids.clone(), vec![OUT_INIT; out_len], vec![TOKENS_INIT; tokens_len]);
    let mut t_work = vec![WORK_INIT; work_len];
    let mut all_tokens = Vec::new();
    for step in 0..steps {
        let scales = [4.0f32, 1.0, 8.0, 0.5, 3.0];
        let mut logits: Vec<f32> =
            (0..n_rows).flat_map(|r| logits_for(vocab, scales[r], 300 + 10 * step as u64 + r as u64)).collect();
        // Row 3: a tie at the max and a NaN.
        let m = logits[3 * vocab..4 * vocab].iter().copied().fold(f32::MIN, f32::max) + 0.5;
        logits[3 * vocab + 900] = m;
        logits[3 * vocab + 77] = m;
        logits[3 * vocab + 5] = f32::NAN;
        let params = params_at(step);
        for p in &params {
            p.check(logits_len, ids.len(), work_len, out_len, tokens_len).expect("params fit");
        }
        gpu.queue.write_buffer(&lb, 0, bytemuck::cast_slice(&logits));
        gpu.queue.write_buffer(&pb, 0, bytemuck::cast_slice(&params));
        run(gpu, |pass| k.dispatch(pass, &bind, n as u32));
        let got_out = read_u32(gpu, &out, out_len);
        let got_tokens = read_u32(gpu, &tokens, tokens_len);

        // The twin, and the greedy sequences on the CPU sampler, on the ids as they stand before this step.
        for (s, p) in params.iter().enumerate() {
            if p.repetition_penalty != 1.0 {
                t_work[p.work_offset as usize..][..vocab].copy_from_slice(&penalized(p, &logits, &t_ids));
            }
            let (set, row, start, len) = &seqs[s];
            if set.temperature == 0.0 {
                let ctx = &t_ids[*start..start + len + step];
                let cpu =
                    Sampler::new(set.clone()).expect("sampler").sample(&logits[row * vocab..(row + 1) * vocab], ctx);
                let rec = Record::from_words(&got_out[p.out_offset as usize..]).expect("record");
                assert_eq!(rec.token, cpu, "step {step} sequence {s}: GPU vs CPU Sampler");
            }
        }
        let want: Vec<Record> = params
            .iter()
            .map(|p| twins::sample(p, &logits, &mut t_ids, &mut t_out, &mut t_tokens).expect("twin"))
            .collect();
        for (s, (p, w)) in params.iter().zip(&want).enumerate() {
            let g = Record::from_words(&got_out[p.out_offset as usize..]).expect("record");
            assert_eq!(&g, w, "step {step} sequence {s} {:?}", seqs[s].0);
            assert_eq!(got_tokens[p.token_index as usize], w.token, "step {step} sequence {s}: tokens[token_index]");
        }
        assert_eq!(got_out, t_out, "step {step}: out words (word 0 untouched)");
        assert_eq!(got_tokens, t_tokens, "step {step}: tokens");
        let got_work = read(gpu, &work, work_len);
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let bad = (0..work_len).find(|&i| !same(got_work[i], t_work[i]));
        assert_eq!(bad.map(|i| (i, got_work[i], t_work[i])), None, "step {step}: scratch regions");
        all_tokens.extend(want.iter().map(|r| r.token));
    }
    assert_eq!(read_u32(gpu, &ib, ids.len()), t_ids, "ids (histories with the appended tokens)");
    for (s, &(_, _, start, len)) in seqs.iter().enumerate() {
        assert!(t_ids[start + len..start + len + steps].iter().all(|&t| (t as usize) < vocab), "sequence {s}");
    }
    all_tokens.sort_unstable();
    all_tokens.dedup();
    assert!(all_tokens.len() > 5, "the sequences drew only {all_tokens:?}");
}
