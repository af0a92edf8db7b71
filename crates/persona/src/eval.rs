//! Choosing the layer and the strength of a trait vector, judge-free (steering-tools.md section 3):
//!
//! - **separation**, per layer: the last-prompt-token projection under the positive vs the negative system prompts
//!   on the held-out evaluation questions (AUROC and Cohen's d);
//! - **response separation**, per layer: the mean projection over the tokens of the trait-consistent vs the
//!   trait-inconsistent reference answers (no system prompt). This is the screening reading, checked on held-out
//!   text; it picks the screening layer, which on small models sits later than the best separation layer
//!   (persona-method.md section 14);
//! - **steering**, for the best layers and a sweep of alphas: the change of the mean log-probability margin of the
//!   consistent over the inconsistent answer (mean per-token log-prob difference), the fraction of questions that
//!   move the wrong way, and the perplexity cost on neutral answers. Steering uses the paper's `response` positions.

use personascope_model::{Flow, Steering};

use crate::backend::{Backend, Pass};
use crate::error::{PersonaError, Result};
use crate::monitor::NeutralItem;
use crate::stats;
use crate::traits::TraitDefinition;
use crate::vector_file::TraitVector;

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

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerRow {
    pub layer: usize,
    pub norm: f32,
    /// Last-prompt-token projection, positive vs negative system prompt.
    pub auroc: f32,
    pub effect_size: f32,
    /// Mean answer-token projection, consistent vs inconsistent reference answer.
    pub response_auroc: f32,
    pub response_effect_size: f32,
}

#[derive(Debug, Clone, serde::Serialize)]
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
pub struct Recommendation {
    pub layer: usize,
    pub alpha: Option<f32>,
    pub screen_layer: usize,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
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

fn mean_lp(lp: &[f32]) -> f32 {
    stats::mean(lp)
}

async fn answer_logprobs<B: Backend>(
    b: &mut B,
    prompt: &[u32],
    answer: &[u32],
    steer: &[Steering],
    want_mean: bool,
) -> Result<(Vec<f32>, Option<Vec<Vec<f32>>>)> {
    let p = prompt.len();
    let tokens: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    let n = tokens.len();
    let out = b
        .pass(&Pass {
            tokens: &tokens,
            steer,
            logprobs: Some(p..n),
            mean_over: want_mean.then_some(p..n),
            ..Default::default()
        })
        .await?;
    Ok((out.logprobs, out.mean))
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

/// Perplexity of the neutral answers (given their questions), steered at `layer` by `alpha` (0: unsteered).
async fn perplexity<B: Backend>(
    b: &mut B,
    neutral: &[(Vec<u32>, Vec<u32>)],
    vector: &TraitVector,
    layer: usize,
    alpha: f32,
) -> Result<f32> {
    let (mut nll, mut count) = (0f64, 0usize);
    for (prompt, answer) in neutral {
        let steer = if alpha == 0.0 { Vec::new() } else { response_steer(vector, layer, alpha, prompt.len()) };
        let (lp, _) = answer_logprobs(b, prompt, answer, &steer, false).await?;
        nll -= lp.iter().map(|&x| x as f64).sum::<f64>();
        count += lp.len();
    }
    Ok(if count == 0 { f32::NAN } else { (nll / count as f64).exp() as f32 })
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
    let mut stop = |p: Progress| if progress(p) == Flow::Stop { Err(PersonaError::Cancelled) } else { Ok(()) };

    // Separation at the last prompt token.
    let mut proj_pos = vec![Vec::new(); layers];
    let mut proj_neg = vec![Vec::new(); layers];
    let total = questions * pairs * 2;
    let mut done = 0;
    for q in evalq {
        for pair in 0..pairs {
            for positive in [true, false] {
                let system = def.system_prompt(pair, positive).ok_or_else(|| {
                    PersonaError::Input(format!("instruction pair {pair} missing in trait {:?}", def.name))
                })?;
                let prompt = backend.chat_prompt(Some(&system), &q.question)?;
                let out = backend.pass(&Pass { tokens: &prompt, ..Default::default() }).await?;
                for (l, u) in units.iter().enumerate() {
                    if let (Some(u), Some(h)) = (u, out.last.get(l)) {
                        let side = if positive { &mut proj_pos[l] } else { &mut proj_neg[l] };
                        side.push(stats::dot(h, u));
                    }
                }
                done += 1;
                stop(Progress { stage: "separation", done, total })?;
            }
        }
    }

    // Reference answers without steering: baseline margins and the response reading.
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
    let mut base_margins = Vec::with_capacity(questions);
    let mut resp = [vec![Vec::new(); layers], vec![Vec::new(); layers]];
    for (i, it) in items.iter().enumerate() {
        let mut m = [0f32; 2];
        for k in 0..2 {
            let (lp, mean) = answer_logprobs(backend, &it.prompt, &it.answers[k], &[], true).await?;
            m[k] = mean_lp(&lp);
            if let Some(mean) = mean {
                for (l, u) in units.iter().enumerate() {
                    if let (Some(u), Some(h)) = (u, mean.get(l)) {
                        resp[k][l].push(stats::dot(h, u));
                    }
                }
            }
        }
        base_margins.push(m[0] - m[1]);
        stop(Progress { stage: "reference answers", done: i + 1, total: questions })?;
    }
    let neutral_tokens = neutral
        .iter()
        .map(|n| -> Result<(Vec<u32>, Vec<u32>)> {
            Ok((backend.chat_prompt(None, &n.question)?, backend.tokenizer().encode(&n.answer)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let baseline_perplexity = perplexity(backend, &neutral_tokens, vector, 0, 0.0).await?;

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
            // (persona-method.md section 13.3): the best separation layer is often too early to steer well.
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
    let mut steering = Vec::new();
    let mut slopes = Vec::new();
    let total = steer_layers.len() * alphas.len();
    let mut done = 0;
    for &layer in &steer_layers {
        let (mut xs, mut ys) = (vec![0f32], vec![0f32]);
        for &alpha in &alphas {
            let mut changes = Vec::with_capacity(items.len());
            for (it, base) in items.iter().zip(&base_margins) {
                let steer = response_steer(vector, layer, alpha, it.prompt.len());
                let mut m = [0f32; 2];
                for (mk, answer) in m.iter_mut().zip(&it.answers) {
                    *mk = mean_lp(&answer_logprobs(backend, &it.prompt, answer, &steer, false).await?.0);
                }
                changes.push(m[0] - m[1] - base);
            }
            let wrong = changes.iter().filter(|&&dm| dm * alpha.signum() < 0.0).count();
            let ppl = perplexity(backend, &neutral_tokens, vector, layer, alpha).await?;
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
            done += 1;
            stop(Progress { stage: "steering", done, total })?;
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
