#!/usr/bin/env python3
"""Generate tests/golden/dequant.json: raw ggml block bytes and their dequantized f32 values.

The oracle is `gguf.quants.dequantize` from the `gguf` Python package (the reference implementation that ships
with llama.cpp). Payload bytes are random (fixed seed); every f16 scale/min field is overwritten with a finite
value so that no output is NaN or infinite. One block per quantized type gets an f16-subnormal scale `d` so a
reader's f16 -> f32 conversion of subnormals is exercised too.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from common import GOLDEN_DIR, read_json, versions, write_json

SEED = 20240601
N_BLOCKS = 4
N_PLAIN = 64  # elements for F32 / F16 / BF16

# Byte offsets of the f16 fields in one block: name -> offset.
F16_FIELDS = {
    T.Q4_0: {"d": 0},
    T.Q4_1: {"d": 0, "m": 2},
    T.Q5_0: {"d": 0},
    T.Q5_1: {"d": 0, "m": 2},
    T.Q8_0: {"d": 0},
    T.Q4_K: {"d": 0, "dmin": 2},
    T.Q5_K: {"d": 0, "dmin": 2},
    T.Q6_K: {"d": 208},  # ql[128] qh[64] scales[16] d
}

ORDER = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]

F16_SUBNORMAL = np.float16(2.0**-20)  # 0x0010, subnormal in f16


def f16_bytes(x: float) -> bytes:
    v = np.float16(x)
    assert np.isfinite(v)
    return v.tobytes()


def quant_blocks(rng: np.random.Generator, qtype: T) -> bytes:
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = bytearray(rng.integers(0, 256, size=N_BLOCKS * block_bytes, dtype=np.uint8).tobytes())
    for b in range(N_BLOCKS):
        base = b * block_bytes
        for name, off in F16_FIELDS[qtype].items():
            if name == "d":
                val = F16_SUBNORMAL if b == 2 else rng.uniform(-2.0, 2.0)
            else:  # m / dmin: small, either sign
                val = rng.uniform(-0.25, 0.25)
            raw[base + off : base + off + 2] = f16_bytes(val)
    return bytes(raw)


def plain_values(rng: np.random.Generator, qtype: T) -> bytes:
    if qtype == T.F32:
        vals = (rng.standard_normal(N_PLAIN) * 3.0).astype(np.float32)
        specials = np.array(
            [0.0, -0.0, 1.0, -1.0, 1.0e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38], dtype=np.float32
        )
        vals[: len(specials)] = specials
        return vals.tobytes()
    if qtype == T.F16:
        vals = (rng.standard_normal(N_PLAIN) * 3.0).astype(np.float16)
        specials = np.array([0.0, -0.0, 1.0, -1.0, 2.0**-24, 2.0**-14, 65504.0, -65504.0, 2.0**-20], dtype=np.float16)
        vals[: len(specials)] = specials
        assert np.all(np.isfinite(vals))
        return vals.tobytes()
    if qtype == T.BF16:
        f32 = (rng.standard_normal(N_PLAIN) * 3.0).astype(np.float32)
        bits = (f32.view(np.uint32) >> 16).astype(np.uint16)  # truncation; the payload is what it is
        specials = np.array([0x0000, 0x8000, 0x3F80, 0xBF80, 0x0001, 0x0080, 0x7F7F, 0xFF7F, 0x4049], dtype=np.uint16)
        bits[: len(specials)] = specials
        assert np.all(np.isfinite((bits.astype(np.uint32) << 16).view(np.float32)))
        return bits.tobytes()
    raise ValueError(qtype)


def main() -> None:
    rng = np.random.default_rng(SEED)
    types = []
    for qtype in ORDER:
        if qtype in (T.F32, T.F16, T.BF16):
            raw = plain_values(rng, qtype)
        else:
            raw = quant_blocks(rng, qtype)
        data = np.frombuffer(raw, dtype=np.uint8).copy()
        values = np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(-1)
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        assert len(raw) % block_bytes == 0
        n_elements = len(raw) // block_bytes * block_elems
        assert values.size == n_elements, (qtype, values.size, n_elements)
        assert np.all(np.isfinite(values)), qtype
        types.append(
            {
                "name": qtype.name,
                "type_id": int(qtype.value),
                "n_elements": int(n_elements),
                "bytes_hex": raw.hex(),
                "values": [float(v) for v in values],  # repr of a float32 widened to double: exact
            }
        )

    out = GOLDEN_DIR / "dequant.json"
    size = write_json(out, {"generator": "make_dequant.py; oracle gguf.quants.dequantize; " + versions("gguf", "numpy"), "types": types})

    # Read back and re-check against the oracle.
    back = read_json(out)
    for t in back["types"]:
        qtype = T[t["name"]]
        assert qtype.value == t["type_id"]
        data = np.frombuffer(bytes.fromhex(t["bytes_hex"]), dtype=np.uint8).copy()
        again = np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(-1)
        got = np.array(t["values"], dtype=np.float32)
        assert np.array_equal(again.view(np.uint32), got.view(np.uint32)), t["name"]
        print(f"  {t['name']:5s} id={t['type_id']:2d} n={t['n_elements']:5d} bytes={len(data):4d} "
              f"min={got.min():.4g} max={got.max():.4g} mean|x|={np.abs(got.astype(np.float64)).mean():.4g}")
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    main()
