//! Times `dot_row` over every 2-D tensor of a GGUF file, per type: `cargo run --release --example dotbench -- F`.
use personascope_gguf::{dot_row, Gguf};
use std::time::Instant;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dotbench FILE.gguf");
        std::process::exit(2);
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let mut per_type = std::collections::BTreeMap::<&str, (u64, f64)>::new();
    for t in g.tensors().iter().filter(|t| t.dims.len() == 2) {
        let cols = t.dims[0] as usize;
        let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 * 0.1).collect();
        let data = g.tensor_data(t);
        let row_bytes = data.len() / t.dims[1] as usize;
        let start = Instant::now();
        let mut s = 0f32;
        for r in data.chunks_exact(row_bytes) {
            s += dot_row(t.ty, r, &x);
        }
        let e = per_type.entry(t.ty.name()).or_default();
        e.0 += t.n_elements();
        e.1 += start.elapsed().as_secs_f64();
        std::hint::black_box(s);
    }
    for (ty, (n, secs)) in per_type {
        println!("{ty}: {n} weights in {:.1} ms = {:.2} Gweights/s (one thread)", secs * 1e3, n as f64 / secs / 1e9);
    }
}
