"""Small helpers shared by the golden-file generators (paths, versions, float formatting)."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = GOLDEN_DIR.parent.parent
MODELS_DIR = REPO_ROOT / "models"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN2_TINY_GGUF = "qwen2_tiny.gguf"


def versions(*names: str) -> str:
    """A one-line description of the Python and package versions used, e.g. for a `generator` field."""
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def round_sig(x: float, sig: int = 7) -> float:
    """Round a float to `sig` significant digits (exact for 0, passes non-finite through)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{sig - 1}e}")


def round_list(values, sig: int = 7) -> list[float]:
    return [round_sig(v, sig) for v in values]


def write_json(path: Path, obj) -> int:
    """Write compact-but-readable JSON (one key per line at the top levels is not needed; keep it small)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")
    return os.path.getsize(path)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
