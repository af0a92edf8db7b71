//! The matmul and embedding kernels on packed weights against the CPU (`personascope_gguf::dot_row`,
//! `PackedMatrix::dequantize_row`), for every GGML type, on fresh random inputs of awkward sizes: row counts that
//! are not multiples of the rows per workgroup, 1 (decode), 3 and 9 (prompt tiles of 8, one partial) tokens; the
//! GPU shapes both with the portable (workgroup-memory) and the subgroup reduction.

mod common;
#[path = "common/quant_blocks.rs"]
mod quant_blocks;

use common::{assert_close, gpu, random};
use personascope_gguf::{dot_row, GgmlType};
use personascope_gpu::kernel::{read_f32, storage, storage_f32};
use personascope_gpu::kernels::embed::Embed;
use personascope_gpu::kernels::matmul::{
    self, reduces_with_subgroups, subgroups_for, Epilogue, Io, Matmul, Shape, CPU_DECODE, CPU_PROMPT, DECODE, PROMPT,
};
use personascope_gpu::quant::{GpuMatrix, PackedFormat, PackedMatrix};
use personascope_gpu::Gpu;
use quant_blocks::{random_tensor, subnormal_scale_tensor};
use std::collections::HashMap;

/// Matmul tolerance. Both sides accumulate in f32, in different orders: the CPU dequantizes each weight
/// (`q * d + m`, rounded) and sums products in 8 lanes; the GPU sums `q * x` per chunk and applies the scale and
/// `min * sum(x)` once per chunk, then adds chunk partials per thread and thread partials per row. For these
/// inputs (|x| < 1, |w| < 1, at most 512 columns) sum |w x| stays below about 150, and f32 reordering errs by a
/// few ulps of the partial sums: the largest difference measured on lavapipe is 1.5e-5 (Q5_K, printed by
/// `matmul_matches_dot_row_for_every_type`). 1e-4 absolute plus 1e-4 relative leaves a margin of 7 or more for
/// other drivers' summation orders (and fused multiply-adds), while any layout bug (a wrong code, scale, group or
/// row) moves results by 1e-2 or more.
const MATMUL_ABS: f32 = 1e-4;
const MATMUL_REL: f32 = 1e-4;

/// Workgroup shapes for (decode, prompt) and whether to reduce with subgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Config {
    decode: Shape,
    prompt: Shape,
    subgroups: bool,
}

type Kernels = HashMap<(PackedFormat, Epilogue, Config), Matmul>;

/// Every configuration the engine may run, whichever adapter the test runs on: the GPU shapes (threads split rows)
/// with the portable and with the subgroup reduction, and the CPU-adapter shapes (a thread per row, no reduction).
/// The subgroup one needs an adapter with subgroups (lavapipe has them): without, building it fails the test.
/// The last one has odd rows per thread, rows per workgroup and tokens per tile, so that the edge rows and tokens
/// of the unrolled one-thread-per-row path fall mid-thread.
const CONFIGS: [Config; 4] = [
    Config { decode: DECODE, prompt: PROMPT, subgroups: false },
    Config { decode: DECODE, prompt: PROMPT, subgroups: true },
    Config { decode: CPU_DECODE, prompt: CPU_PROMPT, subgroups: false },
    Config {
        decode: Shape { rows: 15, tpr: 1, tokens: 1, rpt: 5 },
        prompt: Shape { rows: 21, tpr: 1, tokens: 3, rpt: 7 },
        subgroups: false,
    },
];

struct Case {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    n: usize,
    epilogue: Epilogue,
    /// Largest buffer in bytes (forces splits when small).
    limit: u64,
    io: Option<Io>,
    seed: u64,
    config: Config,
}

impl Case {
    fn new(ty: GgmlType, rows: usize, cols: usize, n: usize, seed: u64) -> Self {
        Case { ty, rows, cols, n, epilogue: Epilogue::default(), limit: u64::MAX, io: None, seed, config: CONFIGS[0] }
    }
}

