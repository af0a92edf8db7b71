//! Trait-vector files: llama.cpp control vectors (GGUF) that also carry Personascope's own metadata.
//!
//! A file written here loads unchanged in llama.cpp (`--control-vector`) and repeng, and reading it back gives
//! the same rows bit for bit and the same metadata. Plain control vectors written by llama.cpp's
//! `cvector-generator`, repeng and similar tools can be imported too.
//!
//! # Layer numbering
//!
//! A [`TraitVector`] has one row per *residual index* `L` in `0..=N` for a model of `N` blocks: `L = 0` is the
//! token embeddings, `L = k` the output of block `k - 1`. llama.cpp adds `direction.k` to the output of block `k`,
//! that is our residual index `k + 1`, so row `L` is written as tensor `direction.{L-1}`. Rows 0 and 1 have no
//! valid tensor name (llama.cpp refuses the whole file if it holds `direction.0`, and nothing precedes the
//! embeddings), so they are stored as f32 array metadata `personascope.row.0` / `personascope.row.1`, which other
//! readers ignore. Rows that are not in the file are all zero and marked absent in [`TraitVector::present`].
//!
//! # Metadata
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `general.architecture` | string | always `controlvector` |
//! | `controlvector.model_hint` | string | the model's `general.architecture` (`llama`, `qwen2`) |
//! | `controlvector.layer_count` | u32 | `N`, the model's block count (see *Import* for other writers) |
//! | `personascope.format_version` | u32 | [`FORMAT_VERSION`]; marks the file as Personascope's |
//! | `personascope.layer_numbering` | string | one line explaining the numbering above (for humans) |
//! | `personascope.d_model` | u32 | row length |
//! | `personascope.n_layers_inferred` | bool | only when true: `N` is a lower bound read from a foreign file |
//! | `personascope.model_name` | string | the model's `general.name` |
//! | `personascope.trait`, `.description`, `.mode` | string | what was extracted and how |
//! | `personascope.layer`, `.screen_layer` | u32 | recommended residual indices |
//! | `personascope.alpha` | f32 | recommended steering strength |
//! | `personascope.count_pos`, `.count_neg` | u32 | samples averaged on each side (both or neither) |
//! | `personascope.row.0`, `.row.1` | f32 array | residual rows 0 and 1 |
//! | `personascope.calibration.*` | f32 arrays, u32 | see [`Calibration`]; `token_quantiles` is flattened |
//! | `personascope.note.<key>` | string | free-form notes ([`VectorMeta::extra`]) |
//!
//! Optional fields that are `None` are not written. A file with `personascope.format_version` must not hold
//! `personascope.*` keys outside this table (a newer writer bumps the version instead), and a file without it
//! must hold none at all, so a key is never silently misread.
//!
//! # Import of other tools' files
//!
//! Only the `controlvector.*` keys are required. `cvector-generator` and repeng store the *number of tensors* in
//! `controlvector.layer_count` (N - 1 for a full vector, fewer for a layer subset), not the model's depth, so for
//! such files `N` is taken as the larger of `layer_count` and the highest residual index present, and
//! [`VectorMeta::n_layers_inferred`] is set: it is then a lower bound, and [`TraitVector::for_model`] pads the
//! vector with absent rows up to the model's depth. `mode` becomes `"imported"`.
//!
//! `direction.0` is accepted and read as residual index 1: the mapping is unambiguous, and re-exporting such a
//! file moves the row into `personascope.row.1`, which gives a file llama.cpp accepts. In a Personascope file it
//! collides with `personascope.row.1` and is refused. Tensor names must be canonical (`direction.7`, not
//! `direction.07` or `direction.+7`) so that two names can never denote the same row.
//!
//! Values are checked before use: every row must be finite, sizes are capped by [`MAX_LAYERS`] and
//! [`MAX_D_MODEL`] before anything sized by the file is allocated, and each error names the file and the key or
//! tensor at fault.

use std::collections::BTreeMap;
use std::path::Path;

use personascope_gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, TensorInfo, Value};

/// The `personascope.format_version` this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Quantiles per residual index in [`Calibration::token_quantiles`]: 0 %, 5 %, ..., 100 %.
pub const QUANTILE_COUNT: usize = 21;
/// Most blocks a file may describe. Real models have at most a few hundred; the cap bounds the `(N + 1) * d`
/// allocation that a hostile `layer_count` could otherwise make huge.
pub const MAX_LAYERS: usize = 512;
/// Largest row length accepted, for the same reason (real models stay well below).
pub const MAX_D_MODEL: usize = 32768;
/// Largest row norm accepted. Extracted directions have norms of about 0.1-100 (residual-stream scale); a row far
/// beyond this is a broken file, and its products with alphas and residuals would overflow f32 (a row of 3e38
/// values has an infinite norm: steering with it gave NaN replies, monitoring called it zero).
pub const MAX_ROW_NORM: f64 = 1e6;

const ARCHITECTURE: &str = "controlvector";
const LAYER_NUMBERING: &str = "direction.k = residual index k+1 (output of block k, counted from 0); residual rows 0 \
                               (embeddings) and 1 (output of block 0) are in personascope.row.0 and personascope.row.1";

