//! The GPU's packed weight form (`personascope_gpu::quant`) against the CPU decoders (`personascope_gguf::dequantize`),
//! on the golden blocks of `tests/golden/dequant.json` and on random tensors. No GPU needed.
//!
//! Exactness: **bit-exact for every type** (NaN compared as "both NaN"). The packed form evaluates the same f32
//! expressions as the CPU decoders: f16/bf16 -> f32 widening is exact; the group pair holds either the file's own
//! f16 `d`, `m` (times a super pair of 1.0, an exact product) or small integers exact in f16 (the K-quants' 6-bit
//! scales and mins, Q6_K's 8-bit scales) times the file's `d` / `-dmin`, which is the CPU's `d * sc` / `dmin * m`
//! product with the same rounding; `code * scale + min` is then the CPU's `d1 * q - min1` (negation is exact), and
//! the symmetric types compute `(q - zero) * d` with one rounding on both sides.

#[path = "common/quant_blocks.rs"]
mod quant_blocks;

use personascope_gguf::{dequantize, GgmlType};
use personascope_gpu::quant::{PackedFormat, PackedMatrix};
use quant_blocks::{random_bytes_tensor, random_tensor, subnormal_scale_tensor};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Packs `data` as `rows` x `cols` and checks every row against `dequantize` bit for bit.
fn check_exact(what: &str, ty: GgmlType, rows: usize, cols: usize, data: &[u8]) {
    let m = PackedMatrix::pack(what, ty, rows, cols, data).unwrap();
    assert_eq!(m.format, PackedFormat::of(ty));
    let row_bytes = ty.bytes_for(cols as u64).unwrap() as usize;
    let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
    for r in 0..rows {
        dequantize(ty, &data[r * row_bytes..(r + 1) * row_bytes], &mut want).unwrap();
        m.dequantize_row(r, &mut got);
        if let Some(c) = (0..cols).find(|&c| !same(got[c], want[c])) {
            panic!(
                "{what} {ty} {rows}x{cols}: row {r} col {c}: packed {:e} ({:#010x}) cpu {:e} ({:#010x}); parts {:?}",
                got[c],
                got[c].to_bits(),
                want[c],
                want[c].to_bits(),
                m.element(r, c)
            );
        }
    }
}

#[test]
fn golden_blocks_dequantize_exactly() {
    let golden = personascope_tests::golden_json("dequant.json");
    let types = golden["types"].as_array().unwrap();
    for ty in GgmlType::ALL {
        let t = types.iter().find(|t| t["name"].as_str() == Some(ty.name())).unwrap();
        let bytes = unhex(t["bytes_hex"].as_str().unwrap());
        let n = t["n_elements"].as_u64().unwrap() as usize;
        check_exact("golden", ty, 1, n, &bytes);
        // Several rows, so row strides are exercised too.
        let row = ty.block_size().max(32);
        if n > row && n.is_multiple_of(row) {
            check_exact("golden rows", ty, n / row, row, &bytes);
        }
    }
}

#[test]
fn random_tensors_dequantize_exactly() {
    for ty in GgmlType::ALL {
        let widths: &[usize] = if ty.block_size() == 256 { &[256, 512, 768] } else { &[32, 96, 160, 7 * 32] };
        for (i, &cols) in widths.iter().enumerate() {
            let seed = 10 * i as u64 + ty.id() as u64;
            let rows = 5;
            check_exact("random", ty, rows, cols, &random_tensor(ty, rows * cols, seed));
            check_exact("random bytes", ty, rows, cols, &random_bytes_tensor(ty, rows * cols, seed + 1));
            check_exact("subnormal scales", ty, rows, cols, &subnormal_scale_tensor(ty, rows * cols, seed + 2));
        }
    }
    // Plain types need no whole blocks of 32: odd widths pad their rows.
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        check_exact("odd width", ty, 3, 7, &random_bytes_tensor(ty, 21, 5));
    }
}

