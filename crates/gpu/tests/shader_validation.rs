//! Every variant of every shader, preprocessed for both targets, parses and validates with naga: no GPU needed.

use personascope_gpu::shader::{preprocess, Defines, Target, SOURCES};

fn on(defines: &Defines, name: &str) -> bool {
    defines.get(name).is_some_and(|v| v != "0" && v != "false")
}

/// Parses and validates `text`; without the define that asks for them, subgroup operations and f16 are refused,
/// so a portable variant that uses them by mistake fails here.
fn validate(what: &str, text: &str, defines: &Defines) {
    let module = naga::front::wgsl::parse_str(text).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(text)));
    let mut caps = naga::valid::Capabilities::all();
    if !on(defines, "SUBGROUPS") {
        caps -= naga::valid::Capabilities::SUBGROUP | naga::valid::Capabilities::SUBGROUP_BARRIER;
    }
    if !on(defines, "F16") {
        caps -= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    validator.validate(&module).unwrap_or_else(|e| panic!("{what}: {e:?}"));
}

#[test]
fn every_shader_variant_validates() {
    let variants = personascope_gpu::kernels::all_variants();
    for (name, _) in SOURCES {
        assert!(variants.iter().any(|(n, _)| n == name), "shaders/{name}.wgsl is not used by any kernel variant");
    }
    let mut subgroup_variants = 0;
    for (name, defines) in &variants {
        let src = personascope_gpu::shader::source(name).unwrap_or_else(|| panic!("no shader {name}"));
        let native = preprocess(name, src, defines, Target::Native).expect("preprocess native");
        assert!(!native.contains("enable subgroups"), "{name} {defines:?}: naga rejects `enable subgroups;`");
        validate(&format!("{name} {defines:?} (native)"), &native, defines);

        // The browser's text: the enable lines Chrome requires, exactly when the variant needs them. naga has no
        // `enable subgroups;` (it is implied there), so that one line is taken off before validating the rest.
        let web = preprocess(name, src, defines, Target::Web).expect("preprocess web");
        let subgroups = on(defines, "SUBGROUPS");
        assert_eq!(web.lines().any(|l| l == "enable subgroups;"), subgroups, "{name} {defines:?} (web)");
        assert_eq!(web.lines().any(|l| l == "enable f16;"), on(defines, "F16"), "{name} {defines:?} (web)");
        let body: String = web.lines().filter(|l| *l != "enable subgroups;").map(|l| format!("{l}\n")).collect();
        validate(&format!("{name} {defines:?} (web)"), &body, defines);
        subgroup_variants += subgroups as usize;
    }
    assert!(subgroup_variants > 0, "no kernel has a subgroup variant");
    println!("validated {} shader variants for both targets, {subgroup_variants} with subgroups", variants.len());
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

#[test]
fn preprocessor_unrolls_nested_blocks() {
    let d = Defines::from([("N", "2".to_string()), ("X", "1".to_string())]);
    // Nested blocks, a count from a define, an #if inside a copy, and the outer index seen in the inner body.
    let src = "#unroll I N\n#unroll J 3\nv${I}_${J}\n#endunroll\n#if X\nw${I}\n#endif\n#endunroll\nend\n";
    let want = "v0_0\nv0_1\nv0_2\nw0\nv1_0\nv1_1\nv1_2\nw1\nend\n";
    assert_eq!(preprocess("t", src, &d, Target::Native).expect("unroll"), want);
    assert_eq!(preprocess("t", "#unroll I 0\nx\n#endunroll\ny\n", &d, Target::Native).expect("zero"), "y\n");
    let err = |src: &str| preprocess("t", src, &d, Target::Native).unwrap_err();
    assert!(
        err("a\n#unroll I 2\nx\n").contains("t.wgsl:2: #unroll without #endunroll"),
        "{}",
        err("a\n#unroll I 2\nx\n")
    );
    assert!(err("x\n#endunroll\n").contains("t.wgsl:2"));
    assert!(err("#unroll I NOPE\nx\n#endunroll\n").contains("NOPE"));
    assert!(err("#unroll I\nx\n#endunroll\n").contains("expected `#unroll NAME COUNT`"));
    assert!(err("#unroll I 100000\nx\n#endunroll\n").contains("more than"));
    // An error inside a nested block names its line in the file.
    assert!(err("#unroll I 2\n\n#unroll J 2\n#endunroll\n#endunroll\n#unroll K\n").contains("t.wgsl:6"));
    assert!(err("#unroll I 2\na\n#unroll J x\n#endunroll\n#endunroll\n").contains("t.wgsl:3"));
}

#[test]
fn preprocessor_unrolls_only_kept_blocks() {
    // The inactive branch unrolls by a count this variant does not define: it is dropped before unrolling.
    let d = Defines::from([("X", "0".to_string())]);
    let src = "#if X\n#unroll I MISSING\nv${I}\n#endunroll\n#else\nw\n#endif\n";
    assert_eq!(preprocess("t", src, &d, Target::Native).expect("kept"), "w\n");
    // A ${NAME} error inside an unrolled copy names the file line it came from.
    let err = preprocess("t", "a\n#unroll I 2\nv${I} ${NOPE}\n#endunroll\n", &d, Target::Native).unwrap_err();
    assert!(err.contains("t.wgsl:3") && err.contains("NOPE"), "{err}");
}
