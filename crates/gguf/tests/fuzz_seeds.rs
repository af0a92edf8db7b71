//! The fuzz target's committed seed files (`fuzz/seeds/`): small valid GGUF files written by `GgufWriter`.
//! This test checks that they are exactly what the generator below produces and that they parse; run it with
//! `GGUF_WRITE_SEEDS=1` to (re)write them, e.g. after a deliberate format change.

mod common;

use common::*;
use personascope_gguf::{Array, GgmlType, Gguf, GgufWriter, Value};
use std::path::PathBuf;

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let s = |x: &str| Value::String(x.into());
    let mut out = Vec::new();

    // Every value type, no tensors.
    let mut w = GgufWriter::new();
    w.set("general.architecture", s("llama"))
        .set("a.u8", Value::U8(200))
        .set("a.i8", Value::I8(-3))
        .set("a.u16", Value::U16(60000))
        .set("a.i16", Value::I16(-300))
        .set("a.u32", Value::U32(32))
        .set("a.i32", Value::I32(-7))
        .set("a.f32", Value::F32(1e-6))
        .set("a.bool", Value::Bool(true))
        .set("a.u64", Value::U64(1 << 33))
        .set("a.i64", Value::I64(-1))
        .set("a.f64", Value::F64(0.5))
        .set("a.tokens", Value::Array(Array::String(["<s>", "é", ""].into_iter().collect())))
        .set("a.scores", Value::Array(Array::F32(vec![0.0, -1.0])))
        .set("a.nested", Value::Array(Array::Array(vec![Array::I32(vec![1]), Array::Bool(vec![])])));
    out.push(("metadata_all_types.gguf", w.to_bytes().unwrap()));

    // F32 and Q8_0 tensors, default alignment.
    let mut w = GgufWriter::new();
    w.set("general.architecture", s("test"));
    w.add_f32("w.f32", &[3, 2], &[1.0, -2.0, 0.5, 0.0, 3.0, -0.25]).unwrap();
    w.add_tensor("w.q8", &[32, 2], GgmlType::Q8_0, tensor_bytes(GgmlType::Q8_0, 64, 1)).unwrap();
    out.push(("tensors_f32_q8_0.gguf", w.to_bytes().unwrap()));

    // One tensor of each K-quant.
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U32(16));
    for (i, ty) in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K].into_iter().enumerate() {
        w.add_tensor(format!("k{i}"), &[256], ty, tensor_bytes(ty, 256, i as u64 + 2)).unwrap();
    }
    out.push(("tensors_k_quants.gguf", w.to_bytes().unwrap()));

    // Version 2, alignment 1, the small block types and half floats.
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U8(1));
    for (i, ty) in [GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1]
        .into_iter()
        .enumerate()
    {
        let n = ty.block_size().max(4) as u64;
        w.add_tensor(format!("t{i}"), &[n, 1], ty, tensor_bytes(ty, n, i as u64 + 5)).unwrap();
    }
    let mut b = w.to_bytes().unwrap();
    put_u32(&mut b, VERSION_AT, 2);
    out.push(("v2_align1_small_types.gguf", b));

    out
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn seeds_are_current_and_valid() {
    let dir = seeds_dir();
    let write = std::env::var_os("GGUF_WRITE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds() {
        assert!(bytes.len() <= 2048, "seed {name} is {} bytes; keep seeds tiny", bytes.len());
        let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        assert!(!g.metadata().is_empty() || !g.tensors().is_empty());
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with GGUF_WRITE_SEEDS=1 to write the seeds", path.display()));
        assert!(on_disk == bytes, "{} is stale; run with GGUF_WRITE_SEEDS=1 to rewrite it", path.display());
    }
}
