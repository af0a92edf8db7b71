//! Times the matmul kernels on SmolLM2-135M's shapes, for several workgroup shapes, to pick the defaults.
//!
//! `cargo run -p personascope-gpu --example matmul_bench [-- [--hardware] [--decode] [--only NAME]]`
//! (`--decode`: decode shapes only; `--only`: tensors whose name contains NAME; `--shapes 4x16,64x1`: the decode
//! shapes to try, rows x threads per row [x rows per thread]; `--prompt-shapes 256x1x8x4`: the prompt shapes, rows x threads per row
//! x tokens x rows per thread).
//!
//! Uses the real tensors of `models/SmolLM2-135M-Instruct.Q4_1.gguf` when present (and checks the GPU result
//! against the CPU's `dot_row` on them), random ones of the same types otherwise. GPU time comes from timestamp
//! queries around a pass of repeated dispatches when the adapter has them, from the wall clock otherwise. On
//! lavapipe the "GPU" is the CPU: the numbers rank designs for that driver only.

#[path = "common/mod.rs"]
mod common;

use personascope_gguf::{dot_row, GgmlType, Gguf};
use personascope_gpu::kernel::{read_buffer, storage_f32, storage_zeroed};
use personascope_gpu::kernels::matmul::{shapes_for, Epilogue, Io, Matmul, Shape};
use personascope_gpu::quant::{GpuMatrix, PackedMatrix};
use personascope_gpu::Gpu;
use std::time::Instant;

/// Timed runs per measurement; the fastest is reported.
const ROUNDS: usize = 5;

struct Weight {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

fn weights(extra: bool) -> Vec<Weight> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let shapes = [
        ("blk.0.attn_q.weight", GgmlType::Q4_1, 576, 576),
        ("blk.0.ffn_up.weight", GgmlType::Q4_1, 1536, 576),
        ("blk.0.ffn_down.weight", GgmlType::Q4_1, 576, 1536),
        ("token_embd.weight", GgmlType::Q8_0, 49152, 576),
    ];
    // A plain f32 4096 x 4096 matrix on request: a shape whose GFLOP/s other engines' figures are quoted for.
    let extra = extra.then_some(("random_f32_4096", GgmlType::F32, 4096, 4096));
    let shapes = shapes.into_iter().chain(extra);
    let file = std::fs::read(&path).ok();
    let gguf = file.as_deref().and_then(|b| Gguf::parse(b).ok());
    shapes
        .into_iter()
        .map(|(name, ty, rows, cols)| {
            let real = gguf.as_ref().and_then(|g| {
                let t = g.tensor(name)?;
                (t.ty == ty && t.dims.as_slice() == [cols as u64, rows as u64]).then(|| g.tensor_data(t).to_vec())
            });
            let (label, data) = match real {
                Some(d) => (name.to_string(), d),
                None => (format!("random {name}"), random_bytes(ty, rows * cols)),
            };
            Weight { name: label, ty, rows, cols, data }
        })
        .collect()
}

/// Random blocks with small positive f16 scales (timing does not depend on the values).
fn random_bytes(ty: GgmlType, n: usize) -> Vec<u8> {
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut out: Vec<u8> = (0..ty.bytes_for(n as u64).unwrap_or(0))
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    if ty == GgmlType::F32 {
        return out.chunks_exact(4).flat_map(|b| (b[0] as f32 / 256.0).to_le_bytes()).collect();
    }
    for b in out.chunks_exact_mut(ty.type_size()) {
        b[0..2].copy_from_slice(&half_bits(0.01));
        if ty == GgmlType::Q4_1 {
            b[2..4].copy_from_slice(&half_bits(-0.08));
        }
    }
    out
}

fn half_bits(v: f32) -> [u8; 2] {
    // f16 of a normal value in f16 range, rounded toward zero (good enough for benchmark data).
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = ((b >> 13) & 0x3ff) as u16;
    (sign | ((exp as u16) << 10) | mant).to_le_bytes()
}

