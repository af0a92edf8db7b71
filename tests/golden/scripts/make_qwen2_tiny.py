#!/usr/bin/env python3
"""Generate tests/golden/qwen2_tiny.gguf: a tiny synthetic `qwen2` model with random weights (fixed seed).

Shape: d_model 256, 2 blocks, 4 query heads / 2 KV heads of 64, FFN 512, rope base 1e6, RMS eps 1e-6,
context 512, QKV biases (f32), norms (f32), a separate (untied) `output.weight`. The matrices are random
K-quant / Q8_0 blocks with chosen scales (row lengths are multiples of 256, as K-quants require), so the
dequantized weights are exactly what the file says and nothing had to be quantized:

    tensor            blk.0   blk.1
    attn_q            Q4_K    Q5_K
    attn_k            Q5_K    Q4_K
    attn_v            Q6_K    Q8_0
    attn_output       Q8_0    Q6_K
    ffn_gate          Q4_K    Q6_K
    ffn_up            Q5_K    Q4_K
    ffn_down          Q6_K    Q5_K
    token_embd Q8_0, output Q6_K

Tokenizer: GPT-2 style byte-level BPE (`tokenizer.ggml.model` = gpt2, `tokenizer.ggml.pre` = qwen2): the 256
byte tokens (id = byte value, spelled in the GPT-2 byte alphabet), then merges learned by a small BPE trainer
(below) from an English text written for this purpose, then the control tokens <|endoftext|>, <|im_start|>,
<|im_end|>. The chat template is the exact Qwen2.5-Instruct one.

After writing, the file is loaded with transformers (model + tokenizer) and the logits of a chat prompt are
checked to be finite and in a sane range.
"""

from __future__ import annotations

import collections
import sys

import numpy as np
import regex
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter, TokenType
from gguf.constants import GGML_QUANT_SIZES, LlamaFileType
from gguf.quants import dequantize

from common import GOLDEN_DIR, QWEN2_TINY_GGUF
from qwen25_template import QWEN25_INSTRUCT_CHAT_TEMPLATE

SEED = 1234
N_MERGES = 320

