//! The GPU every native test runs on: Mesa's lavapipe through Vulkan (or a real GPU when
//! PERSONASCOPE_TEST_GPU=hardware). wgpu silently falls back to GL when Vulkan is missing, so this asserts the
//! backend and fails loudly, saying what to install.
#![allow(dead_code)]

use personascope_gpu::{AdapterChoice, Gpu};
use std::sync::OnceLock;

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let choice = match std::env::var("PERSONASCOPE_TEST_GPU").as_deref() {
            Ok("hardware") => AdapterChoice::HighPerformance,
            _ => AdapterChoice::Fallback,
        };
        let gpu = Gpu::request_blocking(choice, wgpu::Backends::VULKAN).unwrap_or_else(|e| {
            panic!("no Vulkan adapter ({e}); install Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1")
        });
        assert_eq!(gpu.adapter.backend, wgpu::Backend::Vulkan, "tests must run on Vulkan, got {}", gpu.describe());
        eprintln!("test GPU: {} caps {:?}", gpu.describe(), gpu.caps);
        gpu
    })
}

/// Deterministic pseudo-random values in [-1, 1) (splitmix64).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Asserts |got - want| <= abs + rel * |want| element-wise; on failure prints the first differing values and the
/// largest difference.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    // Written so that a NaN on either side counts as a difference.
    let close = |i: usize| (got[i] - want[i]).abs() <= abs + rel * want[i].abs();
    let bad: Vec<usize> = (0..got.len()).filter(|&i| !close(i)).collect();
    if !bad.is_empty() {
        let worst = (0..got.len()).max_by(|&a, &b| (got[a] - want[a]).abs().total_cmp(&(got[b] - want[b]).abs()));
        let first: Vec<String> = bad.iter().take(6).map(|&i| format!("[{i}] gpu {} cpu {}", got[i], want[i])).collect();
        panic!(
            "{what}: {} of {} values differ (abs {abs}, rel {rel}); first: {}; largest at {:?}",
            bad.len(),
            got.len(),
            first.join(", "),
            worst.map(|i| (i, got[i], want[i]))
        );
    }
}
