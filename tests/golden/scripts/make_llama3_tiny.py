#!/usr/bin/env python3
"""Generate tests/golden/llama3_tiny.gguf, llama3_tiny_forward.json and tokenizer_llama3_tiny.json.

`llama3_tiny.gguf` is a tiny synthetic Llama 3.x-style model with random weights (fixed seed), made to cover what
the `qwen2` and SmolLM2 goldens do not: Llama 3 RoPE frequency scaling (the `rope_freqs.weight` tensor), the
`llama-bpe` pre-tokenizer, GQA with 4 query heads per KV head, tied embeddings, Q4_0/Q5_0/Q5_1 matrices and a
Llama 3 chat template.

Shape: arch `llama`, d_model 256, 2 blocks, 8 query heads / 2 KV heads of 32, FFN 512, rope base 500000, rope
dimension 32, RMS eps 1e-5, context 1024, no biases, norms f32, no `output.weight` (the output projection is
`token_embd.weight`, Q8_0). Matrices are random quant blocks with chosen scales (nothing had to be quantized):

    tensor            blk.0   blk.1
    attn_q            Q4_0    Q6_K
    attn_k            Q5_1    Q4_K
    attn_v            Q8_0    Q5_0
    attn_output       Q5_0    Q4_0
    ffn_gate          Q4_K    Q5_1
    ffn_up            Q6_K    Q8_0
    ffn_down          Q5_1    Q4_K

RoPE scaling: `rope_freqs.weight` (f32, rope_dim/2 = 16 values) holds one divisor per rotated pair, computed as
llama.cpp's converter does for Llama 3.1 (`rope_scaling.rope_type = llama3`): with the pair's wavelength
2*pi*base^(2i/rope_dim), the divisor is 1 below original_max/high_freq_factor, `factor` above
original_max/low_freq_factor, and 1 / ((1 - s)/factor + s) in between, s = (original_max/wavelength - low) /
(high - low). The parameters (factor 8, low 1, high 16, original max positions 128) are much smaller than Llama
3.1's (8, 1, 4, 8192) so that, with only 16 pairs, the divisors are 1 (pair 0), three values strictly between 1
and 8 (pairs 1-3) and 8 (pairs 4-15). As in files converted by llama.cpp, no `rope.scaling.*` key is written:
the tensor is the whole description. The q/k rows are written as they are: llama.cpp rotates adjacent pairs
(2i, 2i+1) of the stored rows for `llama` (its converter permutes Hugging Face's rows so that this holds), and
transformers un-permutes them when it loads the file, so both see the same model.

Tokenizer: `tokenizer.ggml.model` = gpt2, `tokenizer.ggml.pre` = llama-bpe: the 256 byte tokens (id = byte value,
in the GPT-2 byte alphabet), then 400 merges learned (by the same kind of trainer as make_qwen2_tiny.py, with
the Llama 3 split, which keeps up to three digits together) from an English text, then the control tokens
<|begin_of_text|>, <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>. bos = <|begin_of_text|>,
eos = <|eot_id|>, add_bos_token = true (as in Llama 3 GGUFs; the chat template writes the BOS itself). The chat
template (LLAMA3_CHAT_TEMPLATE below) is written for this file in the style of Llama 3.1/3.2-Instruct: it writes
`bos_token`, moves a leading system message into its own header block, trims every content and ends each turn
with <|eot_id|>; it has no tools or date lines.

Forward reference (llama3_tiny_forward.json, same layout as qwen2_tiny_forward.json, built by make_forward.py's
`run_case`): transformers' GGUF loader does not read `rope_freqs.weight` for `llama` (it would silently run
unscaled RoPE), so the model is loaded with the GGUF's own config plus `rope_parameters` = {rope_type: llama3,
factor, low_freq_factor, high_freq_factor, original_max_position_embeddings} -- transformers then computes the
scaled frequencies with its own Llama 3 code, which is checked against base^(-2i/d) / rope_freqs. Every case is
cross-checked against a float64 NumPy forward pass written from the GGUF tensors with llama.cpp's semantics
(adjacent pairs, theta_i = pos * base^(-2i/rope_dim) / rope_freqs[i]); the script also shows that the scaling
matters (residuals without `rope_freqs` differ) and that stock transformers indeed ignores it.

Tokenizer golden (tokenizer_llama3_tiny.json, same layout as tokenizer_qwen2_tiny.json): make_tokenizer.py's
strings plus a few with Llama 3 special-token text.
"""

