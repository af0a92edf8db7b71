//! GGUF weight matrices repacked at load into one lossless form the kernels share: integer *codes* and affine
//! scales, `value = code * scale + min`, with the type-specific bit twiddling done once on the CPU.
//!
//! Layout of a [`PackedMatrix`] (row-major; every row starts on a 16-byte boundary so kernels load `vec4<u32>`):
//! - `codes`: 4-bit codes 8 per u32 or 8-bit codes 4 per u32, element `e` of a row in word `e / per_word` at bit
//!   `bits * (e % per_word)`; or, for the plain format, f32 bit patterns (rows padded with zeros to 4 words).
//! - `scales`: per row, first one (scale, min) f32 pair per *super-block* of 256 elements, then one u32 per
//!   *group* of `group` elements holding an f16 (scale, min) pair (low half first, as `unpack2x16float` reads it).
//!   An element's scale is `super.scale * sub.scale` and its min `super.min * sub.min`.
//!
//! The two levels keep the packed form as small as the file's: the 32-element types store their f16 `d`, `m` as
//! the group pair under a (1, 1) super pair, and the K-quants store their f16 `d`, `-dmin` as the super pair and
//! their small integer sub-block scales (exact in f16) as group pairs. The products `1 * d` and `d * sc` are the
//! very f32 products the CPU decoders compute, so dequantization is bit-exact (see `tests/quant_pack.rs`).
//! Symmetric types (Q4_0, Q5_0, Q8_0, Q6_K) store two's-complement codes `q - zero` and no min, so their one
//! rounding (`(q - zero) * d`) is also the CPU's.
//!
//! | GGML | codes | group | super (scale, min) | group (scale, min) |
//! |---|---|---|---|---|
//! | Q4_0 | 4-bit signed `q - 8` | 32 | (1, 0) | (d, 0) |
//! | Q4_1 | 4-bit `q` | 32 | (1, 1) | (d, m) |
//! | Q5_0 | 8-bit signed `q - 16` | 32 | (1, 0) | (d, 0) |
//! | Q5_1 | 8-bit `q` | 32 | (1, 1) | (d, m) |
//! | Q8_0 | 8-bit signed `q` | 32 | (1, 0) | (d, 0) |
//! | Q4_K | 4-bit `q` | 32 | (d, -dmin) | (sc, m) |
//! | Q5_K | 8-bit `q` | 32 | (d, -dmin) | (sc, m) |
//! | Q6_K | 8-bit signed `q - 32` | 16 | (d, 0) | (sc, 0) |
//! | F32, F16, BF16 | f32 values | - | - | - |
//!
//! Matrices larger than one storage binding are split into row ranges ([`PackedMatrix::split_rows`]) and uploaded
//! as one buffer pair per range ([`GpuMatrix`]).

use crate::kernel::storage;
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};
use half::{bf16, f16};
use personascope_gguf::{GgmlType, QK_K};
use personascope_model::ModelError;
use std::ops::Range;

/// Elements per super-block: the K-quant block, and the unit of the first scale level for every format.
pub const SUPER: usize = QK_K;

/// How a packed matrix stores its values; each distinct format is a distinct kernel variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackedFormat {
    /// Bits per code: 4 or 8; 32 for plain f32 values (no scales).
    pub bits: u32,
    /// Two's-complement codes and no min (the symmetric types).
    pub signed: bool,
    /// Elements per group pair (16 or 32); 0 for plain f32.
    pub group: u32,
}

impl PackedFormat {
    pub const F32: Self = PackedFormat { bits: 32, signed: false, group: 0 };

    /// Every format some GGML type packs to.
    pub const ALL: [Self; 6] = [
        PackedFormat::F32,
        PackedFormat { bits: 4, signed: true, group: 32 },
        PackedFormat { bits: 4, signed: false, group: 32 },
        PackedFormat { bits: 8, signed: true, group: 32 },
        PackedFormat { bits: 8, signed: false, group: 32 },
        PackedFormat { bits: 8, signed: true, group: 16 },
    ];

