#!/usr/bin/env python3
"""The anchor for `personascope bench --persona`: the same persona jobs as a plain Python pipeline would run
them on Hugging Face transformers (fp32 weights dequantized from the same GGUF, one sequence at a time, the way
the paper's reference code and most notebooks do it).

Jobs, with the sizes of `bench --persona`'s defaults:
- prompt-last extraction of a built-in trait: one forward per (pair, question, polarity) prompt, the residual of
  the last prompt token at every layer, mean difference;
- screening of the first N samples of tests/data/screening (impolite, then evil), cheap: one forward of
  prompt + response, mean residual over the response at the screening layer, dot with the unit vector;
- screening by projection difference: as cheap, plus a greedy answer of up to K tokens (`generate`) and a
  forward of prompt + that answer for its mean projection.

Usage (a venv with torch, transformers, gguf, accelerate):
    python tests/bench/python_pipeline.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2]
Prints one JSON object of seconds and rates.
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def load_samples(n):
    out = []
    for name in ["impolite", "evil", "humorous", "sycophantic"]:
        with open(os.path.join(ROOT, "tests", "data", "screening", f"{name}.jsonl")) as f:
            for line in f:
                row = json.loads(line)
                msgs = row["messages"]
                out.append((msgs[:-1], msgs[-1]["content"]))
    while len(out) < n:
        out = out + out
    return out[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--trait", default="impolite")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--answer-tokens", type=int, default=48)
    ap.add_argument("--layer", type=int, default=21)
    ap.add_argument("--pairs", type=int, default=None, help="instruction pairs used (default: all)")
    ap.add_argument("--questions", type=int, default=None, help="extraction questions used (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    folder, file = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0

    with open(os.path.join(ROOT, "crates", "persona", "traits", f"{args.trait}.json")) as f:
        trait = json.load(f)

    def prompt_ids(messages):
        out = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        return out["input_ids"]

    @torch.no_grad()
    def hidden(ids):
        # hidden_states[L] is residual index L: 0 = embeddings, k = output of block k-1 (the last one after the
        # final norm in transformers, which the extraction below does not use for anything but the last index).
        return model(ids, output_hidden_states=True).hidden_states

    # Prompt-last extraction.
    t0 = time.perf_counter()
    sums = {"pos": None, "neg": None}
    prompts = 0
    for pair in trait["instructions"][: args.pairs]:
        for q in trait["extraction_questions"][: args.questions]:
            for pol in ("pos", "neg"):
                ids = prompt_ids([{"role": "system", "content": pair[pol]}, {"role": "user", "content": q}])
                rows = torch.stack([h[0, -1] for h in hidden(ids)])
                sums[pol] = rows if sums[pol] is None else sums[pol] + rows
                prompts += 1
    vector = (sums["pos"] - sums["neg"]) / (prompts / 2)
    extract_s = time.perf_counter() - t0
    unit = vector[args.layer] / vector[args.layer].norm()

    samples = load_samples(args.samples)

    @torch.no_grad()
    def mean_projection(p_ids, answer_ids):
        ids = torch.cat([p_ids, answer_ids], dim=1)
        h = hidden(ids)[args.layer][0, p_ids.shape[1]:]
        return float((h @ unit).mean())

    t0 = time.perf_counter()
    for messages, response in samples:
        p = prompt_ids(messages)
        r = tok(response, add_special_tokens=False, return_tensors="pt").input_ids
        mean_projection(p, r)
    cheap_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for messages, response in samples:
        p = prompt_ids(messages)
        r = tok(response, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            own = model.generate(p, max_new_tokens=args.answer_tokens, do_sample=False)[:, p.shape[1]:]
        mean_projection(p, r) - mean_projection(p, own)
    diff_s = time.perf_counter() - t0

    print(json.dumps({
        "torch": torch.__version__,
        "threads": args.threads,
        "load_s": round(load_s, 2),
        "extract_prompt_last": {"prompts": prompts, "seconds": round(extract_s, 2),
                                "prompts_per_s": round(prompts / extract_s, 2)},
        "screening": {
            "samples": len(samples),
            "answer_tokens": args.answer_tokens,
            "cheap": {"seconds": round(cheap_s, 2), "samples_per_s": round(len(samples) / cheap_s, 2)},
            "projection_difference": {"seconds": round(diff_s, 2), "samples_per_s": round(len(samples) / diff_s, 2)},
        },
    }, indent=2))


if __name__ == "__main__":
    main()
