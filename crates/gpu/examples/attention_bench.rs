//! Times the attention kernel on SmolLM2-135M's head layout (9 query heads, 3 KV heads of 64): a prompt of N rows
//! at positions 0..N (prefill) and one row at position N (decode), for a few N.
//!
//! `cargo run --release -p personascope-gpu --example attention_bench [-- --hardware]`; the design is the one
//! the engine picks for the adapter (`PERSONASCOPE_ATTENTION=tiled|solo` overrides it).
//!
//! GPU time comes from timestamp queries when the adapter has them, from the wall clock otherwise. On lavapipe the
//! "GPU" is the CPU: the numbers rank designs for that driver only.

#[path = "common/mod.rs"]
mod common;

use personascope_gpu::kernel::{read_buffer, storage, storage_f32};
use personascope_gpu::kernels::attention::{self, Attention, AttentionShape};
use personascope_gpu::rows::Row;
use personascope_gpu::Gpu;
use std::time::Instant;

/// Timed runs per measurement; the fastest is reported.
const ROUNDS: usize = 3;

fn time(gpu: &Gpu, k: &Attention, shape: &AttentionShape, rows: &[Row]) -> Result<f64, String> {
    let p = attention::Params::new(shape, rows.len() as u32).map_err(|e| e.to_string())?;
    let q_dim = (shape.n_heads * shape.head_dim) as usize;
    let kv_dim = (shape.n_kv_heads * shape.head_dim) as usize;
    let cache = shape.max_positions as usize * kv_dim;
    let wave = |n: usize, s: f32| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * s).collect::<Vec<_>>();
    let (qb, kb, vb) = (
        storage_f32(gpu, "q", &wave(rows.len() * q_dim, 0.5)),
        storage_f32(gpu, "k", &wave(cache, 0.5)),
        storage_f32(gpu, "v", &wave(cache, 1.0)),
    );
    let ob = storage_f32(gpu, "out", &vec![0.0; rows.len() * q_dim]);
    let rb = storage(gpu, "rows", bytemuck::cast_slice(rows));
    let params = Attention::params(gpu, &p);
    let bind = k.bind(gpu, &params, &qb, &kb, &vb, &ob, &rb);
    let run = || -> Result<(), String> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            k.dispatch(&mut pass, &bind, &p).map_err(|e| e.to_string())?;
        }
        gpu.queue.submit([enc.finish()]);
        let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
        Ok(())
    };
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        run()?;
        // Reading one value back makes sure the work finished before the clock stops.
        pollster::block_on(read_buffer(gpu, &ob, 0, 4)).map_err(|e| e.to_string())?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() {
    let gpu = common::gpu();
    let shape = AttentionShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, max_positions: 2048 };
    let kernel = match pollster::block_on(Attention::for_model(&gpu, shape.n_heads, shape.n_kv_heads, shape.head_dim)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("attention: {e}");
            std::process::exit(1);
        }
    };
    println!("design: {}", if kernel.solo.is_some() { "solo (one invocation per row and KV head)" } else { "tiled" });
    let row = |pos: u32| Row { pos, seq: 0, kv_row: pos, own_base: 0, prefix_base: 0, prefix_len: 0, _pad: [0; 2] };
    for n in [64u32, 128, 512] {
        let prompt: Vec<Row> = (0..n).map(row).collect();
        let pairs = n as f64 * (n as f64 + 1.0) / 2.0 * shape.n_heads as f64;
        match time(&gpu, &kernel, &shape, &prompt) {
            Ok(t) => println!("prefill {n:4} rows: {:9.2} ms  {:7.1} ns per (head, key)", t * 1e3, t * 1e9 / pairs),
            Err(e) => println!("prefill {n}: {e}"),
        }
        let pairs = (n as f64 + 1.0) * shape.n_heads as f64;
        match time(&gpu, &kernel, &shape, &[row(n)]) {
            Ok(t) => println!("decode at {n:4}:   {:9.2} ms  {:7.1} ns per (head, key)", t * 1e3, t * 1e9 / pairs),
            Err(e) => println!("decode at {n}: {e}"),
        }
    }
}