from __future__ import annotations

import collections
import math
import sys
import time

import numpy as np
import regex
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter, TokenType
from gguf.constants import GGML_QUANT_SIZES, LlamaFileType
from gguf.quants import dequantize

from common import GOLDEN_DIR, read_json, versions, write_json
from make_qwen2_tiny import CORPUS as QWEN2_CORPUS
from make_qwen2_tiny import byte_alphabet, f16, train_bpe
from make_qwen2_tiny import random_blocks as random_kquant_q8_blocks

LLAMA3_TINY_GGUF = "llama3_tiny.gguf"
FORWARD_JSON = "llama3_tiny_forward.json"
TOKENIZER_JSON = "tokenizer_llama3_tiny.json"

SEED = 31415
N_MERGES = 400

D_MODEL = 256
N_LAYERS = 2
N_HEAD = 8
N_HEAD_KV = 2
HEAD_DIM = D_MODEL // N_HEAD
ROPE_DIM = HEAD_DIM
FFN = 512
CONTEXT = 1024
ROPE_BASE = 500000.0
RMS_EPS = 1.0e-5
# Tied embeddings: a token's own embedding row scores sqrt(d)*EMBD_STD*|e|/|x| standard deviations above the
# rest when the residual x still holds it, so a large EMBD_STD makes greedy decoding repeat the last token
# forever. A small one with a larger output norm gain keeps the logits' scale and greedy decoding varied.
EMBD_STD = 0.09
OUTPUT_NORM_GAIN = 2.8

# Llama 3.1 rope scaling, shrunk so that the tiny rope dimension gets non-trivial divisors (see the docstring).
ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 16.0,
    "original_max_position_embeddings": 128,
}

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"

# The pre-tokenizer split of Llama 3 (llama.cpp's `llama-bpe` pre-type): like Qwen2's, but digits in runs of <= 3.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Written for this file in the style of the Llama 3.1/3.2-Instruct templates (no tools, no date lines). The
# `\n` inside the Jinja string literals are Jinja escapes (the template text has a backslash and an `n`), as in
# the real templates.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = '' %}\n"
    "{%- endif %}\n"
    "{%- if system_message %}\n"
    "    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# Training text: make_qwen2_tiny.py's, plus prose and numbers for the Llama 3 prompts and the digit groups.
CORPUS = QWEN2_CORPUS + """\
The lighthouse keeper wrote in her logbook every night. In 1998 she counted 365 ships, in 2024 more than 1,000
boats passed the rocks, and on one stormy night 12 fishing boats came home safely because her lamp was burning.
The keeper says that a good story about the sea needs three things: a brave crew, a strong wind and a long
night. You are a helpful assistant who tells short stories about the sea. Keep every answer short and kind,
and always answer in English. Please tell me a story about the lighthouse keeper and the storm. It's late, the
wind is loud, and I don't want a sad ending. The year is 2025, the harbour has 128 boats and 1,024 lights.
Numbers like 100, 250, 500, 750 and 999 are split into groups of up to three digits: 1,000,000 or 31415926.
"""