/// Seconds per dispatch of `k` on `m` for `n` tokens.
fn time(gpu: &Gpu, k: &Matmul, m: &GpuMatrix, n: u32, reps: u32) -> f64 {
    let x = storage_f32(gpu, "x", &vec![0.5; m.cols * n as usize]);
    let y = storage_zeroed(gpu, "y", (4 * m.rows * n as usize) as u64);
    let mut binds = Vec::new();
    for part in 0..m.parts.len() {
        let Ok(params) = k.params(m, part, n, Io::dense(m)) else { return f64::NAN };
        let Ok(ub) = k.params_buffer(gpu, m, part, n, Io::dense(m)) else { return f64::NAN };
        let Ok(bind) = k.bind(gpu, &ub, &m.parts[part], &x, &y, None) else { return f64::NAN };
        binds.push((params, bind, ub));
    }
    let queries = gpu.caps.timestamps.then(|| {
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        (set, resolve)
    });
    let run = |timed: bool| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let timestamp_writes =
                queries.as_ref().filter(|_| timed).map(|(set, _)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                });
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes });
            for _ in 0..reps {
                for (params, bind, _) in &binds {
                    k.dispatch(&mut pass, bind, params);
                }
            }
        }
        if let (true, Some((set, resolve))) = (timed, &queries) {
            enc.resolve_query_set(set, 0..2, resolve, 0);
        }
        gpu.queue.submit([enc.finish()]);
        let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    };
    run(false); // warm-up: pipeline and buffer first use
                // The best of a few runs: on a shared CPU (lavapipe) the noise only ever adds time.
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        run(true);
        let wall = t0.elapsed().as_secs_f64() / reps as f64;
        let t = match &queries {
            Some((_, resolve)) => match pollster::block_on(read_buffer(gpu, resolve, 0, 16)) {
                Ok(b) => {
                    let t = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
                    let ns = t(1).saturating_sub(t(0)) as f64 * gpu.queue.get_timestamp_period() as f64;
                    if ns > 0.0 {
                        ns * 1e-9 / reps as f64
                    } else {
                        wall
                    }
                }
                Err(_) => wall,
            },
            None => wall,
        };
        best = best.min(t);
    }
    best
}

