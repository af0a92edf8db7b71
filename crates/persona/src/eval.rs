//! Choosing the layer and the strength of a trait vector, judge-free (docs/method.md §6):
//!
//! - **separation**, per layer: the last-prompt-token projection under the positive vs the negative system prompts
//!   on the held-out evaluation questions (AUROC and Cohen's d);
//! - **response separation**, per layer: the mean projection over the tokens of the trait-consistent vs the
//!   trait-inconsistent reference answers (no system prompt). This is the screening reading, checked on held-out
//!   text; it picks the screening layer, which on small models sits later than the best separation layer
//!   (docs/method.md §9);
//! - **steering**, for the best layers and a sweep of alphas: the change of the mean log-probability margin of the
//!   consistent over the inconsistent answer (mean per-token log-prob difference), the fraction of questions that
//!   move the wrong way, and the perplexity cost on neutral answers. Steering uses the paper's `response` positions.

use personascope_model::{Flow, Steering};

use crate::backend::{self, Backend, Plan, Span};
use crate::error::{PersonaError, Result};
use crate::monitor::NeutralItem;
use crate::stats;
use crate::traits::TraitDefinition;
use crate::vector_file::TraitVector;
use personascope_model::schedule::PassSpec;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Strengths swept at each steering layer (alpha = 0 is the baseline, always measured).
    pub alphas: Vec<f32>,
    /// Layers the steering sweep covers; None: the `top_layers` best by separation, plus the layers at 0.55 and 0.7
    /// of the depth.
    pub steer_layers: Option<Vec<usize>>,
    pub top_layers: usize,
    /// Instruction pairs used for separation (None: all).
    pub pairs: Option<usize>,
    /// Evaluation questions used (None: all).
    pub questions: Option<usize>,
    /// Largest perplexity increase (percent) a recommended setting may cost.
    pub max_ppl_cost_pct: f32,
    /// Largest fraction of questions moving the wrong way a recommended setting may have.
    pub max_wrong_way: f32,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            alphas: vec![0.5, 1.0, 2.0],
            steer_layers: None,
            top_layers: 1,
            pairs: None,
            questions: None,
            max_ppl_cost_pct: 25.0,
            max_wrong_way: 0.2,
        }
    }
}

/// One residual index of an evaluation; a measure is NaN (null in JSON) where it is undefined (no spread, e.g.
/// the embeddings).
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LayerRow {
    pub layer: usize,
    pub norm: f32,
    /// Last-prompt-token projection, positive vs negative system prompt.
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub auroc: f32,
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub effect_size: f32,
    /// Mean answer-token projection, consistent vs inconsistent reference answer.
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub response_auroc: f32,
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub response_effect_size: f32,
}

#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SteerRow {
    pub layer: usize,
    pub alpha: f32,
    /// Mean over questions of (margin at alpha - margin at 0), in nats per token.
    pub margin_change: f32,
    /// Fraction of questions whose margin moved against the sign of alpha.
    pub wrong_way: f32,
    pub perplexity: f32,
    /// Perplexity increase over the unsteered model on the neutral answers, percent.
    pub ppl_cost_pct: f32,
}

#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Recommendation {
    pub layer: usize,
    pub alpha: Option<f32>,
    pub screen_layer: usize,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct EvalReport {
    pub trait_name: String,
    pub layers: Vec<LayerRow>,
    /// Mean margin (consistent - inconsistent, nats per token) without steering.
    pub baseline_margin: f32,
    pub baseline_perplexity: f32,
    pub steering: Vec<SteerRow>,
    /// Least-squares slope of the margin change over alpha (including alpha = 0), per steering layer.
    pub slopes: Vec<(usize, f32)>,
    pub recommended: Recommendation,
    pub questions: usize,
    pub pairs: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
}

/// Per-question token ids: prompt, consistent answer, inconsistent answer.
struct Item {
    prompt: Vec<u32>,
    answers: [Vec<u32>; 2],
}