    pub fn of(ty: GgmlType) -> Self {
        let q = |bits, signed, group| PackedFormat { bits, signed, group };
        match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => PackedFormat::F32,
            GgmlType::Q4_0 => q(4, true, 32),
            GgmlType::Q4_1 | GgmlType::Q4K => q(4, false, 32),
            GgmlType::Q5_0 | GgmlType::Q8_0 => q(8, true, 32),
            GgmlType::Q5_1 | GgmlType::Q5K => q(8, false, 32),
            GgmlType::Q6K => q(8, true, 16),
        }
    }

    pub fn is_plain(self) -> bool {
        self.bits == 32
    }

    /// Elements per u32 of codes.
    pub fn per_word(self) -> usize {
        32 / self.bits as usize
    }

    /// u32 words of codes in one row of `cols` elements (a multiple of 4).
    pub fn row_code_words(self, cols: usize) -> usize {
        cols.div_ceil(self.per_word()).div_ceil(4) * 4
    }

    /// Super-blocks in one row.
    pub fn row_supers(self, cols: usize) -> usize {
        if self.is_plain() {
            0
        } else {
            cols.div_ceil(SUPER)
        }
    }

    /// Groups in one row.
    pub fn row_groups(self, cols: usize) -> usize {
        if self.is_plain() {
            0
        } else {
            cols / self.group as usize
        }
    }

    /// u32 words of scales in one row: two per super-block, one per group.
    pub fn row_scale_words(self, cols: usize) -> usize {
        2 * self.row_supers(cols) + self.row_groups(cols)
    }

    /// The shader defines that select this format: `Q4` / `Q8` / `PLAIN`, `SIGNED`, `GROUP`, and `EPC` (elements
    /// per `vec4<u32>` of codes).
    pub fn defines(self) -> Defines {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        Defines::from([
            ("Q4", flag(self.bits == 4)),
            ("Q8", flag(self.bits == 8)),
            ("PLAIN", flag(self.is_plain())),
            ("SIGNED", flag(self.signed)),
            ("GROUP", self.group.max(1).to_string()),
            ("EPC", (4 * self.per_word()).to_string()),
        ])
    }
}

impl std::fmt::Display for PackedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_plain() {
            f.write_str("f32")
        } else {
            write!(f, "{}{}/{}", if self.signed { "s" } else { "u" }, self.bits, self.group)
        }
    }
}

/// A `rows` x `cols` matrix in a [`PackedFormat`] (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub format: PackedFormat,
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<u32>,
    pub scales: Vec<u32>,
}

fn tensor_err(name: &str, msg: String) -> GpuError {
    GpuError::Model(ModelError::Tensor { name: name.into(), msg })
}

#[inline]
fn f16_bits(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline]
fn f16_val(b: &[u8], i: usize) -> f32 {
    f16::from_bits(f16_bits(b, i)).to_f32()
}

/// A group pair from two f16 bit patterns.
#[inline]
fn pair(scale: u16, min: u16) -> u32 {
    scale as u32 | (min as u32) << 16
}

/// A group pair from two small integers (exact in f16: |v| <= 2048).
#[inline]
fn int_pair(scale: f32, min: f32) -> u32 {
    pair(f16::from_f32(scale).to_bits(), f16::from_f32(min).to_bits())
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block, as ggml packs them.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Where one row's codes (as bytes/nibbles before packing) and scales go while a block is decoded.
struct RowSink<'a> {
    codes: &'a mut [u8],
    supers: &'a mut [f32],
    groups: &'a mut [u32],
}