#[test]
fn packed_sizes_stay_close_to_the_file() {
    // Bytes per 256 elements: the file's, and the packed form's (codes + scales).
    for (ty, packed) in [
        (GgmlType::Q4_0, 128 + 8 + 32),
        (GgmlType::Q4_1, 128 + 8 + 32),
        (GgmlType::Q8_0, 256 + 8 + 32),
        (GgmlType::Q4K, 128 + 8 + 32),
        (GgmlType::Q5K, 256 + 8 + 32),
        (GgmlType::Q6K, 256 + 8 + 64),
        (GgmlType::F16, 1024),
    ] {
        let m = PackedMatrix::pack("size", ty, 1, 256, &random_tensor(ty, 256, 1)).unwrap();
        assert_eq!(m.gpu_bytes(), packed, "{ty}: file {} bytes", ty.bytes_for(256).unwrap());
    }
}

#[test]
fn split_rows_fit_the_limit_and_cover_every_row() {
    let (rows, cols) = (301, 160);
    let m =
        PackedMatrix::pack("w", GgmlType::Q8_0, rows, cols, &random_tensor(GgmlType::Q8_0, rows * cols, 3)).unwrap();
    let row_bytes = 4 * m.row_code_words() as u64;
    for limit in [row_bytes, 7 * row_bytes + 3, 100 * row_bytes, 1 << 30] {
        let parts = m.split_rows(limit).unwrap();
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, rows);
        assert!(parts.windows(2).all(|p| p[0].end == p[1].start && !p[0].is_empty()));
        let mut codes = Vec::new();
        for p in &parts {
            assert!(4 * m.codes_of(p.clone()).len() as u64 <= limit, "{limit}: {p:?}");
            assert!(4 * m.scales_of(p.clone()).len() as u64 <= limit, "{limit}: {p:?}");
            codes.extend_from_slice(m.codes_of(p.clone()));
        }
        assert_eq!(codes, m.codes);
        // Equal parts but a smaller last one, and no more parts than the limit requires.
        let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        let (last, rest) = sizes.split_last().unwrap();
        assert!(rest.iter().all(|&s| s == sizes[0]) && *last <= sizes[0], "{sizes:?}");
        let per_part = (limit / row_bytes) as usize;
        assert_eq!(parts.len(), rows.div_ceil(per_part.min(rows)), "{limit}");
    }
    assert_eq!(m.split_rows(1 << 30).unwrap(), vec![0..rows]);
    let err = m.split_rows(row_bytes - 1).unwrap_err().to_string();
    assert!(err.contains("one row"), "{err}");
}

#[test]
fn pack_rejects_wrong_sizes_and_concat_checks_shapes() {
    let data = random_tensor(GgmlType::Q4_1, 64, 1);
    let err = PackedMatrix::pack("blk.0.attn_q.weight", GgmlType::Q4_1, 3, 32, &data).unwrap_err().to_string();
    assert!(err.contains("blk.0.attn_q.weight") && err.contains("bytes"), "{err}");
    let err = PackedMatrix::pack("t", GgmlType::Q4_1, 1, 48, &data).unwrap_err().to_string();
    assert!(err.contains("whole number"), "{err}");

    let a = PackedMatrix::pack("a", GgmlType::Q4_1, 2, 32, &data).unwrap();
    let b = PackedMatrix::pack("b", GgmlType::Q4_1, 1, 32, &data[..20]).unwrap();
    let ab = PackedMatrix::concat_rows(&[&a, &b]).unwrap();
    assert_eq!(ab.rows, 3);
    let (mut x, mut y) = (vec![0f32; 32], vec![0f32; 32]);
    ab.dequantize_row(2, &mut x);
    b.dequantize_row(0, &mut y);
    assert_eq!(x, y);
    let c = PackedMatrix::pack("c", GgmlType::Q8_0, 1, 32, &random_tensor(GgmlType::Q8_0, 32, 2)).unwrap();
    assert!(PackedMatrix::concat_rows(&[&a, &c]).is_err());
}