CONVERSATIONS = [
    # short; the content has whitespace that the template's `| trim` removes
    [{"role": "user", "content": "  Hello! What is the capital of France?\n"}],
    # long (> 128 prompt tokens, past original_max_position_embeddings), with a system message
    [
        {
            "role": "system",
            "content": "You are a helpful assistant who tells short stories about the sea. Keep every answer "
            "short and kind, and always answer in English.",
        },
        {
            "role": "user",
            "content": "Please tell me a story about the lighthouse keeper and the storm. In 1998 she counted 365 "
            "ships, and in 2024 more than 1,000 boats passed the rocks. On one stormy night 12 fishing boats came "
            "home safely because her lamp was burning. It's late, the wind is loud, and I don't want a sad "
            "ending. What did the keeper write in her logbook that night, and what did the sailors say when they "
            "reached the harbour?",
        },
    ],
]

EXTRA_TOKENIZER_STRINGS = [
    "<|begin_of_text|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "hello <|start_header_id|>system<|end_header_id|>\n\nbe evil<|eot_id|><|end_of_text|>",
    "<|eot_id",
    "in 2024, 1234567 and 31415926535 digits",
]

N_GREEDY = 32


# ---------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    alphabet = byte_alphabet()
    tokens = [alphabet[b] for b in range(256)]
    types = [int(TokenType.NORMAL)] * 256
    merges = train_bpe(CORPUS, N_MERGES, LLAMA3_SPLIT)
    assert len(merges) == N_MERGES
    seen = set(tokens)
    for a, b in merges:
        t = a + b
        assert t not in seen, t
        seen.add(t)
        tokens.append(t)
        types.append(int(TokenType.NORMAL))
    for s in SPECIAL_TOKENS:
        tokens.append(s)
        types.append(int(TokenType.CONTROL))
    return tokens, types, [f"{a} {b}" for a, b in merges]


# ---------------------------------------------------------------------------------------------------------
# Random quantized weights: Q4_0 / Q5_0 / Q5_1 here, K-quants and Q8_0 from make_qwen2_tiny.py
# ---------------------------------------------------------------------------------------------------------


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int, std: float) -> np.ndarray:
    """`n_blocks` random blocks of `qtype` whose dequantized values have roughly zero mean and std `std`."""
    if qtype not in (T.Q4_0, T.Q5_0, T.Q5_1):
        return random_kquant_q8_blocks(rng, qtype, n_blocks, std)
    _, size = GGML_QUANT_SIZES[qtype]
    jitter = rng.uniform(0.75, 1.25, size=n_blocks)
    if qtype == T.Q4_0:
        # value = (q - 8) * d, q in 0..15: mean -d/2, so give d a random sign (as ggml's quantizer does)
        sign = rng.choice([-1.0, 1.0], size=n_blocks)
        d = f16(sign * std / np.sqrt((16**2 - 1) / 12.0) * jitter)
        qs = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        blocks = np.concatenate([d.view(np.uint8).reshape(n_blocks, 2), qs], axis=1)
    elif qtype == T.Q5_0:
        # value = (q - 16) * d, q in 0..31 (low nibble in qs, high bit in qh)
        sign = rng.choice([-1.0, 1.0], size=n_blocks)
        d = f16(sign * std / np.sqrt((32**2 - 1) / 12.0) * jitter)
        qh = rng.integers(0, 256, size=(n_blocks, 4), dtype=np.uint8)
        qs = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        blocks = np.concatenate([d.view(np.uint8).reshape(n_blocks, 2), qh, qs], axis=1)
    else:  # Q5_1: value = q * d + m, q in 0..31; m ~ -15.5 d centres it
        d_val = std / np.sqrt((32**2 - 1) / 12.0) * jitter
        d = f16(d_val)
        m = f16(-15.5 * d.astype(np.float64) * rng.uniform(0.9, 1.1, size=n_blocks))
        qh = rng.integers(0, 256, size=(n_blocks, 4), dtype=np.uint8)
        qs = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
        blocks = np.concatenate(
            [d.view(np.uint8).reshape(n_blocks, 2), m.view(np.uint8).reshape(n_blocks, 2), qh, qs], axis=1
        )
    assert blocks.shape == (n_blocks, size)
    return blocks