impl PackedMatrix {
    /// Repacks `rows` x `cols` elements of type `ty` (GGML dims [cols, rows], row-major) from `data`, which must
    /// hold exactly that many elements. `name` is only used in error messages.
    pub fn pack(name: &str, ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Result<Self> {
        let row_bytes = ty
            .bytes_for(cols as u64)
            .ok_or_else(|| tensor_err(name, format!("row length {cols} is not a whole number of {ty} blocks")))?
            as usize;
        let needed = row_bytes.checked_mul(rows);
        if needed != Some(data.len()) {
            return Err(tensor_err(
                name,
                format!("{rows} rows of {cols} {ty} need {needed:?} bytes, got {}", data.len()),
            ));
        }
        let format = PackedFormat::of(ty);
        let (cw, sw) = (format.row_code_words(cols), format.row_scale_words(cols));
        let mut m = PackedMatrix { format, rows, cols, codes: vec![0; rows * cw], scales: vec![0; rows * sw] };
        if rows == 0 || cols == 0 {
            return Ok(m);
        }
        let n_super = format.row_supers(cols);
        let mut row_codes = vec![0u8; cols];
        let mut supers = vec![0f32; 2 * n_super];
        for (r, src) in data.chunks_exact(row_bytes).enumerate() {
            let codes_out = &mut m.codes[r * cw..(r + 1) * cw];
            if format.is_plain() {
                for (c, w) in codes_out.iter_mut().take(cols).enumerate() {
                    *w = match ty {
                        GgmlType::F32 => {
                            u32::from_le_bytes([src[4 * c], src[4 * c + 1], src[4 * c + 2], src[4 * c + 3]])
                        }
                        GgmlType::F16 => f16_val(src, 2 * c).to_bits(),
                        _ => bf16::from_bits(f16_bits(src, 2 * c)).to_f32().to_bits(),
                    };
                }
                continue;
            }
            let (scale_supers, groups) = m.scales[r * sw..(r + 1) * sw].split_at_mut(2 * n_super);
            let mut sink = RowSink { codes: &mut row_codes, supers: &mut supers, groups };
            for (b, block) in src.chunks_exact(ty.type_size()).enumerate() {
                pack_block(ty, block, b, &mut sink);
            }
            for (dst, v) in scale_supers.iter_mut().zip(&supers) {
                *dst = v.to_bits();
            }
            let pw = format.per_word();
            for (w, chunk) in codes_out.iter_mut().zip(row_codes.chunks(pw)) {
                *w = chunk.iter().enumerate().fold(0u32, |acc, (k, &q)| acc | (q as u32) << (format.bits as usize * k));
            }
        }
        Ok(m)
    }

    /// u32 words of codes per row.
    pub fn row_code_words(&self) -> usize {
        self.format.row_code_words(self.cols)
    }

    /// u32 words of scales per row.
    pub fn row_scale_words(&self) -> usize {
        self.format.row_scale_words(self.cols)
    }

    /// Bytes the packed matrix takes on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        4 * (self.codes.len() + self.scales.len()) as u64
    }

    /// The affine parts of element (`row`, `col`): `(code, scale, min)`, value `code * scale + min` (for the
    /// symmetric formats `min` is 0 and the value is `code * scale`). Plain f32 is `(value, 1, 0)`. Panics unless
    /// `row < rows` and `col < cols`.
    pub fn element(&self, row: usize, col: usize) -> (f32, f32, f32) {
        let f = self.format;
        let word = self.codes[row * self.row_code_words() + col / f.per_word()];
        if f.is_plain() {
            return (f32::from_bits(word), 1.0, 0.0);
        }
        let shift = f.bits as usize * (col % f.per_word());
        let code = if f.signed {
            // Move the code to the top of the word, then shift back arithmetically to sign-extend it.
            (((word << (32 - f.bits as usize - shift)) as i32) >> (32 - f.bits)) as f32
        } else {
            ((word >> shift) & ((1u32 << f.bits) - 1)) as f32
        };
        let s = &self.scales[row * self.row_scale_words()..];
        let sup = 2 * (col / SUPER);
        let (sup_scale, sup_min) = (f32::from_bits(s[sup]), f32::from_bits(s[sup + 1]));
        let g = s[2 * f.row_supers(self.cols) + col / f.group as usize];
        let (sub_scale, sub_min) = (f16::from_bits(g as u16).to_f32(), f16::from_bits((g >> 16) as u16).to_f32());
        (code, sup_scale * sub_scale, if f.signed { 0.0 } else { sup_min * sub_min })
    }

