//! Every JSON shape that crosses the boundary between the engine and JavaScript, in one place: the options the
//! page passes in and the results and events it gets back. The TypeScript declarations in
//! `web/personascope-api.d.ts` are generated from these types (and from the persona types they contain), so the
//! two cannot drift apart: `cargo test -p personascope-web` fails when the file is stale, and
//! `PERSONASCOPE_BLESS=1 cargo test -p personascope-web generated` rewrites it. One casing throughout:
//! snake_case field names, as serde writes them.

use personascope_model::StopReason;
use personascope_persona::dataset::Message;
use personascope_persona::screen::Null;
use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// Options of one chat reply.
#[derive(Debug, Deserialize, TS)]
#[serde(deny_unknown_fields)]
pub struct ChatOptions {
    /// Default 256.
    #[serde(default = "default_max_tokens")]
    #[ts(as = "Option<usize>", optional)]
    pub max_tokens: usize,
    /// 0 (default) is greedy.
    #[serde(default)]
    #[ts(as = "Option<f32>", optional)]
    pub temperature: f32,
    /// 0 (default) = all tokens.
    #[serde(default)]
    #[ts(as = "Option<usize>", optional)]
    pub top_k: usize,
    /// Default 1 (off); must be above 0.
    #[serde(default = "one")]
    #[ts(as = "Option<f32>", optional)]
    pub top_p: f32,
    /// Default 1 (off).
    #[serde(default = "one")]
    #[ts(as = "Option<f32>", optional)]
    pub repetition_penalty: f32,
    /// Default 0.
    #[serde(default)]
    #[ts(as = "Option<f64>", optional)]
    pub seed: u64,
    /// Ignore the steering settings for this reply (the unsteered side of a comparison).
    #[serde(default)]
    #[ts(as = "Option<bool>", optional)]
    pub unsteered: bool,
}

fn default_max_tokens() -> usize {
    256
}

fn one() -> f32 {
    1.0
}

/// Steering for the next replies: `alpha` times the vector at `layer`.
#[derive(Debug, Deserialize, TS)]
#[serde(deny_unknown_fields)]
pub struct SteeringEntry {
    pub vector: usize,
    pub layer: usize,
    /// Positive adds the trait, negative suppresses it.
    pub alpha: f32,
    /// "all", "prompt" or "response" (the default).
    #[ts(optional, type = "'all' | 'prompt' | 'response'")]
    pub positions: Option<String>,
}

/// A monitored trait.
#[derive(Debug, Deserialize, TS)]
#[serde(deny_unknown_fields)]
pub struct MonitorEntry {
    pub vector: usize,
    /// Default: the vector's recommended layer (an error if it has none: evaluate it or give a layer).
    #[ts(optional)]
    pub layer: Option<usize>,
}

/// Options of an extraction.
#[derive(Debug, Deserialize, Default, TS)]
#[serde(deny_unknown_fields)]
pub struct ExtractOptions {
    /// Default "response" (the paper's: the mean over the model's own answers).
    #[ts(optional, type = "'response' | 'prompt-avg' | 'prompt-last'")]
    pub mode: Option<String>,
    /// Answers sampled per (instruction, question) in response mode.
    #[ts(optional)]
    pub rollouts: Option<usize>,
    /// Length of those answers.
    #[ts(optional)]
    pub max_tokens: Option<usize>,
    /// Instruction pairs to use (default all).
    #[ts(optional)]
    pub pairs: Option<usize>,
    /// Extraction questions to use (default all).
    #[ts(optional)]
    pub questions: Option<usize>,
    #[ts(optional, as = "Option<f64>")]
    pub seed: Option<u64>,
    #[ts(optional)]
    pub temperature: Option<f32>,
    /// Neutral items the vector is calibrated on (default all; fewer is faster and coarser).
    #[ts(optional)]
    pub calibration_items: Option<usize>,
}