/// A pass over a prompt and an answer that returns the answer's log-probabilities (and, with `mean`, its mean
/// residual at every index), steered as given.
fn answer_pass(prompt: &[u32], answer: &[u32], steer: Vec<Steering>, mean: Option<usize>) -> PassSpec {
    let p = prompt.len();
    let tokens: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    let n = tokens.len();
    let mean = mean.map(|n_layers| Span::all_layers(p..n, n_layers));
    PassSpec { tokens, plan: Plan { steer, logprobs: Some(p..n), mean, ..Default::default() } }
}

/// Steering at residual index `layer` with the paper's `response` positions for a prompt of `p` tokens.
fn response_steer(vector: &TraitVector, layer: usize, alpha: f32, p: usize) -> Vec<Steering> {
    vector
        .rows
        .get(layer)
        .map(|v| Steering { layer, vector: v.clone(), alpha, positions: p.saturating_sub(1)..usize::MAX })
        .into_iter()
        .collect()
}

/// exp(mean negative log-likelihood) over the log-probabilities of several answers.
fn perplexity(lps: &[&[f32]]) -> f32 {
    let count: usize = lps.iter().map(|l| l.len()).sum();
    let nll: f64 = -lps.iter().flat_map(|l| l.iter()).map(|&x| x as f64).sum::<f64>();
    if count == 0 {
        f32::NAN
    } else {
        (nll / count as f64).exp() as f32
    }
}

