//! The GPU context: device, queue, what the adapter offers, and the limits the engine works within.

use crate::{GpuError, Result};

/// Optional capabilities the engine uses when present and works without.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
}

/// A device and queue, injected (tests and embedders bring their own) or requested with [`Gpu::request`].
#[derive(Debug, Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
    pub caps: Caps,
    pub limits: wgpu::Limits,
    /// The first uncaptured device error or device loss, reported by [`Gpu::health`]. wgpu's default handler
    /// panics, which in the browser would kill the whole module.
    trouble: std::sync::Arc<std::sync::Mutex<Option<GpuError>>>,
    /// Buffers made through [`crate::kernel`]'s helpers (all of the engine's): count and bytes, never decreased.
    made: std::sync::Arc<Made>,
}

#[derive(Debug, Default)]
struct Made {
    buffers: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// Which adapter [`Gpu::request`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterChoice {
    /// The high-performance adapter.
    #[default]
    HighPerformance,
    /// The software fallback (lavapipe natively): deterministic on machines without a GPU.
    Fallback,
}

impl AdapterChoice {
    /// `PERSONASCOPE_ADAPTER=fallback` picks the software adapter; anything else the high-performance one.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env() -> Self {
        match std::env::var("PERSONASCOPE_ADAPTER").as_deref() {
            Ok("fallback") => AdapterChoice::Fallback,
            _ => AdapterChoice::HighPerformance,
        }
    }
}

impl Gpu {
    /// Wraps a device and queue someone else created. `caps` must only claim features the device was created with.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, adapter: wgpu::AdapterInfo) -> Self {
        let features = device.features();
        let caps = Caps {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        };
        let limits = device.limits();
        let trouble = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = trouble.clone();
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert(GpuError::Validation { what: "a GPU command".into(), msg: e.to_string() });
            }
        }));
        let sink = trouble.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut slot) = sink.lock() {
                let why = if msg.is_empty() { format!("{reason:?}") } else { format!("{reason:?}: {msg}") };
                *slot = Some(GpuError::DeviceLost(why));
            }
        });
        Gpu { device, queue, adapter, caps, limits, trouble, made: Default::default() }
    }

    /// Err with the first device error or the loss of the device, if either happened.
    pub fn health(&self) -> Result<()> {
        let slot = self.trouble.lock().ok();
        match slot.as_ref().and_then(|s| s.as_ref()) {
            None => Ok(()),
            Some(GpuError::DeviceLost(reason)) => Err(GpuError::DeviceLost(reason.clone())),
            Some(e) => Err(GpuError::Validation { what: "the GPU device".into(), msg: e.to_string() }),
        }
    }

    /// Buffers made on this device so far through [`crate::kernel`]'s helpers: (count, bytes).
    pub fn buffers_made(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.made.buffers.load(Relaxed), self.made.bytes.load(Relaxed))
    }

    /// Makes a buffer and counts it (every buffer of the engine goes through here, so that its memory figure
    /// counts them all).
    pub fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        self.count(desc.size);
        self.device.create_buffer(desc)
    }

    /// [`wgpu::util::DeviceExt::create_buffer_init`], counted.
    pub fn create_buffer_init(&self, desc: &wgpu::util::BufferInitDescriptor<'_>) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.count(desc.contents.len() as u64);
        self.device.create_buffer_init(desc)
    }

    fn count(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.made.buffers.fetch_add(1, Relaxed);
        self.made.bytes.fetch_add(bytes, Relaxed);
    }

    /// Why the device was lost (the driver's reason and message), once it has been.
    pub fn lost(&self) -> Option<String> {
        match self.trouble.lock().ok()?.as_ref()? {
            GpuError::DeviceLost(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Finds an adapter and opens a device with the adapter's own limits (larger than the WebGPU defaults where the
    /// hardware allows) and the optional features it has. Natively `backends` narrows the search (e.g. Vulkan only,
    /// so that a missing driver is an error instead of a silent fall back to GL).
    pub async fn request(choice: AdapterChoice, backends: wgpu::Backends) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: choice == AdapterChoice::Fallback,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| GpuError::NoAdapter(format!("{e} (backends {backends:?}); is WebGPU / Vulkan available?")))?;
        let info = adapter.get_info();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("personascope"),
                required_features: features,
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::Device { adapter: info.name.clone(), msg: e.to_string() })?;
        Ok(Self::from_device(device, queue, info))
    }

    /// Native convenience: blocks on [`Gpu::request`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn request_blocking(choice: AdapterChoice, backends: wgpu::Backends) -> Result<Self> {
        pollster::block_on(Self::request(choice, backends))
    }

    /// "llvmpipe (LLVM 15.0.6) on Vulkan (Cpu)".
    pub fn describe(&self) -> String {
        format!("{} on {:?} ({:?})", self.adapter.name, self.adapter.backend, self.adapter.device_type)
    }

    /// Largest storage buffer binding, the unit large matrices are split into.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }
}
