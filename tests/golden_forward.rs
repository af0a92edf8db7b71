//! The CPU forward pass against Hugging Face transformers (golden files made by tests/golden/scripts):
//! prompt ids, top-20 logits, per-block residuals and greedy continuations, on the real SmolLM2-135M-Instruct
//! and on a tiny synthetic qwen2 model with K-quant weights.

use personascope_model::{argmax, Logits, Message, Model, NoHook, Plan, PlanHook, Span};
use personascope_tests::{default_model, f32s, golden_json, golden_path, rel_l2, u32s, worst_diffs};

/// Top-20 logits: max |ours - ref| allowed, as a fraction of the reference's logit range over the vocabulary.
const LOGIT_TOL_OF_RANGE: f64 = 2e-3;
/// Residual after each block: allowed ||ours - ref|| / ||ref||.
const RESIDUAL_REL_TOL: f64 = 1e-4;
/// Greedy tokens must agree until the reference's top-2 margin falls below this (a near-tie either may break).
const NEAR_TIE_MARGIN: f64 = 1e-2;

fn check_model(model: &Model, golden: &serde_json::Value) {
    let n = model.config.n_layers;
    assert_eq!(golden["n_layers"].as_u64(), Some(n as u64));
    for (ci, case) in golden["cases"].as_array().expect("cases").iter().enumerate() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).expect("messages");
        let ids = model.template.encode_prompt(&model.tokenizer, &messages).expect("encode prompt");
        assert_eq!(ids, u32s(&case["prompt_ids"]), "case {ci}: prompt ids differ");

        // One prefill with every residual captured at the last prompt position.
        let last = ids.len() - 1;
        let plan = Plan { capture: Some(Span::all_layers(last..last + 1, n)), ..Default::default() };
        let mut capture = PlanHook::new(&plan, None, n);
        let mut cache = model.new_cache();
        let logits = model.forward(&mut cache, &ids, &mut capture, Logits::Last).expect("forward");
        let captured = capture.finish();

        for (l, want) in case["residuals"].as_array().expect("residuals").iter().enumerate() {
            let want = f32s(want);
            let got = &captured.captured[0].1[l];
            let err = rel_l2(got, &want);
            println!("case {ci} residual {l:>2}: rel err {err:.2e}");
            assert!(
                err <= RESIDUAL_REL_TOL,
                "case {ci}: residual index {l} rel err {err:.3e} > {RESIDUAL_REL_TOL:e}; worst: {}",
                worst_diffs(got, &want, 4)
            );
        }

        let range = case["logit_range"].as_f64().expect("logit_range");
        let tol = LOGIT_TOL_OF_RANGE * range;
        let mut ours: Vec<usize> = (0..logits.len()).collect();
        ours.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let mut max_diff = 0f64;
        for pair in case["top_logits"].as_array().expect("top_logits") {
            let (id, want) = (pair[0].as_u64().expect("id") as usize, pair[1].as_f64().expect("logit"));
            let diff = (logits[id] as f64 - want).abs();
            max_diff = max_diff.max(diff);
            assert!(diff <= tol, "case {ci}: logit of token {id}: ours {} ref {want} (tol {tol:.4})", logits[id]);
            assert!(ours[..20].contains(&id), "case {ci}: token {id} is in the reference top 20 but not ours");
        }
        println!("case {ci}: top-20 logits max abs diff {max_diff:.2e} (tolerance {tol:.2e}, range {range:.2})");

        // Greedy continuation without stopping at end of turn, as the reference ran it.
        let want_ids = u32s(&case["greedy"]["ids"]);
        let margins = f32s(&case["greedy"]["margins"]);
        let mut next = argmax(&logits) as u32;
        let mut compared = 0;
        for (step, (&want, &margin)) in want_ids.iter().zip(&margins).enumerate() {
            if (margin as f64) < NEAR_TIE_MARGIN {
                println!("case {ci}: greedy step {step} is a reference near-tie (margin {margin}); stop comparing");
                break;
            }
            assert_eq!(next, want, "case {ci}: greedy step {step} differs (reference margin {margin})");
            compared += 1;
            let l = model.forward(&mut cache, &[next], &mut NoHook, Logits::Last).expect("decode");
            next = argmax(&l) as u32;
        }
        println!("case {ci}: {compared} greedy tokens identical");
        assert!(compared >= 8, "case {ci}: too few greedy tokens compared ({compared})");
    }
}

#[test]
fn smollm2_matches_transformers() {
    let model = Model::load(default_model()).expect("load SmolLM2");
    check_model(&model, &golden_json("smollm2_forward.json"));
}

#[test]
fn qwen2_tiny_matches_transformers() {
    let model = Model::load(golden_path("qwen2_tiny.gguf")).expect("load qwen2_tiny");
    assert_eq!(model.config.arch, personascope_model::Arch::Qwen2);
    assert!(model.config.qkv_bias);
    check_model(&model, &golden_json("qwen2_tiny_forward.json"));
}

#[test]
fn llama3_tiny_matches_transformers() {
    // Llama 3 RoPE scaling (`rope_freqs.weight`), GQA 4:1, tied Q8_0 head, Q4_0/Q5_0/Q5_1/Q4_K/Q6_K matrices.
    let model = Model::load(golden_path("llama3_tiny.gguf")).expect("load llama3_tiny");
    assert_eq!(model.config.arch, personascope_model::Arch::Llama);
    assert!(model.config.tied_embeddings);
    check_model(&model, &golden_json("llama3_tiny_forward.json"));
}

#[test]
fn france_greedy_reply_says_paris() {
    let model = Model::load(default_model()).expect("load SmolLM2");
    let messages = vec![Message { role: "user".into(), content: "What is the capital of France?".into() }];
    let ids = model.template.encode_prompt(&model.tokenizer, &messages).expect("prompt");
    let out = personascope_model::generate(
        &model,
        &ids,
        24,
        personascope_model::SamplingParams::greedy(),
        &mut NoHook,
        &mut |_| personascope_model::Flow::Continue,
    )
    .expect("generate");
    println!("reply: {:?} ({:?})", out.text, out.stop);
    assert!(out.text.contains("Paris"), "reply was {:?}", out.text);
    assert_eq!(out.stop, personascope_model::StopReason::EndOfTurn, "a short answer ends its turn");
}