const K_ARCH: &str = "general.architecture";
const K_HINT: &str = "controlvector.model_hint";
const K_LAYER_COUNT: &str = "controlvector.layer_count";
const PREFIX: &str = "personascope.";
const K_VERSION: &str = "personascope.format_version";
const K_NUMBERING: &str = "personascope.layer_numbering";
const K_D_MODEL: &str = "personascope.d_model";
const K_INFERRED: &str = "personascope.n_layers_inferred";
const K_MODEL_NAME: &str = "personascope.model_name";
const K_TRAIT: &str = "personascope.trait";
const K_DESCRIPTION: &str = "personascope.description";
const K_MODE: &str = "personascope.mode";
const K_LAYER: &str = "personascope.layer";
const K_ALPHA: &str = "personascope.alpha";
const K_SCREEN_LAYER: &str = "personascope.screen_layer";
const K_COUNT_POS: &str = "personascope.count_pos";
const K_COUNT_NEG: &str = "personascope.count_neg";
const K_ROWS: [&str; 2] = ["personascope.row.0", "personascope.row.1"];
const CALIBRATION_PREFIX: &str = "personascope.calibration.";
const K_CAL_TOKEN_MEAN: &str = "personascope.calibration.token_mean";
const K_CAL_TOKEN_STD: &str = "personascope.calibration.token_std";
const K_CAL_TOKEN_QUANTILES: &str = "personascope.calibration.token_quantiles";
const K_CAL_RESPONSE_MEAN: &str = "personascope.calibration.response_mean";
const K_CAL_RESPONSE_STD: &str = "personascope.calibration.response_std";
const K_CAL_DIFF_MEAN: &str = "personascope.calibration.difference_mean";
const K_CAL_DIFF_STD: &str = "personascope.calibration.difference_std";
const K_CAL_SAMPLES: &str = "personascope.calibration.samples";
const NOTE_PREFIX: &str = "personascope.note.";

/// Every `personascope.*` key of format version 1 other than notes.
const KNOWN_KEYS: &[&str] = &[
    K_VERSION,
    K_NUMBERING,
    K_D_MODEL,
    K_INFERRED,
    K_MODEL_NAME,
    K_TRAIT,
    K_DESCRIPTION,
    K_MODE,
    K_LAYER,
    K_ALPHA,
    K_SCREEN_LAYER,
    K_COUNT_POS,
    K_COUNT_NEG,
    K_ROWS[0],
    K_ROWS[1],
    K_CAL_TOKEN_MEAN,
    K_CAL_TOKEN_STD,
    K_CAL_TOKEN_QUANTILES,
    K_CAL_RESPONSE_MEAN,
    K_CAL_RESPONSE_STD,
    K_CAL_DIFF_MEAN,
    K_CAL_DIFF_STD,
    K_CAL_SAMPLES,
];

/// A trait direction for every residual index of one model, with what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitVector {
    /// `rows[L]` for residual index `L` in `0..=meta.n_layers`, each of length `meta.d_model`.
    pub rows: Vec<Vec<f32>>,
    /// `present[L]` is false for a row the file did not hold; such a row is all zero and is not written.
    pub present: Vec<bool>,
    pub meta: VectorMeta,
}

/// Metadata of a trait vector; see the [module documentation](self) for the keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VectorMeta {
    /// The model's `general.architecture` (`llama`, `qwen2`); `controlvector.model_hint`.
    pub model_hint: String,
    /// The model's `general.name`.
    pub model_name: Option<String>,
    /// `N`, the model's block count; rows cover residual indices `0..=N`.
    pub n_layers: usize,
    /// Row length (the model's embedding width).
    pub d_model: usize,
    /// True when `n_layers` was inferred from another tool's file and is only a lower bound.
    pub n_layers_inferred: bool,
    pub trait_name: Option<String>,
    pub description: Option<String>,
    /// How the vector was extracted: `"response"`, `"prompt-avg"`, `"prompt-last"`, or `"imported"`.
    pub mode: Option<String>,
    /// Recommended residual index for monitoring and steering.
    pub layer: Option<usize>,
    /// Recommended steering strength.
    pub alpha: Option<f32>,
    /// Recommended residual index for screening data sets.
    pub screen_layer: Option<usize>,
    /// Positive and negative samples averaged.
    pub counts: Option<[u32; 2]>,
    pub calibration: Option<Calibration>,
    /// Free-form string notes, stored as `personascope.note.<key>`.
    pub extra: BTreeMap<String, String>,
}

/// Projections of neutral text onto the unit trait direction, per residual index, so that a score can be read
/// as "how unusual" rather than as a raw number whose scale changes with depth.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Mean and standard deviation of per-token projections (length `N + 1`).
    pub token_mean: Vec<f32>,
    pub token_std: Vec<f32>,
    /// Per residual index, [`QUANTILE_COUNT`] non-decreasing per-token projection quantiles at 0, 5, ..., 100 %.
    pub token_quantiles: Vec<Vec<f32>>,
    /// Mean and standard deviation of response-averaged projections (length `N + 1`).
    pub response_mean: Vec<f32>,
    pub response_std: Vec<f32>,
    /// Mean and standard deviation of the neutral projection difference (a neutral written answer's mean projection
    /// minus that of the model's own answer to the same question), the null of projection-difference screening
    /// (length `N + 1`, or empty in files written before it existed).
    pub difference_mean: Vec<f32>,
    pub difference_std: Vec<f32>,
    /// Number of neutral samples the statistics come from.
    pub samples: u32,
}

