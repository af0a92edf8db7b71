//! Fuzzes the JSONL dataset reader on arbitrary bytes. Every line is either a sample or an error with its
//! number, in order; exporting the samples and reading the export back gives the same samples.
#![no_main]

use libfuzzer_sys::fuzz_target;
use personascope_persona::dataset::{parse_jsonl, parse_jsonl_bytes, write_jsonl};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_jsonl_bytes(data);
    let lines = data.split(|&b| b == b'\n').count();
    let mut numbers: Vec<usize> =
        parsed.samples.iter().map(|s| s.line).chain(parsed.errors.iter().map(|e| e.line)).collect();
    numbers.sort_unstable();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "a line counted twice");
    assert!(numbers.iter().all(|&n| n >= 1 && n <= lines));
    let again = parse_jsonl(&write_jsonl(&parsed.samples));
    assert!(again.errors.is_empty(), "an exported sample does not read back: {:?}", again.errors);
    assert_eq!(again.samples.len(), parsed.samples.len());
    for (a, b) in again.samples.iter().zip(&parsed.samples) {
        assert_eq!((&a.prompt, &a.response, &a.raw), (&b.prompt, &b.response, &b.raw));
    }
});
