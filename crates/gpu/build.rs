//! Embeds every `shaders/*.wgsl` file: `shader::SOURCES` lists them all, so adding a kernel is adding a file.

use std::fmt::Write;

fn main() {
    // The manifest directory at run time, not `env!` at compile time: a build script binary is reused across
    // checkouts that share a target directory, and a compiled-in path would point at another checkout's shaders.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = std::path::Path::new(&manifest).join("../../shaders");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".wgsl").map(str::to_string))
            .collect(),
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    names.sort();
    let mut out = String::from("pub const SOURCES: &[(&str, &str)] = &[\n");
    for n in &names {
        let path = dir.join(format!("{n}.wgsl"));
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(out, "    ({n:?}, include_str!({:?})),", path.display().to_string());
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("sources.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
