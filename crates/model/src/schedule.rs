//! The scheduler: many independent passes or generations, run as waves of ragged batches on any [`Engine`].
//!
//! - Sequences are sorted by their tokens, and runs of sequences that begin with the same tokens (one system
//!   prompt over twenty questions; one prompt over its answers, alphas and layers) share a prefix that is computed
//!   once per wave: each member reads the prefix's KV cache and computes only its own tokens. Which runs share is
//!   chosen to save the most tokens (a small dynamic program over the sorted order); a prefix ends before the first
//!   position a member's plan touches, so sharing never changes a result.
//! - Waves are filled up to the engine's [`Limits`] (KV rows, sequences, returned values) and a number of rows that
//!   keeps progress and cancellation responsive.
//! - Generation runs every sequence of a wave in the same decode steps, each stopping on its own
//!   ([`crate::reply::ReplyState`]), one step submitted ahead of the one being read back.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::{out_floats, Engine, Limits, Wave, WaveSeq};
use crate::generate::{Flow, StopReason};
use crate::plan::{Plan, PlanOut, Units};
use crate::reply::{Accepted, ReplyState};
use crate::{ModelError, SamplingParams};

/// One forward pass over `tokens` in a fresh sequence.
#[derive(Debug, Clone)]
pub struct PassSpec {
    pub tokens: Vec<u32>,
    pub plan: Plan,
}

/// One reply to a rendered prompt, from a fresh sequence. The plan's positions are absolute (the prompt is
/// `0..P`, the first generated token `P`): steering for the paper's `response` mode is `P-1..`, the live monitor
/// projects `P-1..`.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub plan: Plan,
}

/// Where a batch job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// Results of [`run_passes`], in the order of the passes given.
#[derive(Debug, Clone, Default)]
pub struct Passes {
    /// None for passes not run because the job was cancelled.
    pub outs: Vec<Option<PlanOut>>,
    pub cancelled: bool,
}

/// A finished reply of [`generate_many`].
#[derive(Debug, Clone)]
pub struct GenOut {
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Per generated token, its projections `[trait][residual index]` (empty without a monitor).
    pub scores: Vec<Vec<Vec<f32>>>,
    /// Projections of the last prompt token (the pre-generation reading; empty unless the plan projects `P-1`).
    pub prompt_scores: Vec<Vec<f32>>,
    /// The prompt pass's own plan results (captures, means, projections over the prompt).
    pub prompt_out: PlanOut,
}

/// A generated token, as the streaming callback sees it.
pub struct TokenEvent<'a> {
    /// Index of the reply in the specs given.
    pub seq: usize,
    pub id: u32,
    /// The text this token completes (may be empty while a multi-byte character is split).
    pub text: &'a str,
    /// 0-based index of the token in its reply.
    pub index: usize,
    pub scores: &'a [Vec<f32>],
}

/// Rows of new tokens per wave beyond which a wave is closed, so progress and cancellation come often enough;
/// a multiple of what one forward holds gives full batches.
pub const WAVE_ROWS: usize = 1024;

/// Shortest prefix worth sharing.
const MIN_SHARED: usize = 4;

/// A sequence to place: its tokens, how many leading tokens may be shared, what it costs in a wave.
struct Item<'a> {
    tokens: &'a [u32],
    plan: &'a Plan,
    generate: Option<(SamplingParams, usize)>,
    shareable: usize,
}