/// Largest |gpu - cpu| of the decode product on `w` with a fixed x.
fn check(gpu: &Gpu, k: &Matmul, m: &GpuMatrix, w: &Weight) -> f32 {
    let x: Vec<f32> = (0..w.cols).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let xb = storage_f32(gpu, "x", &x);
    let yb = storage_zeroed(gpu, "y", (4 * w.rows) as u64);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    let mut keep = Vec::new();
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for part in 0..m.parts.len() {
            let (Ok(params), Ok(ub)) =
                (k.params(m, part, 1, Io::dense(m)), k.params_buffer(gpu, m, part, 1, Io::dense(m)))
            else {
                return f32::NAN;
            };
            let Ok(bind) = k.bind(gpu, &ub, &m.parts[part], &xb, &yb, None) else { return f32::NAN };
            k.dispatch(&mut pass, &bind, &params);
            keep.push((bind, ub));
        }
    }
    gpu.queue.submit([enc.finish()]);
    let Ok(bytes) = pollster::block_on(read_buffer(gpu, &yb, 0, (4 * w.rows) as u64)) else { return f32::NAN };
    let row_bytes = w.data.len() / w.rows;
    bytes
        .chunks_exact(4)
        .enumerate()
        .map(|(r, b)| {
            let got = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (got - dot_row(w.ty, &w.data[r * row_bytes..(r + 1) * row_bytes], &x)).abs()
        })
        .fold(0.0, f32::max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let decode_only = args.iter().any(|a| a == "--decode");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned().unwrap_or_default();
    let gpu = common::gpu();
    println!("caps {:?}; timing: {}", gpu.caps, if gpu.caps.timestamps { "timestamps" } else { "wall clock" });
    let decode_shapes: Vec<Shape> = match args.iter().position(|a| a == "--shapes").and_then(|i| args.get(i + 1)) {
        Some(list) => list
            .split(',')
            .filter_map(|s| {
                let v: Vec<u32> = s.split('x').filter_map(|n| n.parse().ok()).collect();
                match v[..] {
                    [rows, tpr] => Some(Shape { rows, tpr, tokens: 1, rpt: 1 }),
                    [rows, tpr, rpt] => Some(Shape { rows, tpr, tokens: 1, rpt }),
                    _ => None,
                }
            })
            .collect(),
        None => [(4, 16), (8, 8), (2, 32), (1, 64), (4, 32), (2, 64), (16, 16), (64, 1), (32, 2), (16, 4)]
            .into_iter()
            .map(|(rows, tpr)| Shape { rows, tpr, tokens: 1, rpt: 1 })
            .collect(),
    };
    let (default_decode, default_prompt) = shapes_for(&gpu);
    println!("defaults for this adapter (*): decode {default_decode:?}, prompt {default_prompt:?}");
    let prompt_shapes: Vec<Shape> = match args.iter().position(|a| a == "--prompt-shapes").and_then(|i| args.get(i + 1))
    {
        Some(list) => list
            .split(',')
            .filter_map(|s| {
                let v: Vec<u32> = s.split('x').filter_map(|n| n.parse().ok()).collect();
                match v[..] {
                    [rows, tpr, tokens, rpt] => Some(Shape { rows, tpr, tokens, rpt }),
                    _ => None,
                }
            })
            .collect(),
        None => {
            [(4, 16, 8, 1), (8, 8, 8, 1), (64, 1, 8, 1), (128, 1, 8, 2), (256, 1, 8, 4), (256, 1, 4, 4), (512, 1, 8, 8)]
                .map(|(rows, tpr, tokens, rpt)| Shape { rows, tpr, tokens, rpt })
                .to_vec()
        }
    };
    for w in weights(only.contains("f32")).into_iter().filter(|w| w.name.contains(&only)) {
        let packed = match PackedMatrix::pack(&w.name, w.ty, w.rows, w.cols, &w.data) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: {e}", w.name);
                continue;
            }
        };
        let Ok(m) = GpuMatrix::upload(&gpu, &w.name, &packed) else { continue };
        let bytes = packed.gpu_bytes() as f64 + 4.0 * (w.cols + w.rows) as f64;
        println!(
            "\n{} {} {}x{}: {:.2} MB packed ({:.2} MB in the file)",
            w.name,
            w.ty,
            w.rows,
            w.cols,
            packed.gpu_bytes() as f64 / 1e6,
            w.data.len() as f64 / 1e6
        );
        let reps = (400_000 / w.rows.max(1)).clamp(2, 50) as u32;
        for &s in &decode_shapes {
            let k =
                match pollster::block_on(Matmul::with_shapes(&gpu, m.format, Epilogue::default(), s, default_prompt)) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("  {s:?}: {e}");
                        continue;
                    }
                };
            let t = time(&gpu, &k, &m, 1, reps);
            println!(
                "{} decode rows {:2} x tpr {:3} x rows/thread {}: {:8.1} us  {:6.2} GB/s  max |gpu - cpu| {:.1e}",
                if s == default_decode { '*' } else { ' ' },
                s.rows,
                s.tpr,
                s.rpt,
                t * 1e6,
                bytes / t / 1e9,
                check(&gpu, &k, &m, &w)
            );
        }
        if decode_only {
            continue;
        }
        let n = 64u32;
        let flops = 2.0 * (w.rows * w.cols) as f64 * n as f64;
        let k1 = pollster::block_on(Matmul::new(&gpu, m.format, Epilogue::default()));
        if let Ok(k1) = k1 {
            let t = time(&gpu, &k1, &m, 1, (reps / 4).max(2)) * n as f64;
            println!("  prompt {n} tokens as {n} decodes: {:8.1} us  {:6.2} GFLOP/s", t * 1e6, flops / t / 1e9);
        }
        for &s in &prompt_shapes {
            let k =
                match pollster::block_on(Matmul::with_shapes(&gpu, m.format, Epilogue::default(), default_decode, s)) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("  {s:?}: {e}");
                        continue;
                    }
                };
            let t = time(&gpu, &k, &m, n, (reps / 16).max(2));
            println!(
                "{} prompt {n} tokens rows {} x tpr {} x tokens {} x rows/thread {}: {:8.1} us  {:6.2} GFLOP/s",
                if s == default_prompt { '*' } else { ' ' },
                s.rows,
                s.tpr,
                s.tokens,
                s.rpt,
                t * 1e6,
                flops / t / 1e9
            );
        }
    }
}