    /// Row `row` (< rows) dequantized into the first `cols` values of `out`: the CPU twin of the kernels.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            let (code, scale, min) = self.element(row, c);
            // Adding a zero min would turn a -0.0 into +0.0; skipping it keeps plain and symmetric types bit-exact.
            *o = if self.format.is_plain() {
                code
            } else if self.format.signed {
                code * scale
            } else {
                code * scale + min
            };
        }
    }

    /// Row ranges whose codes and scales each fit in `max_binding` bytes: as few as fit, of equal size but a
    /// smaller last one (so a head split in two has two halves, not a full part and a sliver). Errors if a single
    /// row does not fit.
    pub fn split_rows(&self, max_binding: u64) -> Result<Vec<Range<usize>>> {
        let row_bytes = 4 * self.row_code_words().max(self.row_scale_words()) as u64;
        let per_part = (max_binding / row_bytes.max(1)).min(self.rows.max(1) as u64) as usize;
        if per_part == 0 {
            return Err(GpuError::OutOfMemory {
                what: format!("one row of a {}x{} {} matrix", self.rows, self.cols, self.format),
                needed: row_bytes,
                available: max_binding,
            });
        }
        let n_parts = self.rows.div_ceil(per_part);
        let even = self.rows.div_ceil(n_parts.max(1));
        Ok((0..n_parts).map(|i| i * even..((i + 1) * even).min(self.rows)).collect())
    }

    /// The codes of rows `rows` (a range from [`PackedMatrix::split_rows`]; panics past the last row).
    pub fn codes_of(&self, rows: Range<usize>) -> &[u32] {
        let w = self.row_code_words();
        &self.codes[rows.start * w..rows.end * w]
    }

    /// The scales of rows `rows` (as [`PackedMatrix::codes_of`]).
    pub fn scales_of(&self, rows: Range<usize>) -> &[u32] {
        let w = self.row_scale_words();
        &self.scales[rows.start * w..rows.end * w]
    }

    /// The rows of `parts` one after another (e.g. Q, K and V as one matrix for a fused projection). They must
    /// share format and width.
    pub fn concat_rows(parts: &[&PackedMatrix]) -> Result<PackedMatrix> {
        let first = parts.first().ok_or_else(|| GpuError::Unsupported("concatenating no matrices".into()))?;
        if let Some(p) = parts.iter().find(|p| p.format != first.format || p.cols != first.cols) {
            return Err(GpuError::Unsupported(format!(
                "concatenating a {} matrix of {} columns with a {} matrix of {} columns",
                first.format, first.cols, p.format, p.cols
            )));
        }
        Ok(PackedMatrix {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            codes: parts.iter().flat_map(|p| p.codes.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
        })
    }
}