impl Calibration {
    /// Standard score of a per-token projection at residual index `layer`; `None` if the layer is out of range,
    /// the spread is zero or the score is not finite.
    pub fn z(&self, layer: usize, score: f32) -> Option<f32> {
        standard_score(self.token_mean.get(layer)?, self.token_std.get(layer)?, score)
    }

    /// Standard score of a response-averaged projection at residual index `layer`.
    pub fn response_z(&self, layer: usize, score: f32) -> Option<f32> {
        standard_score(self.response_mean.get(layer)?, self.response_std.get(layer)?, score)
    }

    /// Standard score of a projection difference at residual index `layer` (None without that calibration).
    pub fn difference_z(&self, layer: usize, score: f32) -> Option<f32> {
        standard_score(self.difference_mean.get(layer)?, self.difference_std.get(layer)?, score)
    }

    /// Percentile (0 to 100) of a per-token projection among the neutral ones at residual index `layer`, by
    /// linear interpolation in the quantile table; scores outside the table clamp to 0 or 100. `None` if the
    /// layer is out of range, its table has fewer than two entries, or the score is NaN.
    pub fn percentile(&self, layer: usize, score: f32) -> Option<f32> {
        let q = self.token_quantiles.get(layer)?;
        if score.is_nan() || q.len() < 2 {
            return None;
        }
        let (&lowest, &highest) = (q.first()?, q.last()?);
        if score <= lowest {
            return Some(0.0);
        }
        if score >= highest {
            return Some(100.0);
        }
        let step = 100.0 / (q.len() - 1) as f32;
        // The first interval whose upper end exceeds the score holds it (lo <= score < hi, so hi > lo).
        for (i, pair) in q.windows(2).enumerate() {
            if let [lo, hi] = *pair {
                if score < hi {
                    return Some((step * (i as f32 + (score - lo) / (hi - lo))).clamp(0.0, 100.0));
                }
            }
        }
        Some(100.0)
    }
}

fn standard_score(mean: &f32, std: &f32, score: f32) -> Option<f32> {
    (*std > 0.0 && score.is_finite()).then(|| (score - mean) / std)
}

/// What can be wrong with a trait-vector file, or with a vector that is exported or matched to a model.
#[derive(Debug, thiserror::Error)]
pub enum VectorFileError {
    #[error("{file}: not a readable GGUF file: {error}")]
    Gguf {
        file: String,
        #[source]
        error: GgufError,
    },
    #[error("{file}: cannot {action}: {error}")]
    Io {
        file: String,
        action: &'static str,
        #[source]
        error: std::io::Error,
    },
    #[error("{file}: general.architecture is {found}, expected \"controlvector\" (is this a model rather than a control vector?)")]
    NotControlVector { file: String, found: String },
    #[error(
        "{file}: personascope.format_version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion { file: String, found: u64 },
    #[error("{file}: metadata key `{key}` is missing")]
    MissingKey { file: String, key: String },
    #[error("{file}: metadata key `{key}` has type {found}, expected {expected}")]
    WrongType { file: String, key: String, expected: &'static str, found: String },
    #[error("{file}: metadata key `{key}`: {reason}")]
    BadValue { file: String, key: String, reason: String },
    #[error("{file}: metadata key `{key}` is not part of trait-vector format version {FORMAT_VERSION}")]
    UnknownKey { file: String, key: String },
    #[error("{file}: tensor `{name}` is not named `direction.<N>` with N a plain decimal number")]
    BadTensorName { file: String, name: String },
    #[error("{file}: tensor `{name}`: {reason}")]
    BadTensor { file: String, name: String, reason: String },
    #[error("{file}: residual {row}: {reason}")]
    BadRow { file: String, row: String, reason: String },
    #[error("{file}: {what} has {found} values, expected {expected} ({why})")]
    LengthMismatch { file: String, what: String, found: usize, expected: usize, why: String },
    #[error("{file}: tensor `{name}` is residual index {index}, beyond the {n_layers} blocks given by controlvector.layer_count")]
    IndexOutOfRange { file: String, name: String, index: u64, n_layers: usize },
    #[error("{file}: residual row {row} is given twice, by {first} and by {second}")]
    DuplicateRow { file: String, row: usize, first: String, second: String },
    #[error("{file}: the file holds no direction (no `direction.<N>` tensor, no personascope.row.0/1)")]
    NoRows { file: String },
    #[error("{file}: {what} is {value}, more than the supported {max}")]
    TooLarge { file: String, what: String, value: u64, max: usize },
    #[error("invalid trait vector: {0}")]
    Invalid(String),
    #[error("{0}")]
    ModelMismatch(String),
}

impl TraitVector {
    /// Residual row `layer`, or `None` if it is out of range or absent from the file.
    pub fn row(&self, layer: usize) -> Option<&[f32]> {
        match self.present.get(layer) {
            Some(true) => self.rows.get(layer).map(Vec::as_slice),
            _ => None,
        }
    }