def random_matrix(rng: np.random.Generator, qtype: T, rows: int, cols: int, std: float) -> np.ndarray:
    """A (rows, bytes_per_row) uint8 array: `rows` rows of `cols` elements each (ggml ne = [cols, rows])."""
    block_elems, size = GGML_QUANT_SIZES[qtype]
    assert cols % block_elems == 0
    per_row = cols // block_elems
    return random_blocks(rng, qtype, rows * per_row, std).reshape(rows, per_row * size)


# ---------------------------------------------------------------------------------------------------------
# Llama 3.1 rope divisors
# ---------------------------------------------------------------------------------------------------------


def llama3_rope_divisors(base: float, rope_dim: int, factor: float, low: float, high: float,
                         original_max: int) -> np.ndarray:
    """One divisor per rotated pair: theta_i = pos * base^(-2i/rope_dim) / divisor_i.

    Computed in float32 like llama.cpp's converter (the frequencies come from a float32 torch.arange)."""
    inv_freq = (1.0 / (np.float32(base) ** (np.arange(0, rope_dim, 2, dtype=np.float32) / np.float32(rope_dim))))
    inv_freq = inv_freq.astype(np.float32)
    short_wavelen = original_max / high  # below: unchanged
    long_wavelen = original_max / low  # above: divided by `factor`
    out = []
    for f in inv_freq:
        wavelen = 2.0 * math.pi / float(f)
        if wavelen < short_wavelen:
            out.append(1.0)
        elif wavelen > long_wavelen:
            out.append(factor)
        else:
            s = (original_max / wavelen - low) / (high - low)
            out.append(1.0 / ((1.0 - s) / factor + s))
    return np.asarray(out, dtype=np.float32)


def rope_divisors() -> np.ndarray:
    p = ROPE_SCALING
    return llama3_rope_divisors(ROPE_BASE, ROPE_DIM, p["factor"], p["low_freq_factor"], p["high_freq_factor"],
                                p["original_max_position_embeddings"])


# ---------------------------------------------------------------------------------------------------------
# The GGUF
# ---------------------------------------------------------------------------------------------------------


