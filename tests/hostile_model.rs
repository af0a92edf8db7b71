//! Hostile model files: each is the tiny Llama 3 golden model (or the default model) with one metadata value or
//! tensor changed, built in memory. Every one must be refused at load with a message that names what is wrong,
//! without hanging, aborting or allocating from an unchecked count.

use personascope_gguf::{Gguf, GgufWriter, Value};
use personascope_model::Model;
use personascope_tests::golden_path;

/// The tiny Llama 3 file with `edit` applied to its metadata and `edit_tensor` to each tensor's bytes.
fn variant(edit: impl Fn(&mut Vec<(String, Value)>), edit_tensor: impl Fn(&str, &mut Vec<u8>)) -> Vec<u8> {
    let bytes = std::fs::read(golden_path("llama3_tiny.gguf")).expect("read llama3_tiny.gguf");
    let g = Gguf::parse(&bytes).expect("parse llama3_tiny.gguf");
    let mut meta = g.metadata().to_vec();
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(k, v);
    }
    for t in g.tensors() {
        let mut data = g.tensor_data(t).to_vec();
        edit_tensor(&t.name, &mut data);
        w.add_tensor(t.name.clone(), &t.dims, t.ty, data).expect("add tensor");
    }
    w.to_bytes().expect("write")
}

fn set(key: &'static str, value: Value) -> impl Fn(&mut Vec<(String, Value)>) {
    move |meta: &mut Vec<(String, Value)>| match meta.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.clone(),
        None => meta.push((key.to_string(), value.clone())),
    }
}

fn untouched(_: &str, _: &mut Vec<u8>) {}

/// The load error of `bytes`, which must fail.
fn refused(bytes: Vec<u8>) -> String {
    match Model::from_bytes(bytes) {
        Ok(_) => panic!("the hostile file loaded"),
        Err(e) => {
            // Printed so that `--nocapture` lists what each hostile file gets.
            eprintln!("refused: {e}");
            e.to_string()
        }
    }
}

#[test]
fn the_unmodified_variant_loads() {
    Model::from_bytes(variant(|_| {}, untouched)).expect("the rewritten tiny model loads");
}

#[test]
fn a_huge_block_count_is_refused_before_anything_is_sized_by_it() {
    // Before the check, 2^31 - 1 went straight into Vec::with_capacity and aborted the process.
    for n in [(1u32 << 31) - 1, 1 << 20, 3] {
        let e = refused(variant(set("llama.block_count", Value::U32(n)), untouched));
        assert!(e.contains("llama.block_count"), "{n}: {e}");
    }
}

#[test]
fn sizes_whose_products_overflow_are_refused() {
    let e = refused(variant(set("llama.attention.head_count", Value::U32(1 << 30)), untouched));
    assert!(e.contains("llama.attention.head_count"), "{e}");
    let e = refused(variant(set("llama.attention.key_length", Value::U32(1 << 19)), untouched));
    assert!(e.contains("query width") || e.contains("key/value width"), "{e}");
    let e = refused(variant(set("llama.context_length", Value::U64(u64::MAX)), untouched));
    assert!(e.contains("llama.context_length"), "{e}");
}

#[test]
fn non_finite_or_out_of_range_floats_in_the_config_are_refused() {
    let eps = "llama.attention.layer_norm_rms_epsilon";
    for v in [f32::NAN, -1e-5, 0.0, f32::INFINITY, 2.0] {
        let e = refused(variant(set(eps, Value::F32(v)), untouched));
        assert!(e.contains(eps), "{v}: {e}");
    }
    for v in [0.0, -10000.0, f32::NAN, f32::INFINITY] {
        let e = refused(variant(set("llama.rope.freq_base", Value::F32(v)), untouched));
        assert!(e.contains("llama.rope.freq_base"), "{v}: {e}");
    }
    // An f64 that is finite but overflows f32.
    let e = refused(variant(set("llama.rope.freq_base", Value::F64(1e300)), untouched));
    assert!(e.contains("llama.rope.freq_base"), "{e}");
    for v in [0.0, -2.0, f32::INFINITY, f32::NAN] {
        let both = |meta: &mut Vec<(String, Value)>| {
            set("llama.rope.scaling.type", Value::String("linear".into()))(meta);
            set("llama.rope.scaling.factor", Value::F32(v))(meta);
        };
        let e = refused(variant(both, untouched));
        assert!(e.contains("llama.rope.scaling.factor"), "{v}: {e}");
    }
}

#[test]
fn a_nan_norm_weight_is_refused_naming_the_tensor() {
    let e = refused(variant(
        |_| {},
        |name, data| {
            if name == "blk.1.ffn_norm.weight" {
                data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        },
    ));
    assert!(e.contains("blk.1.ffn_norm.weight") && e.contains("element 2"), "{e}");
}

#[test]
fn weights_that_give_non_finite_logits_are_reported_as_broken() {
    // A huge but finite norm weight passes the per-tensor checks and overflows the forward pass.
    let e = refused(variant(
        |_| {},
        |name, data| {
            if name == "output_norm.weight" {
                for c in data.chunks_mut(4) {
                    c.copy_from_slice(&3e38f32.to_le_bytes());
                }
            }
        },
    ));
    assert!(e.contains("broken") && e.contains("non-finite logit"), "{e}");
}

#[test]
fn a_runaway_chat_template_fails_the_load() {
    let hang = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    let e = refused(variant(set("tokenizer.chat_template", Value::String(hang.into())), untouched));
    assert!(e.contains("chat template") && e.contains("steps"), "{e}");
    let flood = "{% for a in range(100000) %}{% for b in range(100000) %}{{ messages }}{% endfor %}{% endfor %}";
    let e = refused(variant(set("tokenizer.chat_template", Value::String(flood.into())), untouched));
    assert!(e.contains("chat template") && e.contains("output passed"), "{e}");
}

#[test]
fn tensor_and_key_lookups_stay_fast_in_a_file_of_many_tensors() {
    // 100,000 tensors: a linear search per lookup is 5 * 10^9 name comparisons (minutes); the index is
    // milliseconds. Every name must still find its own tensor.
    let mut w = GgufWriter::new();
    let n = 100_000;
    for i in 0..n {
        w.set(format!("k.{i}"), Value::U32(i));
        w.add_f32(format!("t.{i}"), &[1], &[i as f32]).expect("add");
    }
    let bytes = w.to_bytes().expect("write");
    let g = Gguf::parse(&bytes).expect("parse");
    for i in (0..n).rev() {
        let t = g.tensor(&format!("t.{i}")).expect("tensor found");
        assert_eq!(g.tensor_f32(&t.name).expect("read"), vec![i as f32]);
        assert_eq!(g.get(&format!("k.{i}")).and_then(Value::as_u64), Some(u64::from(i)));
    }
    assert!(g.tensor("t.absent").is_none() && g.get("k.absent").is_none());
}
