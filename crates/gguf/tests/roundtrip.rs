//! Writer -> reader round trips: every metadata value type, versions 2 and 3, custom alignments, tensors of
//! every GGML type with their data borrowed from the file, and deterministic output.

mod common;

use common::*;
use personascope_gguf::{dequantize, Array, GgmlType, Gguf, GgufWriter, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC};

/// Value equality that compares floats by bits, so NaN payloads and -0.0 must survive too.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.elem_type() == ys.elem_type()
                && xs.len() == ys.len()
                && xs.values().zip(ys.values()).all(|(x, y)| same(&x, &y))
        }
        _ => a == b,
    }
}

fn assert_same_metadata(got: &[(String, Value)], want: &[(String, Value)]) {
    assert_eq!(got.len(), want.len(), "metadata count");
    for ((gk, gv), (wk, wv)) in got.iter().zip(want) {
        assert_eq!(gk, wk, "metadata order");
        assert!(same(gv, wv), "key `{wk}`: got {gv:?}, wrote {wv:?}");
    }
}

fn s(x: &str) -> Value {
    Value::String(x.into())
}

/// One entry per value type at its edges, empty arrays of every element type, arrays of strings and arrays of
/// arrays one level deep.
fn all_values() -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = vec![
        ("u8.min".into(), Value::U8(0)),
        ("u8.max".into(), Value::U8(u8::MAX)),
        ("i8.min".into(), Value::I8(i8::MIN)),
        ("i8.max".into(), Value::I8(i8::MAX)),
        ("u16.max".into(), Value::U16(u16::MAX)),
        ("i16.min".into(), Value::I16(i16::MIN)),
        ("u32.max".into(), Value::U32(u32::MAX)),
        ("i32.min".into(), Value::I32(i32::MIN)),
        ("u64.max".into(), Value::U64(u64::MAX)),
        ("i64.min".into(), Value::I64(i64::MIN)),
        ("i64.max".into(), Value::I64(i64::MAX)),
        ("f32.pi".into(), Value::F32(std::f32::consts::PI)),
        ("f32.negzero".into(), Value::F32(-0.0)),
        ("f32.inf".into(), Value::F32(f32::NEG_INFINITY)),
        ("f32.nan".into(), Value::F32(f32::from_bits(0x7fc0_1234))),
        ("f32.subnormal".into(), Value::F32(f32::from_bits(1))),
        ("f64.e".into(), Value::F64(std::f64::consts::E)),
        ("f64.nan".into(), Value::F64(f64::from_bits(0xfff8_0000_0000_0001))),
        ("f64.max".into(), Value::F64(f64::MAX)),
        ("bool.true".into(), Value::Bool(true)),
        ("bool.false".into(), Value::Bool(false)),
        ("str.empty".into(), s("")),
        ("str.unicode".into(), s("héllo ✓ 𝄞 \u{0} nul")),
        ("str.long".into(), Value::String("x".repeat(10_000))),
        ("".into(), s("empty key")),
        ("arr.u8".into(), Value::Array(Array::U8((0..=255).collect()))),
        ("arr.i8".into(), Value::Array(Array::I8(vec![-128, 0, 127]))),
        ("arr.u16".into(), Value::Array(Array::U16(vec![0, u16::MAX]))),
        ("arr.i16".into(), Value::Array(Array::I16(vec![i16::MIN, -1]))),
        ("arr.u32".into(), Value::Array(Array::U32(vec![u32::MAX]))),
        ("arr.i32".into(), Value::Array(Array::I32(vec![-1, i32::MAX]))),
        ("arr.f32".into(), Value::Array(Array::F32(vec![1.5, -0.0, f32::NAN]))),
        ("arr.bool".into(), Value::Array(Array::Bool(vec![true, false]))),
        ("arr.u64".into(), Value::Array(Array::U64(vec![u64::MAX]))),
        ("arr.i64".into(), Value::Array(Array::I64(vec![i64::MIN]))),
        ("arr.f64".into(), Value::Array(Array::F64(vec![-2.5]))),
        ("arr.str".into(), Value::Array(Array::String(["a", "", "ünï", "<|im_start|>"].into_iter().collect()))),
        (
            "arr.arr".into(),
            Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::String(["x", "y"].into_iter().collect()),
                Array::F32(vec![]),
            ])),
        ),
    ];
    for ty in [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ] {
        v.push((format!("empty.{}", ty.name()), Value::Array(Array::empty(ty))));
    }
    v
}

fn writer_with(metadata: &[(String, Value)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.set(k.clone(), v.clone());
    }
    w
}

