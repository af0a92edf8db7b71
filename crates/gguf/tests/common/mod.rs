//! Helpers shared by the integration tests: small valid files built with `GgufWriter`, and byte patching to
//! break exactly one thing in them. Offsets are found by searching for a key's or tensor name's length-prefixed
//! bytes, so every name used with these helpers must occur exactly once in the file.
#![allow(dead_code)]

use personascope_gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, Value};

/// Size of the fixed header: magic, version, tensor count, metadata count.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 8;
pub const VERSION_AT: usize = 4;
pub const N_TENSORS_AT: usize = 8;
pub const N_KV_AT: usize = 16;

/// A GGUF string as stored: u64 length, then the bytes.
pub fn gguf_str(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// Offset of the single occurrence of `needle`; panics if it occurs zero or several times.
pub fn find_unique(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> =
        hay.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    assert_eq!(
        hits.len(),
        1,
        "expected exactly one occurrence of {:?}, found at {hits:?}",
        String::from_utf8_lossy(needle)
    );
    hits[0]
}

/// Offset of the stored length of string `s` (where a key or tensor entry starts).
pub fn str_at(bytes: &[u8], s: &str) -> usize {
    find_unique(bytes, &gguf_str(s.as_bytes()))
}

/// Offset just past the stored key `key`: the u32 value type of that metadata entry. The value follows at +4;
/// for an array, the element type is at +4, the count at +8 and the items at +16.
pub fn kv_type_at(bytes: &[u8], key: &str) -> usize {
    str_at(bytes, key) + 8 + key.len()
}

/// Offset just past the stored tensor name: that entry's u32 dimension count.
pub fn tensor_entry_at(bytes: &[u8], name: &str) -> usize {
    str_at(bytes, name) + 8 + name.len()
}

/// The fields of one tensor table entry.
pub struct TensorFields {
    pub n_dims_at: usize,
    pub n_dims: usize,
    pub dims_at: usize,
    pub type_at: usize,
    pub offset_at: usize,
}

pub fn tensor_fields(bytes: &[u8], name: &str) -> TensorFields {
    let n_dims_at = tensor_entry_at(bytes, name);
    let n_dims = get_u32(bytes, n_dims_at) as usize;
    let dims_at = n_dims_at + 4;
    let type_at = dims_at + 8 * n_dims;
    TensorFields { n_dims_at, n_dims, dims_at, type_at, offset_at: type_at + 4 }
}

pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Overwrites bytes in place (same length).
pub fn patch(b: &mut [u8], at: usize, new: &[u8]) {
    b[at..at + new.len()].copy_from_slice(new);
}

/// Replaces `len` bytes at `at` by `new` (any length). Only for files without tensors, whose data section
/// does not matter.
pub fn splice(b: &mut Vec<u8>, at: usize, len: usize, new: &[u8]) {
    b.splice(at..at + len, new.iter().copied());
}

/// A file with metadata only, in which the value of key `key` (type id and payload) is replaced by raw bytes.
/// `before` and `after` keys surround it so the reader has to get the length right to go on.
pub fn file_with_raw_value(key: &str, type_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("before", Value::U32(7)).set(key, Value::U8(0)).set("after", Value::String("end".into()));
    let mut b = w.to_bytes().unwrap();
    let at = kv_type_at(&b, key);
    let mut raw = type_id.to_le_bytes().to_vec();
    raw.extend_from_slice(payload);
    splice(&mut b, at, 4 + 1, &raw);
    b
}

/// Bytes of one encoded array value (element type, count, items already encoded).
pub fn raw_array(elem: u32, count: u64, items: &[u8]) -> Vec<u8> {
    let mut v = elem.to_le_bytes().to_vec();
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(items);
    v
}

/// Deterministic pseudo-random bytes (xorshift64*), so tests need no RNG crate.
pub fn pseudo_random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Tensor bytes of type `ty` for `n` elements whose f16 scale fields are finite (raw random bytes could hold
/// NaN/inf scales, which is fine for storage tests but not for value comparisons).
pub fn tensor_bytes(ty: GgmlType, n: u64, seed: u64) -> Vec<u8> {
    let len = ty.bytes_for(n).expect("whole blocks") as usize;
    let mut b = pseudo_random_bytes(seed, len);
    let f16_fields: &[usize] = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
    };
    for block in b.chunks_exact_mut(ty.type_size()) {
        for &at in f16_fields {
            // 0x3C00 = 1.0 in f16; vary the mantissa a little, keep the exponent finite.
            let bits = 0x3000u16 | (u16::from(block[at]) & 0x03ff);
            block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    match ty {
        GgmlType::F32 => {
            for v in b.chunks_exact_mut(4) {
                v[3] &= 0x3f; // exponent < 0x7f: finite, |x| < 2
            }
        }
        GgmlType::F16 | GgmlType::BF16 => {
            for v in b.chunks_exact_mut(2) {
                v[1] &= 0x3b; // finite
            }
        }
        _ => {}
    }
    b
}

/// A small valid file exercising every metadata value type, nested arrays and two tensors, ending with tensor
/// data so that every strict prefix of it is malformed.
pub fn small_valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("test".into()))
        .set("t.u8", Value::U8(1))
        .set("t.i8", Value::I8(-2))
        .set("t.u16", Value::U16(3))
        .set("t.i16", Value::I16(-4))
        .set("t.u32", Value::U32(5))
        .set("t.i32", Value::I32(-6))
        .set("t.f32", Value::F32(7.5))
        .set("t.bool", Value::Bool(true))
        .set("t.u64", Value::U64(8))
        .set("t.i64", Value::I64(-9))
        .set("t.f64", Value::F64(10.25))
        .set("t.strs", Value::Array(Array::String(["ab", ""].into_iter().collect())))
        .set("t.nested", Value::Array(Array::Array(vec![Array::U16(vec![1, 2]), Array::U8(vec![])])));
    w.add_f32("w.f32", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
    w.add_tensor("w.q4", &[32], GgmlType::Q4_0, tensor_bytes(GgmlType::Q4_0, 32, 1)).unwrap();
    let b = w.to_bytes().unwrap();
    Gguf::parse(&b).expect("the base file must be valid");
    b
}

/// A valid file with two F32 tensors `t.a` and `t.b` of `n` elements each (default alignment 32).
pub fn two_tensor_file(n: u64) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("test".into()));
    let vals: Vec<f32> = (0..n).map(|i| i as f32).collect();
    w.add_f32("t.a", &[n], &vals).unwrap();
    w.add_f32("t.b", &[n], &vals).unwrap();
    let b = w.to_bytes().unwrap();
    Gguf::parse(&b).expect("the base file must be valid");
    b
}

/// Parses `bytes`, which must fail; returns the error.
#[track_caller]
pub fn parse_err(bytes: &[u8]) -> GgufError {
    match Gguf::parse(bytes) {
        Ok(g) => {
            panic!(
                "expected an error, parsed: version {} metadata {:?} tensors {:?}",
                g.version,
                g.metadata(),
                g.tensors()
            )
        }
        Err(e) => e,
    }
}

/// Asserts that the error's message contains every one of `parts`.
#[track_caller]
pub fn assert_msg(e: &GgufError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not contain {p:?}");
    }
}
