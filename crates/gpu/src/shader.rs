//! WGSL sources and the one preprocessing step that adapts them to the target.
//!
//! Every kernel is one file in `shaders/`. Compile-time choices are *defines*: `${NAME}` is replaced by the
//! define's value, and `#if NAME` / `#else` / `#endif` lines keep or drop blocks (a define is true unless it is
//! "0" or "false"). Defines are part of the pipeline cache key; runtime sizes never are (they go in uniforms).
//! Target differences live here too: Chrome requires `enable subgroups;` and `enable f16;` where naga (native)
//! rejects the former, so the `enable` lines are added here per target, never written in the files.

use std::collections::BTreeMap;

/// Define name -> value.
pub type Defines = BTreeMap<&'static str, String>;

/// Every kernel source, by file name.
pub const SOURCES: &[(&str, &str)] = &[("rms_norm", include_str!("../../../shaders/rms_norm.wgsl"))];

pub fn source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Which WGSL dialect the text is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// naga (wgpu natively).
    Native,
    /// A browser's WebGPU.
    Web,
}

fn truthy(defines: &Defines, name: &str) -> bool {
    defines.get(name).is_some_and(|v| v != "0" && v != "false")
}

/// Applies `defines` to `src` for `target`. Errors name the line of an unbalanced `#if`/`#else`/`#endif` or an
/// undefined `${NAME}`.
pub fn preprocess(name: &str, src: &str, defines: &Defines, target: Target) -> Result<String, String> {
    let mut out = String::with_capacity(src.len() + 64);
    if truthy(defines, "F16") {
        out.push_str("enable f16;\n");
    }
    if truthy(defines, "SUBGROUPS") && target == Target::Web {
        out.push_str("enable subgroups;\n");
    }
    // Stack of (this branch is active, some branch of this #if was taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let lineno = i + 1;
        let t = line.trim_start();
        let active = stack.iter().all(|(a, _)| *a);
        if let Some(rest) = t.strip_prefix("#if ") {
            let cond = rest.trim();
            let (neg, cond) = match cond.strip_prefix('!') {
                Some(c) => (true, c.trim()),
                None => (false, cond),
            };
            let v = truthy(defines, cond) != neg;
            stack.push((v, v));
        } else if t.starts_with("#else") {
            let top = stack.last_mut().ok_or(format!("{name}.wgsl:{lineno}: #else without #if"))?;
            *top = (!top.1, true);
        } else if t.starts_with("#endif") {
            stack.pop().ok_or(format!("{name}.wgsl:{lineno}: #endif without #if"))?;
        } else if active {
            let mut rest = line;
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find('}').ok_or(format!("{name}.wgsl:{lineno}: unterminated ${{"))? + start;
                let key = &rest[start + 2..end];
                let value = defines.get(key).ok_or(format!("{name}.wgsl:{lineno}: ${{{key}}} is not defined"))?;
                out.push_str(value);
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(format!("{name}.wgsl: {} #if without #endif", stack.len()));
    }
    Ok(out)
}
