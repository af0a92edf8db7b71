//! Next-token choice on the GPU, so decode never reads logits back: greedy argmax, or a reproducible draw with
//! repetition penalty, temperature, top-k and top-p. Twin: [`crate::twins::sample`] (the same token, always).
//!
//! Relation to the CPU [`Sampler`](personascope_model::Sampler):
//! - greedy (temperature 0) is the CPU's `argmax` of the penalized logits: identical token, lowest index on ties,
//!   NaN never chosen (except index 0 when `logits[0]` is NaN, as `argmax` does);
//! - sampled runs keep the same candidate set (penalty, then top-k by logit with lower ids first on ties, then
//!   the smallest top-p prefix), but weights are fixed point (2^24 for the most likely token, relative error
//!   about 1e-6, tokens below 2^-24 of the most likely weigh 0), the top-p mass threshold uses top_p rounded to
//!   1/65536, the random bits come from a hash of (seed, step) instead of the CPU's xoshiro stream, and the draw
//!   walks tokens in a fixed thread-major order instead of sorted order. So the same seed gives different tokens
//!   on the CPU and the GPU, while every draw has the same distribution up to those roundings.

use crate::kernel::Kernel;
use crate::shader::Defines;
use crate::{Gpu, GpuError, Result};
use personascope_model::SamplingParams;

/// Threads of the one workgroup, also the radix search's buckets. The draw order (thread-major) depends on it; the
/// twin uses the same value.
pub const WORKGROUP: u32 = 256;

/// u32 words of the record the kernel writes at `out_offset`: (token, step, candidates, status).
pub const OUT_WORDS: u32 = 4;

/// `status` word of the out record.
pub const STATUS_SAMPLED: u32 = 0;
pub const STATUS_GREEDY: u32 = 1;
/// Sampling was asked for but no token had a nonzero weight (all logits NaN or -inf, or an infinite maximum):
/// the argmax was used.
pub const STATUS_FALLBACK: u32 = 2;

/// `top_p_q16` value meaning "no top-p".
pub const TOP_P_OFF: u32 = 65536;

/// `round(2^24 * 2^(-j/256))`, j = 0..=256: the exact table behind the fixed-point weights, shared by the shader
/// (through the `EXP2_TABLE` define) and the twin.
#[rustfmt::skip]
pub const EXP2_TABLE: [u32; 257] = [
    16777216, 16731851, 16686609, 16641490, 16596492, 16551616, 16506861, 16462228, 16417715, 16373322, 16329050,
    16284897, 16240863, 16196949, 16153153, 16109476, 16065917, 16022476, 15979152, 15935945, 15892855, 15849882,
    15807025, 15764283, 15721658, 15679147, 15636752, 15594471, 15552304, 15510252, 15468313, 15426487, 15384775,
    15343175, 15301688, 15260313, 15219050, 15177899, 15136859, 15095929, 15055111, 15014403, 14973805, 14933316,
    14892937, 14852668, 14812507, 14772455, 14732511, 14692675, 14652947, 14613326, 14573813, 14534406, 14495106,
    14455912, 14416824, 14377841, 14338964, 14300193, 14261526, 14222963, 14184505, 14146151, 14107901, 14069754,
    14031710, 13993769, 13955931, 13918195, 13880561, 13843028, 13805598, 13768268, 13731039, 13693911, 13656884,
    13619956, 13583129, 13546401, 13509772, 13473242, 13436812, 13400479, 13364245, 13328109, 13292070, 13256129,
    13220286, 13184539, 13148888, 13113335, 13077877, 13042515, 13007249, 12972078, 12937002, 12902021, 12867135,
    12832343, 12797645, 12763041, 12728530, 12694113, 12659789, 12625557, 12591419, 12557372, 12523418, 12489555,
    12455784, 12422104, 12388516, 12355018, 12321610, 12288294, 12255067, 12221930, 12188882, 12155924, 12123055,
    12090275, 12057584, 12024981, 11992466, 11960039, 11927700, 11895448, 11863283, 11831206, 11799215, 11767310,
    11735492, 11703760, 11672114, 11640553, 11609078, 11577687, 11546382, 11515161, 11484025, 11452973, 11422004,
    11391120, 11360319, 11329601, 11298967, 11268415, 11237946, 11207559, 11177254, 11147032, 11116891, 11086831,
    11056853, 11026956, 10997140, 10967404, 10937749, 10908174, 10878679, 10849263, 10819928, 10790671, 10761494,
    10732395, 10703375, 10674434, 10645571, 10616786, 10588079, 10559449, 10530897, 10502422, 10474024, 10445703,
    10417458, 10389290, 10361198, 10333182, 10305242, 10277377, 10249587, 10221873, 10194234, 10166669, 10139179,
    10111763, 10084422, 10057154, 10029960, 10002839, 9975792, 9948818, 9921917, 9895089, 9868333, 9841650, 9815039,
    9788499, 9762032, 9735636, 9709311, 9683058, 9656875, 9630764, 9604722, 9578752, 9552851, 9527021, 9501261,
    9475570, 9449948, 9424396, 9398913, 9373499, 9348154, 9322877, 9297668, 9272528, 9247455, 9222451, 9197514,
    9172644, 9147842, 9123107, 9098438, 9073837, 9049301, 9024833, 9000430, 8976093, 8951823, 8927617, 8903477,
    8879403, 8855394, 8831449, 8807569, 8783754, 8760003, 8736317, 8712694, 8689136, 8665641, 8642209, 8618841,
    8595536, 8572295, 8549116, 8525999, 8502945, 8479954, 8457025, 8434157, 8411352, 8388608,
];