    /// Refuses the vector unless it was made for this model: same architecture (ASCII case ignored), block
    /// count, width, and name when both sides have one. The message names both models.
    pub fn check_model(
        &self,
        arch: &str,
        name: Option<&str>,
        n_layers: usize,
        d_model: usize,
    ) -> Result<(), VectorFileError> {
        let m = &self.meta;
        let mut problems = Vec::new();
        if !m.model_hint.eq_ignore_ascii_case(arch) {
            problems.push(format!("architecture {:?} vs {arch:?}", m.model_hint));
        }
        if let (Some(ours), Some(theirs)) = (&m.model_name, name) {
            if ours != theirs {
                problems.push(format!("name {ours:?} vs {theirs:?}"));
            }
        }
        if m.n_layers != n_layers {
            let hint = if m.n_layers_inferred && n_layers > m.n_layers {
                " (the file does not record the depth; TraitVector::for_model pads it)"
            } else {
                ""
            };
            problems.push(format!("{} blocks vs {n_layers}{hint}", m.n_layers));
        }
        if m.d_model != d_model {
            problems.push(format!("d_model {} vs {d_model}", m.d_model));
        }
        if !problems.is_empty() {
            let trait_name = m.trait_name.as_deref().map(|t| format!(" `{t}`")).unwrap_or_default();
            return Err(VectorFileError::ModelMismatch(format!(
                "trait vector{trait_name} was made for {}, not for {}: {}",
                describe(&m.model_hint, m.model_name.as_deref(), m.n_layers, m.d_model),
                describe(arch, name, n_layers, d_model),
                problems.join("; ")
            )));
        }
        // A hand-built vector could disagree with its own metadata; indexing rows by layer must be safe after this.
        check(self).map_err(|p| VectorFileError::Invalid(p.to_string()))
    }