#[test]
fn every_value_type_round_trips() {
    let meta = all_values();
    let b = writer_with(&meta).to_bytes().unwrap();
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, DEFAULT_ALIGNMENT);
    assert!(g.tensors().is_empty());
    assert_same_metadata(g.metadata(), &meta);
    // Every value type id appears at top level or as an array element type.
    for id in 0..13u32 {
        let ty = ValueType::from_id(id).unwrap();
        assert!(meta.iter().any(|(_, v)| v.value_type() == ty), "no top-level value of type {}", ty.name());
        assert!(
            meta.iter().any(|(_, v)| matches!(v, Value::Array(a) if a.elem_type() == ty)),
            "no array of {}",
            ty.name()
        );
    }
    // Getters over the parsed values.
    assert_eq!(g.get_u64("u64.max").unwrap(), u64::MAX);
    assert_eq!(g.get_u64("u8.max").unwrap(), 255);
    assert_eq!(g.get_u64("i8.max").unwrap(), 127);
    assert_eq!(g.get_f64("f64.e").unwrap(), std::f64::consts::E);
    assert_eq!(g.get_f64("i32.min").unwrap(), f64::from(i32::MIN));
    assert_eq!(g.get_str("str.unicode").unwrap(), "héllo ✓ 𝄞 \u{0} nul");
    assert_eq!(g.get_str_array("arr.str").unwrap(), vec!["a", "", "ünï", "<|im_start|>"]);
    assert_eq!(g.get_str_array("empty.string").unwrap(), Vec::<&str>::new());
    assert_eq!(g.get("bool.true").and_then(Value::as_bool), Some(true));
}

#[test]
fn value_bytes_are_as_specified() {
    // Spot-check the encoding against the GGUF spec by hand, independently of the reader.
    let mut w = GgufWriter::new();
    w.set("k", Value::Array(Array::String(["ab"].into_iter().collect())));
    let b = w.to_bytes().unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(&MAGIC);
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(&0u64.to_le_bytes()); // tensors
    want.extend_from_slice(&1u64.to_le_bytes()); // metadata
    want.extend_from_slice(&gguf_str(b"k"));
    want.extend_from_slice(&9u32.to_le_bytes()); // array
    want.extend_from_slice(&8u32.to_le_bytes()); // of string
    want.extend_from_slice(&1u64.to_le_bytes());
    want.extend_from_slice(&gguf_str(b"ab"));
    assert_eq!(&b[..want.len()], &want[..]);
    // Padded with zeros to the default alignment.
    assert_eq!(b.len(), want.len().div_ceil(32) * 32);
    assert!(b[want.len()..].iter().all(|&x| x == 0));
}

#[test]
fn any_nonzero_bool_byte_reads_true() {
    let mut w = GgufWriter::new();
    w.set("b", Value::Bool(false));
    let mut b = w.to_bytes().unwrap();
    let at = kv_type_at(&b, "b") + 4;
    for (byte, want) in [(0u8, false), (1, true), (2, true), (0xff, true)] {
        b[at] = byte;
        assert_eq!(Gguf::parse(&b).unwrap().get("b"), Some(&Value::Bool(want)), "byte {byte}");
    }
}