D_MODEL = 256
N_LAYERS = 2
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = D_MODEL // N_HEAD
FFN = 512
CONTEXT = 512
ROPE_BASE = 1.0e6
RMS_EPS = 1.0e-6

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The pre-tokenizer split used by Qwen2 (and llama.cpp's `qwen2` pre-type).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Training text for the merges: original prose, plus the words the chat template and the golden prompts use.
CORPUS = """\
The sea is wide and the sea is deep. On a clear morning the water is blue and calm, and the light moves
across the waves like a slow song. Sailors say that the sea remembers every ship that has ever crossed it.
In the evening the wind comes back, the waves grow tall, and the harbour fills with boats returning home.
What is the capital of France? The capital of France is Paris. Paris stands on the river Seine, and it is
famous for its museums, its bridges, its cafes and the tall iron tower that everyone knows.
You are a helpful assistant. You are Qwen, created by Alibaba Cloud. You are a helpful assistant.
The user asks a question and the assistant gives an answer. The system message sets the tone of the
conversation; the user message asks; the assistant message answers. Hello! How are you today? I am fine,
thank you. Can you tell me a story about the sea, the wind and the stars? Of course. Once upon a time there
was a small boat that wanted to see the whole world. It sailed from the harbour in the morning, and the
people on the shore waved their hands until the boat was only a dot on the horizon.
Describe the sea in one sentence. The sea is a restless blue giant that breathes with the tides.
def greet(name):
    return "Hello, " + name + "!"
for i in range(10):
    print(greet("world"), i)
Numbers like 12345 and 3.14159 are split into single digits. Write the answer in English, please.
"""


# ---------------------------------------------------------------------------------------------------------
# Byte-level BPE vocabulary
# ---------------------------------------------------------------------------------------------------------


def byte_alphabet() -> dict[int, str]:
    """The GPT-2 byte -> printable character table: printable Latin-1 bytes map to themselves, the other
    bytes to U+0100 onwards, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def train_bpe(text: str, n_merges: int, split: str = QWEN2_SPLIT) -> list[tuple[str, str]]:
    """Plain BPE: count chunks pre-tokenized by `split`, repeatedly merge the most frequent adjacent pair.

    Ties go to the lexicographically smallest pair so the result is deterministic."""
    alphabet = byte_alphabet()
    chunk_counts = collections.Counter(regex.findall(split, text))
    words = {tuple(alphabet[b] for b in chunk.encode("utf-8")): n for chunk, n in chunk_counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_words = {}
        for word, n in words.items():
            out = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return merges


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    alphabet = byte_alphabet()
    tokens = [alphabet[b] for b in range(256)]
    types = [int(TokenType.NORMAL)] * 256
    merges = train_bpe(CORPUS, N_MERGES)
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
# Random quantized weights with controlled scales
# ---------------------------------------------------------------------------------------------------------


def f16(x) -> np.ndarray:
    v = np.asarray(x, dtype=np.float16)
    assert np.all(np.isfinite(v))
    return v


def pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins per block into ggml's 12-byte K-quant layout."""
    sc = sc.astype(np.uint8)
    m = m.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return out


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int, std: float) -> np.ndarray:
    """`n_blocks` random blocks of `qtype` whose dequantized values have roughly zero mean and std `std`."""
    _, size = GGML_QUANT_SIZES[qtype]
    jitter = rng.uniform(0.75, 1.25, size=n_blocks)
    if qtype == T.Q8_0:
        qs = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int64).astype(np.int8).view(np.uint8)
        d = f16(std / 73.6 * jitter)
        blocks = np.concatenate([d.view(np.uint8).reshape(n_blocks, 2), qs], axis=1)
    elif qtype in (T.Q4_K, T.Q5_K):
        levels = 16 if qtype == T.Q4_K else 32
        mid = (levels - 1) / 2.0
        q_std = np.sqrt((levels**2 - 1) / 12.0)
        sc = rng.integers(32, 64, size=(n_blocks, 8))
        d = std / (47.5 * q_std) * jitter
        # dmin = d * levels/2, m chosen so that dmin * m ~= d * sc * mid: values centred on zero
        dmin = d * (levels / 2)
        m = np.clip(np.rint(sc * mid / (levels / 2)), 0, 63).astype(np.int64)
        d16, dmin16 = f16(d), f16(dmin)
        scales = pack_k_scales(sc, m)
        qs = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
        parts = [d16.view(np.uint8).reshape(n_blocks, 2), dmin16.view(np.uint8).reshape(n_blocks, 2), scales]
        if qtype == T.Q5_K:
            parts.append(rng.integers(0, 256, size=(n_blocks, 32), dtype=np.uint8))  # qh
        parts.append(qs)
        blocks = np.concatenate(parts, axis=1)
        # check the packing against the oracle's unpacking
        from gguf.quants import Q4_K

        got_sc, got_m = Q4_K.get_scale_min(scales.copy())
        assert np.array_equal(got_sc, sc) and np.array_equal(got_m, m)
    elif qtype == T.Q6_K:
        ql = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
        qh = rng.integers(0, 256, size=(n_blocks, 64), dtype=np.uint8)
        mag = rng.integers(32, 65, size=(n_blocks, 16))
        sign = rng.choice([-1, 1], size=(n_blocks, 16))
        scales = (mag * sign).astype(np.int8).view(np.uint8)
        d = f16(std / (48.0 * 18.47) * jitter)
        blocks = np.concatenate([ql, qh, scales, d.view(np.uint8).reshape(n_blocks, 2)], axis=1)
    else:
        raise ValueError(qtype)
    assert blocks.shape == (n_blocks, size)
    return blocks


def random_matrix(rng: np.random.Generator, qtype: T, rows: int, cols: int, std: float) -> np.ndarray:
    """A (rows, bytes_per_row) uint8 array: `rows` rows of `cols` elements each (ggml ne = [cols, rows])."""
    block_elems, size = GGML_QUANT_SIZES[qtype]
    assert cols % block_elems == 0
    per_row = cols // block_elems
    blocks = random_blocks(rng, qtype, rows * per_row, std)
    return blocks.reshape(rows, per_row * size)


# ---------------------------------------------------------------------------------------------------------