/// Builds the kernel of `config`, checking that the reduction asked for is the one compiled: a subgroup kernel
/// must really use subgroups, never quietly be the portable one.
fn build(gpu: &Gpu, format: PackedFormat, epilogue: Epilogue, config: Config) -> Matmul {
    if config.subgroups {
        assert!(gpu.caps.subgroups, "{} has no subgroups: the subgroup matmul cannot be tested here", gpu.describe());
    }
    let k =
        pollster::block_on(Matmul::with_options(gpu, format, epilogue, config.decode, config.prompt, config.subgroups))
            .expect("compile matmul");
    let want = (
        config.subgroups && reduces_with_subgroups(config.decode),
        config.subgroups && reduces_with_subgroups(config.prompt),
    );
    assert_eq!(k.subgroups(), want, "{config:?}: (decode, prompt) subgroup reduction");
    k
}

/// Runs one case on the GPU and the CPU; returns the largest |gpu - cpu| and the number of parts.
fn run(gpu: &Gpu, kernels: &mut Kernels, c: &Case) -> (f32, usize) {
    let data = random_tensor(c.ty, c.rows * c.cols, c.seed);
    run_data(gpu, kernels, c, &data)
}

fn run_data(gpu: &Gpu, kernels: &mut Kernels, c: &Case, data: &[u8]) -> (f32, usize) {
    let packed = PackedMatrix::pack("w", c.ty, c.rows, c.cols, data).unwrap();
    let m = GpuMatrix::upload_with_limit(gpu, "w", &packed, c.limit).unwrap();
    let io = c.io.unwrap_or(Io::dense(&m));
    let (xs, ys) = (io.x_stride as usize, io.y_stride as usize);
    let x = random(io.x_offset as usize + c.n * xs, c.seed + 1);
    let y0: Vec<f32> = if c.epilogue.accumulate {
        random(io.y_offset as usize + c.n * ys, c.seed + 2)
    } else {
        vec![f32::NAN; io.y_offset as usize + c.n * ys]
    };
    let bias = random(c.rows, c.seed + 3);

    let row_bytes = c.ty.bytes_for(c.cols as u64).unwrap() as usize;
    let mut want = y0.clone();
    for t in 0..c.n {
        let xt = &x[io.x_offset as usize + t * xs..][..c.cols];
        for r in 0..c.rows {
            let mut v = dot_row(c.ty, &data[r * row_bytes..(r + 1) * row_bytes], xt);
            if c.epilogue.bias {
                v += bias[r];
            }
            let yi = io.y_offset as usize + t * ys + r;
            want[yi] = if c.epilogue.accumulate { y0[yi] + v } else { v };
        }
    }

    let format = PackedFormat::of(c.ty);
    let k = kernels.entry((format, c.epilogue, c.config)).or_insert_with(|| build(gpu, format, c.epilogue, c.config));
    let (xb, yb, bb) = (storage_f32(gpu, "x", &x), storage_f32(gpu, "y", &y0), storage_f32(gpu, "b", &bias));
    let mut binds = Vec::new();
    for part in 0..m.parts.len() {
        let params = k.params(&m, part, c.n as u32, io).unwrap();
        let ub = k.params_buffer(gpu, &m, part, c.n as u32, io).unwrap();
        let bind = k.bind(gpu, &ub, &m.parts[part], &xb, &yb, c.epilogue.bias.then_some(&bb)).unwrap();
        binds.push((params, bind, ub));
    }
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for (params, bind, _) in &binds {
            k.dispatch(&mut pass, bind, params);
        }
    }
    gpu.queue.submit([enc.finish()]);
    let got = pollster::block_on(read_f32(gpu, &yb, want.len())).unwrap();
    // Elements outside y's rows (offset, stride padding) must be untouched: NaN stays NaN, accumulate data stays.
    let shape = if c.n == 1 { c.config.decode } else { c.config.prompt };
    let what = format!(
        "{} {}x{} n={} {:?} parts={} shape {}x{}x{} subgroups {}",
        c.ty,
        c.rows,
        c.cols,
        c.n,
        c.epilogue,
        m.parts.len(),
        shape.rows,
        shape.tpr,
        shape.tokens,
        c.config.subgroups
    );
    for i in 0..want.len() {
        if want[i].is_nan() {
            assert!(got[i].is_nan(), "{what}: y[{i}] outside the product was written: {}", got[i]);
        }
    }
    let (g, w): (Vec<f32>, Vec<f32>) = got.iter().zip(&want).filter(|(_, w)| !w.is_nan()).unzip();
    assert_close(&what, &g, &w, MATMUL_ABS, MATMUL_REL);
    let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    (worst, m.parts.len())
}