/// Options of an evaluation.
#[derive(Debug, Deserialize, Default, TS)]
#[serde(deny_unknown_fields)]
pub struct EvaluateOptions {
    /// Steering strengths of the sweep.
    #[ts(optional)]
    pub alphas: Option<Vec<f32>>,
    /// Layers of the steering sweep (default: the best separation layer and 0.55 / 0.7 of the depth).
    #[ts(optional)]
    pub layers: Option<Vec<usize>>,
    #[ts(optional)]
    pub pairs: Option<usize>,
    #[ts(optional)]
    pub questions: Option<usize>,
    /// Neutral items for the perplexity cost (default all).
    #[ts(optional)]
    pub neutral_items: Option<usize>,
}

/// Options of a screening.
#[derive(Debug, Deserialize, Default, TS)]
#[serde(deny_unknown_fields)]
pub struct ScreenOptions {
    /// Default: the vector's screening layer.
    #[ts(optional)]
    pub layer: Option<usize>,
    /// true (default): the response's projection alone; false: minus the model's own greedy answer's.
    #[ts(optional)]
    pub cheap: Option<bool>,
    /// Length of the model's own answers when cheap is false (default 48, the calibration's own answers' length).
    #[ts(optional)]
    pub max_tokens: Option<usize>,
}

/// The optional GPU features in use.
#[derive(Debug, Serialize, TS)]
pub struct Features {
    pub f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
}

/// Model and device facts.
#[derive(Debug, Serialize, TS)]
pub struct ModelInfo {
    pub model: String,
    pub architecture: String,
    pub layers: usize,
    pub width: usize,
    pub vocab: usize,
    /// KV-cache rows: the longest conversation, in tokens.
    pub max_positions: usize,
    /// GPU memory the engine allocated.
    #[ts(type = "number")]
    pub gpu_bytes: u64,
    /// The adapter's name (browsers may hide it), backend and features.
    pub adapter: String,
    pub features: Features,
}

/// A monitored trait's reading of one token: raw projection, z-score and percentile against the neutral set.
#[derive(Debug, Clone, Serialize, TS)]
pub struct TraitScore {
    #[serde(rename = "trait")]
    pub trait_name: String,
    pub layer: usize,
    /// null when the projection is not a finite number.
    pub raw: Option<f32>,
    /// null without a calibration.
    pub z: Option<f32>,
    pub percentile: Option<f32>,
}

/// One streamed token of a reply (the worker adds `ms`).
#[derive(Debug, Serialize, TS)]
pub struct ChatToken {
    pub id: u32,
    /// The text this token completes (empty while a character's bytes are split over tokens).
    pub text: String,
    pub index: usize,
    /// One entry per monitored trait, in setMonitor order.
    pub scores: Vec<TraitScore>,
}

/// A finished reply (the worker adds `timing`).
#[derive(Debug, Serialize, TS)]
pub struct ChatReply {
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// The monitored traits at the last prompt token (before the reply).
    pub prompt_scores: Vec<TraitScore>,
    pub token_scores: Vec<Vec<TraitScore>>,
    pub steered: bool,
}

/// A trait vector the engine holds.
#[derive(Debug, Serialize, TS)]
pub struct VectorInfo {
    pub id: usize,
    #[serde(rename = "trait")]
    pub trait_name: Option<String>,
    pub description: Option<String>,
    /// "response", "prompt-avg", "prompt-last" or "imported".
    pub mode: Option<String>,
    pub model: Option<String>,
    pub layers: usize,
    pub layer: Option<usize>,
    pub alpha: Option<f32>,
    pub screen_layer: Option<usize>,
    /// Positive and negative samples averaged.
    pub counts: Option<[u32; 2]>,
    pub calibrated: bool,
    /// L2 norm of the direction at each residual index.
    pub norms: Vec<f32>,
}

/// Progress of a long call.
#[derive(Debug, Serialize, TS)]
pub struct Progress {
    /// "extract", "calibrate", "screen", or an evaluation's stage.
    pub stage: String,
    pub done: usize,
    pub total: usize,
}

/// A line of a dataset and what is wrong with it (1-based line number).
#[derive(Debug, Serialize, TS)]
pub struct LineMessage {
    pub line: usize,
    pub message: String,
}