#[test]
fn version_2_reads_like_version_3() {
    let meta = all_values();
    let mut w = writer_with(&meta);
    w.add_f32("t", &[3], &[1.0, 2.0, 3.0]).unwrap();
    let mut b = w.to_bytes().unwrap();
    let v3 = Gguf::parse(&b).unwrap();
    assert_eq!(v3.version, 3);
    let (tensors3, data_offset3) = (v3.tensors().to_vec(), v3.data_offset);
    put_u32(&mut b, VERSION_AT, 2);
    let v2 = Gguf::parse(&b).unwrap();
    assert_eq!(v2.version, 2);
    assert_same_metadata(v2.metadata(), &meta);
    assert_eq!(v2.tensors(), tensors3);
    assert_eq!(v2.data_offset, data_offset3);
    assert_eq!(v2.tensor_f32("t").unwrap(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn custom_alignment() {
    for (alignment, value) in
        [(64u64, Value::U32(64)), (1, Value::U32(1)), (2, Value::U8(2)), (4096, Value::U64(4096)), (16, Value::I32(16))]
    {
        let mut w = GgufWriter::new();
        w.set("general.alignment", value.clone());
        // Odd sizes, so that every tensor after the first needs padding.
        w.add_f32("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
        w.add_tensor("b", &[5], GgmlType::F16, tensor_bytes(GgmlType::F16, 5, 1)).unwrap();
        w.add_tensor("c", &[32], GgmlType::Q8_0, tensor_bytes(GgmlType::Q8_0, 32, 2)).unwrap();
        let b = w.to_bytes().unwrap();
        let g = Gguf::parse(&b).unwrap();
        assert_eq!(g.alignment, alignment, "{value:?}");
        assert_eq!(g.get("general.alignment"), Some(&value));
        assert_eq!(g.data_offset % alignment, 0);
        let mut next = 0u64;
        for t in g.tensors() {
            assert_eq!(t.offset % alignment, 0, "tensor {} offset {} alignment {alignment}", t.name, t.offset);
            assert_eq!(t.offset, next, "tensors are packed as tightly as the alignment allows");
            assert_eq!(t.start as u64, g.data_offset + t.offset);
            next = (t.offset + t.len as u64).div_ceil(alignment) * alignment;
        }
        if alignment == 1 {
            // No padding anywhere: the file is exactly header + 12 + 10 + 34 bytes.
            let header_end = g.data_offset as usize;
            assert_eq!(b.len(), header_end + 12 + 10 + 34);
            assert_eq!(g.tensors()[1].start, header_end + 12);
        }
        assert_eq!(g.tensor_f32("a").unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(g.tensor_data(&g.tensors()[1]), &tensor_bytes(GgmlType::F16, 5, 1)[..]);
        assert_eq!(g.tensor_data(&g.tensors()[2]), &tensor_bytes(GgmlType::Q8_0, 32, 2)[..]);
    }
}

#[test]
fn tensors_of_every_type() {
    let mut w = GgufWriter::new();
    w.set("general.architecture", s("test"));
    let mut want = Vec::new();
    for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
        // Two rows of two blocks, then a 3-D and a 4-D shape for the first type, and a zero-size tensor.
        let dims = vec![2 * ty.block_size() as u64, 2];
        let n: u64 = dims.iter().product();
        let data = tensor_bytes(ty, n, i as u64 + 10);
        w.add_tensor(format!("t.{}", ty.name()), &dims, ty, data.clone()).unwrap();
        want.push((format!("t.{}", ty.name()), dims, ty, data));
    }
    for (name, dims) in [("d3", vec![2u64, 3, 4]), ("d4", vec![1u64, 2, 1, 3]), ("empty", vec![0u64, 7])] {
        let n: u64 = dims.iter().product();
        let data = tensor_bytes(GgmlType::F32, n, 99);
        w.add_tensor(name, &dims, GgmlType::F32, data.clone()).unwrap();
        want.push((name.to_string(), dims, GgmlType::F32, data));
    }
    let b = w.to_bytes().unwrap();
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.tensors().len(), want.len());
    let file = b.as_ptr_range();
    for (t, (name, dims, ty, data)) in g.tensors().iter().zip(&want) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.dims, dims);
        assert_eq!(t.ty, *ty);
        assert_eq!(t.len as u64, ty.bytes_for(t.n_elements()).unwrap());
        assert_eq!(t.start as u64, g.data_offset + t.offset);
        assert_eq!(t.start % 32, 0);
        let got = g.tensor_data(t);
        assert_eq!(got, &data[..], "data of {name}");
        // Borrowed from the file, not copied: the slice lies inside `b` at `start`.
        if !got.is_empty() {
            assert!(file.contains(&got.as_ptr()), "{name} is not borrowed from the file");
            assert_eq!(got.as_ptr(), b[t.start..].as_ptr());
        }
        // tensor_f32 is dequantize of those bytes.
        let mut deq = vec![0f32; t.n_elements() as usize];
        dequantize(t.ty, got, &mut deq).unwrap();
        let via_gguf = g.tensor_f32(name).unwrap();
        assert_eq!(via_gguf.len(), deq.len());
        assert!(via_gguf.iter().zip(&deq).all(|(a, b)| a.to_bits() == b.to_bits()), "tensor_f32 of {name}");
        assert_eq!(g.tensor(name), Some(t));
    }
    // The tensor data outlives the parsed header (it borrows the bytes, not the Gguf).
    let first = {
        let g2 = Gguf::parse(&b).unwrap();
        g2.tensor_data(&g2.tensors()[0])
    };
    assert_eq!(first, &want[0].3[..]);
}

#[test]
fn writing_twice_gives_identical_bytes() {
    let build = || {
        let mut w = writer_with(&all_values());
        w.set("general.alignment", Value::U32(64));
        for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
            w.add_tensor(format!("t{i}"), &[ty.block_size() as u64], ty, tensor_bytes(ty, ty.block_size() as u64, 7))
                .unwrap();
        }
        w
    };
    let w = build();
    let a = w.to_bytes().unwrap();
    let b = w.to_bytes().unwrap();
    let c = build().to_bytes().unwrap();
    assert_eq!(a, b, "the same writer twice");
    assert_eq!(a, c, "two writers with the same content");

    // Re-writing what was read reproduces the file byte for byte.
    let g = Gguf::parse(&a).unwrap();
    let mut w2 = GgufWriter::new();
    for (k, v) in g.metadata() {
        w2.set(k.clone(), v.clone());
    }
    for t in g.tensors() {
        w2.add_tensor(t.name.clone(), &t.dims, t.ty, g.tensor_data(t).to_vec()).unwrap();
    }
    assert_eq!(w2.to_bytes().unwrap(), a, "parse + write is the identity on writer output");

    // And content matters: one changed value changes the bytes.
    let mut w3 = build();
    w3.set("u8.max", Value::U8(254));
    assert_ne!(w3.to_bytes().unwrap(), a);
}

#[test]
fn set_replaces_in_place() {
    let mut w = GgufWriter::new();
    w.set("a", Value::U8(1)).set("b", Value::U8(2)).set("a", s("now a string"));
    let b = w.to_bytes().unwrap();
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.metadata(), vec![("a".to_string(), s("now a string")), ("b".to_string(), Value::U8(2))]);
}

// Arrays are typed vectors (`Array`), so an array mixing element types cannot be built, let alone written.