/// Decodes block `b` of a row (type `ty`) into codes and scale pairs. The arithmetic mirrors the CPU decoders in
/// `personascope_gguf` (`quant.rs`), which are the reference.
fn pack_block(ty: GgmlType, blk: &[u8], b: usize, out: &mut RowSink<'_>) {
    let bs = ty.block_size();
    let RowSink { codes, supers, groups } = out;
    let codes = &mut codes[b * bs..(b + 1) * bs];
    // 32-element types: a (1, 1) super pair (or (1, 0) when symmetric) per 256 elements, written by every block
    // it covers.
    let mut legacy = |min: f32| {
        let s = 2 * (b * bs / SUPER);
        supers[s] = 1.0;
        supers[s + 1] = min;
    };
    match ty {
        GgmlType::Q4_0 => {
            legacy(0.0);
            groups[b] = pair(f16_bits(blk, 0), 0);
            for j in 0..16 {
                // (q - 8) in two's complement, truncated to 4 bits.
                codes[j] = (blk[2 + j] & 0x0f).wrapping_sub(8) & 0x0f;
                codes[j + 16] = (blk[2 + j] >> 4).wrapping_sub(8) & 0x0f;
            }
        }
        GgmlType::Q4_1 => {
            legacy(1.0);
            groups[b] = pair(f16_bits(blk, 0), f16_bits(blk, 2));
            for j in 0..16 {
                codes[j] = blk[4 + j] & 0x0f;
                codes[j + 16] = blk[4 + j] >> 4;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let one = ty == GgmlType::Q5_1;
            legacy(if one { 1.0 } else { 0.0 });
            let (qh_at, qs_at) = if one { (4, 8) } else { (2, 6) };
            groups[b] = pair(f16_bits(blk, 0), if one { f16_bits(blk, 2) } else { 0 });
            let qh = u32::from_le_bytes([blk[qh_at], blk[qh_at + 1], blk[qh_at + 2], blk[qh_at + 3]]);
            let zero = if one { 0 } else { 16 };
            for j in 0..16 {
                let lo = (blk[qs_at + j] & 0x0f) | (((qh >> j) & 1) << 4) as u8;
                let hi = (blk[qs_at + j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
                codes[j] = lo.wrapping_sub(zero);
                codes[j + 16] = hi.wrapping_sub(zero);
            }
        }
        GgmlType::Q8_0 => {
            legacy(0.0);
            groups[b] = pair(f16_bits(blk, 0), 0);
            codes.copy_from_slice(&blk[2..34]);
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            supers[2 * b] = f16_val(blk, 0);
            supers[2 * b + 1] = -f16_val(blk, 2);
            let scales = &blk[4..16];
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                groups[8 * b + j] = int_pair(sc as f32, m as f32);
            }
            let (qh, qs) =
                if ty == GgmlType::Q5K { (Some(&blk[16..48]), &blk[48..176]) } else { (None, &blk[16..144]) };
            for chunk in 0..4 {
                let q = &qs[32 * chunk..32 * chunk + 32];
                for l in 0..32 {
                    let (h1, h2) = match qh {
                        Some(h) => (((h[l] >> (2 * chunk)) & 1) << 4, ((h[l] >> (2 * chunk + 1)) & 1) << 4),
                        None => (0, 0),
                    };
                    codes[64 * chunk + l] = (q[l] & 0x0f) | h1;
                    codes[64 * chunk + 32 + l] = (q[l] >> 4) | h2;
                }
            }
        }
        GgmlType::Q6K => {
            supers[2 * b] = f16_val(blk, 208);
            supers[2 * b + 1] = 0.0;
            for g in 0..16 {
                groups[16 * b + g] = int_pair(blk[192 + g] as i8 as f32, 0.0);
            }
            for half in 0..2 {
                let ql = &blk[64 * half..64 * half + 64];
                let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                let o = &mut codes[128 * half..128 * half + 128];
                for l in 0..32 {
                    let q1 = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                    let q2 = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                    let q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    let q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    o[l] = q1.wrapping_sub(32);
                    o[l + 32] = q2.wrapping_sub(32);
                    o[l + 64] = q3.wrapping_sub(32);
                    o[l + 96] = q4.wrapping_sub(32);
                }
            }
        }
        // Plain types are converted element by element in `pack`.
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {}
    }
}

/// One row range of a matrix on the GPU: its own codes and scales buffers, each within one storage binding.
#[derive(Debug)]
pub struct GpuPart {
    /// The rows of the whole matrix this part holds.
    pub rows: Range<usize>,
    pub codes: wgpu::Buffer,
    /// 4 bytes of zeros for plain f32 (no scales).
    pub scales: wgpu::Buffer,
}

/// A packed matrix on the GPU, split into row ranges that each fit one storage binding.
#[derive(Debug)]
pub struct GpuMatrix {
    pub format: PackedFormat,
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<GpuPart>,
}

impl GpuMatrix {
    /// Uploads `m`, split at the device's largest storage binding.
    pub fn upload(gpu: &Gpu, label: &str, m: &PackedMatrix) -> Result<Self> {
        Self::upload_with_limit(gpu, label, m, gpu.max_binding())
    }

    /// Uploads `m` split so that no buffer exceeds `max_binding` bytes (tests force splits with a small limit).
    pub fn upload_with_limit(gpu: &Gpu, label: &str, m: &PackedMatrix, max_binding: u64) -> Result<Self> {
        let parts = m
            .split_rows(max_binding.min(gpu.max_binding()))?
            .into_iter()
            .map(|rows| GpuPart {
                codes: storage(gpu, &format!("{label} codes {rows:?}"), bytemuck::cast_slice(m.codes_of(rows.clone()))),
                scales: storage(
                    gpu,
                    &format!("{label} scales {rows:?}"),
                    bytemuck::cast_slice(m.scales_of(rows.clone())),
                ),
                rows,
            })
            .collect();
        Ok(GpuMatrix { format: m.format, rows: m.rows, cols: m.cols, parts })
    }

    /// The part holding row `row`.
    pub fn part_of_row(&self, row: usize) -> Option<(usize, &GpuPart)> {
        self.parts.iter().enumerate().find(|(_, p)| p.rows.contains(&row))
    }
}