/// One screened sample.
#[derive(Debug, Serialize, TS)]
pub struct ScreenedSample {
    /// 1-based line number in the file.
    pub line: usize,
    pub prompt: Vec<Message>,
    pub response: String,
    /// The ranking score: the projection difference, or the raw projection in cheap mode.
    pub score: f32,
    /// Mean projection of the dataset response.
    pub projection: f32,
    /// Mean projection of the model's own response (projection-difference mode).
    pub own_projection: Option<f32>,
    /// The model's own response (projection-difference mode).
    pub own_response: Option<String>,
    /// `score` against the neutral null (see ScreenResult.null).
    pub z: Option<f32>,
    /// 1 = most trait-like.
    pub rank: Option<usize>,
}

/// A screening's results.
#[derive(Debug, Serialize, TS)]
pub struct ScreenResult {
    /// null when no line was a valid sample.
    pub layer: Option<usize>,
    pub method: Option<String>,
    /// What a neutral sample scores at this layer (from the vector's calibration; null without one): z is
    /// (score - mean) / std. `of` says which neutral scores: written answers (cheap) or written minus own.
    pub null: Option<Null>,
    pub cancelled: bool,
    /// The mean score over the screened samples.
    pub dataset_score: Option<f32>,
    /// Lines that are not a valid sample.
    pub errors: Vec<LineMessage>,
    /// Valid samples the engine could not screen, e.g. longer than the model's context.
    pub skipped: Vec<LineMessage>,
    pub samples: Vec<ScreenedSample>,
}

/// The generated declarations: every type above and the persona types they use, in a fixed order.
pub fn typescript() -> String {
    use personascope_persona::eval::{EvalReport, LayerRow, Recommendation, SteerRow};
    use personascope_persona::{EvaluationQuestion, InstructionPair, TraitDefinition};
    let cfg = ts_rs::Config::default();
    let decls = [
        (ChatOptions::decl(&cfg), ChatOptions::docs()),
        (SteeringEntry::decl(&cfg), SteeringEntry::docs()),
        (MonitorEntry::decl(&cfg), MonitorEntry::docs()),
        (ExtractOptions::decl(&cfg), ExtractOptions::docs()),
        (EvaluateOptions::decl(&cfg), EvaluateOptions::docs()),
        (ScreenOptions::decl(&cfg), ScreenOptions::docs()),
        (Features::decl(&cfg), Features::docs()),
        (ModelInfo::decl(&cfg), ModelInfo::docs()),
        (TraitScore::decl(&cfg), TraitScore::docs()),
        (ChatToken::decl(&cfg), ChatToken::docs()),
        (StopReason::decl(&cfg), StopReason::docs()),
        (ChatReply::decl(&cfg), ChatReply::docs()),
        (VectorInfo::decl(&cfg), VectorInfo::docs()),
        (Progress::decl(&cfg), Progress::docs()),
        (personascope_persona::dataset::Role::decl(&cfg), personascope_persona::dataset::Role::docs()),
        (Message::decl(&cfg), Message::docs()),
        (LineMessage::decl(&cfg), LineMessage::docs()),
        (Null::decl(&cfg), Null::docs()),
        (ScreenedSample::decl(&cfg), ScreenedSample::docs()),
        (ScreenResult::decl(&cfg), ScreenResult::docs()),
        (InstructionPair::decl(&cfg), InstructionPair::docs()),
        (EvaluationQuestion::decl(&cfg), EvaluationQuestion::docs()),
        (TraitDefinition::decl(&cfg), TraitDefinition::docs()),
        (LayerRow::decl(&cfg), LayerRow::docs()),
        (SteerRow::decl(&cfg), SteerRow::docs()),
        (Recommendation::decl(&cfg), Recommendation::docs()),
        (EvalReport::decl(&cfg), EvalReport::docs()),
    ];
    let mut out = String::from(
        "// GENERATED from crates/web/src/api.rs (and the persona types it uses) by\n\
         // `PERSONASCOPE_BLESS=1 cargo test -p personascope-web generated`: do not edit by hand.\n\
         // The JSON shapes of Personascope's browser API; personascope.d.ts re-exports them.\n",
    );
    for (decl, docs) in decls {
        out.push('\n');
        if let Some(d) = docs {
            out.push_str(&doc_line(&d, ""));
        }
        out.push_str(&format_decl(&decl));
    }
    let codes: Vec<String> = crate::ErrorCode::ALL.iter().map(|c| format!("'{}'", c.as_str())).collect();
    out.push_str("\n/** The engine's error codes (the worker adds its own: see ErrorCode in personascope.d.ts). */\n");
    out.push_str(&format!("export type EngineErrorCode = {};\n", codes.join(" | ")));
    out
}