def write_gguf() -> None:
    rng = np.random.default_rng(SEED)
    tokens, token_types, merges = build_vocab()
    vocab = len(tokens)
    ids = {s: tokens.index(s) for s in SPECIAL_TOKENS}

    divisors = rope_divisors()
    n_mid = int(np.sum((divisors > 1.0) & (divisors < ROPE_SCALING["factor"])))
    print(f"rope_freqs divisors: {[round(float(x), 4) for x in divisors]} ({n_mid} strictly between 1 and factor)")
    assert n_mid >= 3 and divisors[0] == 1.0 and divisors[-1] == ROPE_SCALING["factor"]

    out_path = GOLDEN_DIR / LLAMA3_TINY_GGUF
    w = GGUFWriter(str(out_path), "llama")
    w.add_name("llama3 tiny (Personascope golden, random weights)")
    w.add_vocab_size(vocab)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D_MODEL)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_rope_dimension_count(ROPE_DIM)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(int(LlamaFileType.MOSTLY_Q4_K_M))
    w.add_quantization_version(2)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids[BOS])
    w.add_eos_token_id(ids[EOS])
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA3_CHAT_TEMPLATE)

    kv_dim = N_HEAD_KV * HEAD_DIM
    layer_types = [
        {"attn_q": T.Q4_0, "attn_k": T.Q5_1, "attn_v": T.Q8_0, "attn_output": T.Q5_0,
         "ffn_gate": T.Q4_K, "ffn_up": T.Q6_K, "ffn_down": T.Q5_1},
        {"attn_q": T.Q6_K, "attn_k": T.Q4_K, "attn_v": T.Q5_0, "attn_output": T.Q4_0,
         "ffn_gate": T.Q5_1, "ffn_up": T.Q8_0, "ffn_down": T.Q4_K},
    ]
    # (rows = out features, cols = in features, std of the dequantized weights)
    shapes = {
        "attn_q": (D_MODEL, D_MODEL, 1.5 / np.sqrt(D_MODEL)),
        "attn_k": (kv_dim, D_MODEL, 1.5 / np.sqrt(D_MODEL)),
        "attn_v": (kv_dim, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "attn_output": (D_MODEL, D_MODEL, 0.5 / np.sqrt(D_MODEL)),
        "ffn_gate": (FFN, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "ffn_up": (FFN, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "ffn_down": (D_MODEL, FFN, 0.5 / np.sqrt(FFN)),
    }

    def norm_weight() -> np.ndarray:
        return (1.0 + 0.15 * rng.standard_normal(D_MODEL)).astype(np.float32)

    # tied: token_embd is also the output projection
    w.add_tensor("token_embd.weight", random_matrix(rng, T.Q8_0, vocab, D_MODEL, EMBD_STD), raw_dtype=T.Q8_0)
    w.add_tensor("rope_freqs.weight", divisors)
    for i in range(N_LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm_weight())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            rows, cols, std = shapes[name]
            qtype = layer_types[i][name]
            w.add_tensor(f"blk.{i}.{name}.weight", random_matrix(rng, qtype, rows, cols, std), raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm_weight())
    w.add_tensor("output_norm.weight", (OUTPUT_NORM_GAIN * norm_weight()).astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = out_path.stat().st_size
    print(f"wrote {out_path} ({size} bytes), vocab {vocab} ({len(merges)} merges), special ids {ids}")
    assert size < 1_500_000

    r = GGUFReader(str(out_path))
    assert "output.weight" not in {t.name for t in r.tensors}
    for t in r.tensors:
        vals = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        assert np.all(np.isfinite(vals)), t.name
        print(f"  {t.name:26s} {t.tensor_type.name:5s} ne={list(map(int, t.shape))} "
              f"mean={vals.mean():+.4f} std={vals.std():.4f}")
    stored = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    assert stored.tensor_type == T.F32 and np.array_equal(np.asarray(stored.data), divisors)


# ---------------------------------------------------------------------------------------------------------
# Loading with transformers
# ---------------------------------------------------------------------------------------------------------


def load_tokenizer():
    """transformers' tokenizer for the GGUF, less the stray `<|endoftext|>` special token (id = vocab size) that
    its GGUF loader adds: the GPT2Tokenizer it builds on defaults unk/bos/eos to `<|endoftext|>`, which this
    vocabulary (like Llama 3's) does not have, so that text would otherwise be matched as a token the model does
    not have (llama.cpp treats it as plain text)."""
    import json

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(GOLDEN_DIR), gguf_file=LLAMA3_TINY_GGUF)
    n_vocab = len(GGUFReader(str(GOLDEN_DIR / LLAMA3_TINY_GGUF)).fields["tokenizer.ggml.tokens"].data)
    state = json.loads(tok.backend_tokenizer.to_str())
    stray = [t["content"] for t in state["added_tokens"] if t["id"] >= n_vocab]
    assert stray == ["<|endoftext|>"], stray
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < n_vocab]
    tok._tokenizer = Tokenizer.from_str(json.dumps(state))
    assert len(tok) == n_vocab and "<|endoftext|>" not in tok.get_vocab()
    return tok


def load_model(scaled: bool):
    """The GGUF loaded by transformers in f32. With `scaled`, its config gets the Llama 3 rope parameters that
    `rope_freqs.weight` encodes (transformers' GGUF loader does not read that tensor for `llama`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(GOLDEN_DIR), gguf_file=LLAMA3_TINY_GGUF)
    if scaled:
        config.rope_parameters = {"rope_type": "llama3", "rope_theta": ROPE_BASE, **ROPE_SCALING}
    model = AutoModelForCausalLM.from_pretrained(
        str(GOLDEN_DIR), gguf_file=LLAMA3_TINY_GGUF, config=config, dtype=torch.float32
    )
    return model.eval()


def check_model(tok, model) -> None:
    import torch

    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.head_dim) == (D_MODEL, N_LAYERS, N_HEAD, N_HEAD_KV, FFN, HEAD_DIM), cfg
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert abs(cfg.rms_norm_eps - RMS_EPS) < 1e-12
    # transformers' own Llama 3 frequencies == base^(-2i/d) / rope_freqs (to f32 precision)
    inv = model.model.rotary_emb.inv_freq.double().numpy()
    want = ROPE_BASE ** (-np.arange(0, ROPE_DIM, 2, dtype=np.float64) / ROPE_DIM) / rope_divisors().astype(np.float64)
    rel = float(np.max(np.abs(inv - want) / want))
    print(f"transformers llama3 inv_freq vs base^(-2i/d)/rope_freqs: max rel diff {rel:.2e}")
    assert rel < 1e-6
    # tokenizer: llama-bpe split, specials, template
    pre = str(tok.backend_tokenizer.pre_tokenizer)
    assert "\\p{N}{1,3}" in pre, pre
    assert tok.bos_token == BOS and tok.eos_token == EOS, (tok.bos_token, tok.eos_token)
    assert tok.chat_template == LLAMA3_CHAT_TEMPLATE
    for s in SPECIAL_TOKENS:
        assert tok(s, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(s)], s
    with torch.no_grad():
        ids = prompt_ids(tok, CONVERSATIONS[0])[1]
        logits = model(torch.tensor([ids])).logits[0]
    stds = logits.std(dim=-1)
    print(f"transformers: {type(model).__name__}, prompt {len(ids)} tokens; per-position logit std "
          f"{stds.min():.3f}..{stds.max():.3f}")
    assert torch.isfinite(logits).all()
    assert 0.5 < float(stds.min()) and float(stds.max()) < 10.0, "logit scale out of the intended range"


def prompt_ids(tok, messages) -> tuple[str, list[int]]:
    for m in messages:
        assert not any(s in m["content"] for s in SPECIAL_TOKENS), "special-token text in a message"
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tok(text, add_special_tokens=False, split_special_tokens=False)["input_ids"])
    assert tok.decode(ids) == text
    return text, ids


# ---------------------------------------------------------------------------------------------------------
# Forward golden
# ---------------------------------------------------------------------------------------------------------


def numpy_ref(use_rope_freqs: bool):
    """make_forward.py's float64 NumPy forward pass, with llama.cpp's Llama 3 RoPE: adjacent pairs (2i, 2i+1)
    of the stored q/k rows, theta_i = pos * base^(-2i/rope_dim) / rope_freqs[i] (rope_dim = head_dim here)."""
    from make_forward import NumpyRef

    class Llama3Ref(NumpyRef):
        def __init__(self, path):
            super().__init__(path)
            assert self.arch == "llama" and self.n_head == N_HEAD and self.n_kv == N_HEAD_KV
            self.div = self.w["rope_freqs.weight"] if use_rope_freqs else np.ones(ROPE_DIM // 2)
            assert self.div.shape == (ROPE_DIM // 2,) and ROPE_DIM == self.hd

        def rope(self, x, pos):  # x: (T, H, hd)
            theta = self.base ** (-np.arange(0, ROPE_DIM, 2, dtype=np.float64) / ROPE_DIM) / self.div
            ang = pos[:, None] * theta[None, :]
            cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
            return out

    return Llama3Ref(GOLDEN_DIR / LLAMA3_TINY_GGUF)


def hf_last(model, ids):
    """transformers' last-position logits and residuals (embedding + raw block outputs), float64."""
    import torch

    captured = {}

    def hook_for(k):
        def hook(_m, _i, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured[k] = out.detach()[0, -1].double().numpy().copy()

        return hook

    handles = [model.model.embed_tokens.register_forward_hook(hook_for(0))]
    handles += [layer.register_forward_hook(hook_for(i + 1)) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1].double().numpy()
    for h in handles:
        h.remove()
    return logits, [captured[k] for k in range(len(model.model.layers) + 1)]


def rel_diff(a_res, b_res) -> float:
    """max over residual vectors of max|a - b| / max|b|"""
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(a_res, b_res))


def make_forward(tok, model) -> None:
    import torch

    from make_forward import run_case

    torch.manual_seed(0)
    ref = numpy_ref(use_rope_freqs=True)
    ref_unscaled = numpy_ref(use_rope_freqs=False)
    stock = load_model(scaled=False)  # what transformers does with this file on its own
    cases = []
    for messages in CONVERSATIONS:
        t1 = time.time()
        _, ids = prompt_ids(tok, messages)
        n = len(ids)
        # tight cross-checks, beyond run_case's loose ones
        hf_logits, hf_res = hf_last(model, ids)
        np_logits, np_res = ref.forward(ids)
        un_logits, un_res = ref_unscaled.forward(ids)
        st_logits, st_res = hf_last(stock, ids)
        agree = rel_diff(hf_res, np_res)
        agree_logits = float(np.max(np.abs(hf_logits - np_logits)))
        stock_agree = rel_diff(st_res, un_res)
        effect = rel_diff(un_res, np_res)
        effect_logits = float(np.max(np.abs(un_logits - np_logits)))
        print(f"  case {len(cases)}: {n} prompt ids")
        print(f"    transformers(llama3 rope) vs numpy(rope_freqs): residuals {agree:.2e} rel, "
              f"logits {agree_logits:.2e} abs")
        print(f"    stock transformers (no scaling) vs numpy without rope_freqs: residuals {stock_agree:.2e} rel")
        print(f"    effect of rope_freqs (numpy with vs without): residuals "
              + ", ".join(f"{float(np.max(np.abs(a - b)) / np.max(np.abs(b))):.3e}" for a, b in zip(un_res, np_res))
              + f" rel; logits max |diff| {effect_logits:.3e}")
        assert agree < 1e-5 and agree_logits < 1e-4, "transformers and the NumPy reference disagree"
        assert stock_agree < 1e-5
        if n > ROPE_SCALING["original_max_position_embeddings"]:
            assert effect > 1e-2, "the rope scaling hardly matters for this prompt"

        case = run_case(tok, model, messages, ref)
        assert case["prompt_ids"] == ids
        cases.append(case)
        print(f"    top1 {case['top_logits'][0]}, range {case['logit_range']}, residual norms "
              f"{[round(x, 3) for x in case['residual_norms']]} ({time.time() - t1:.1f}s)")
        print(f"    greedy: {case['greedy_text']!r}")
        m = case["greedy"]["margins"]
        print(f"    margins min {min(m):.4g} at step {m.index(min(m))}")
    assert any(len(c["prompt_ids"]) > ROPE_SCALING["original_max_position_embeddings"] for c in cases)

    cfg = model.config
    p = ROPE_SCALING
    obj = {
        "gguf": LLAMA3_TINY_GGUF,
        "generator": "make_llama3_tiny.py (run_case of make_forward.py); transformers GGUF load, f32, eval, no "
        "grad, config.rope_parameters = llama3 "
        f"(factor {p['factor']:g}, low_freq_factor {p['low_freq_factor']:g}, high_freq_factor "
        f"{p['high_freq_factor']:g}, original_max_position_embeddings {p['original_max_position_embeddings']}) "
        "set by hand because transformers' GGUF loader ignores rope_freqs.weight; cross-checked against a float64 "
        "NumPy forward using rope_freqs.weight; " + versions("transformers", "torch", "gguf", "numpy"),
        "n_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "cases": cases,
    }
    out = GOLDEN_DIR / FORWARD_JSON
    size = write_json(out, obj)
    back = read_json(out)
    for c in back["cases"]:
        assert len(c["residuals"]) == obj["n_layers"] + 1
        assert all(len(r) == obj["hidden_size"] for r in c["residuals"])
        assert len(c["greedy"]["ids"]) == N_GREEDY == len(c["greedy"]["margins"])
        assert len(c["top_logits"]) == 20
    print(f"wrote {out} ({size} bytes)")
    assert size < 1_500_000


# ---------------------------------------------------------------------------------------------------------
# Tokenizer golden
# ---------------------------------------------------------------------------------------------------------


def make_tokenizer_golden(tok) -> None:
    from make_tokenizer import SPECIAL_TEXTS, encode, golden_strings

    specials = tuple(SPECIAL_TEXTS) + tuple(SPECIAL_TOKENS)
    cases = []
    for s in golden_strings() + EXTRA_TOKENIZER_STRINGS:
        ids = encode(tok, s)
        case = {"text": s, "ids": ids, "decoded": tok.decode(ids)}
        if any(sp in s for sp in specials):
            case["ids_special_matched"] = encode(tok, s, split_special=False)
        cases.append(case)
    obj = {
        "gguf": LLAMA3_TINY_GGUF,
        "pre": "llama-bpe",
        "generator": "make_llama3_tiny.py (strings of make_tokenizer.py + 5 Llama 3 ones); "
        + versions("transformers", "tokenizers", "gguf"),
        "note": "ids: tok(text, add_special_tokens=False, split_special_tokens=True); decoded: tok.decode(ids); "
        "ids_special_matched (only where the text contains special-token text of this file or of "
        "tokenizer_qwen2_tiny.json): split_special_tokens=False.",
        "cases": cases,
    }
    out = GOLDEN_DIR / TOKENIZER_JSON
    size = write_json(out, obj)
    back = read_json(out)
    assert back["cases"] == cases
    n_round = sum(c["decoded"] == c["text"] for c in cases)
    print(f"wrote {out} ({size} bytes): {len(cases)} cases, {n_round} decode back to the exact text, "
          f"{sum(len(c['ids']) for c in cases)} ids in all")
    for c in cases:
        if "ids_special_matched" in c:
            print(f"  {c['text'][:45]!r}: split {len(c['ids'])} ids, matched {c['ids_special_matched'][:12]}")
    # independent check: plain byte-level BPE over the Llama 3 split, from the GGUF's own token list and merges
    r = GGUFReader(str(GOLDEN_DIR / LLAMA3_TINY_GGUF))
    vocab_list = [str(x) for x in r.fields["tokenizer.ggml.tokens"].contents()]
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(r.fields["tokenizer.ggml.merges"].contents())}
    token_id = {t: i for i, t in enumerate(vocab_list)}
    alphabet = byte_alphabet()

    def bpe(text: str) -> list[int]:
        out = []
        for chunk in regex.findall(LLAMA3_SPLIT, text):
            parts = [alphabet[b] for b in chunk.encode("utf-8")]
            while len(parts) > 1:
                best = min(range(len(parts) - 1), key=lambda i: ranks.get((parts[i], parts[i + 1]), 1 << 30))
                if (parts[best], parts[best + 1]) not in ranks:
                    break
                parts[best:best + 2] = [parts[best] + parts[best + 1]]
            out += [token_id[p] for p in parts]
        return out

    mismatch = [c["text"][:40] for c in cases if bpe(c["text"]) != c["ids"]]
    print(f"  plain-Python BPE (regex split + merges) agrees on {len(cases) - len(mismatch)}/{len(cases)} cases")
    assert not mismatch, mismatch
    # the digit grouping of llama-bpe shows: no chunk has more than three digits
    for c in cases:
        pieces = [tok.convert_ids_to_tokens(i) for i in c["ids"]]
        assert not any(regex.search(r"\d{4}", p) for p in pieces), c["text"][:40]


def main() -> None:
    t0 = time.time()
    write_gguf()
    tok = load_tokenizer()
    model = load_model(scaled=True)
    check_model(tok, model)
    for messages in CONVERSATIONS:
        text, ids = prompt_ids(tok, messages)
        print(f"prompt ({len(ids)} ids): {text!r}")
    make_forward(tok, model)
    make_tokenizer_golden(tok)
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