/// Groups of sorted items: (members in sorted order, shared prefix length, 0 = none).
fn group(items: &[Item<'_>]) -> Vec<(Vec<usize>, usize)> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[a].tokens.cmp(items[b].tokens).then(a.cmp(&b)));
    let n = order.len();
    // lcp[k]: tokens sorted items k and k+1 may share.
    let lcp: Vec<usize> = (0..n.saturating_sub(1))
        .map(|k| {
            let (a, b) = (&items[order[k]], &items[order[k + 1]]);
            let common = a.tokens.iter().zip(b.tokens).take_while(|(x, y)| x == y).count();
            common.min(a.shareable).min(b.shareable)
        })
        .collect();
    // best[j]: most tokens saved by grouping sorted items 0..j; from[j]: where the last group starts (and its
    // shared length; 0 = item j-1 alone).
    let mut best = vec![0usize; n + 1];
    let mut from = vec![(0usize, 0usize); n + 1];
    for j in 1..=n {
        best[j] = best[j - 1];
        from[j] = (j - 1, 0);
        let mut shared = usize::MAX;
        // Groups of at most this many members are considered: enough for every job here, and the program stays
        // linear in practice.
        for i in (j.saturating_sub(4096)..j.saturating_sub(1)).rev() {
            shared = shared.min(lcp[i]);
            if shared < MIN_SHARED {
                break;
            }
            let saved = best[i] + (j - i - 1) * shared;
            if saved > best[j] {
                best[j] = saved;
                from[j] = (i, shared);
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let (i, shared) = from[j];
        groups.push((order[i..j].to_vec(), shared));
        j = i;
    }
    groups.reverse();
    groups
}

/// A wave being filled, with the item index of each of its member sequences (None: a shared prefix).
struct Filling {
    wave: Wave,
    members: Vec<Option<usize>>,
    kv: usize,
    out: usize,
    rows: usize,
    /// Wave index of the prefix of the group being placed, if it is in this wave.
    prefix: Option<usize>,
}

impl Filling {
    fn new(monitor: Option<Arc<Units>>) -> Self {
        Filling { wave: Wave { seqs: Vec::new(), monitor }, members: Vec::new(), kv: 0, out: 0, rows: 0, prefix: None }
    }
}

/// A wave and, per sequence of it, the item it runs (None: a shared prefix).
type Placed = (Wave, Vec<Option<usize>>);

/// Packs groups into waves within `limits`.
fn waves(
    items: &[Item<'_>],
    groups: Vec<(Vec<usize>, usize)>,
    limits: &Limits,
    layers: usize,
    d: usize,
    monitor: Option<Arc<Units>>,
    max_positions: usize,
) -> Result<Vec<Placed>, ModelError> {
    let traits = monitor.as_ref().map_or(0, |m| m.len());
    let mut done = Vec::new();
    let mut cur = Filling::new(monitor.clone());
    let seq_of = |it: &Item<'_>, prefix: Option<(usize, usize)>| WaveSeq {
        prefix,
        tokens: it.tokens[prefix.map_or(0, |p| p.1)..].to_vec(),
        plan: it.plan.clone(),
        generate: it.generate.clone(),
    };
    for (members, shared) in groups {
        cur.prefix = None;
        let share = members.len() > 1 && shared >= MIN_SHARED;
        for &m in &members {
            let it = &items[m];
            let len = it.tokens.len() + it.generate.as_ref().map_or(0, |g| g.1);
            if len > max_positions {
                return Err(ModelError::ContextFull { needed: len, max: max_positions });
            }
            let fits = |f: &Filling, with_prefix: bool| {
                let new_prefix = with_prefix && f.prefix.is_none();
                let base = if with_prefix { shared } else { 0 };
                let s = seq_of(it, with_prefix.then_some((0, base)));
                let kv = f.kv + s.kv_rows() + if new_prefix { shared } else { 0 };
                let seqs = f.wave.seqs.len() + 1 + usize::from(new_prefix);
                let gens =
                    f.wave.seqs.iter().filter(|s| s.generate.is_some()).count() + usize::from(s.generate.is_some());
                let out = f.out + out_floats(&s, layers, d, traits);
                let rows = f.rows + s.tokens.len() + if new_prefix { shared } else { 0 };
                let empty = f.wave.seqs.is_empty();
                kv <= limits.kv_rows
                    && seqs <= limits.seqs
                    && gens <= limits.gen_seqs
                    && out <= limits.out_floats
                    && (empty || rows <= WAVE_ROWS)
            };
            if !fits(&cur, share) {
                if !cur.wave.seqs.is_empty() {
                    let full = std::mem::replace(&mut cur, Filling::new(monitor.clone()));
                    done.push((full.wave, full.members));
                }
                if !fits(&cur, share) && !fits(&cur, false) {
                    return Err(ModelError::Config(format!(
                        "a sequence of {len} positions does not fit this engine (at most {} KV rows and {} returned values per wave)",
                        limits.kv_rows, limits.out_floats
                    )));
                }
            }
            let use_prefix = share && fits(&cur, true);
            if use_prefix && cur.prefix.is_none() {
                let p = WaveSeq {
                    prefix: None,
                    tokens: it.tokens[..shared].to_vec(),
                    plan: Plan::default(),
                    generate: None,
                };
                cur.kv += shared;
                cur.rows += shared;
                cur.prefix = Some(cur.wave.seqs.len());
                cur.wave.seqs.push(p);
                cur.members.push(None);
            }
            let prefix = if use_prefix { cur.prefix.map(|i| (i, shared)) } else { None };
            let s = seq_of(it, prefix);
            cur.kv += s.kv_rows();
            cur.rows += s.tokens.len();
            cur.out += out_floats(&s, layers, d, traits);
            cur.wave.seqs.push(s);
            cur.members.push(Some(m));
        }
    }
    if !cur.wave.seqs.is_empty() {
        done.push((cur.wave, cur.members));
    }
    Ok(done)
}

fn check<E: Engine>(e: &E, tokens: &[u32], plan: &Plan) -> Result<(), E::Error> {
    let c = e.config();
    if tokens.is_empty() {
        return Err(ModelError::Config("a pass needs at least one token".into()).into());
    }
    if tokens.len() > e.max_positions() {
        return Err(ModelError::ContextFull { needed: tokens.len(), max: e.max_positions() }.into());
    }
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab_size }.into());
    }
    plan.validate(tokens.len(), c.n_layers, c.d_model)?;
    Ok(())
}