/// ts-rs writes a declaration on one line with its fields' comments inline; this puts one field on a line, each
/// after its comment, the way the rest of the project's TypeScript reads.
fn format_decl(decl: &str) -> String {
    let decl = decl.trim();
    let (Some(open), Some(close)) = (decl.find("= {"), decl.rfind('}')) else {
        return format!("export {decl}\n");
    };
    let mut out = format!("export {}{{\n", &decl[..open + 2]);
    for field in split_fields(&decl[open + 3..close]) {
        let (docs, field) = match (field.find("/**"), field.find("*/")) {
            (Some(a), Some(b)) if a < b => (Some(&field[a..b + 2]), field[b + 2..].trim()),
            _ => (None, field.trim()),
        };
        if let Some(d) = docs {
            out.push_str(&doc_line(d, "  "));
        }
        out.push_str(&format!("  {field};\n"));
    }
    out.push_str("};\n");
    out
}

/// The fields of an object type's body: split at the commas outside brackets, strings and comments.
fn split_fields(body: &str) -> Vec<&str> {
    let (mut fields, mut depth, mut start, mut quote, mut comment) = (Vec::new(), 0i32, 0, None, false);
    let bytes = body.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match (comment, quote, c) {
            (true, _, b'/') if i > 0 && bytes[i - 1] == b'*' => comment = false,
            (true, _, _) => {}
            (false, Some(q), _) if c == q => quote = None,
            (false, Some(_), _) => {}
            (false, None, b'/') if bytes.get(i + 1) == Some(&b'*') => comment = true,
            (false, None, b'"' | b'\'') => quote = Some(c),
            (false, None, b'{' | b'[' | b'(' | b'<') => depth += 1,
            (false, None, b'}' | b']' | b')' | b'>') => depth -= 1,
            (false, None, b',') if depth == 0 => {
                fields.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&body[start..]);
    fields.into_iter().filter(|f| !f.trim().is_empty()).collect()
}

/// A `/** ... */` comment as one line (its text joined) at `indent`.
fn doc_line(comment: &str, indent: &str) -> String {
    let text: Vec<&str> = comment
        .lines()
        .map(|l| l.trim().trim_start_matches("/**").trim_end_matches("*/").trim_start_matches('*').trim())
        .filter(|l| !l.is_empty())
        .collect();
    format!("{indent}/** {} */\n", strip_links(&text.join(" ")))
}

/// Rustdoc links mean nothing in TypeScript: `[text](target)` and `` [`name`] `` keep their text.
fn strip_links(text: &str) -> String {
    let mut out = text.replace("[`", "`").replace("`]", "`");
    while let Some(mid) = out.find("](") {
        let (Some(open), Some(close)) = (out[..mid].rfind('['), out[mid..].find(')')) else { break };
        out = format!("{}{}{}", &out[..open], &out[open + 1..mid], &out[mid + close + 1..]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_typescript_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/personascope-api.d.ts");
        let want = super::typescript();
        if std::env::var_os("PERSONASCOPE_BLESS").is_some() {
            if let Err(e) = std::fs::write(path, &want) {
                panic!("writing {path}: {e}");
            }
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "web/personascope-api.d.ts is not what the Rust types give; run \
             `PERSONASCOPE_BLESS=1 cargo test -p personascope-web generated` and commit the file"
        );
    }
}
