//! Every variant of every shader, preprocessed for both targets, parses and validates with naga: no GPU needed.

use personascope_gpu::shader::{preprocess, Defines, Target, SOURCES};

#[test]
fn every_shader_variant_validates() {
    let variants = personascope_gpu::kernels::all_variants();
    for (name, _) in SOURCES {
        assert!(variants.iter().any(|(n, _)| n == name), "shaders/{name}.wgsl is not used by any kernel variant");
    }
    for (name, defines) in &variants {
        let src = personascope_gpu::shader::source(name).unwrap_or_else(|| panic!("no shader {name}"));
        // naga (native) rejects `enable subgroups;`, which Chrome requires, so the text is validated as
        // preprocessed for the native target; the enable lines themselves are checked in the test below.
        let text = preprocess(name, src, defines, Target::Native).expect("preprocess");
        let module = naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&text)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        validator.validate(&module).unwrap_or_else(|e| panic!("{name} {defines:?}: {e:?}"));
    }
    println!("validated {} shader variants", variants.len());
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
