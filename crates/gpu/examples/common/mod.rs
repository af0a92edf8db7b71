//! What every benchmark example shares: the adapter, on a primary API only.

use personascope_gpu::{wgpu, AdapterChoice, Gpu};

/// The software adapter (lavapipe), or the hardware one with `--hardware`, on Vulkan, Metal or DX12: never GL,
/// which wgpu would otherwise fall back to without lavapipe installed, giving figures of another driver. Prints
/// the adapter; exits with a message when there is none.
pub fn gpu() -> Gpu {
    let hardware = std::env::args().any(|a| a == "--hardware");
    let choice = if hardware { AdapterChoice::HighPerformance } else { AdapterChoice::Fallback };
    match Gpu::request_blocking(choice, wgpu::Backends::PRIMARY) {
        Ok(g) => {
            println!("{}", g.describe());
            g
        }
        Err(e) => {
            eprintln!(
                "no Vulkan, Metal or DX12 adapter: {e} (on Linux: apt-get install mesa-vulkan-drivers libvulkan1)"
            );
            std::process::exit(1);
        }
    }
}