fn widths(ty: GgmlType) -> [usize; 2] {
    match ty.block_size() {
        256 => [256, 512],
        _ => [96, 160],
    }
}

#[test]
fn matmul_matches_dot_row_for_every_type() {
    let gpu = gpu();
    let mut kernels = Kernels::new();
    let mut report = Vec::new();
    for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
        let [c0, c1] = widths(ty);
        let mut worst = 0f32;
        for config in CONFIGS {
            for (rows, cols, n) in [(37, c0, 1), (301, c1, 1), (37, c1, 3), (301, c0, 9)] {
                let seed = 1000 * i as u64 + rows as u64 + n as u64;
                let case = Case { config, ..Case::new(ty, rows, cols, n, seed) };
                worst = worst.max(run(gpu, &mut kernels, &case).0);
            }
        }
        report.push(format!("{ty} {worst:.1e}"));
    }
    println!("largest |gpu - cpu| per type: {}", report.join(", "));
}

#[test]
fn matmul_bias_and_accumulate() {
    let gpu = gpu();
    let mut kernels = Kernels::new();
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F32] {
        let cols = widths(ty)[1];
        for (bias, accumulate) in [(true, false), (false, true), (true, true)] {
            for (n, config) in [1, 9].into_iter().flat_map(|n| CONFIGS.map(|s| (n, s))) {
                let mut c = Case::new(ty, 37, cols, n, 77 + n as u64);
                c.epilogue = Epilogue { bias, accumulate };
                c.config = config;
                run(gpu, &mut kernels, &c);
            }
        }
    }
}

#[test]
fn matmul_split_into_row_parts() {
    let gpu = gpu();
    let mut kernels = Kernels::new();
    for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::F16] {
        let cols = widths(ty)[1];
        let packed_row = 4 * PackedFormat::of(ty).row_code_words(cols) as u64;
        for (n, config) in [1, 3, 9].into_iter().flat_map(|n| CONFIGS.map(|s| (n, s))) {
            let mut c = Case::new(ty, 301, cols, n, 5 + n as u64);
            c.config = config;
            // 120 rows per part: parts of 101, 101 and 99 rows, none a multiple of the rows per workgroup.
            c.limit = 120 * packed_row;
            c.epilogue = Epilogue { bias: true, accumulate: n != 3 };
            let (_, parts) = run(gpu, &mut kernels, &c);
            assert_eq!(parts, 3, "{ty}");
        }
    }
}

#[test]
fn matmul_strided_io_and_odd_plain_width() {
    let gpu = gpu();
    let mut kernels = Kernels::new();
    // x and y inside larger buffers: x rows every 112 floats from 8, y rows every 50 from 3 (y[t, 37..50] and
    // the first 3 values must stay untouched).
    for (ty, cols) in [(GgmlType::Q4_0, 96), (GgmlType::F32, 98), (GgmlType::BF16, 7)] {
        for (n, config) in [1, 3].into_iter().flat_map(|n| CONFIGS.map(|s| (n, s))) {
            let mut c = Case::new(ty, 37, cols, n, 9);
            c.io = Some(Io { x_offset: 8, x_stride: 112, y_offset: 3, y_stride: 50 });
            c.config = config;
            run(gpu, &mut kernels, &c);
        }
    }
}

#[test]
fn matmul_beyond_65535_workgroups() {
    // 262,147 rows at 4 rows per workgroup (the GPU shapes): 65,537 row blocks, so the grid continues on y.
    let gpu = gpu();
    let mut kernels = Kernels::new();
    const { assert!(DECODE.rows <= 4 && PROMPT.rows <= 4, "use more rows here") };
    for n in [1, 2] {
        for config in &CONFIGS[..2] {
            run(gpu, &mut kernels, &Case { config: *config, ..Case::new(GgmlType::Q4_0, 262_147, 32, n, 3) });
        }
    }
}