    /// [`check_model`](Self::check_model), after padding an imported vector whose depth was only a lower bound
    /// ([`VectorMeta::n_layers_inferred`]) with absent rows up to `n_layers`. Use this after loading a file for a
    /// model.
    pub fn for_model(
        mut self,
        arch: &str,
        name: Option<&str>,
        n_layers: usize,
        d_model: usize,
    ) -> Result<Self, VectorFileError> {
        let m = &self.meta;
        if m.n_layers_inferred && n_layers > m.n_layers && n_layers <= MAX_LAYERS && m.d_model == d_model {
            self.rows.resize(n_layers + 1, vec![0.0; d_model]);
            self.present.resize(n_layers + 1, false);
            self.meta.n_layers = n_layers;
            self.meta.n_layers_inferred = false;
        }
        self.check_model(arch, name, n_layers, d_model)?;
        Ok(self)
    }
}

fn describe(arch: &str, name: Option<&str>, n_layers: usize, d_model: usize) -> String {
    let name = name.map(|n| format!(" {n:?}")).unwrap_or_default();
    format!("{arch}{name} ({n_layers} blocks, d_model {d_model})")
}

/// One inconsistency in a vector, named by the key (or row) it concerns.
struct Problem {
    key: String,
    reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn problem(key: impl Into<String>, reason: impl Into<String>) -> Problem {
    Problem { key: key.into(), reason: reason.into() }
}

/// The invariants every exported and every imported vector satisfies.
fn check(v: &TraitVector) -> Result<(), Problem> {
    let m = &v.meta;
    let (n, d) = (m.n_layers, m.d_model);
    if n == 0 || n > MAX_LAYERS {
        return Err(problem(K_LAYER_COUNT, format!("{n} blocks; between 1 and {MAX_LAYERS} are supported")));
    }
    if d == 0 || d > MAX_D_MODEL {
        return Err(problem(K_D_MODEL, format!("{d}; between 1 and {MAX_D_MODEL} is supported")));
    }
    if v.rows.len() != n + 1 || v.present.len() != n + 1 {
        return Err(problem(
            "rows",
            format!(
                "{} rows and {} presence flags for {n} blocks, expected {} of each",
                v.rows.len(),
                v.present.len(),
                n + 1
            ),
        ));
    }
    for (l, (row, &present)) in v.rows.iter().zip(&v.present).enumerate() {
        let key = format!("row {l}");
        if row.len() != d {
            return Err(problem(key, format!("{} values, expected d_model = {d}", row.len())));
        }
        if let Some(i) = row.iter().position(|x| !x.is_finite()) {
            return Err(problem(key, format!("value {i} is {}", row.get(i).copied().unwrap_or(f32::NAN))));
        }
        let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        if norm > MAX_ROW_NORM {
            return Err(problem(key, format!("its norm {norm:.3e} is above the {MAX_ROW_NORM:e} accepted")));
        }
        // An absent row is not written; a non-zero one would silently change on the way back.
        if !present && row.iter().any(|&x| x != 0.0) {
            return Err(problem(key, "is marked absent but is not zero"));
        }
    }
    if !v.present.iter().any(|&p| p) {
        return Err(problem("rows", "no row is present"));
    }
    for (key, layer) in [(K_LAYER, m.layer), (K_SCREEN_LAYER, m.screen_layer)] {
        if let Some(l) = layer.filter(|&l| l > n) {
            return Err(problem(key, format!("residual index {l} is beyond the last one, {n}")));
        }
    }
    if let Some(a) = m.alpha.filter(|a| !a.is_finite()) {
        return Err(problem(K_ALPHA, format!("{a} is not finite")));
    }
    if let Some(k) = m.extra.keys().find(|k| k.is_empty()) {
        return Err(problem(format!("{NOTE_PREFIX}{k}"), "a note needs a non-empty key"));
    }
    if let Some(c) = &m.calibration {
        check_calibration(c, n)?;
    }
    Ok(())
}

fn check_calibration(c: &Calibration, n: usize) -> Result<(), Problem> {
    let per_layer = [
        (K_CAL_TOKEN_MEAN, &c.token_mean, false),
        (K_CAL_TOKEN_STD, &c.token_std, true),
        (K_CAL_RESPONSE_MEAN, &c.response_mean, false),
        (K_CAL_RESPONSE_STD, &c.response_std, true),
        (K_CAL_DIFF_MEAN, &c.difference_mean, false),
        (K_CAL_DIFF_STD, &c.difference_std, true),
    ];
    if c.difference_mean.len() != c.difference_std.len() {
        return Err(problem(K_CAL_DIFF_STD, "must have as many values as difference_mean"));
    }
    for (key, values, is_spread) in per_layer {
        let optional = key == K_CAL_DIFF_MEAN || key == K_CAL_DIFF_STD;
        if values.len() != n + 1 && !(optional && values.is_empty()) {
            let reason = format!("{} values, expected {} (one per residual index 0..={n})", values.len(), n + 1);
            return Err(problem(key, reason));
        }
        if let Some((l, x)) = values.iter().enumerate().find(|(_, x)| !x.is_finite() || (is_spread && **x < 0.0)) {
            return Err(problem(key, format!("value {x} at residual index {l} is not a valid statistic")));
        }
    }
    if c.token_quantiles.len() != n + 1 {
        return Err(problem(
            K_CAL_TOKEN_QUANTILES,
            format!("{} tables, expected {} (one per residual index 0..={n})", c.token_quantiles.len(), n + 1),
        ));
    }
    for (l, q) in c.token_quantiles.iter().enumerate() {
        if q.len() != QUANTILE_COUNT {
            return Err(problem(
                K_CAL_TOKEN_QUANTILES,
                format!("residual index {l}: {} values, expected {QUANTILE_COUNT}", q.len()),
            ));
        }
        if q.iter().any(|x| !x.is_finite()) || q.windows(2).any(|w| matches!(*w, [a, b] if b < a)) {
            return Err(problem(
                K_CAL_TOKEN_QUANTILES,
                format!("residual index {l}: values are not finite and non-decreasing"),
            ));
        }
    }
    Ok(())
}

/// Serializes a trait vector as a llama.cpp control-vector GGUF file (see the [module documentation](self)).
pub fn to_gguf(v: &TraitVector) -> Result<Vec<u8>, VectorFileError> {
    check(v).map_err(|p| VectorFileError::Invalid(p.to_string()))?;
    let m = &v.meta;
    // Both fit: check() capped them far below u32::MAX.
    let (n, d) = (m.n_layers as u32, m.d_model as u32);
    let mut w = GgufWriter::new();
    w.set(K_ARCH, Value::String(ARCHITECTURE.into()));
    w.set(K_HINT, Value::String(m.model_hint.clone()));
    w.set(K_LAYER_COUNT, Value::U32(n));
    w.set(K_VERSION, Value::U32(FORMAT_VERSION));
    w.set(K_NUMBERING, Value::String(LAYER_NUMBERING.into()));
    w.set(K_D_MODEL, Value::U32(d));
    if m.n_layers_inferred {
        w.set(K_INFERRED, Value::Bool(true));
    }
    let strings =
        [(K_MODEL_NAME, &m.model_name), (K_TRAIT, &m.trait_name), (K_DESCRIPTION, &m.description), (K_MODE, &m.mode)];
    for (key, value) in strings {
        if let Some(s) = value {
            w.set(key, Value::String(s.clone()));
        }
    }
    if let Some(l) = m.layer {
        w.set(K_LAYER, Value::U32(l as u32));
    }
    if let Some(a) = m.alpha {
        w.set(K_ALPHA, Value::F32(a));
    }
    if let Some(l) = m.screen_layer {
        w.set(K_SCREEN_LAYER, Value::U32(l as u32));
    }
    if let Some([pos, neg]) = m.counts {
        w.set(K_COUNT_POS, Value::U32(pos));
        w.set(K_COUNT_NEG, Value::U32(neg));
    }
    for (key, (row, &present)) in K_ROWS.iter().zip(v.rows.iter().zip(&v.present)) {
        if present {
            w.set(*key, f32_array(row));
        }
    }
    if let Some(c) = &m.calibration {
        w.set(K_CAL_TOKEN_MEAN, f32_array(&c.token_mean));
        w.set(K_CAL_TOKEN_STD, f32_array(&c.token_std));
        w.set(K_CAL_TOKEN_QUANTILES, f32_array(&c.token_quantiles.concat()));
        w.set(K_CAL_RESPONSE_MEAN, f32_array(&c.response_mean));
        w.set(K_CAL_RESPONSE_STD, f32_array(&c.response_std));
        if !c.difference_mean.is_empty() {
            w.set(K_CAL_DIFF_MEAN, f32_array(&c.difference_mean));
            w.set(K_CAL_DIFF_STD, f32_array(&c.difference_std));
        }
        w.set(K_CAL_SAMPLES, Value::U32(c.samples));
    }
    for (key, note) in &m.extra {
        w.set(format!("{NOTE_PREFIX}{key}"), Value::String(note.clone()));
    }
    for (l, (row, &present)) in v.rows.iter().zip(&v.present).enumerate().skip(2) {
        if present {
            w.add_f32(format!("direction.{}", l - 1), &[u64::from(d)], row).map_err(writer_error)?;
        }
    }
    w.to_bytes().map_err(writer_error)
}

fn writer_error(e: GgufError) -> VectorFileError {
    VectorFileError::Invalid(format!("GGUF writer: {e}"))
}

fn f32_array(values: &[f32]) -> Value {
    Value::Array(Array::F32(values.to_vec()))
}

/// Reads a control-vector GGUF file held in `bytes`; `file` names it in error messages.
pub fn from_gguf(bytes: &[u8], file: &str) -> Result<TraitVector, VectorFileError> {
    let g = Gguf::parse(bytes).map_err(|error| VectorFileError::Gguf { file: file.into(), error })?;
    let r = Reader { g: &g, file };
    match g.get(K_ARCH) {
        Some(Value::String(s)) if s == ARCHITECTURE => {}
        Some(Value::String(s)) => {
            return Err(VectorFileError::NotControlVector { file: file.into(), found: format!("{s:?}") })
        }
        Some(v) => return Err(r.wrong_type(K_ARCH, "string", v)),
        None => return Err(VectorFileError::NotControlVector { file: file.into(), found: "missing".into() }),
    }
    let model_hint = r.string(K_HINT)?.ok_or_else(|| r.missing(K_HINT))?;
    let ours = match r.uint(K_VERSION)? {
        None => false,
        Some(v) if v == u64::from(FORMAT_VERSION) => true,
        Some(found) => return Err(VectorFileError::UnsupportedVersion { file: file.into(), found }),
    };
    for (key, _) in g.metadata() {
        let known = KNOWN_KEYS.contains(&key.as_str()) || key.starts_with(NOTE_PREFIX);
        if key.starts_with(PREFIX) && !(ours && known) {
            return Err(VectorFileError::UnknownKey { file: file.into(), key: key.clone() });
        }
    }

    // The tensor table: every tensor must be a 1-D F32 `direction.<k>`, which is residual index k + 1.
    let mut directions: Vec<(usize, &TensorInfo)> = Vec::with_capacity(g.tensors().len());
    for t in g.tensors() {
        let k = direction_index(&t.name)
            .ok_or_else(|| VectorFileError::BadTensorName { file: file.into(), name: t.name.clone() })?;
        if t.ty != GgmlType::F32 {
            return Err(r.bad_tensor(t, format!("type {}, expected F32 (control vectors are F32)", t.ty)));
        }
        if t.dims.len() != 1 {
            return Err(r.bad_tensor(t, format!("shape {:?} is not 1-D", t.dims)));
        }
        let row = match usize::try_from(k.saturating_add(1)) {
            Ok(row) if row <= MAX_LAYERS => row,
            _ => {
                return Err(r.too_large(
                    format!("the residual index of tensor `{}`", t.name),
                    k.saturating_add(1),
                    MAX_LAYERS,
                ))
            }
        };
        directions.push((row, t));
    }

    // Depth: recorded by Personascope; only bounded below in other tools' files (see the module docs).
    let layer_count = r.uint(K_LAYER_COUNT)?;
    let highest = directions.iter().map(|(row, _)| *row).max();
    let (n_layers, n_layers_inferred) = if ours {
        let count = layer_count.ok_or_else(|| r.missing(K_LAYER_COUNT))?;
        let n = r.bounded(K_LAYER_COUNT, count, MAX_LAYERS)?;
        if n == 0 {
            return Err(r.bad_value(K_LAYER_COUNT, "is 0; a model has at least one block"));
        }
        if let Some((row, t)) = directions.iter().find(|(row, _)| *row > n) {
            return Err(VectorFileError::IndexOutOfRange {
                file: file.into(),
                name: t.name.clone(),
                index: *row as u64,
                n_layers: n,
            });
        }
        (n, r.boolean(K_INFERRED)?.unwrap_or(false))
    } else {
        let highest = highest.ok_or_else(|| VectorFileError::NoRows { file: file.into() })?;
        let count = r.bounded(K_LAYER_COUNT, layer_count.unwrap_or(0), MAX_LAYERS)?;
        (count.max(highest).max(1), true)
    };

    // Width: recorded by Personascope, else the first tensor's; every row must agree with it.
    let (d_model, d_from) = if ours {
        let d = r.uint(K_D_MODEL)?.ok_or_else(|| r.missing(K_D_MODEL))?;
        (r.bounded(K_D_MODEL, d, MAX_D_MODEL)?, K_D_MODEL.to_string())
    } else {
        match directions.first() {
            Some((_, t)) => {
                let len = t.dims.first().copied().unwrap_or(0);
                (
                    r.bounded(&format!("the length of tensor `{}`", t.name), len, MAX_D_MODEL)?,
                    format!("tensor `{}`", t.name),
                )
            }
            None => return Err(VectorFileError::NoRows { file: file.into() }),
        }
    };
    if d_model == 0 {
        return Err(r.bad_value(&d_from, "rows of length 0"));
    }

    let mut rows = vec![vec![0.0f32; d_model]; n_layers + 1];
    let mut present = vec![false; n_layers + 1];
    let mut origin: Vec<Option<String>> = vec![None; n_layers + 1];
    let mut place = |row: usize, values: Vec<f32>, what: String| -> Result<(), VectorFileError> {
        if values.len() != d_model {
            let why = format!("d_model from {d_from}");
            return Err(VectorFileError::LengthMismatch {
                file: file.into(),
                what,
                found: values.len(),
                expected: d_model,
                why,
            });
        }
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            let reason = format!("value {i} is not finite");
            return Err(match what.strip_prefix("tensor `").and_then(|w| w.strip_suffix('`')) {
                Some(name) => VectorFileError::BadTensor { file: file.into(), name: name.into(), reason },
                None => r.bad_value(&what, reason),
            });
        }
        match (rows.get_mut(row), present.get_mut(row), origin.get_mut(row)) {
            (Some(slot), Some(flag), Some(from)) => {
                if let Some(first) = from.take() {
                    return Err(VectorFileError::DuplicateRow { file: file.into(), row, first, second: what });
                }
                *slot = values;
                *flag = true;
                *from = Some(what);
                Ok(())
            }
            _ => Err(r.bad_value(&what, format!("residual index {row} is beyond {n_layers}"))),
        }
    };
    for (row, key) in K_ROWS.iter().enumerate() {
        if let Some(values) = r.f32s(key)? {
            place(row, values, (*key).to_string())?;
        }
    }
    for (row, t) in &directions {
        let (words, _) = g.tensor_data(t).as_chunks::<4>();
        let values = words.iter().map(|&b| f32::from_le_bytes(b)).collect();
        place(*row, values, format!("tensor `{}`", t.name))?;
    }
    if !present.iter().any(|&p| p) {
        return Err(VectorFileError::NoRows { file: file.into() });
    }