/// Runs every pass (each in a fresh sequence) in as few waves as the engine's limits allow. `progress` is called
/// after each wave; `Flow::Stop` ends the job with the passes run so far (`cancelled`).
pub async fn run_passes<E: Engine>(
    e: &mut E,
    passes: &[PassSpec],
    monitor: Option<Arc<Units>>,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Passes, E::Error> {
    for p in passes {
        check(e, &p.tokens, &p.plan)?;
    }
    let c = e.config().clone();
    let items: Vec<Item<'_>> = passes
        .iter()
        .map(|p| Item {
            tokens: &p.tokens,
            plan: &p.plan,
            generate: None,
            shareable: p.plan.first_touched(p.tokens.len()),
        })
        .collect();
    let groups = group(&items);
    let waves = waves(&items, groups, &e.limits(), c.n_layers + 1, c.d_model, monitor, e.max_positions())?;
    let mut outs: Vec<Option<PlanOut>> = vec![None; passes.len()];
    let mut done = 0;
    for (wave, members) in waves {
        let results = e.prefill(&wave).await?;
        for (m, out) in members.into_iter().zip(results) {
            if let Some(m) = m {
                outs[m] = Some(out);
                done += 1;
            }
        }
        if progress(Progress { done, total: passes.len() }) == Flow::Stop && done < passes.len() {
            return Ok(Passes { outs, cancelled: true });
        }
    }
    Ok(Passes { outs, cancelled: false })
}

/// Generates a reply for every spec, in waves of sequences that decode together. `on_token` streams each token
/// (`Flow::Stop` ends that reply: `Cancelled`); `progress` is called after each wave, and `Flow::Stop` there
/// leaves the replies not started yet empty and `Cancelled`.
pub async fn generate_many<E: Engine>(
    e: &mut E,
    specs: &[GenSpec],
    monitor: Option<Arc<Units>>,
    on_token: &mut dyn FnMut(TokenEvent<'_>) -> Flow,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Vec<GenOut>, E::Error> {
    let max_pos = e.max_positions();
    for s in specs {
        check(e, &s.prompt, &s.plan)?;
        s.sampling.validate()?;
        if s.prompt.len() >= max_pos {
            return Err(ModelError::ContextFull { needed: s.prompt.len() + 1, max: max_pos }.into());
        }
    }
    let c = e.config().clone();
    let items: Vec<Item<'_>> = specs
        .iter()
        .map(|s| Item {
            tokens: &s.prompt,
            plan: &s.plan,
            generate: Some((s.sampling.clone(), s.max_tokens.min(max_pos - s.prompt.len()))),
            shareable: s.plan.first_touched(s.prompt.len()),
        })
        .collect();
    let groups = group(&items);
    let waves = waves(&items, groups, &e.limits(), c.n_layers + 1, c.d_model, monitor, max_pos)?;
    let mut results: Vec<Option<GenOut>> = vec![None; specs.len()];
    let mut done = 0;
    let mut stopped = false;
    for (wave, members) in waves {
        if stopped {
            break;
        }
        let prompt_outs = e.prefill(&wave).await?;
        // Replies of this wave by wave index.
        let mut replies: Vec<Option<ReplyState>> = members
            .iter()
            .map(|m| m.map(|m| ReplyState::new(e.tokenizer(), specs[m].prompt.len(), specs[m].max_tokens, max_pos)))
            .collect();
        let mut pending: VecDeque<Vec<usize>> = VecDeque::new();
        let mut step = 0u32;
        let first: Vec<usize> =
            (0..replies.len()).filter(|&i| replies[i].as_ref().is_some_and(|r| r.may_submit(0))).collect();
        if !first.is_empty() {
            e.submit_step(&first, step)?;
            pending.push_back(first);
        }
        while let Some(oldest) = pending.front() {
            if pending.len() == 1 {
                let next: Vec<usize> =
                    oldest.iter().copied().filter(|&i| replies[i].as_ref().is_some_and(|r| r.may_submit(1))).collect();
                if !next.is_empty() {
                    e.submit_step(&next, step + 1)?;
                    pending.push_back(next);
                }
            }
            let tokens = e.finish_step().await?;
            pending.pop_front();
            step += 1;
            for t in tokens {
                let (Some(Some(r)), Some(Some(m))) = (replies.get_mut(t.seq), members.get(t.seq)) else { continue };
                if !r.running() {
                    continue;
                }
                let scores = t.scores;
                if let Accepted::Token(piece) = r.accept(e.tokenizer(), t.token, scores)? {
                    let index = r.ids.len() - 1;
                    let flow = on_token(TokenEvent {
                        seq: *m,
                        id: t.token,
                        text: &piece,
                        index,
                        scores: r.scores.last().map_or(&[][..], |s| &s[..]),
                    });
                    r.after_callback(flow == Flow::Stop);
                }
            }
        }
        for ((m, r), prompt_out) in members.iter().zip(replies.iter_mut()).zip(prompt_outs) {
            let (Some(m), Some(r)) = (m, r) else { continue };
            let prompt_len = specs[*m].prompt.len();
            let prompt_scores = prompt_out
                .scores
                .iter()
                .find(|(p, _)| *p + 1 == prompt_len)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            let text = r.finish();
            results[*m] = Some(GenOut {
                ids: std::mem::take(&mut r.ids),
                text,
                stop: r.stop.unwrap_or(StopReason::MaxTokens),
                scores: std::mem::take(&mut r.scores),
                prompt_scores,
                prompt_out,
            });
            done += 1;
        }
        if progress(Progress { done, total: specs.len() }) == Flow::Stop {
            stopped = true;
        }
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or(GenOut {
                ids: Vec::new(),
                text: String::new(),
                stop: StopReason::Cancelled,
                scores: Vec::new(),
                prompt_scores: Vec::new(),
                prompt_out: PlanOut::default(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(tokens: &'a [u32], plan: &'a Plan) -> Item<'a> {
        Item { tokens, plan, generate: None, shareable: plan.first_touched(tokens.len()) }
    }

    #[test]
    fn groups_share_the_longest_useful_prefix() {
        let plan = Plan::default();
        // Two questions under one system prompt (tokens 1..=6), and one unrelated sequence.
        let a = [1, 2, 3, 4, 5, 6, 10, 11];
        let b = [1, 2, 3, 4, 5, 6, 20, 21, 22];
        let c = [9, 9, 9];
        let items = vec![item(&a, &plan), item(&b, &plan), item(&c, &plan)];
        let g = group(&items);
        assert_eq!(g, vec![(vec![0, 1], 6), (vec![2], 0)]);
    }

    #[test]
    fn prefix_stops_before_the_first_touched_position() {
        let touched = Plan { logprobs: Some(4..8), ..Default::default() };
        let a = [1, 2, 3, 4, 5, 6, 7, 8];
        let b = [1, 2, 3, 4, 5, 6, 7, 9];
        let items = vec![item(&a, &touched), item(&b, &touched)];
        // logprobs from 4 need the logits of position 3: at most 3 tokens can come from a prefix, fewer than the
        // minimum worth sharing.
        assert_eq!(group(&items), vec![(vec![0], 0), (vec![1], 0)]);
    }

    #[test]
    fn waves_respect_the_limits_and_repeat_a_prefix_when_split() {
        let plan = Plan::default();
        let seqs: Vec<Vec<u32>> = (0..5).map(|i| vec![1, 2, 3, 4, 5, 6, 100 + i, 7]).collect();
        let items: Vec<Item<'_>> = seqs.iter().map(|t| item(t, &plan)).collect();
        let groups = group(&items);
        assert_eq!(groups.len(), 1);
        let limits = Limits { kv_rows: 1000, seqs: 3, gen_seqs: 3, out_floats: 1000, traits: 4 };
        let w = waves(&items, groups, &limits, 3, 4, None, 100).expect("waves");
        // 3 sequences per wave: prefix + 2 members, prefix + 2, prefix + 1.
        assert_eq!(w.len(), 3);
        for (wave, members) in &w {
            assert!(wave.seqs.len() <= 3);
            assert_eq!(members[0], None);
            assert_eq!(wave.seqs[0].tokens, vec![1, 2, 3, 4, 5, 6]);
            for s in &wave.seqs[1..] {
                assert_eq!(s.prefix, Some((0, 6)));
                assert_eq!(s.tokens.len(), 2);
            }
        }
        let placed: Vec<usize> = w.iter().flat_map(|(_, m)| m.iter().flatten().copied()).collect();
        assert_eq!(placed.len(), 5);
    }
}
