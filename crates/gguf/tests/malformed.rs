//! Malformed GGUF files, built with `GgufWriter` and then broken in exactly one place. Each test asserts the
//! specific `GgufError` variant with its numbers, and that the message names the key or tensor and the numbers.
//! A tracking allocator checks that absurd counts and lengths are refused before anything big is allocated.

mod common;

use common::*;
use personascope_gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, Value, ValueType, GGML_MAX_DIMS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Records, per thread, the largest single allocation request (tests run on parallel threads).
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Parses `bytes`, which must fail, and checks that no single allocation during the parse exceeded a small
/// multiple of the input size: counts from the file must be bounded by the bytes present before allocating.
#[track_caller]
fn err(bytes: &[u8]) -> GgufError {
    LARGEST.with(|l| l.set(0));
    let e = parse_err(bytes);
    let largest = LARGEST.with(|l| l.get());
    let bound = 64 * bytes.len() + 4096;
    assert!(
        largest <= bound,
        "parsing {} bytes allocated {largest} bytes at once (bound {bound}); error: {e}",
        bytes.len()
    );
    e
}

// ---------------------------------------------------------------------------------------------------------------
// Header

#[test]
fn bad_magic() {
    let mut b = small_valid_file();
    patch(&mut b, 0, b"GGUX");
    let e = err(&b);
    assert_eq!(e, GgufError::BadMagic { found: b"GGUX".to_vec() });
    assert_msg(&e, &["[71, 71, 85, 88]", "GGUF"]);

    // Other formats: a safetensors-like header and text.
    let e = err(b"\x08\x00\x00\x00\x00\x00\x00\x00{}");
    assert_eq!(e, GgufError::BadMagic { found: vec![8, 0, 0, 0] });
    let e = err(b"hello, world");
    assert_eq!(e, GgufError::BadMagic { found: b"hell".to_vec() });
}

#[test]
fn empty_file() {
    let e = err(&[]);
    assert_eq!(e, GgufError::BadMagic { found: vec![] });
    assert_msg(&e, &["[]"]);
}

#[test]
fn every_strict_prefix_is_an_error() {
    let full = small_valid_file();
    // The file must end with tensor data, or the prefixes that only lose padding would be valid.
    let g = Gguf::parse(&full).unwrap();
    let last_end = g.tensors().iter().map(|t| t.start + t.len).max().unwrap();
    assert_eq!(last_end, full.len());

    let mut seen = [0usize; 4];
    for len in 0..full.len() {
        let prefix = &full[..len];
        let e = err(prefix);
        match e {
            GgufError::BadMagic { ref found } => {
                assert!(len < 4, "prefix {len}: {e}");
                assert_eq!(found.as_slice(), prefix);
                seen[0] += 1;
            }
            GgufError::Truncated { offset, needed, available, .. } => {
                assert!(len >= 4, "prefix {len}: {e}");
                assert!(offset <= len as u64, "prefix {len}: {e}");
                assert_eq!(available, len as u64 - offset, "prefix {len}: {e}");
                assert!(needed > available, "prefix {len}: {e}");
                seen[1] += 1;
            }
            GgufError::CountTooLarge { count, min_item_bytes, available, .. } => {
                assert!(count * min_item_bytes > available, "prefix {len}: {e}");
                seen[2] += 1;
            }
            GgufError::TensorOutOfRange { end, file_len, .. } => {
                assert_eq!(file_len, len as u64, "prefix {len}: {e}");
                assert!(end > file_len, "prefix {len}: {e}");
                seen[3] += 1;
            }
            other => panic!("prefix {len}: unexpected error {other:?}"),
        }
    }
    assert!(seen.iter().all(|&n| n > 0), "every kind of truncation error should occur: {seen:?}");
    // And the full file itself still parses.
    assert!(Gguf::parse(&full).is_ok());
}