    let counts = match (r.uint(K_COUNT_POS)?, r.uint(K_COUNT_NEG)?) {
        (None, None) => None,
        (Some(pos), Some(neg)) => Some([r.u32(K_COUNT_POS, pos)?, r.u32(K_COUNT_NEG, neg)?]),
        (Some(_), None) => return Err(r.missing(K_COUNT_NEG)),
        (None, Some(_)) => return Err(r.missing(K_COUNT_POS)),
    };
    let mode = match r.string(K_MODE)? {
        None if !ours => Some("imported".to_string()),
        mode => mode,
    };
    let mut extra = BTreeMap::new();
    for (key, value) in g.metadata() {
        if let Some(note) = key.strip_prefix(NOTE_PREFIX) {
            let text = value.as_str().ok_or_else(|| r.wrong_type(key, "string", value))?;
            extra.insert(note.to_string(), text.to_string());
        }
    }
    let meta = VectorMeta {
        model_hint,
        model_name: r.string(K_MODEL_NAME)?,
        n_layers,
        d_model,
        n_layers_inferred,
        trait_name: r.string(K_TRAIT)?,
        description: r.string(K_DESCRIPTION)?,
        mode,
        layer: r.layer(K_LAYER, n_layers)?,
        alpha: r.float(K_ALPHA)?,
        screen_layer: r.layer(K_SCREEN_LAYER, n_layers)?,
        counts,
        calibration: read_calibration(&r, n_layers)?,
        extra,
    };
    let v = TraitVector { rows, present, meta };
    check(&v).map_err(|p| match p.key.starts_with("row ") {
        // A row may come from a tensor or a metadata array: name the row, not a metadata key.
        true => VectorFileError::BadRow { file: file.into(), row: p.key, reason: p.reason },
        false => VectorFileError::BadValue { file: file.into(), key: p.key, reason: p.reason },
    })?;
    Ok(v)
}

fn read_calibration(r: &Reader, n_layers: usize) -> Result<Option<Calibration>, VectorFileError> {
    if !r.g.metadata().iter().any(|(k, _)| k.starts_with(CALIBRATION_PREFIX)) {
        return Ok(None);
    }
    let per_layer = |key: &str| -> Result<Vec<f32>, VectorFileError> {
        let values = r.f32s(key)?.ok_or_else(|| r.missing(key))?;
        if values.len() != n_layers + 1 {
            let reason =
                format!("{} values, expected {} (one per residual index 0..={n_layers})", values.len(), n_layers + 1);
            return Err(r.bad_value(key, reason));
        }
        Ok(values)
    };
    // Written since projection-difference calibration exists; older files have no difference statistics.
    let optional = |key: &str| -> Result<Vec<f32>, VectorFileError> {
        match r.f32s(key)? {
            None => Ok(Vec::new()),
            Some(_) => per_layer(key),
        }
    };
    let flat = r.f32s(K_CAL_TOKEN_QUANTILES)?.ok_or_else(|| r.missing(K_CAL_TOKEN_QUANTILES))?;
    let expected = (n_layers + 1) * QUANTILE_COUNT;
    if flat.len() != expected {
        let reason =
            format!("{} values, expected {expected} ({QUANTILE_COUNT} per residual index 0..={n_layers})", flat.len());
        return Err(r.bad_value(K_CAL_TOKEN_QUANTILES, reason));
    }
    let samples = r.uint(K_CAL_SAMPLES)?.ok_or_else(|| r.missing(K_CAL_SAMPLES))?;
    Ok(Some(Calibration {
        token_mean: per_layer(K_CAL_TOKEN_MEAN)?,
        token_std: per_layer(K_CAL_TOKEN_STD)?,
        token_quantiles: flat.chunks_exact(QUANTILE_COUNT).map(<[f32]>::to_vec).collect(),
        response_mean: per_layer(K_CAL_RESPONSE_MEAN)?,
        response_std: per_layer(K_CAL_RESPONSE_STD)?,
        difference_mean: optional(K_CAL_DIFF_MEAN)?,
        difference_std: optional(K_CAL_DIFF_STD)?,
        samples: r.u32(K_CAL_SAMPLES, samples)?,
    }))
}

/// `direction.<k>` with `k` canonical decimal (no sign, no leading zero), so no two names share an index.
/// Numbers too large for u64 read as u64::MAX and are refused later as out of range.
fn direction_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("direction.")?;
    let canonical =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().unwrap_or(u64::MAX))
}