#[test]
fn matmul_subgroup_reduction_on_awkward_shapes() {
    // Decode shapes chosen against this adapter's subgroup size S (lavapipe: 8): rows whose threads span several
    // subgroups (4 x 16, 1 x 64), subgroups holding threads of two rows and a partial subgroup (3 x 5 = 15
    // threads), the largest workgroup (16 x 16), and a workgroup that is one subgroup (S/4 x 4: no barrier).
    let gpu = gpu();
    assert!(gpu.caps.subgroups, "{} has no subgroups: the subgroup matmul cannot be tested here", gpu.describe());
    let s = gpu.adapter.subgroup_min_size.max(matmul::MIN_SUBGROUP_SIZE);
    let whole = Shape { rows: (s / 4).max(1), tpr: 4, tokens: 1, rpt: 1 };
    let shapes =
        [DECODE, Shape { rows: 1, tpr: 64, tokens: 1, rpt: 1 }, Shape { rows: 3, tpr: 5, tokens: 1, rpt: 1 }, whole];
    let shapes = shapes.into_iter().chain([Shape { rows: 16, tpr: 16, tokens: 1, rpt: 1 }]);
    let mut kernels = Kernels::new();
    let mut seen_whole = false;
    for (i, decode) in shapes.enumerate() {
        let d = matmul::defines(PackedFormat::of(GgmlType::Q4_1), Epilogue::default(), decode, Some(s));
        assert_eq!(d["SUBGROUPS"], "1", "{decode:?}");
        seen_whole |= d["WHOLE"] == "1";
        for subgroups in [true, false] {
            let config = Config { decode, prompt: PROMPT, subgroups };
            for (j, ty) in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q6K, GgmlType::F32].into_iter().enumerate() {
                for rows in [1, 37, 301] {
                    let cols = widths(ty)[(i + j) % 2];
                    let mut c = Case::new(ty, rows, cols, 1, 31 * i as u64 + j as u64 + rows as u64);
                    c.config = config;
                    c.epilogue = Epilogue { bias: rows == 37, accumulate: rows != 1 };
                    run(gpu, &mut kernels, &c);
                }
            }
        }
    }
    assert!(seen_whole, "no one-subgroup workgroup tested (subgroup size {s})");
}

#[test]
fn matmul_picks_subgroups_when_the_device_has_them() {
    // PERSONASCOPE_NO_SUBGROUPS=1 (the portable path on purpose) is the only reason to decline them.
    let gpu = gpu();
    let forced_off = std::env::var(matmul::NO_SUBGROUPS_ENV).is_ok_and(|v| v.trim() == "1");
    assert_eq!(subgroups_for(gpu).is_some(), gpu.caps.subgroups && !forced_off);
    let k = pollster::block_on(Matmul::with_shapes(
        gpu,
        PackedFormat::of(GgmlType::Q4_1),
        Epilogue::default(),
        DECODE,
        PROMPT,
    ))
    .expect("compile matmul");
    assert_eq!(k.subgroups(), (gpu.caps.subgroups && !forced_off, false));
}

#[test]
fn matmul_on_a_device_without_subgroups() {
    // The browser baseline: the same adapter opened without the optional features. The portable kernel runs
    // there, and asking for subgroups is an error, not a silent fall back.
    let with = gpu();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: with.adapter.device_type == wgpu::DeviceType::Cpu,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
    .expect("adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).expect("device");
    let gpu = Gpu::from_device(device, queue, adapter.get_info());
    assert!(!gpu.caps.subgroups && !gpu.caps.f16, "{:?}", gpu.caps);
    let format = PackedFormat::of(GgmlType::Q4_1);
    let err = pollster::block_on(Matmul::with_options(&gpu, format, Epilogue::default(), DECODE, PROMPT, true));
    assert!(err.is_err(), "a subgroup matmul was built on a device without subgroups");
    assert!(subgroups_for(&gpu).is_none());
    let mut kernels = Kernels::new();
    for n in [1, 9] {
        let config = Config { decode: DECODE, prompt: PROMPT, subgroups: false };
        run(&gpu, &mut kernels, &Case { config, ..Case::new(GgmlType::Q4_1, 37, 160, n, 12) });
    }
}

#[test]
fn matmul_subnormal_f16_scales() {
    // Scales below 2^-14 are f16 subnormals: a GPU flushing them in unpack2x16float would give zeros here.
    let gpu = gpu();
    let mut kernels = Kernels::new();
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        let cols = widths(ty)[0];
        let data = subnormal_scale_tensor(ty, 37 * cols, 4);
        let c = Case::new(ty, 37, cols, 1, 4);
        let packed = PackedMatrix::pack("w", ty, 37, cols, &data).unwrap();
        // The products are tiny; scale the check to them.
        let (worst, _) = run_data(gpu, &mut kernels, &c, &data);
        let mut row = vec![0f32; cols];
        packed.dequantize_row(0, &mut row);
        assert!(row.iter().any(|&v| v != 0.0), "{ty}: subnormal scales packed to zeros");
        assert!(worst < 1e-6, "{ty}: {worst}");
    }
}