def main() -> None:
    rng = np.random.default_rng(SEED)
    tokens, token_types, merges = build_vocab()
    vocab = len(tokens)
    eot, im_start, im_end = (tokens.index(s) for s in SPECIAL_TOKENS)

    out_path = GOLDEN_DIR / QWEN2_TINY_GGUF
    w = GGUFWriter(str(out_path), "qwen2")
    w.add_name("qwen2 tiny (Personascope golden, random weights)")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D_MODEL)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(int(LlamaFileType.MOSTLY_Q4_K_M))
    w.add_quantization_version(2)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_eos_token_id(im_end)
    w.add_pad_token_id(eot)
    w.add_bos_token_id(eot)
    w.add_add_bos_token(False)
    w.add_chat_template(QWEN25_INSTRUCT_CHAT_TEMPLATE)

    kv_dim = N_HEAD_KV * HEAD_DIM
    layer_types = [
        {"attn_q": T.Q4_K, "attn_k": T.Q5_K, "attn_v": T.Q6_K, "attn_output": T.Q8_0,
         "ffn_gate": T.Q4_K, "ffn_up": T.Q5_K, "ffn_down": T.Q6_K},
        {"attn_q": T.Q5_K, "attn_k": T.Q4_K, "attn_v": T.Q8_0, "attn_output": T.Q6_K,
         "ffn_gate": T.Q6_K, "ffn_up": T.Q4_K, "ffn_down": T.Q5_K},
    ]
    # (rows = out features, cols = in features, std of the dequantized weights)
    shapes = {
        "attn_q": (D_MODEL, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "attn_k": (kv_dim, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "attn_v": (kv_dim, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "attn_output": (D_MODEL, D_MODEL, 0.5 / np.sqrt(D_MODEL)),
        "ffn_gate": (FFN, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "ffn_up": (FFN, D_MODEL, 1.0 / np.sqrt(D_MODEL)),
        "ffn_down": (D_MODEL, FFN, 0.5 / np.sqrt(FFN)),
    }

    def norm_weight() -> np.ndarray:
        return (1.0 + 0.15 * rng.standard_normal(D_MODEL)).astype(np.float32)

    w.add_tensor("token_embd.weight", random_matrix(rng, T.Q8_0, vocab, D_MODEL, 0.5), raw_dtype=T.Q8_0)
    for i in range(N_LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm_weight())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            rows, cols, std = shapes[name]
            qtype = layer_types[i][name]
            w.add_tensor(f"blk.{i}.{name}.weight", random_matrix(rng, qtype, rows, cols, std), raw_dtype=qtype)
            if name in ("attn_q", "attn_k", "attn_v"):
                bias_std = {"attn_q": 0.2, "attn_k": 0.5, "attn_v": 0.1}[name]
                w.add_tensor(f"blk.{i}.{name}.bias", (bias_std * rng.standard_normal(rows)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm_weight())
    w.add_tensor("output_norm.weight", norm_weight())
    w.add_tensor("output.weight", random_matrix(rng, T.Q6_K, vocab, D_MODEL, 0.2), raw_dtype=T.Q6_K)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = out_path.stat().st_size
    print(f"wrote {out_path} ({size} bytes), vocab {vocab} ({len(merges)} merges), "
          f"eot={eot} im_start={im_start} im_end={im_end}")
    assert size < 1_500_000

    # Read back with gguf's reader: every tensor dequantizes to finite values.
    r = GGUFReader(str(out_path))
    for t in r.tensors:
        vals = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        assert np.all(np.isfinite(vals)), t.name
        print(f"  {t.name:26s} {t.tensor_type.name:5s} ne={list(map(int, t.shape))} "
              f"mean={vals.mean():+.4f} std={vals.std():.4f}")

    check_with_transformers(out_path)


def check_with_transformers(path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (D_MODEL, N_LAYERS, N_HEAD, N_HEAD_KV, FFN), cfg
    assert not cfg.tie_word_embeddings
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    msgs = [{"role": "user", "content": "Hello! Describe the sea in one sentence."}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert torch.isfinite(logits).all()
    last = logits[-1]
    stds = logits.std(dim=-1)
    print(f"transformers: loaded {type(model).__name__}, prompt {len(ids)} tokens; "
          f"last-position logits std {last.std():.3f} range [{last.min():.3f}, {last.max():.3f}]; "
          f"per-position std {stds.min():.3f}..{stds.max():.3f}")
    assert 0.5 < float(stds.min()) and float(stds.max()) < 10.0, "logit scale out of the intended range"


if __name__ == "__main__":
    sys.exit(main())