#[test]
fn truncated_message_names_what_and_numbers() {
    let full = small_valid_file();
    let at = kv_type_at(&full, "t.f64") + 4; // the f64 value
    let e = err(&full[..at + 3]);
    assert_eq!(
        e,
        GgufError::Truncated {
            what: "value of metadata key `t.f64`".into(),
            offset: at as u64,
            needed: 8,
            available: 3
        }
    );
    assert_msg(&e, &["`t.f64`", &format!("byte {at}"), "needs 8 bytes", "3 remain"]);

    let f = tensor_fields(&full, "w.q4");
    let e = err(&full[..f.offset_at + 2]);
    assert_eq!(
        e,
        GgufError::Truncated {
            what: "offset of tensor `w.q4`".into(),
            offset: f.offset_at as u64,
            needed: 8,
            available: 2
        }
    );
    assert_msg(&e, &["`w.q4`"]);
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 0x7fff_ffff, u32::MAX] {
        let mut b = small_valid_file();
        put_u32(&mut b, VERSION_AT, v);
        let e = err(&b);
        assert_eq!(e, GgufError::UnsupportedVersion(v));
        assert_msg(&e, &[&format!("version {v} ")]);
    }
}

#[test]
fn big_endian_version() {
    for v in [2u32, 3] {
        let mut b = small_valid_file();
        patch(&mut b, VERSION_AT, &v.to_be_bytes());
        let e = err(&b);
        assert_eq!(e, GgufError::BigEndian);
        assert_msg(&e, &["big-endian"]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Counts and lengths

#[test]
fn absurd_metadata_count() {
    for count in [u64::MAX, 1 << 40, u64::MAX / 13 + 1] {
        let mut b = small_valid_file();
        put_u64(&mut b, N_KV_AT, count);
        let e = err(&b);
        let available = (b.len() - HEADER_LEN) as u64;
        assert_eq!(
            e,
            GgufError::CountTooLarge {
                what: "metadata count".into(),
                offset: HEADER_LEN as u64,
                count,
                min_item_bytes: 13,
                available
            }
        );
        assert_msg(&e, &["metadata count", &count.to_string(), &available.to_string()]);
    }
}

#[test]
fn absurd_tensor_count() {
    for count in [u64::MAX, 1 << 40] {
        let mut b = small_valid_file();
        put_u64(&mut b, N_TENSORS_AT, count);
        let e = err(&b);
        let available = (b.len() - HEADER_LEN) as u64;
        assert_eq!(
            e,
            GgufError::CountTooLarge {
                what: "tensor count".into(),
                offset: HEADER_LEN as u64,
                count,
                min_item_bytes: 24,
                available
            }
        );
        assert_msg(&e, &["tensor count", &count.to_string()]);
    }
}

#[test]
fn counts_within_the_bound_but_wrong_fail_cleanly() {
    // A metadata count just small enough to pass the size bound: the reader then parses the tensor table and the
    // data as metadata, which must end in some error (checked by `err`, with its allocation bound), not a panic.
    let mut b = small_valid_file();
    let n = (b.len() - HEADER_LEN) as u64 / 13;
    put_u64(&mut b, N_KV_AT, n);
    let e = err(&b);
    assert!(!matches!(e, GgufError::CountTooLarge { ref what, .. } if what == "metadata count"), "{e}");
    // Likewise a tensor count: the data is read as tensor entries.
    let mut b = small_valid_file();
    let n = (b.len() - HEADER_LEN) as u64 / 24;
    put_u64(&mut b, N_TENSORS_AT, n);
    let e = err(&b);
    assert!(!matches!(e, GgufError::CountTooLarge { ref what, .. } if what == "tensor count"), "{e}");
}

#[test]
fn absurd_array_length() {
    for (elem, min) in [(ValueType::U8, 1u64), (ValueType::U32, 4), (ValueType::String, 8), (ValueType::Array, 12)] {
        for count in [u64::MAX, 1 << 40] {
            let mut w = GgufWriter::new();
            w.set("arr", Value::Array(Array::empty(elem))).set("after", Value::U32(1));
            let mut b = w.to_bytes().unwrap();
            let count_at = kv_type_at(&b, "arr") + 8;
            put_u64(&mut b, count_at, count);
            let e = err(&b);
            let available = (b.len() - count_at - 8) as u64;
            assert_eq!(
                e,
                GgufError::CountTooLarge {
                    what: "array length of metadata key `arr`".into(),
                    offset: count_at as u64 + 8,
                    count,
                    min_item_bytes: min,
                    available,
                },
                "element type {elem:?}"
            );
            assert_msg(&e, &["`arr`", &count.to_string(), &available.to_string()]);
        }
    }
}

#[test]
fn absurd_string_length() {
    // In a value.
    for len in [u64::MAX, 1 << 40] {
        let mut w = GgufWriter::new();
        w.set("s", Value::String("abc".into())).set("after", Value::U32(1));
        let mut b = w.to_bytes().unwrap();
        let len_at = kv_type_at(&b, "s") + 4;
        put_u64(&mut b, len_at, len);
        let e = err(&b);
        let available = (b.len() - len_at - 8) as u64;
        assert_eq!(
            e,
            GgufError::Truncated {
                what: "value of metadata key `s`".into(),
                offset: len_at as u64 + 8,
                needed: len,
                available
            }
        );
        assert_msg(&e, &["`s`", &len.to_string()]);
    }
    // In a key.
    let mut b = small_valid_file();
    put_u64(&mut b, HEADER_LEN, u64::MAX);
    let e = err(&b);
    assert_eq!(
        e,
        GgufError::Truncated {
            what: "key of metadata entry 0".into(),
            offset: HEADER_LEN as u64 + 8,
            needed: u64::MAX,
            available: (b.len() - HEADER_LEN - 8) as u64
        }
    );
    // In a tensor name.
    let mut b = small_valid_file();
    let at = str_at(&b, "w.q4");
    put_u64(&mut b, at, 1 << 40);
    let e = err(&b);
    assert_eq!(
        e,
        GgufError::Truncated {
            what: "name of tensor 1".into(),
            offset: at as u64 + 8,
            needed: 1 << 40,
            available: (b.len() - at - 8) as u64
        }
    );
    assert_msg(&e, &["tensor 1", "1099511627776"]);
    // In an array of strings.
    let mut b = small_valid_file();
    let first_item = kv_type_at(&b, "t.strs") + 16;
    put_u64(&mut b, first_item, u64::MAX - 1);
    let e = err(&b);
    assert!(
        matches!(&e, GgufError::Truncated { what, needed, .. } if what == "value of metadata key `t.strs`" && *needed == u64::MAX - 1),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Value types

#[test]
fn bad_value_type_id() {
    for id in [13u32, 100, u32::MAX] {
        let mut b = small_valid_file();
        let at = kv_type_at(&b, "t.u32");
        put_u32(&mut b, at, id);
        let e = err(&b);
        assert_eq!(e, GgufError::BadValueType { key: "t.u32".into(), type_id: id });
        assert_msg(&e, &["`t.u32`", &id.to_string()]);
    }
}

#[test]
fn bad_array_element_type() {
    for id in [13u32, 77, u32::MAX] {
        let mut b = small_valid_file();
        let at = kv_type_at(&b, "t.strs") + 4;
        put_u32(&mut b, at, id);
        let e = err(&b);
        assert_eq!(e, GgufError::BadValueType { key: "t.strs".into(), type_id: id });
        assert_msg(&e, &["`t.strs`", &id.to_string()]);
    }
    // Inside a nested array.
    let mut b = small_valid_file();
    let inner = kv_type_at(&b, "t.nested") + 16; // first inner array: its element type
    put_u32(&mut b, inner, 42);
    assert_eq!(err(&b), GgufError::BadValueType { key: "t.nested".into(), type_id: 42 });
}

#[test]
fn nested_arrays_too_deep() {
    const ARRAY: u32 = ValueType::Array as u32;
    // array of array of array of u8: three levels.
    let innermost = raw_array(ValueType::U8 as u32, 2, &[1, 2]);
    let middle = raw_array(ARRAY, 1, &innermost);
    let outer = raw_array(ARRAY, 1, &middle);
    let b = file_with_raw_value("deep", ARRAY, &outer);
    let e = err(&b);
    assert_eq!(e, GgufError::NestingTooDeep { key: "deep".into(), depth: 3 });
    assert_msg(&e, &["`deep`", "3 deep"]);

    // Even if the third level is empty: declaring it is enough (the writer could not write it back).
    let b = file_with_raw_value("deep", ARRAY, &raw_array(ARRAY, 1, &raw_array(ARRAY, 0, &[])));
    assert_eq!(err(&b), GgufError::NestingTooDeep { key: "deep".into(), depth: 3 });

    // The writer refuses the same structure.
    let v = Value::Array(Array::Array(vec![Array::Array(vec![Array::U8(vec![1])])]));
    let mut w = GgufWriter::new();
    w.set("deep", v);
    assert_eq!(w.to_bytes().unwrap_err(), GgufError::NestingTooDeep { key: "deep".into(), depth: 3 });

    // A hostile file nesting 100000 levels must not recurse into a stack overflow.
    let mut payload = Vec::new();
    for _ in 0..100_000 {
        payload.extend_from_slice(&ARRAY.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
    }
    let b = file_with_raw_value("deep", ARRAY, &payload);
    assert_eq!(err(&b), GgufError::NestingTooDeep { key: "deep".into(), depth: 3 });

    // Two levels are fine.
    let b = file_with_raw_value("ok", ARRAY, &raw_array(ARRAY, 1, &raw_array(ValueType::U8 as u32, 1, &[9])));
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.get("ok"), Some(&Value::Array(Array::Array(vec![Array::U8(vec![9])]))));
    assert_eq!(g.get("after"), Some(&Value::String("end".into())));
}

#[test]
fn duplicate_key() {
    let mut w = GgufWriter::new();
    w.set("dup.a", Value::U32(1)).set("dup.b", Value::String("x".into()));
    let mut b = w.to_bytes().unwrap();
    let at = str_at(&b, "dup.b");
    patch(&mut b, at + 8, b"dup.a");
    let e = err(&b);
    assert_eq!(e, GgufError::DuplicateKey("dup.a".into()));
    assert_msg(&e, &["`dup.a`", "twice"]);
}

#[test]
fn duplicate_tensor() {
    let mut b = two_tensor_file(8);
    let at = str_at(&b, "t.b");
    patch(&mut b, at + 8, b"t.a");
    let e = err(&b);
    assert_eq!(e, GgufError::DuplicateTensor("t.a".into()));
    assert_msg(&e, &["`t.a`", "twice"]);
    // The writer refuses it too.
    let mut w = GgufWriter::new();
    w.add_f32("x", &[1], &[1.0]).unwrap();
    assert!(matches!(w.add_f32("x", &[1], &[2.0]), Err(GgufError::DuplicateTensor(n)) if n == "x"));
}

// ---------------------------------------------------------------------------------------------------------------
// Alignment

fn file_with_alignment_u64(value: u64) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U64(32));
    w.add_f32("t", &[8], &[0.0; 8]).unwrap();
    let mut b = w.to_bytes().unwrap();
    let at = kv_type_at(&b, "general.alignment") + 4;
    put_u64(&mut b, at, value);
    b
}

#[test]
fn bad_alignment_values() {
    for a in [0u32, 3, 48, 1 << 31] {
        let mut w = GgufWriter::new();
        w.set("general.alignment", Value::U32(32));
        let mut b = w.to_bytes().unwrap();
        let at = kv_type_at(&b, "general.alignment") + 4;
        put_u32(&mut b, at, a);
        let e = err(&b);
        assert_eq!(e, GgufError::BadAlignment(a.into()));
        assert_msg(&e, &["general.alignment", &format!("= {a} ")]);
    }
    for a in [1u64 << 40, u64::MAX, (1 << 30) + 1] {
        let e = err(&file_with_alignment_u64(a));
        assert_eq!(e, GgufError::BadAlignment(a));
        assert_msg(&e, &[&a.to_string()]);
    }
    // The largest accepted alignment: the tensor at offset 0 then starts at 2^30, far past the end of the file.
    let b = file_with_alignment_u64(1 << 30);
    let e = err(&b);
    assert_eq!(
        e,
        GgufError::TensorOutOfRange { name: "t".into(), start: 1 << 30, end: (1 << 30) + 32, file_len: b.len() as u64 }
    );
}

#[test]
fn alignment_of_the_wrong_type() {
    // The writer refuses a string alignment, so write another key and rename it.
    let mut w = GgufWriter::new();
    w.set("general.alignmenX", Value::String("64".into()));
    let mut b = w.to_bytes().unwrap();
    let at = str_at(&b, "general.alignmenX");
    patch(&mut b, at + 8, b"general.alignment");
    let e = err(&b);
    assert_eq!(
        e,
        GgufError::WrongType { key: "general.alignment".into(), expected: "unsigned integer", found: "string" }
    );
    assert_msg(&e, &["`general.alignment`", "string"]);

    // A negative integer, a float, a bool.
    for (v, found) in [(Value::I32(-32), "i32"), (Value::F32(32.0), "f32"), (Value::Bool(true), "bool")] {
        let mut w = GgufWriter::new();
        w.set("general.alignmenX", v);
        let mut b = w.to_bytes().unwrap();
        let at = str_at(&b, "general.alignmenX");
        patch(&mut b, at + 8, b"general.alignment");
        assert_eq!(
            err(&b),
            GgufError::WrongType { key: "general.alignment".into(), expected: "unsigned integer", found }
        );
    }
}

#[test]
fn writer_refuses_bad_alignment() {
    for v in [Value::U32(0), Value::U32(3), Value::U64(1 << 31), Value::U64(1 << 40), Value::String("32".into())] {
        let mut w = GgufWriter::new();
        w.set("general.alignment", v.clone());
        assert!(matches!(w.to_bytes(), Err(GgufError::Writer(m)) if m.contains("general.alignment")), "{v:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor table

#[test]
fn misaligned_tensor_offset() {
    let mut b = two_tensor_file(8);
    let f = tensor_fields(&b, "t.b");
    let offset = get_u64(&b, f.offset_at);
    assert_eq!(offset, 32);
    for bad in [offset + 4, 1, 31, u64::MAX] {
        put_u64(&mut b, f.offset_at, bad);
        let e = err(&b);
        assert_eq!(e, GgufError::MisalignedTensor { name: "t.b".into(), offset: bad, alignment: 32 });
        assert_msg(&e, &["`t.b`", &bad.to_string(), "32"]);
    }
}

#[test]
fn tensor_offset_out_of_range() {
    let mut b = two_tensor_file(8);
    let g = Gguf::parse(&b).unwrap();
    let data_offset = g.data_offset;
    let f = tensor_fields(&b, "t.b");
    // One alignment step past its place: the last 32 bytes fall outside the file.
    put_u64(&mut b, f.offset_at, 64);
    let file_len = b.len() as u64;
    let e = err(&b);
    let start = data_offset + 64;
    assert_eq!(e, GgufError::TensorOutOfRange { name: "t.b".into(), start, end: start + 32, file_len });
    assert_msg(&e, &["`t.b`", &start.to_string(), &(start + 32).to_string(), &file_len.to_string()]);

    put_u64(&mut b, f.offset_at, 1 << 40);
    let start = data_offset + (1 << 40);
    assert_eq!(err(&b), GgufError::TensorOutOfRange { name: "t.b".into(), start, end: start + 32, file_len });
}

#[test]
fn tensor_offset_plus_size_overflows() {
    let mut b = two_tensor_file(8);
    let data_offset = Gguf::parse(&b).unwrap().data_offset;
    let file_len = b.len() as u64;
    let f = tensor_fields(&b, "t.a");
    // data_offset + offset overflows u64.
    let offset = !31u64;
    put_u64(&mut b, f.offset_at, offset);
    let e = err(&b);
    assert_eq!(e, GgufError::TensorOutOfRange { name: "t.a".into(), start: u64::MAX, end: u64::MAX, file_len });
    assert_msg(&e, &["`t.a`", &u64::MAX.to_string()]);
    // data_offset + offset fits, + 32 bytes of data does not.
    let offset = (u64::MAX - data_offset) & !31;
    let start = data_offset + offset;
    assert!(start.checked_add(32).is_none());
    put_u64(&mut b, f.offset_at, offset);
    assert_eq!(err(&b), GgufError::TensorOutOfRange { name: "t.a".into(), start, end: u64::MAX, file_len });
}

#[test]
fn huge_dims() {
    // Element count overflows u64.
    let mut w = GgufWriter::new();
    w.add_f32("big", &[2, 2], &[0.0; 4]).unwrap();
    let mut b = w.to_bytes().unwrap();
    let f = tensor_fields(&b, "big");
    put_u64(&mut b, f.dims_at, 1 << 32);
    put_u64(&mut b, f.dims_at + 8, 1 << 32);
    let e = err(&b);
    assert_eq!(e, GgufError::ShapeOverflow { name: "big".into(), dims: vec![1 << 32, 1 << 32] });
    assert_msg(&e, &["`big`", "[4294967296, 4294967296]"]);

    // Element count fits, byte count (x4) does not.
    put_u64(&mut b, f.dims_at, u64::MAX / 2);
    put_u64(&mut b, f.dims_at + 8, 1);
    assert_eq!(err(&b), GgufError::ShapeOverflow { name: "big".into(), dims: vec![u64::MAX / 2, 1] });

    // Large but representable: refused because the data is not in the file, without allocating it.
    put_u64(&mut b, f.dims_at, 1 << 40);
    let e = err(&b);
    assert!(matches!(e, GgufError::TensorOutOfRange { ref name, end, .. } if name == "big" && end > 1 << 42), "{e:?}");

    // A zero dimension makes the others irrelevant to the element count.
    put_u64(&mut b, f.dims_at, 0);
    put_u64(&mut b, f.dims_at + 8, u64::MAX);
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.tensors()[0].n_elements(), 0);
    assert_eq!(g.tensors()[0].len, 0);

    // Found by the fuzzer (a bug in its harness, not the reader): a zero-element block-type tensor with an
    // absurd row length is valid, holds no data, and dequantizes to nothing. Code that sizes a row buffer from
    // dims[0] must check n_elements first.
    let mut w = GgufWriter::new();
    w.add_tensor("zero", &[32, 0], GgmlType::Q8_0, vec![]).unwrap();
    let mut b = w.to_bytes().unwrap();
    let f = tensor_fields(&b, "zero");
    put_u64(&mut b, f.dims_at, (1 << 57) + 32);
    let g = Gguf::parse(&b).unwrap();
    let t = &g.tensors()[0];
    assert_eq!((t.dims.as_slice(), t.n_elements(), t.len), (&[(1u64 << 57) + 32, 0][..], 0, 0));
    assert!(g.tensor_data(t).is_empty());
    assert_eq!(g.tensor_f32("zero").unwrap(), Vec::<f32>::new());
}

#[test]
fn too_many_dims() {
    for n_dims in [5u32, 16, u32::MAX] {
        let mut b = two_tensor_file(8);
        let f = tensor_fields(&b, "t.a");
        put_u32(&mut b, f.n_dims_at, n_dims);
        let e = err(&b);
        assert_eq!(e, GgufError::TooManyDims { name: "t.a".into(), n_dims, max: GGML_MAX_DIMS });
        assert_msg(&e, &["`t.a`", &n_dims.to_string(), "at most 4"]);
    }
    // The writer refuses it too.
    let mut w = GgufWriter::new();
    let e = w.add_f32("five", &[1, 1, 1, 1, 1], &[0.0]).map(|_| ()).unwrap_err();
    assert_eq!(e, GgufError::TooManyDims { name: "five".into(), n_dims: 5, max: GGML_MAX_DIMS });
    // Four are fine.
    assert!(w.add_f32("four", &[1, 1, 1, 1], &[0.0]).is_ok());
}

#[test]
fn unknown_tensor_type() {
    // 4 and 5 are the removed Q4_2/Q4_3, 10 is Q2_K, 16 IQ2_XXS: valid ggml ids this crate does not read.
    for id in [4u32, 5, 10, 16, 31, 1000, u32::MAX] {
        let mut b = two_tensor_file(8);
        let f = tensor_fields(&b, "t.b");
        put_u32(&mut b, f.type_at, id);
        let e = err(&b);
        assert_eq!(e, GgufError::UnknownTensorType { name: "t.b".into(), type_id: id });
        assert_msg(&e, &["`t.b`", &id.to_string()]);
    }
}

#[test]
fn row_not_a_multiple_of_the_block_size() {
    // 32 x 33 Q4_0 holds 33 whole blocks; relabelled 33 x 32 the total is unchanged but rows split blocks.
    let mut w = GgufWriter::new();
    w.add_tensor("q", &[32, 33], GgmlType::Q4_0, tensor_bytes(GgmlType::Q4_0, 32 * 33, 3)).unwrap();
    let mut b = w.to_bytes().unwrap();
    let f = tensor_fields(&b, "q");
    put_u64(&mut b, f.dims_at, 33);
    put_u64(&mut b, f.dims_at + 8, 32);
    let e = err(&b);
    assert_eq!(e, GgufError::RowNotBlockMultiple { name: "q".into(), ty: "Q4_0", row: 33, block: 32 });
    assert_msg(&e, &["`q`", "Q4_0", "33", "32"]);

    // K-quants: a 128-element row of Q4_K (block 256), again with the same total.
    let mut w = GgufWriter::new();
    w.add_tensor("k", &[256, 1], GgmlType::Q4K, tensor_bytes(GgmlType::Q4K, 256, 4)).unwrap();
    let mut b = w.to_bytes().unwrap();
    let f = tensor_fields(&b, "k");
    put_u64(&mut b, f.dims_at, 128);
    put_u64(&mut b, f.dims_at + 8, 2);
    assert_eq!(err(&b), GgufError::RowNotBlockMultiple { name: "k".into(), ty: "Q4_K", row: 128, block: 256 });

    // A scalar (no dims) of a block type is a row of one element.
    let mut b = w.to_bytes().unwrap();
    let f = tensor_fields(&b, "k");
    put_u32(&mut b, f.n_dims_at, 0);
    // Removing the dims shifts the rest of the entry; rewrite it where the dims were.
    let ty = GgmlType::Q4K.id().to_le_bytes();
    patch(&mut b, f.dims_at, &ty);
    patch(&mut b, f.dims_at + 4, &0u64.to_le_bytes());
    assert_eq!(err(&b), GgufError::RowNotBlockMultiple { name: "k".into(), ty: "Q4_K", row: 1, block: 256 });

    // The writer refuses such a shape, even though the total is a whole number of blocks.
    let mut w = GgufWriter::new();
    let e = w.add_tensor("q", &[33, 32], GgmlType::Q4_0, vec![0; 33 * 18]).map(|_| ()).unwrap_err();
    assert_eq!(e, GgufError::RowNotBlockMultiple { name: "q".into(), ty: "Q4_0", row: 33, block: 32 });
}

// ---------------------------------------------------------------------------------------------------------------
// UTF-8

#[test]
fn invalid_utf8() {
    // In a key: "t.u8" -> "t\xffu8".
    let mut b = small_valid_file();
    let at = str_at(&b, "t.u8");
    b[at + 9] = 0xff;
    let e = err(&b);
    // Entry 1: "general.architecture" is entry 0.
    assert_eq!(e, GgufError::BadUtf8 { what: "key of metadata entry 1".into(), offset: at as u64 });
    assert_msg(&e, &["metadata entry 1", &at.to_string()]);

    // In a string value.
    let mut b = small_valid_file();
    let at = kv_type_at(&b, "general.architecture") + 4;
    b[at + 8] = 0xc3; // a lone lead byte: "test" -> "\xc3est"
    let e = err(&b);
    assert_eq!(
        e,
        GgufError::BadUtf8 { what: "value of metadata key `general.architecture`".into(), offset: at as u64 }
    );

    // In a tensor name.
    let mut b = small_valid_file();
    let at = str_at(&b, "w.q4");
    b[at + 8 + 1] = 0x80; // a lone continuation byte
    let e = err(&b);
    assert_eq!(e, GgufError::BadUtf8 { what: "name of tensor 1".into(), offset: at as u64 });
    assert_msg(&e, &["tensor 1"]);

    // A surrogate encoded in UTF-8 (CESU style) is invalid too.
    let mut w = GgufWriter::new();
    w.set("abc", Value::U8(1));
    let mut b = w.to_bytes().unwrap();
    let at = str_at(&b, "abc");
    patch(&mut b, at + 8, &[0xed, 0xa0, 0x80]);
    assert_eq!(err(&b), GgufError::BadUtf8 { what: "key of metadata entry 0".into(), offset: at as u64 });
}

// ---------------------------------------------------------------------------------------------------------------
// Data-size checks outside the parser

#[test]
fn dequantize_refuses_wrong_sizes() {
    let data = tensor_bytes(GgmlType::Q8_0, 64, 5);
    let mut out = vec![0f32; 65];
    let e = personascope_gguf::dequantize(GgmlType::Q8_0, &data, &mut out).unwrap_err();
    assert_eq!(e, GgufError::DataSize { what: "dequantize".into(), ty: "Q8_0", count: 65, needed: 0, got: 68 });
    let mut out = vec![0f32; 96];
    let e = personascope_gguf::dequantize(GgmlType::Q8_0, &data, &mut out).unwrap_err();
    assert_eq!(e, GgufError::DataSize { what: "dequantize".into(), ty: "Q8_0", count: 96, needed: 102, got: 68 });
    assert_msg(&e, &["Q8_0", "96", "102", "68"]);

    let mut w = GgufWriter::new();
    let e = w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0; 33]).map(|_| ()).unwrap_err();
    assert_eq!(e, GgufError::DataSize { what: "tensor `t`".into(), ty: "Q8_0", count: 32, needed: 34, got: 33 });
}

#[test]
fn missing_tensor_and_key() {
    let b = small_valid_file();
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.tensor_f32("nope").unwrap_err(), GgufError::MissingTensor("nope".into()));
    assert_eq!(g.get_u64("nope").unwrap_err(), GgufError::MissingKey("nope".into()));
    assert_eq!(
        g.get_str("t.u32").unwrap_err(),
        GgufError::WrongType { key: "t.u32".into(), expected: "string", found: "u32" }
    );
    assert_eq!(
        g.get_u64("t.i8").unwrap_err(),
        GgufError::WrongType { key: "t.i8".into(), expected: "non-negative integer", found: "i8" }
    );
    assert_eq!(
        g.get_str_array("t.nested").unwrap_err(),
        GgufError::WrongType { key: "t.nested".into(), expected: "array of strings", found: "array" }
    );
}
