//! Each WGSL kernel against its CPU twin (`personascope_model::ops`) on fresh random inputs of awkward sizes.

mod common;

use common::{assert_close, gpu, random};
use personascope_gpu::kernel::{read_f32, storage_f32, storage_zeroed};
use personascope_gpu::kernels::rms_norm::RmsNorm;
use personascope_model::ops;

/// f32 reductions in a different order: a few ulps of the row scale.
const NORM_ABS: f32 = 1e-5;
const NORM_REL: f32 = 1e-5;

#[test]
fn rms_norm_matches_cpu() {
    let gpu = gpu();
    let k = pollster::block_on(RmsNorm::new(gpu)).expect("compile rms_norm");
    for (rows, cols, seed) in [(1, 576, 1), (3, 257, 2), (7, 1000, 3), (2, 63, 4)] {
        let x: Vec<f32> = random(rows * cols, seed).iter().map(|v| v * 3.0).collect();
        let w = random(cols, seed + 100);
        let mut want = vec![0f32; rows * cols];
        ops::rms_norm(&x, &w, 1e-5, &mut want);

        let (xb, wb) = (storage_f32(gpu, "x", &x), storage_f32(gpu, "w", &w));
        let yb = storage_zeroed(gpu, "y", (rows * cols * 4) as u64);
        let params = RmsNorm::params(gpu, rows as u32, cols as u32, 1e-5);
        let bind = k.bind(gpu, &params, &xb, &wb, &yb);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            k.dispatch(&mut pass, &bind, rows as u32);
        }
        gpu.queue.submit([enc.finish()]);
        let got = pollster::block_on(read_f32(gpu, &yb, rows * cols)).expect("read");
        assert_close(&format!("rms_norm {rows}x{cols}"), &got, &want, NORM_ABS, NORM_REL);
    }
}