/// Evaluates `vector` for `def` on the model behind `backend`.
pub async fn evaluate<B: Backend>(
    backend: &mut B,
    def: &TraitDefinition,
    vector: &TraitVector,
    neutral: &[NeutralItem],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<EvalReport> {
    def.validate()?;
    let c = backend.config().clone();
    vector.check_model(c.arch.name(), Some(backend.model_name()), c.n_layers, c.d_model)?;
    let layers = c.n_layers + 1;
    let units: Vec<Option<Vec<f32>>> = vector.rows.iter().map(|r| stats::unit(r)).collect();
    let pairs = opts.pairs.unwrap_or(def.instructions.len()).clamp(1, def.instructions.len());
    let questions = opts.questions.unwrap_or(def.evaluation_questions.len()).clamp(1, def.evaluation_questions.len());
    let evalq = &def.evaluation_questions[..questions];

    let n = c.n_layers;
    // One batch job: separation prompts, the reference answers, the neutral answers.
    let mut specs: Vec<PassSpec> = Vec::new();
    let mut polarity = Vec::new();
    for q in evalq {
        for pair in 0..pairs {
            for positive in [true, false] {
                let system = def.system_prompt(pair, positive).ok_or_else(|| {
                    PersonaError::Input(format!("instruction pair {pair} missing in trait {:?}", def.name))
                })?;
                let prompt = backend.chat_prompt(Some(&system), &q.question)?;
                let plan = backend::last_token_plan(prompt.len(), n);
                specs.push(PassSpec { tokens: prompt, plan });
                polarity.push(positive);
            }
        }
    }
    let separation = specs.len();
    let mut items = Vec::with_capacity(questions);
    for q in evalq {
        let prompt = backend.chat_prompt(None, &q.question)?;
        let tok = backend.tokenizer();
        let answers = [tok.encode(&q.consistent)?, tok.encode(&q.inconsistent)?];
        if answers.iter().any(Vec::is_empty) {
            return Err(PersonaError::Input(format!("an empty reference answer for {:?}", q.question)));
        }
        items.push(Item { prompt, answers });
    }
    for it in &items {
        for a in &it.answers {
            specs.push(answer_pass(&it.prompt, a, Vec::new(), Some(n)));
        }
    }
    let neutral_tokens = neutral
        .iter()
        .map(|n| -> Result<(Vec<u32>, Vec<u32>)> {
            Ok((backend.chat_prompt(None, &n.question)?, backend.tokenizer().encode(&n.answer)?))
        })
        .collect::<Result<Vec<_>>>()?;
    for (prompt, answer) in &neutral_tokens {
        specs.push(answer_pass(prompt, answer, Vec::new(), None));
    }
    let total = specs.len();
    let outs = backend::all_passes(backend, &specs, None, &mut |p| {
        progress(Progress { stage: "separation", done: p.done, total })
    })
    .await?;
    let mut proj_pos = vec![Vec::new(); layers];
    let mut proj_neg = vec![Vec::new(); layers];
    for (out, &positive) in outs[..separation].iter().zip(&polarity) {
        let last = backend::last_rows(out)?;
        for (l, u) in units.iter().enumerate() {
            if let (Some(u), Some(h)) = (u, last.get(l)) {
                let side = if positive { &mut proj_pos[l] } else { &mut proj_neg[l] };
                side.push(stats::dot(h, u));
            }
        }
    }
    let mut base_margins = Vec::with_capacity(questions);
    let mut resp = [vec![Vec::new(); layers], vec![Vec::new(); layers]];
    let reference = &outs[separation..separation + 2 * items.len()];
    for pair in reference.chunks_exact(2) {
        let mut m = [0f32; 2];
        for k in 0..2 {
            m[k] = stats::mean(&pair[k].logprobs);
            if let Some(mean) = &pair[k].mean {
                for (l, u) in units.iter().enumerate() {
                    if let (Some(u), Some(h)) = (u, mean.get(l)) {
                        resp[k][l].push(stats::dot(h, u));
                    }
                }
            }
        }
        base_margins.push(m[0] - m[1]);
    }
    let neutral_lps: Vec<&[f32]> = outs[separation + 2 * items.len()..].iter().map(|o| &o.logprobs[..]).collect();
    let baseline_perplexity = perplexity(&neutral_lps);

    let layer_rows: Vec<LayerRow> = (0..layers)
        .map(|l| LayerRow {
            layer: l,
            norm: vector.rows.get(l).map_or(0.0, |r| stats::norm(r)),
            auroc: stats::auroc(&proj_pos[l], &proj_neg[l]),
            effect_size: stats::cohen_d(&proj_pos[l], &proj_neg[l]),
            response_auroc: stats::auroc(&resp[0][l], &resp[1][l]),
            response_effect_size: stats::cohen_d(&resp[0][l], &resp[1][l]),
        })
        .collect();
    // Layer 0 (embeddings) is the prompt's own tokens and cannot be steered meaningfully; rank 1..=N.
    let rank = |key: fn(&LayerRow) -> (f32, f32)| {
        let mut ls: Vec<&LayerRow> = layer_rows.iter().skip(1).filter(|r| key(r).0.is_finite()).collect();
        ls.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            kb.0.total_cmp(&ka.0).then(kb.1.total_cmp(&ka.1))
        });
        ls.into_iter().map(|r| r.layer).collect::<Vec<_>>()
    };
    let by_separation = rank(|r| (r.auroc, r.effect_size));
    let by_response = rank(|r| (r.response_auroc, r.response_effect_size));
    let best_layer =
        *by_separation.first().ok_or_else(|| PersonaError::Input("the vector is zero at every layer".into()))?;
    let screen_layer = by_response.first().copied().unwrap_or(best_layer);

    // Steering sweep.
    let steer_layers: Vec<usize> = match &opts.steer_layers {
        Some(ls) => {
            if let Some(&bad) = ls.iter().find(|&&l| l == 0 || l >= layers) {
                return Err(PersonaError::Input(format!("steering layer {bad} out of range (1..={})", c.n_layers)));
            }
            ls.clone()
        }
        None => {
            // The best layers by separation, plus the depth fractions 0.55 and 0.7 where steering usually works
            // (docs/method.md §9): the best separation layer is often too early to steer well.
            let mut ls: Vec<usize> = by_separation.iter().copied().take(opts.top_layers.max(1)).collect();
            for f in [0.55f32, 0.7] {
                let l = ((c.n_layers as f32 * f).round() as usize).clamp(1, c.n_layers);
                if !ls.contains(&l) {
                    ls.push(l);
                }
            }
            ls
        }
    };
    let alphas: Vec<f32> = opts.alphas.iter().copied().filter(|a| *a != 0.0 && a.is_finite()).collect();
    // One batch job for the whole sweep: per (layer, alpha) both answers of every question and every neutral answer.
    let settings: Vec<(usize, f32)> = steer_layers.iter().flat_map(|&l| alphas.iter().map(move |&a| (l, a))).collect();
    let mut specs = Vec::new();
    for &(layer, alpha) in &settings {
        for it in &items {
            for a in &it.answers {
                specs.push(answer_pass(&it.prompt, a, response_steer(vector, layer, alpha, it.prompt.len()), None));
            }
        }
        for (prompt, answer) in &neutral_tokens {
            specs.push(answer_pass(prompt, answer, response_steer(vector, layer, alpha, prompt.len()), None));
        }
    }
    let total = specs.len();
    let outs = backend::all_passes(backend, &specs, None, &mut |p| {
        progress(Progress { stage: "steering", done: p.done, total })
    })
    .await?;
    let per_setting = 2 * items.len() + neutral_tokens.len();
    let mut steering = Vec::new();
    let mut slopes = Vec::new();
    for &layer in &steer_layers {
        let (mut xs, mut ys) = (vec![0f32], vec![0f32]);
        for (si, &(_, alpha)) in settings.iter().enumerate().filter(|(_, (l, _))| *l == layer) {
            let block = &outs[si * per_setting..(si + 1) * per_setting];
            let changes: Vec<f32> = block[..2 * items.len()]
                .chunks_exact(2)
                .zip(&base_margins)
                .map(|(pair, base)| stats::mean(&pair[0].logprobs) - stats::mean(&pair[1].logprobs) - base)
                .collect();
            let wrong = changes.iter().filter(|&&dm| dm * alpha.signum() < 0.0).count();
            let lps: Vec<&[f32]> = block[2 * items.len()..].iter().map(|o| &o.logprobs[..]).collect();
            let ppl = perplexity(&lps);
            let margin_change = stats::mean(&changes);
            xs.push(alpha);
            ys.push(margin_change);
            steering.push(SteerRow {
                layer,
                alpha,
                margin_change,
                wrong_way: wrong as f32 / changes.len().max(1) as f32,
                perplexity: ppl,
                ppl_cost_pct: (ppl / baseline_perplexity - 1.0) * 100.0,
            });
        }
        slopes.push((layer, stats::slope(&xs, &ys)));
    }

    // The strongest positive setting within the perplexity and wrong-way budgets.
    let ok = |r: &&SteerRow| {
        r.alpha > 0.0
            && r.margin_change > 0.0
            && r.ppl_cost_pct <= opts.max_ppl_cost_pct
            && r.wrong_way <= opts.max_wrong_way
    };
    let recommended = match steering.iter().filter(ok).max_by(|a, b| a.margin_change.total_cmp(&b.margin_change)) {
        Some(r) => Recommendation {
            layer: r.layer,
            alpha: Some(r.alpha),
            screen_layer,
            reason: format!(
                "largest margin gain ({:+.3} nats/token) within the budgets (perplexity +{:.0}% <= {:.0}%, wrong way {:.0}% <= {:.0}%)",
                r.margin_change,
                r.ppl_cost_pct,
                opts.max_ppl_cost_pct,
                r.wrong_way * 100.0,
                opts.max_wrong_way * 100.0
            ),
        },
        None => Recommendation {
            layer: best_layer,
            alpha: None,
            screen_layer,
            reason: "no swept steering setting raised the margin within the budgets; layer = best separation, no alpha recommended".into(),
        },
    };
    Ok(EvalReport {
        trait_name: def.name.clone(),
        layers: layer_rows,
        baseline_margin: stats::mean(&base_margins),
        baseline_perplexity,
        steering,
        slopes,
        recommended,
        questions,
        pairs,
    })
}
