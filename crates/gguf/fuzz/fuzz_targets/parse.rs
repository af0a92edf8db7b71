//! Fuzzes `Gguf::parse` on arbitrary bytes. When a file parses, checks the reader's invariants, touches every
//! tensor's data, dequantizes tensors up to a size cap (and checks `dot_row` against the dequantized values),
//! then round-trips through `GgufWriter`: write, parse again, and compare metadata and tensor table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use personascope_gguf::{dequantize, dot_row, Gguf, GgufWriter, Value, DEFAULT_ALIGNMENT, GGML_MAX_DIMS};

/// Largest tensor (in elements) that is dequantized.
const MAX_DEQUANT_ELEMENTS: u64 = 1 << 20;
/// Largest file the round trip may write (alignment up to 2^30 could otherwise ask for gigabytes of padding).
const MAX_REWRITE_BYTES: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    check_parsed(&g, data);
    round_trip(&g);
});

fn check_parsed(g: &Gguf, data: &[u8]) {
    assert!(g.version == 2 || g.version == 3);
    assert!(g.alignment.is_power_of_two() && g.alignment <= 1 << 30);
    if g.get("general.alignment").is_none() {
        assert_eq!(g.alignment, DEFAULT_ALIGNMENT);
    }
    assert_eq!(g.data_offset % g.alignment, 0);
    assert!(std::ptr::eq(g.bytes(), data));
    for (i, (k, _)) in g.metadata().iter().enumerate() {
        assert!(g.metadata()[..i].iter().all(|(k2, _)| k2 != k), "duplicate key {k:?} accepted");
    }
    let mut touched = 0u8;
    for (i, t) in g.tensors().iter().enumerate() {
        assert!(g.tensors()[..i].iter().all(|t2| t2.name != t.name), "duplicate tensor {:?} accepted", t.name);
        assert!(t.dims.len() <= GGML_MAX_DIMS);
        assert_eq!(t.offset % g.alignment, 0);
        assert_eq!(t.start as u64, g.data_offset + t.offset);
        let n = t.n_elements();
        assert_eq!(Some(t.len as u64), t.ty.bytes_for(n));
        let row = t.dims.first().copied().unwrap_or(1);
        assert_eq!(row % t.ty.block_size() as u64, 0);
        assert!(t.start + t.len <= data.len());

        // Touch every byte of the tensor's data.
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len(), t.len);
        touched ^= bytes.iter().fold(0u8, |a, &b| a ^ b);

        if n > MAX_DEQUANT_ELEMENTS {
            continue;
        }
        let values = g.tensor_f32(&t.name).expect("a parsed tensor dequantizes");
        assert_eq!(values.len() as u64, n);
        let mut again = vec![0f32; n as usize];
        dequantize(t.ty, bytes, &mut again).unwrap();
        assert!(values.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "dequantize is not deterministic");
        // A zero-element tensor may have any row length (e.g. dims [2^57, 0]); it has no rows to check.
        if n > 0 {
            check_dot_rows(t.ty, bytes, &values, row as usize);
        }
    }
    std::hint::black_box(touched);
}

/// `dot_row` of each row against x = (1, -0.5, 0.25, -1, ...) (products exact in f32) must equal the f64 dot of
/// the dequantized row within the worst-case error of summing `row` f32 terms in any order.
fn check_dot_rows(ty: personascope_gguf::GgmlType, bytes: &[u8], values: &[f32], row: usize) {
    assert!(row > 0 && row <= values.len());
    let row_bytes = ty.bytes_for(row as u64).unwrap() as usize;
    let x: Vec<f32> = (0..row).map(|i| [1.0, -0.5, 0.25, -1.0][i % 4]).collect();
    for (r, (wb, w)) in bytes.chunks_exact(row_bytes).zip(values.chunks_exact(row)).enumerate() {
        let got = dot_row(ty, wb, &x);
        if !w.iter().all(|v| v.is_finite()) {
            continue;
        }
        let want: f64 = w.iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let scale: f64 = w.iter().zip(&x).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        if scale > 1e37 {
            continue; // an f32 partial sum could overflow
        }
        // (n - 1) u per term for recursive summation, u = 2^-24, doubled; plus products that underflow.
        let tol = row as f64 * 2f64.powi(-23) * scale + row as f64 * 2f64.powi(-148);
        assert!(
            (f64::from(got) - want).abs() <= tol,
            "{ty} row {r}: dot_row {got:e}, f64 reference {want:e}, tolerance {tol:e}"
        );
    }
}

fn round_trip(g: &Gguf) {
    // Only when the rewritten file is of reasonable size: same header, tensors packed at the same alignment.
    let data: u64 = g.tensors().iter().map(|t| t.len as u64 + g.alignment).sum();
    if g.data_offset + data > MAX_REWRITE_BYTES {
        return;
    }
    let out = rewrite(g);
    let g2 = Gguf::parse(&out).unwrap_or_else(|e| panic!("the reader refuses what the writer wrote: {e}"));
    assert_eq!(g2.version, 3);
    assert_eq!(g2.alignment, g.alignment);
    assert_eq!(g2.data_offset, g.data_offset, "the header encodes to the same length");
    assert_eq!(g2.metadata().len(), g.metadata().len());
    for ((k1, v1), (k2, v2)) in g.metadata().iter().zip(g2.metadata()) {
        assert_eq!(k1, k2);
        assert!(same(v1, v2), "key {k1:?}: {v1:?} became {v2:?}");
    }
    assert_eq!(g2.tensors().len(), g.tensors().len());
    for (t1, t2) in g.tensors().iter().zip(g2.tensors()) {
        assert_eq!((&t1.name, &t1.dims, t1.ty, t1.len), (&t2.name, &t2.dims, t2.ty, t2.len));
        assert_eq!(g.tensor_data(t1), g2.tensor_data(t2), "data of {:?}", t1.name);
    }
    // The writer's output is a fixed point.
    assert!(rewrite(&g2) == out, "rewriting the writer's output changed it");
}

fn rewrite(g: &Gguf) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k.clone(), v.clone());
    }
    for t in g.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty, g.tensor_data(t).to_vec())
            .unwrap_or_else(|e| panic!("the writer refuses tensor {:?} the reader accepted: {e}", t.name));
    }
    w.to_bytes().unwrap_or_else(|e| panic!("the writer refuses metadata the reader accepted: {e}"))
}

/// Value equality with floats compared by bits (NaN payloads must survive).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.elem_type() == ys.elem_type() && xs.len() == ys.len() && xs.values().zip(ys.values()).all(|(x, y)| same(&x, &y))
        }
        _ => a == b,
    }
}
