//! Fuzzes the control-vector reader. A file that imports must export and import back to the same vector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use personascope_persona::vector_file::{from_gguf, to_gguf};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = from_gguf(data, "fuzz.gguf") else { return };
    assert!(v.rows.iter().flatten().all(|x| x.is_finite()));
    let bytes = to_gguf(&v).expect("an imported vector exports");
    let back = from_gguf(&bytes, "fuzz.gguf").expect("an exported vector imports");
    assert_eq!(back.rows.len(), v.rows.len());
    for (a, b) in back.rows.iter().zip(&v.rows) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
});
