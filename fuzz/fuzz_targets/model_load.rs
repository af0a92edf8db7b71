//! Fuzzes loading a model from a file's bytes: parse, config, weights, tokenizer, chat template (rendered once
//! under its fuel and output limits) and the probe forward pass. Whatever the bytes, the load returns a model or
//! an error; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = personascope_model::Model::from_bytes(data.to_vec()) {
        // A model that loaded has a consistent shape.
        assert!(m.config.n_layers > 0 && m.config.d_model > 0);
        assert!(m.tokenizer.vocab_size() <= m.config.vocab_size);
    }
});