/// The GPU may fuse `code * scale + min` into one rounding where the CPU rounds twice: either is accepted, and
/// nothing else (the symmetric and plain formats have a single rounding, so they must match bit for bit).
fn gather_matches(packed: &PackedMatrix, row: usize, got: &[f32]) -> Result<(), String> {
    let mut want = vec![0f32; packed.cols];
    packed.dequantize_row(row, &mut want);
    for c in 0..packed.cols {
        let (code, scale, min) = packed.element(row, c);
        let fused = code.mul_add(scale, min);
        let ok =
            got[c].to_bits() == want[c].to_bits() || (!packed.format.signed && got[c].to_bits() == fused.to_bits());
        let both_nan = got[c].is_nan() && want[c].is_nan();
        if !(ok || both_nan) {
            return Err(format!("row {row} col {c}: gpu {:e} cpu {:e} (fused {fused:e})", got[c], want[c]));
        }
    }
    Ok(())
}

#[test]
fn embed_gathers_rows_of_every_type_from_split_matrices() {
    let gpu = gpu();
    let rows = 301;
    for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
        let cols = widths(ty)[0];
        let data = random_tensor(ty, rows * cols, 50 + i as u64);
        let packed = PackedMatrix::pack("token_embd", ty, rows, cols, &data).unwrap();
        // Whole, and in 3 parts.
        for limit in [u64::MAX, 4 * 120 * packed.row_code_words() as u64] {
            let m = GpuMatrix::upload_with_limit(gpu, "token_embd", &packed, limit).unwrap();
            let k = pollster::block_on(Embed::new(gpu, m.format)).expect("compile embed");
            // Two ids before the ones gathered (ids_offset), then first row, last row, repeats, part boundaries,
            // and one id outside the matrix (gives zeros).
            let ids: Vec<u32> = vec![7, 7, 0, 300, 5, 119, 120, 300, 240, 241, 301, 17];
            let gathered = &ids[2..];
            let n = gathered.len();
            let ids_buf = storage(gpu, "ids", bytemuck::cast_slice(&ids));
            let y_stride = cols + 4;
            let yb = storage_f32(gpu, "y", &vec![f32::NAN; 2 + n * y_stride]);
            let mut binds = Vec::new();
            for part in 0..m.parts.len() {
                let params = k.params(&m, part, n as u32, 2, 2, y_stride as u32).unwrap();
                let ub = k.params_buffer(gpu, &m, part, n as u32, 2, 2, y_stride as u32).unwrap();
                binds.push((params, k.bind(gpu, &ub, &m.parts[part], &ids_buf, &yb), ub));
            }
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for (params, bind, _) in &binds {
                    k.dispatch(&mut pass, bind, params);
                }
            }
            gpu.queue.submit([enc.finish()]);
            let got = pollster::block_on(read_f32(gpu, &yb, 2 + n * y_stride)).unwrap();
            let what = format!("embed {ty} parts={}", m.parts.len());
            assert!(got[..2].iter().all(|v| v.is_nan()), "{what}: wrote before y_offset");
            for (t, &id) in gathered.iter().enumerate() {
                let out = &got[2 + t * y_stride..][..y_stride];
                assert!(out[cols..].iter().all(|v| v.is_nan()), "{what}: token {t} wrote past its row");
                if id as usize >= rows {
                    assert!(out[..cols].iter().all(|&v| v == 0.0), "{what}: id {id} outside the matrix");
                } else {
                    gather_matches(&packed, id as usize, &out[..cols]).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
        }
    }
}
