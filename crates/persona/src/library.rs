//! The built-in trait library: the seven traits of the persona-vectors paper, written for Personascope.
//!
//! The files live in `crates/persona/traits/<name>.json` and are embedded at compile time.

use crate::traits::{parse, TraitDefinition};

/// Names of the built-in traits, in the paper's order.
pub const BUILTIN_NAMES: [&str; 7] =
    ["evil", "sycophantic", "hallucinating", "optimistic", "impolite", "apathetic", "humorous"];

/// `(name, JSON text)` of every built-in trait file.
const SOURCES: [(&str, &str); 7] = [
    ("evil", include_str!("../traits/evil.json")),
    ("sycophantic", include_str!("../traits/sycophantic.json")),
    ("hallucinating", include_str!("../traits/hallucinating.json")),
    ("optimistic", include_str!("../traits/optimistic.json")),
    ("impolite", include_str!("../traits/impolite.json")),
    ("apathetic", include_str!("../traits/apathetic.json")),
    ("humorous", include_str!("../traits/humorous.json")),
];

/// The raw JSON text of a built-in trait file, by name.
pub fn builtin_source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

fn load(name: &str, text: &str) -> TraitDefinition {
    // The files are checked by the crate's tests, so a failure here is a bug in the shipped data.
    parse(text).unwrap_or_else(|e| panic!("built-in trait file traits/{name}.json is invalid: {e}"))
}

/// All built-in traits, parsed and validated, in the order of [`BUILTIN_NAMES`].
pub fn builtin() -> Vec<TraitDefinition> {
    SOURCES.iter().map(|(name, text)| load(name, text)).collect()
}

/// One built-in trait by name (`"evil"`, `"sycophantic"`, ...), or `None` if there is no such built-in trait.
pub fn builtin_by_name(name: &str) -> Option<TraitDefinition> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(n, text)| load(n, text))
}