/// Typed access to the metadata of one file, with errors that name the file and the key.
struct Reader<'a> {
    g: &'a Gguf<'a>,
    file: &'a str,
}

impl Reader<'_> {
    fn missing(&self, key: &str) -> VectorFileError {
        VectorFileError::MissingKey { file: self.file.into(), key: key.into() }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &Value) -> VectorFileError {
        let found = match v {
            Value::Array(a) => format!("array of {}", a.elem_type().name()),
            _ => v.value_type().name().to_string(),
        };
        VectorFileError::WrongType { file: self.file.into(), key: key.into(), expected, found }
    }

    fn bad_value(&self, key: &str, reason: impl Into<String>) -> VectorFileError {
        VectorFileError::BadValue { file: self.file.into(), key: key.into(), reason: reason.into() }
    }

    fn bad_tensor(&self, t: &TensorInfo, reason: String) -> VectorFileError {
        VectorFileError::BadTensor { file: self.file.into(), name: t.name.clone(), reason }
    }

    fn too_large(&self, what: String, value: u64, max: usize) -> VectorFileError {
        VectorFileError::TooLarge { file: self.file.into(), what, value, max }
    }

    /// `value` as a usize no larger than `max`.
    fn bounded(&self, what: &str, value: u64, max: usize) -> Result<usize, VectorFileError> {
        usize::try_from(value).ok().filter(|&v| v <= max).ok_or_else(|| self.too_large(what.to_string(), value, max))
    }

    /// A residual index, which must exist in a model of `n_layers` blocks.
    fn layer(&self, key: &str, n_layers: usize) -> Result<Option<usize>, VectorFileError> {
        match self.uint(key)? {
            None => Ok(None),
            Some(l) => match usize::try_from(l) {
                Ok(l) if l <= n_layers => Ok(Some(l)),
                _ => Err(self.bad_value(key, format!("residual index {l} is beyond the last one, {n_layers}"))),
            },
        }
    }

    fn u32(&self, key: &str, value: u64) -> Result<u32, VectorFileError> {
        u32::try_from(value).map_err(|_| self.bad_value(key, format!("{value} does not fit in 32 bits")))
    }

    fn string(&self, key: &str) -> Result<Option<String>, VectorFileError> {
        match self.g.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(key, "string", v)),
        }
    }

    /// Any integer width: writers disagree (cvector-generator writes layer_count as i32, repeng as u32).
    fn uint(&self, key: &str) -> Result<Option<u64>, VectorFileError> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong_type(key, "non-negative integer", v)),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f32>, VectorFileError> {
        match self.g.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => Err(self.wrong_type(key, "f32", v)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, VectorFileError> {
        match self.g.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "bool", v)),
        }
    }

    /// An f32 array, exactly: wider or narrower element types would not round-trip bit for bit.
    fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>, VectorFileError> {
        let Some(v) = self.g.get(key) else { return Ok(None) };
        match v {
            Value::Array(Array::F32(items)) => Ok(Some(items.clone())),
            _ => Err(self.wrong_type(key, "array of f32", v)),
        }
    }
}

/// Writes `v` to `path` as a control-vector GGUF file.
pub fn save(path: impl AsRef<Path>, v: &TraitVector) -> Result<(), VectorFileError> {
    let path = path.as_ref();
    let bytes = to_gguf(v)?;
    crate::files::write_atomic(path, &bytes).map_err(|error| VectorFileError::Io {
        file: path.display().to_string(),
        action: "write",
        error,
    })
}

/// Reads a control-vector GGUF file; errors name the path.
pub fn load(path: impl AsRef<Path>) -> Result<TraitVector, VectorFileError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|error| VectorFileError::Io { file: file.clone(), action: "read", error })?;
    from_gguf(&bytes, &file)
}
