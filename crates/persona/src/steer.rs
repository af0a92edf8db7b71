//! Steering settings: which positions a vector is added to, and the `V.gguf:LAYER:ALPHA[:POSITIONS]` syntax.

use std::ops::Range;

use personascope_model::Steering;

use crate::error::{PersonaError, Result};
use crate::vector_file::TraitVector;

/// Positions a steering vector is added to (docs/method.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Every prompt token and every generated token.
    All,
    /// The prompt only.
    Prompt,
    /// The last prompt token and every generated token (the paper's evaluations).
    Response,
}

impl Positions {
    /// Absolute positions for a prompt of `prompt_len` tokens.
    pub fn range(self, prompt_len: usize) -> Range<usize> {
        match self {
            Positions::All => 0..usize::MAX,
            Positions::Prompt => 0..prompt_len,
            Positions::Response => prompt_len.saturating_sub(1)..usize::MAX,
        }
    }
}

impl std::str::FromStr for Positions {
    type Err = PersonaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Positions::All),
            "prompt" => Ok(Positions::Prompt),
            "response" => Ok(Positions::Response),
            other => Err(PersonaError::Input(format!(
                "unknown steering positions {other:?} (expected all, prompt or response)"
            ))),
        }
    }
}

/// One `--steer` argument: `PATH:LAYER:ALPHA[:POSITIONS]` (positions default to `response`). The path may itself
/// contain colons; the fields are taken from the right.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerSpec {
    pub path: String,
    pub layer: usize,
    pub alpha: f32,
    pub positions: Positions,
}

impl std::str::FromStr for SteerSpec {
    type Err = PersonaError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| {
            PersonaError::Input(format!("--steer {s:?}: {why} (expected FILE:LAYER:ALPHA[:all|prompt|response])"))
        };
        let parts: Vec<&str> = s.rsplitn(4, ':').collect();
        // With positions: [positions, alpha, layer, path]; without: [alpha, layer, path...] (path re-joined).
        let (path, layer, alpha, positions) = match parts.as_slice() {
            [pos, alpha, layer, path] if pos.parse::<Positions>().is_ok() => {
                (path.to_string(), *layer, *alpha, pos.parse::<Positions>()?)
            }
            // Four fields whose last is not a number: it was meant as the positions (not as an alpha after a
            // path with a colon), so that is what the error is about.
            [pos, _, _, _] if pos.parse::<f32>().is_err() => {
                return Err(bad(format!("positions {pos:?} is not all, prompt or response")))
            }
            [alpha, layer, rest @ ..] if !rest.is_empty() => {
                let path = rest.iter().rev().copied().collect::<Vec<_>>().join(":");
                (path, *layer, *alpha, Positions::Response)
            }
            _ => return Err(bad("too few fields".into())),
        };
        if path.is_empty() {
            return Err(bad("no file".into()));
        }
        let layer = layer.parse::<usize>().map_err(|_| bad(format!("layer {layer:?} is not a number")))?;
        let alpha = alpha.parse::<f32>().map_err(|_| bad(format!("alpha {alpha:?} is not a number")))?;
        check_alpha(alpha).map_err(|e| bad(e.to_string()))?;
        Ok(SteerSpec { path, layer, alpha, positions })
    }
}

/// The largest steering strength accepted. Useful alphas are a few units (times a vector whose norm is about
/// that of the residual stream); far beyond this the residual is only noise, and alpha x value could overflow.
pub const MAX_ALPHA: f32 = 1e4;

/// The one check of a steering strength, for the CLI, the JS API and the page alike.
pub fn check_alpha(alpha: f32) -> Result<()> {
    if alpha.is_finite() && alpha.abs() <= MAX_ALPHA {
        Ok(())
    } else {
        Err(PersonaError::Input(format!("alpha {alpha} is outside -{MAX_ALPHA}..={MAX_ALPHA}")))
    }
}

/// The engine steering entry of `vector` at `layer`, for a prompt of `prompt_len` tokens.
pub fn steering(
    vector: &TraitVector,
    layer: usize,
    alpha: f32,
    positions: Positions,
    prompt_len: usize,
) -> Result<Steering> {
    check_alpha(alpha)?;
    let row = vector.rows.get(layer).filter(|_| layer > 0).ok_or_else(|| {
        PersonaError::Input(format!(
            "steering layer {layer} out of range (1..={})",
            vector.rows.len().saturating_sub(1)
        ))
    })?;
    Ok(Steering { layer, vector: row.clone(), alpha, positions: positions.range(prompt_len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: SteerSpec = "v.gguf:16:2.5".parse().unwrap();
        assert_eq!(s, SteerSpec { path: "v.gguf".into(), layer: 16, alpha: 2.5, positions: Positions::Response });
        let s: SteerSpec = "C:/x/v.gguf:3:-1:all".parse().unwrap();
        assert_eq!((s.path.as_str(), s.layer, s.alpha, s.positions), ("C:/x/v.gguf", 3, -1.0, Positions::All));
        let s: SteerSpec = "a:b.gguf:3:1".parse().unwrap();
        assert_eq!(s.path, "a:b.gguf");
        for bad in ["v.gguf", "v.gguf:x:1", "v.gguf:3:nan", ":3:1", "v.gguf:3"] {
            assert!(bad.parse::<SteerSpec>().is_err(), "{bad}");
        }
        assert_eq!(Positions::Response.range(10), 9..usize::MAX);
        assert_eq!(Positions::Prompt.range(10), 0..10);
    }
}