/// One sequence's entry of the kernel's params array. Build it with [`Params::new`], then set the per-step fields
/// (`logits_offset`, `ctx_start`, `ctx_len`, `write_index`, `out_offset`, `step`, `token_index`, `work_offset`)
/// before each dispatch.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub vocab: u32,
    /// Element offset of the logits row inside the logits buffer (the last row after a prefill).
    pub logits_offset: u32,
    /// The repetition-penalty context is `ids[ctx_start .. ctx_start + ctx_len]`.
    pub ctx_start: u32,
    pub ctx_len: u32,
    /// `ids[write_index]` receives the chosen token.
    pub write_index: u32,
    /// `out[out_offset .. out_offset + OUT_WORDS]` receives the record (u32 words).
    pub out_offset: u32,
    /// Counter mixed with the seed into the random bits: one value per decode step.
    pub step: u32,
    /// 1 when temperature is 0.
    pub greedy: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// 0 = off.
    pub top_k: u32,
    /// `round(top_p * 65536)`, at least 1; [`TOP_P_OFF`] = off.
    pub top_p_q16: u32,
    /// `log2(e) / temperature` (0 when greedy).
    pub exp_scale: f32,
    pub repetition_penalty: f32,
    /// `tokens[token_index]` receives the chosen token too (the next forward call's input row).
    pub token_index: u32,
    /// The sequence's scratch is `work[work_offset .. work_offset + vocab]`.
    pub work_offset: u32,
}

impl Params {
    /// The sampling part of the uniform for a vocabulary of `vocab` tokens; per-step fields start at 0.
    pub fn new(s: &SamplingParams, vocab: u32) -> Result<Self> {
        s.validate()?;
        if vocab == 0 || vocab > 1 << 20 {
            return Err(GpuError::Validation {
                what: "sample".into(),
                msg: format!("vocabulary of {vocab} tokens (1 ..= 2^20 supported)"),
            });
        }
        let greedy = s.temperature == 0.0;
        let top_p_q16 = ((s.top_p as f64 * 65536.0).round() as u32).clamp(1, TOP_P_OFF);
        Ok(Params {
            vocab,
            logits_offset: 0,
            ctx_start: 0,
            ctx_len: 0,
            write_index: 0,
            out_offset: 0,
            step: 0,
            greedy: u32::from(greedy),
            seed_lo: s.seed as u32,
            seed_hi: (s.seed >> 32) as u32,
            top_k: u32::try_from(s.top_k).unwrap_or(u32::MAX),
            top_p_q16,
            exp_scale: if greedy { 0.0 } else { (std::f64::consts::LOG2_E / s.temperature as f64) as f32 },
            repetition_penalty: s.repetition_penalty,
            token_index: 0,
            work_offset: 0,
        })
    }

