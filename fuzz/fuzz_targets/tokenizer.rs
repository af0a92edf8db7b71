//! Fuzzes the tokenizer of the tiny Llama 3 golden model on arbitrary text: encoding never panics, every id is in
//! the vocabulary, and decoding the plain encoding gives the text back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use personascope_gguf::Gguf;
use personascope_model::Tokenizer;
use std::sync::OnceLock;

static FILE: &[u8] = include_bytes!("../../tests/golden/llama3_tiny.gguf");

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf(&Gguf::parse(FILE).expect("golden file")).expect("golden tokenizer"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = tokenizer();
    let Ok(ids) = t.encode(text) else { return };
    assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
    let _ = t.encode_with_special(text);
    if let Ok(back) = t.decode(&ids, false) {
        assert_eq!(back, text, "decode(encode(text)) differs");
    }
});
