#!/usr/bin/env bash
# Regenerates every golden file in tests/golden/ (see ../README.md). Order matters: qwen2_tiny.gguf is an
# input of the tokenizer, template and forward generators. Takes 1.5-4 minutes on 2 CPU cores.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-/opt/golden-venv/bin/python}"
cd "$here"
export PYTHONDONTWRITEBYTECODE=1
"$py" make_dequant.py
"$py" make_qwen2_tiny.py
"$py" make_tokenizer.py
"$py" make_templates.py
"$py" make_forward.py
"$py" make_llama3_tiny.py
