//! What a storage load costs against arithmetic on this adapter: the same 4 x 1024 vec4 multiply-adds per
//! invocation with no loads, with one vec4 load per multiply-add (every lane the same address), and with one vec4
//! load per 4 (every lane its own address). On CPU adapters (lavapipe) the loads dominate, which is why the matmul
//! and attention kernels take another shape there (shaders/README.md).
//!
//! `cargo run --release -p personascope-gpu --example load_cost [-- --hardware]`

#[path = "common/mod.rs"]
mod common;

use personascope_gpu::Gpu;
use std::time::Instant;

const INVOCATIONS: u32 = 16384;
const WG: u32 = 64;
/// Multiply-adds per invocation (4 vec4 accumulators x 1024 steps), 2 flops per lane each.
const FLOPS: f64 = INVOCATIONS as f64 * 1024.0 * 4.0 * 4.0 * 2.0;

const HEAD: &str = "@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> c: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var s0 = vec4<f32>(f32(g.x)); var s1 = s0 + 1.0; var s2 = s0 + 2.0; var s3 = s0 + 3.0;
    let m = vec4<f32>(0.999);
    for (var k = 0u; k < 1024u; k++) {";
const TAIL: &str = "    }
    c[g.x] = s0 + s1 + s2 + s3 + a[0];
}";

const BODIES: [(&str, &str); 3] = [
    ("no loads", "s0 = s0 * m + m; s1 = s1 * m + m; s2 = s2 * m + m; s3 = s3 * m + m;"),
    (
        "a vec4 load per multiply-add, same address",
        "let j = 4u * (k % 64u); s0 = s0 * a[j] + m; s1 = s1 * a[j + 1u] + m; s2 = s2 * a[j + 2u] + m; \
         s3 = s3 * a[j + 3u] + m;",
    ),
    (
        "a vec4 load per 4 multiply-adds, own address",
        "let x = a[(g.x % 64u) * 64u + k % 64u]; s0 = s0 * x + m; s1 = s1 * x + m; s2 = s2 * x + m; \
         s3 = s3 * x + m;",
    ),
];

fn time(gpu: &Gpu, body: &str) -> f64 {
    let src = format!("{HEAD}\n        {body}\n{TAIL}\n");
    let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let buffer = |size: u64| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (a, c) = (buffer(16 * 4096), buffer(16 * INVOCATIONS as u64));
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: a.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: c.as_entire_binding() },
        ],
    });
    let run = || {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(INVOCATIONS / WG, 1, 1);
        }
        gpu.queue.submit([enc.finish()]);
        let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    };
    run();
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            run();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let gpu = common::gpu();
    for (name, body) in BODIES {
        let t = time(&gpu, body);
        println!("{name:46} {:8.2} ms {:8.2} GFLOP/s", t * 1e3, FLOPS / t / 1e9);
    }
}
