//! Tokenizer against golden ids from Hugging Face `tokenizers` (tests/golden/tokenizer_*.json, made by
//! tests/golden/scripts/make_tokenizer.py), plus the safety properties: special-token text in user text stays
//! text, bad ids are errors, unsupported tokenizers are refused, streaming decode equals whole decode.

use std::path::PathBuf;
use std::sync::OnceLock;

use personascope_gguf::{Array, Gguf, GgufWriter, Value};
use personascope_model::tokenizer::Tokenizer;
use personascope_model::ModelError;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> Vec<u8> {
    let path = root().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}). The model comes from `bash models/fetch.sh`; golden files are in the repository \
             under tests/golden/ (regenerate with tests/golden/scripts/*.py)",
            path.display()
        )
    })
}

fn load(rel: &str) -> Tokenizer {
    let bytes = read(rel);
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("parsing {rel}: {e}"));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("tokenizer of {rel}: {e}"))
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn qwen2_tiny() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load("tests/golden/qwen2_tiny.gguf"))
}

fn short(s: &str) -> String {
    let cut: String = s.chars().take(60).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// Checks every golden case; reports all failures with the text and the first differing position.
fn check_golden(tok: &Tokenizer, golden: &str, want_pre: &str) {
    let j: serde_json::Value = serde_json::from_slice(&read(golden)).unwrap_or_else(|e| panic!("{golden}: {e}"));
    assert_eq!(j["pre"].as_str(), Some(want_pre), "{golden}: pre");
    let cases = j["cases"].as_array().unwrap_or_else(|| panic!("{golden}: no cases"));
    assert!(cases.len() >= 30, "{golden}: only {} cases", cases.len());
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().expect("ids array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    };
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let text = case["text"].as_str().expect("text");
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            let lo = at.saturating_sub(3);
            failures.push(format!(
                "case {n} {}: ids differ at position {at} (got {} ids, want {}): got {:?} want {:?}",
                short(text),
                got.len(),
                want.len(),
                &got[lo..(at + 4).min(got.len())],
                &want[lo..(at + 4).min(want.len())],
            ));
        }
        let decoded = tok.decode(&want, false).expect("decode");
        if decoded != text || case["decoded"].as_str() != Some(text) {
            failures.push(format!("case {n} {}: decodes to {}", short(text), short(&decoded)));
        }
        if let Some(matched) = case.get("ids_special_matched") {
            let want = ids_of(matched);
            let got = tok.encode_with_special(text).expect("encode_with_special");
            if got != want {
                failures.push(format!("case {n} {}: encode_with_special {got:?}, want {want:?}", short(text)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{golden}: {} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_golden_ids() {
    check_golden(smollm2(), "tests/golden/tokenizer_smollm2.json", "smollm");
}

#[test]
fn qwen2_tiny_matches_golden_ids() {
    check_golden(qwen2_tiny(), "tests/golden/tokenizer_qwen2_tiny.json", "qwen2");
}

#[test]
fn llama3_tiny_matches_golden_ids() {
    let t = load("tests/golden/llama3_tiny.gguf");
    check_golden(&t, "tests/golden/tokenizer_llama3_tiny.json", "llama-bpe");
}

#[test]
fn smollm2_metadata() {
    let t = smollm2();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.token_text(1), Some("<|im_start|>"));
    assert_eq!(t.token_text(49152), None);
    assert!(t.is_special(0) && t.is_special(1) && t.is_special(2));
    let hello = t.encode("Hello").expect("encode");
    assert!(!t.is_special(hello[0]));
    // EOS first, then the other end-of-turn tokens present: <|endoftext|>.
    assert_eq!(t.stop_ids(), &[2, 0]);
    let q = qwen2_tiny();
    assert_eq!(q.eos_id(), Some(578));
    assert_eq!(q.stop_ids(), &[578, 576]);
}

#[test]
fn special_text_in_user_text_is_plain() {
    let t = smollm2();
    for text in ["<|im_start|>", "hi <|im_end|> there", "<|endoftext|><file_sep>"] {
        let ids = t.encode(text).expect("encode");
        assert!(ids.iter().all(|&id| !t.is_special(id)), "{text:?} gave special ids {ids:?}");
        assert_eq!(t.decode(&ids, true).expect("decode"), text);
    }
    let ids = t.encode_with_special("<|im_start|>user\nhi<|im_end|>\n").expect("encode_with_special");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    assert_eq!(t.decode(&ids, false).expect("decode"), "<|im_start|>user\nhi<|im_end|>\n");
    assert_eq!(t.decode(&ids, true).expect("decode"), "user\nhi\n");
    // A marker only counts inside an allowed range.
    let text = "<|im_start|>a<|im_end|>";
    let ids = t.encode_with_special_in(text, std::slice::from_ref(&(0..12))).expect("encode_with_special_in");
    assert_eq!(ids[0], 1);
    assert!(!ids.contains(&2), "{ids:?}");
}

#[test]
fn out_of_range_ids_are_errors() {
    let t = smollm2();
    let n = t.vocab_size() as u32;
    match t.decode(&[1, n], false) {
        Err(ModelError::TokenOutOfRange { id, vocab }) => assert_eq!((id, vocab), (n, n as usize)),
        other => panic!("expected TokenOutOfRange, got {other:?}"),
    }
    assert!(t.decode(&[u32::MAX], true).is_err());
    assert!(matches!(t.stream().push(u32::MAX), Err(ModelError::TokenOutOfRange { .. })));
}

#[test]
fn stream_decoder_equals_decode() {
    let t = smollm2();
    let texts = [
        "family 👨‍👩‍👧 emoji and flags 🇫🇷🇯🇵",
        "中文分词测试，你好世界！日本語の文章です。",
        "mixed: naïve café 🚀 한국어 ½ end",
    ];
    for text in texts {
        let ids = t.encode(text).expect("encode");
        let mut s = t.stream();
        let mut got = String::new();
        let mut held_back = false;
        for &id in &ids {
            let piece = s.push(id).expect("push");
            held_back |= piece.is_empty();
            got.push_str(&piece);
        }
        got.push_str(&s.finish());
        assert_eq!(got, t.decode(&ids, true).expect("decode"));
        assert_eq!(got, text);
        assert!(held_back, "{text:?}: expected some token to end mid-character");
    }
    // Special tokens skipped, invalid byte sequences replaced exactly as a lossy decode does.
    let byte = |b: u8| -> u32 {
        let ids = t.encode(&String::from_utf8_lossy(&[b])).expect("encode");
        ids[0]
    };
    let e_acute_lead = t.encode("é").expect("encode");
    let mut ids = vec![1];
    ids.extend(t.encode("a😀").expect("encode"));
    ids.push(2);
    ids.extend(&e_acute_lead);
    ids.push(byte(b'x'));
    // A truncated emoji: its first byte token only, at the end.
    let emoji = t.encode("😀").expect("encode");
    let mut s = t.stream();
    let mut got = String::new();
    for &id in ids.iter().chain(emoji.first()) {
        got.push_str(&s.push(id).expect("push"));
    }
    got.push_str(&s.finish());
    let mut all = ids.clone();
    all.extend(emoji.first());
    assert_eq!(got, t.decode(&all, true).expect("decode"));
}

/// A GGUF holding only tokenizer metadata: the 256 byte tokens, `Ġt`/`he` merges, and three added tokens.
fn synthetic(model: &str, pre: Option<&str>) -> Vec<u8> {
    let mut tokens: Vec<String> = Vec::new();
    let mut printable: Vec<u32> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).map(u32::from).collect();
    printable.sort();
    let mut next = 256;
    for b in 0u32..256 {
        let cp = if printable.contains(&b) {
            b
        } else {
            next += 1;
            next - 1
        };
        tokens.push(char::from_u32(cp).expect("alphabet char").to_string());
    }
    let mut types = vec![1i32; 256];
    for (t, ty) in [("Ġt", 1), ("he", 1), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<think>", 4)] {
        tokens.push(t.to_string());
        types.push(ty);
    }
    let strs = |v: &[String]| Value::Array(Array::String(v.iter().collect()));
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("tokenizer.ggml.model", Value::String(model.into()));
    if let Some(pre) = pre {
        w.set("tokenizer.ggml.pre", Value::String(pre.into()));
    }
    w.set("tokenizer.ggml.tokens", strs(&tokens));
    w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
    w.set("tokenizer.ggml.merges", strs(&["Ġ t".to_string(), "h e".to_string()]));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(258 + 1));
    w.to_bytes().expect("write gguf")
}

fn build(bytes: &[u8]) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_gguf(&Gguf::parse(bytes).expect("parse"))
}

#[test]
fn unsupported_tokenizers_are_refused_by_name() {
    let err = build(&synthetic("llama", Some("default"))).expect_err("sentencepiece must be refused").to_string();
    assert!(err.contains("`llama`") && err.contains("gpt2"), "{err}");
    let err = build(&synthetic("gpt2", Some("deepseek-coder"))).expect_err("unknown pre must be refused").to_string();
    assert!(err.contains("`deepseek-coder`") && err.contains("smollm") && err.contains("qwen2"), "{err}");
    let err = build(&synthetic("gpt2", None)).expect_err("missing pre must be refused").to_string();
    assert!(err.contains("tokenizer.ggml.pre"), "{err}");
}

#[test]
fn synthetic_vocab_added_tokens() {
    let t = build(&synthetic("gpt2", Some("qwen2"))).expect("synthetic tokenizer");
    let (start, end, think) = (258, 259, 260);
    assert_eq!(t.encode(" the").expect("encode"), vec![256, 257]);
    // User-defined tokens are matched in any text (as llama.cpp and transformers do); control tokens only with
    // encode_with_special.
    let ids = t.encode("<think><|im_end|>").expect("encode");
    assert_eq!(ids[0], think);
    assert!(!ids.contains(&end));
    assert_eq!(t.encode_with_special("<|im_start|><think><|im_end|>").expect("encode"), vec![start, think, end]);
    assert!(!t.is_special(think) && t.is_special(end));
    assert_eq!(t.decode(&[start, think, end], true).expect("decode"), "<think>");
    assert_eq!(t.stop_ids(), &[end]);
}

#[test]
fn tokenizer_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}
