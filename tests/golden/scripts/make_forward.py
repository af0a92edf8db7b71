#!/usr/bin/env python3
"""Generate tests/golden/smollm2_forward.json and tests/golden/qwen2_tiny_forward.json.

The model is loaded by transformers from the GGUF (dequantized to f32: `AutoModelForCausalLM.from_pretrained(dir,
gguf_file=..., dtype=torch.float32)`), in eval mode, without gradients. For each conversation the prompt is
rendered with apply_chat_template(add_generation_prompt=True) and tokenized with add_special_tokens=False, and:

  top_logits      top 20 [id, logit] at the last prompt position; logit_range = max - min over the vocabulary
  residuals       at the last prompt position: [0] = embedding output, [k] = raw output of decoder block k-1
                  (forward hooks on model.model.layers[i]; not output_hidden_states, whose last entry is
                  normed); residual_norms = their L2 norms
  greedy          32 argmax steps by full recomputation (no KV cache, no EOS stop), with the top-1 minus top-2
                  logit margin of every step

As an independent cross-check, the same prompt is also run through a small float64 NumPy implementation
written here from the GGUF tensors directly (llama.cpp conventions: `llama` q/k rows are stored permuted for
interleaved-pair RoPE, `qwen2` uses NeoX half-split RoPE); logits and residuals must agree with transformers.

Floats are rounded to 7 significant digits.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

from common import (
    GOLDEN_DIR, MODELS_DIR, QWEN2_TINY_GGUF, SMOLLM2_GGUF, read_json, round_list, round_sig, versions, write_json,
)
from make_tokenizer import smollm2_pre_tokenizer

N_GREEDY = 32
TOP_K = 20

SMOLLM2_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Describe the sea in one sentence."},
    ],
]
QWEN2_TINY_CONVERSATIONS = [
    [{"role": "user", "content": "Hello! Describe the sea in one sentence."}],
]


# ---------------------------------------------------------------------------------------------------------
# Independent float64 NumPy forward pass, straight from the GGUF tensors
# ---------------------------------------------------------------------------------------------------------


class NumpyRef:
    def __init__(self, path):
        r = GGUFReader(str(path))
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")}
        self.arch = f["general.architecture"]
        a = self.arch
        self.n_layer = int(f[f"{a}.block_count"])
        self.d = int(f[f"{a}.embedding_length"])
        self.n_head = int(f[f"{a}.attention.head_count"])
        self.n_kv = int(f[f"{a}.attention.head_count_kv"])
        self.hd = self.d // self.n_head
        self.eps = float(f[f"{a}.attention.layer_norm_rms_epsilon"])
        self.base = float(f[f"{a}.rope.freq_base"])
        self.w = {}
        for t in r.tensors:
            self.w[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        # llama: q/k rows permuted by the converter -> rotate adjacent pairs; qwen2: NeoX halves
        self.rope_neox = {"llama": False, "qwen2": True}[self.arch]

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x: (T, H, hd)
        hd = self.hd
        inv = self.base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
        ang = pos[:, None] * inv[None, :]  # (T, hd/2)
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.rope_neox:
            a, b = x[..., : hd // 2], x[..., hd // 2 :]
            return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    def lin(self, x, name):
        y = x @ self.w[name + ".weight"].T
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def forward(self, ids):
        T = len(ids)
        pos = np.arange(T, dtype=np.float64)
        x = self.w["token_embd.weight"][np.asarray(ids)]
        residuals = [x[-1].copy()]
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        group = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.rms(x, self.w[p + "attn_norm.weight"])
            q = self.rope(self.lin(h, p + "attn_q").reshape(T, self.n_head, self.hd), pos)
            k = self.rope(self.lin(h, p + "attn_k").reshape(T, self.n_kv, self.hd), pos)
            v = self.lin(h, p + "attn_v").reshape(T, self.n_kv, self.hd)
            out = np.empty((T, self.n_head, self.hd))
            for hh in range(self.n_head):
                kv = hh // group
                s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(self.hd) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                out[:, hh, :] = s @ v[:, kv, :]
            x = x + self.lin(out.reshape(T, self.d), p + "attn_output")
            h = self.rms(x, self.w[p + "ffn_norm.weight"])
            g = self.lin(h, p + "ffn_gate")
            x = x + self.lin(g / (1.0 + np.exp(-g)) * self.lin(h, p + "ffn_up"), p + "ffn_down")
            residuals.append(x[-1].copy())
        logits = self.rms(x[-1], self.w["output_norm.weight"]) @ self.w["output.weight"].T
        return logits, residuals


# ---------------------------------------------------------------------------------------------------------


def load(gguf_dir, gguf_name: str, fix_smollm: bool):
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    if fix_smollm:
        tok.backend_tokenizer.pre_tokenizer = smollm2_pre_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    model.eval()
    return tok, model


def run_case(tok, model, messages, ref: NumpyRef) -> dict:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    assert tok.decode(ids) == text

    captured: dict[int, torch.Tensor] = {}

    def hook_for(k):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured[k] = out.detach()[0, -1].clone()

        return hook

    handles = [model.model.embed_tokens.register_forward_hook(hook_for(0))]
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_hook(hook_for(i + 1)))
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1].double()
    for h in handles:
        h.remove()
    n_layers = len(model.model.layers)
    residuals = [captured[k].double().numpy() for k in range(n_layers + 1)]

    # independent cross-check
    ref_logits, ref_res = ref.forward(ids)
    lg = logits.numpy()
    logit_err = float(np.max(np.abs(lg - ref_logits)))
    res_err = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)) for a, b in zip(residuals, ref_res))
    print(f"    numpy float64 reference: max |logit diff| {logit_err:.2e} (logit range {np.ptp(lg):.2f}), "
          f"max residual diff / max|residual| {res_err:.2e}")
    assert logit_err < 2e-2 and res_err < 1e-3, "transformers and the NumPy reference disagree"
    assert int(np.argmax(lg)) == int(np.argmax(ref_logits))

    order = np.argsort(-lg, kind="stable")[:TOP_K]
    top = [[int(i), round_sig(lg[i])] for i in order]

    # greedy, full recompute each step
    seq = list(ids)
    g_ids, margins = [], []
    with torch.no_grad():
        for _ in range(N_GREEDY):
            step = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
            v, ix = torch.topk(step, 2)
            nxt = int(ix[0])
            g_ids.append(nxt)
            margins.append(round_sig(float(v[0] - v[1])))
            seq.append(nxt)

    return {
        "messages": messages,
        "prompt_ids": ids,
        "top_logits": top,
        "logit_range": round_sig(float(lg.max() - lg.min())),
        "residuals": [round_list(r) for r in residuals],
        "residual_norms": [round_sig(float(np.linalg.norm(r))) for r in residuals],
        "greedy": {"ids": g_ids, "margins": margins},
        "greedy_text": tok.decode(g_ids),
    }


def make(gguf_dir, gguf_name: str, out_name: str, conversations, fix_smollm: bool) -> None:
    t0 = time.time()
    tok, model = load(gguf_dir, gguf_name, fix_smollm)
    ref = NumpyRef(gguf_dir / gguf_name)
    cfg = model.config
    print(f"{gguf_name}: {type(model).__name__}, {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, vocab {cfg.vocab_size}, "
          f"tied={cfg.tie_word_embeddings} (load {time.time() - t0:.1f}s)")
    cases = []
    for messages in conversations:
        t1 = time.time()
        cases.append(run_case(tok, model, messages, ref))
        c = cases[-1]
        print(f"  case {len(cases)}: {len(c['prompt_ids'])} prompt ids, top1 {c['top_logits'][0]}, "
              f"range {c['logit_range']}, ({time.time() - t1:.1f}s)")
        print(f"    residual norms: {[round(x, 2) for x in c['residual_norms']]}")
        print(f"    greedy: {c['greedy_text']!r}")
        print(f"    margins min {min(c['greedy']['margins']):.4g}")
    obj = {
        "gguf": gguf_name,
        "generator": "make_forward.py; transformers GGUF load, f32, eval, no grad; "
        + versions("transformers", "torch", "gguf", "numpy"),
        "n_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "cases": cases,
    }
    out = GOLDEN_DIR / out_name
    size = write_json(out, obj)
    back = read_json(out)
    for c in back["cases"]:
        assert len(c["residuals"]) == obj["n_layers"] + 1
        assert all(len(r) == obj["hidden_size"] for r in c["residuals"])
        assert len(c["greedy"]["ids"]) == N_GREEDY == len(c["greedy"]["margins"])
        assert len(c["top_logits"]) == TOP_K
    print(f"wrote {out} ({size} bytes)")
    assert size < 1_500_000


def main() -> None:
    torch.manual_seed(0)
    make(GOLDEN_DIR, QWEN2_TINY_GGUF, "qwen2_tiny_forward.json", QWEN2_TINY_CONVERSATIONS, fix_smollm=False)
    make(MODELS_DIR, SMOLLM2_GGUF, "smollm2_forward.json", SMOLLM2_CONVERSATIONS, fix_smollm=True)
    answer = read_json(GOLDEN_DIR / "smollm2_forward.json")["cases"][0]["greedy_text"]
    assert "Paris" in answer, answer


if __name__ == "__main__":
    main()
