//! Random GGML tensors of every type, as a GGUF file stores them: random codes with sane f16 scales (the
//! magnitudes real models have), or entirely random bytes (every bit pattern, NaN and infinite scales included).
#![allow(dead_code)]

use half::{bf16, f16};
use personascope_gguf::GgmlType;

/// splitmix64, the generator of `common::random`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151_7a7a)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next() as u8;
        }
    }
    pub fn sign(&mut self) -> f32 {
        if self.next() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `n` elements of type `ty` (`n` a multiple of its block size): random codes, scales of real-model magnitude.
pub fn random_tensor(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let bytes = ty.bytes_for(n as u64).expect("whole blocks") as usize;
    let mut out = vec![0u8; bytes];
    match ty {
        GgmlType::F32 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
            }
        }
        _ => {
            rng.bytes(&mut out);
            for b in out.chunks_exact_mut(ty.type_size()) {
                // Scales of either sign (ggml's quantizers produce both), 1e-3 to 5e-2.
                let d = rng.sign() * rng.uniform(1e-3, 5e-2);
                match ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => put_f16(b, 0, d),
                    GgmlType::Q4_1 | GgmlType::Q5_1 => {
                        put_f16(b, 0, d.abs());
                        put_f16(b, 2, -rng.uniform(0.0, 16.0) * d.abs());
                    }
                    GgmlType::Q4K | GgmlType::Q5K => {
                        put_f16(b, 0, d.abs() / 16.0);
                        put_f16(b, 2, rng.uniform(0.0, 4e-3));
                    }
                    GgmlType::Q6K => put_f16(b, 208, d.abs() / 32.0),
                    _ => unreachable!(),
                }
            }
        }
    }
    out
}

/// `n` elements of type `ty` from random bytes only: NaN, infinite and subnormal scales included.
pub fn random_bytes_tensor(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; ty.bytes_for(n as u64).expect("whole blocks") as usize];
    Rng::new(seed).bytes(&mut out);
    out
}

/// Like `random_tensor` but every f16 scale is subnormal (|d| < 2^-14): what a GPU that flushes f16 subnormals
/// in `unpack2x16float` would get wrong.
pub fn subnormal_scale_tensor(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut out = random_tensor(ty, n, seed);
    let mut rng = Rng::new(seed ^ 0xdead);
    let tiny = |rng: &mut Rng| f16::from_bits((rng.next() as u16 & 0x03ff) | 1 | (rng.next() as u16 & 0x8000));
    for b in out.chunks_exact_mut(ty.type_size()) {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q5_1 => {
                b[0..2].copy_from_slice(&tiny(&mut rng).to_le_bytes())
            }
            GgmlType::Q4K | GgmlType::Q5K => b[0..2].copy_from_slice(&tiny(&mut rng).to_le_bytes()),
            GgmlType::Q6K => b[208..210].copy_from_slice(&tiny(&mut rng).to_le_bytes()),
            _ => {}
        }
    }
    out
}