    /// Checks that every index the kernel touches lies inside buffers of these lengths (in elements).
    pub fn check(
        &self,
        logits_len: usize,
        ids_len: usize,
        work_len: usize,
        out_len: usize,
        tokens_len: usize,
    ) -> Result<()> {
        let bad = |msg: String| Err(GpuError::Validation { what: "sample".into(), msg });
        let end = |a: u32, b: u32| a as u64 + b as u64;
        // Histogram buckets sum weights below 2^25 split at 12 bits in u32.
        if self.vocab == 0 || self.vocab > 1 << 20 {
            return bad(format!("vocabulary of {} tokens (1 ..= 2^20 supported)", self.vocab));
        }
        if end(self.logits_offset, self.vocab) > logits_len as u64 {
            return bad(format!("logits row at {} of {} past {logits_len}", self.logits_offset, self.vocab));
        }
        if end(self.ctx_start, self.ctx_len) > ids_len as u64 || self.write_index as usize >= ids_len {
            return bad(format!(
                "context {}+{} or write index {} past {ids_len} ids",
                self.ctx_start, self.ctx_len, self.write_index
            ));
        }
        if self.repetition_penalty != 1.0 && end(self.work_offset, self.vocab) > work_len as u64 {
            return bad(format!("scratch at {} of {work_len} for a vocabulary of {}", self.work_offset, self.vocab));
        }
        if self.token_index as usize >= tokens_len {
            return bad(format!("token index {} past {tokens_len} tokens", self.token_index));
        }
        if end(self.out_offset, OUT_WORDS) > out_len as u64 {
            return bad(format!("out record at {} past {out_len} words", self.out_offset));
        }
        Ok(())
    }
}

/// The out record, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub token: u32,
    /// `Params::step` echoed, to tell which step a readback belongs to.
    pub step: u32,
    /// Tokens left after top-k and top-p (1 when greedy).
    pub candidates: u32,
    /// [`STATUS_SAMPLED`], [`STATUS_GREEDY`] or [`STATUS_FALLBACK`].
    pub status: u32,
}

impl Record {
    /// Decodes the `OUT_WORDS` words at the start of `words`; `None` when there are fewer.
    pub fn from_words(words: &[u32]) -> Option<Self> {
        match words {
            [token, step, candidates, status, ..] => {
                Some(Record { token: *token, step: *step, candidates: *candidates, status: *status })
            }
            _ => None,
        }
    }
}

fn defines() -> Defines {
    let table: Vec<String> = EXP2_TABLE.iter().map(|v| format!("{v}u")).collect();
    Defines::from([("WG", WORKGROUP.to_string()), ("EXP2_TABLE", table.join(", "))])
}

pub fn variants() -> Vec<Defines> {
    vec![defines()]
}

pub struct Sample {
    pub kernel: Kernel,
}

impl Sample {
    pub async fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Sample { kernel: Kernel::new(gpu, "sample", &defines(), "main").await? })
    }

    /// A storage buffer holding `params` (one entry per sequence).
    pub fn params(gpu: &Gpu, params: &[Params]) -> wgpu::Buffer {
        crate::kernel::storage(gpu, "sample params", bytemuck::cast_slice(params))
    }

    /// Binds (params [`Params`] per sequence, logits f32 `[.., vocab]`, ids u32 rw (each sequence's history: the
    /// repetition-penalty context, where the chosen token is appended), work f32 `[sequences, vocab]` rw scratch,
    /// out u32 rw (the records), tokens u32 rw (the next forward call's input ids)).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        params: &wgpu::Buffer,
        logits: &wgpu::Buffer,
        ids: &wgpu::Buffer,
        work: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(gpu, &[params, logits, ids, work, out, tokens])
    }

    /// One workgroup per sequence: the first `sequences` entries of the params buffer.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, bind: &wgpu::BindGroup, sequences: u32) {
        self.kernel.dispatch(pass, bind, [1, sequences.clamp(1, 65535), 1]);
    }
}
