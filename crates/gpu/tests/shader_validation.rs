//! Every variant of every shader, preprocessed for both targets, parses and validates with naga: no GPU needed.

use personascope_gpu::shader::{preprocess, Defines, Target, SOURCES};

/// The define sets each shader is compiled with by the engine (kept in step with the kernels' constructors).
fn variants(name: &str) -> Vec<Defines> {
    match name {
        "rms_norm" => vec![Defines::from([("WG", "64".to_string())]), Defines::from([("WG", "256".to_string())])],
        other => panic!("shader `{other}` has no variant list in shader_validation.rs: add one"),
    }
}

#[test]
fn every_shader_variant_validates() {
    let mut count = 0;
    for (name, src) in SOURCES {
        for defines in variants(name) {
            // naga (native) rejects `enable subgroups;`, which Chrome requires: the web text is checked without
            // that line by preprocessing for the native target, the enable lines are tested separately below.
            let text = preprocess(name, src, &defines, Target::Native).expect("preprocess");
            let module = naga::front::wgsl::parse_str(&text)
                .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&text)));
            let mut validator =
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
            validator.validate(&module).unwrap_or_else(|e| panic!("{name} {defines:?}: {e:?}"));
            count += 1;
        }
    }
    assert!(count >= SOURCES.len(), "validated {count} variants");
    println!("validated {count} shader variants");
}

#[test]
fn preprocessor_handles_conditionals_and_targets() {
    let src = "a\n#if X\nb ${V}\n#else\nc\n#endif\n#if !X\nd\n#endif\n";
    let on = Defines::from([("X", "1".to_string()), ("V", "7".to_string())]);
    let off = Defines::from([("X", "0".to_string()), ("V", "7".to_string())]);
    assert_eq!(preprocess("t", src, &on, Target::Native).expect("on"), "a\nb 7\n");
    assert_eq!(preprocess("t", src, &off, Target::Native).expect("off"), "a\nc\nd\n");
    let sg = Defines::from([("SUBGROUPS", "1".to_string())]);
    assert!(preprocess("t", "x", &sg, Target::Web).expect("web").starts_with("enable subgroups;"));
    assert!(!preprocess("t", "x", &sg, Target::Native).expect("native").contains("enable subgroups"));
    assert!(preprocess("t", "#if X\n", &on, Target::Native).unwrap_err().contains("without #endif"));
    assert!(preprocess("t", "#endif\n", &on, Target::Native).unwrap_err().contains("t.wgsl:1"));
    assert!(preprocess("t", "${NOPE}", &on, Target::Native).unwrap_err().contains("NOPE"));
}
