"""The elementwise FLOP coefficients behind the tables of ``scaling/estimate/flops.py``, read off
XLA's count of the unrolled training step (jax 0.10.2, optax 0.2.8, CPU lowering).

- ``count REMAT DTYPE [VARIANT...]``: per-unit coefficients of each architecture variant by
  finite differences, one dimension changed at a time, so each comes out as an exact number
  (integers and halves; fractions of 1/16 are the parameter-sized reduction terms the tables
  leave out). A field's change is its variant minus ``llama`` (the components add up: the
  gpt2 and gemma variants, measured whole, equal the sum of their parts).
- ``bf16 FAMILY REMAT [FIELDS_JSON]``: what bfloat16 compute adds over float32, by least
  squares on 30 random configurations with parameter-sized units included (the fit is exact:
  residual 0).

Development tool, not part of the package: `uv run python tools/count_elementwise.py count
none float32 llama gpt2`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

from scaling.config import ModelConfig, RunConfig
from scaling.estimate import flop_counts
from scaling.estimate.flops import _elementwise
from scaling.presets import FAMILY_ARCHITECTURES

BASE = dict(b=2, t=8, d=16, f=24, h=2, kv=1, k=4, V=32)


def make(arch: dict, L: int, d: int, f: int, h: int, kv: int, k: int, V: int) -> ModelConfig:
    return ModelConfig(
        n_layers=L, d_model=d, n_heads=h, n_kv_heads=kv, head_dim=k, d_ff=f, vocab_size=V,
        max_seq_len=64, **arch,
    )  # fmt: skip


@functools.cache
def residual(arch_json: str, L: int, b: int, t: int, d: int, f: int, h: int, kv: int, k: int,
             V: int) -> float:  # fmt: skip
    """XLA's FLOPs of the unrolled step minus matmuls, optimizer and unrolled stacking."""
    import jax

    from scaling.train import plan

    cfg = make(json.loads(arch_json), L, d, f, h, kv, k, V)
    run = RunConfig(model=dataclasses.replace(cfg, scan_layers=False), batch=b, seq=t, steps=2)
    p = plan(run)
    with jax.set_mesh(p.mesh):
        xla = float(p.step.lower(*p.abstract_inputs()).cost_analysis()["flops"])
    known = flop_counts(cfg, batch=b, seq=t).hardware_per_step
    e = _elementwise(cfg, batch=b, seq=t, mode="none", mesh=None, unrolled=True)
    return xla - known - e.optimizer - e.unrolled_stacking


def coefficients(arch: dict) -> dict[str, float]:
    a = json.dumps(arch, sort_keys=True)

    def layer(**kw):  # per-layer residual: two layers minus one
        c = {**BASE, **kw}
        return residual(a, 2, **c) - residual(a, 1, **c)

    def outside(**kw):
        c = {**BASE, **kw}
        return residual(a, 1, **c) - layer(**kw)

    B = BASE
    bt = B["b"] * B["t"]
    out: dict[str, float] = {}
    out["L.btd"] = (layer(d=32) - layer()) / (bt * 16)
    out["L.btf"] = (layer(f=48) - layer()) / (bt * 24)
    out["L.btkv"] = (layer(kv=2) - layer()) / (bt * B["k"])
    out["L.btq"] = ((layer(k=8) - layer()) / (bt * 4) - B["kv"] * out["L.btkv"]) / B["h"]
    # vary h at two t: b·Δh·(t²·bhtt + t·bht + t·k·btq)
    g = {}
    for t in (8, 16):
        g[t] = (layer(h=4, t=t) - layer(t=t)) / (B["b"] * 2) - t * B["k"] * out["L.btq"]
    out["L.bhtt"] = (g[16] / 16 - g[8] / 8) / 8
    out["L.bht"] = g[8] / 8 - 8 * out["L.bhtt"]

    def per_b(fn, keys):
        # slope in b at fixed others = t·(d·btd + 1·bt + f·btf + ...), so solve for bt
        t = B["t"]
        slope = fn(b=3) - fn()
        known = sum(out.get(k, 0.0) * v for k, v in keys.items())
        return (slope - known) / t

    layer_keys = {"L.btd": 8 * 16, "L.btf": 8 * 24, "L.bhtt": 2 * 64, "L.bht": 2 * 8,
                  "L.btq": 8 * 2 * 4, "L.btkv": 8 * 1 * 4}  # fmt: skip
    out["L.bt"] = per_b(layer, layer_keys)
    # intercept in b: c_tt·t² + c_t·t + c_1 at three t
    inter = {}
    for t in (8, 16, 24):
        slope_terms = (out["L.btd"] * 16 + out["L.bt"] + out["L.btf"] * 24
                       + out["L.bhtt"] * 2 * t + out["L.bht"] * 2 + out["L.btq"] * 8
                       + out["L.btkv"] * 4)  # fmt: skip
        inter[t] = layer(t=t) - B["b"] * t * slope_terms
    out["L.tt"], out["L.t"], out["L.one"] = _quadratic(inter)
    # outside: btd, bt, btv, bv, td, tt, t, 1
    out["out.btv"] = (outside(V=64) - outside()) / (bt * 32)
    out["out.btd"] = (outside(d=32) - outside()) / (bt * 16)
    out["out.bt"] = per_b(outside, {"out.btd": 8 * 16, "out.btv": 8 * 32})
    slope = out["out.btd"] * 16 + out["out.bt"] + out["out.btv"] * 32
    inter = {t: outside(t=t) - B["b"] * t * slope for t in (8, 16, 24)}
    out["out.tt"], out["out.t"], out["out.one"] = _quadratic(inter)
    return {k: round(v, 4) for k, v in out.items()}


def _quadratic(values: dict[int, float]) -> tuple[float, float, float]:
    import numpy as np

    ts = sorted(values)
    a = np.array([[t * t, t, 1.0] for t in ts])
    return tuple(float(x) for x in np.linalg.solve(a, [values[t] for t in ts]))


VARIANTS = {
    "llama": ("llama", {}),
    "gpt2": ("gpt2", {}),
    "gemma": ("gemma", {}),
    "mistral": ("mistral", {"sliding_window": 4}),
    "layernorm": ("llama", {"norm": "layer"}),
    "layernorm_bias": ("llama", {"norm": "layer", "norm_bias": True}),
    "rms_offset": ("llama", {"norm_unit_offset": True}),
    "gelu_tanh": ("llama", {"ffn": "gelu_tanh"}),
    "gelu": ("llama", {"ffn": "gelu"}),
    "relu": ("llama", {"ffn": "relu"}),
    "geglu": ("llama", {"ffn": "geglu"}),
    "qkv_bias": ("llama", {"qkv_bias": True}),
    "attn_out_bias": ("llama", {"attn_out_bias": True}),
    "ffn_bias": ("llama", {"ffn_bias": True}),
    "ffn_bias_plain": ("llama", {"ffn_bias": True, "ffn": "relu"}),
    "head_bias": ("llama", {"head_bias": True}),
    "learned": ("llama", {"positions": "learned"}),
    "sinusoidal": ("llama", {"positions": "sinusoidal"}),
    "nope": ("llama", {"positions": "none"}),
    "attn_softcap": ("llama", {"attn_softcap": 20.0}),
    "final_softcap": ("llama", {"final_softcap": 20.0}),
    "embed_scale": ("llama", {"embed_scale": True}),
    "untied": ("llama", {"tied_embeddings": False}),
}

BF16_UNITS = (
    "L.btd", "L.bt", "L.bhtt", "L.bht", "L.btq", "L.btkv", "L.btk", "L.btf", "out.btd", "out.bt",
    "out.btv", "out.one", "p.attn", "p.ffn", "p.vd", "L.tk", "L.d", "L.f", "L.hk", "L.kvk", "V",
)  # fmt: skip


def bf16_extras(arch: dict, remat: str, n: int = 30, seed: int = 1) -> dict[str, float]:
    """bfloat16 minus float32 residual per unit, least squares over ``n`` random configs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, ys = [], []
    for _ in range(n):
        kv = int(rng.choice([1, 2]))
        h, k = kv * int(rng.choice([1, 2, 3])), int(rng.choice([4, 8, 12]))
        d, f, V = (int(rng.choice(c)) for c in ([16, 24, 40], [24, 40], [32, 64, 96]))
        L, b, t = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.choice([4, 8, 16, 24]))
        y = [residual(json.dumps({**arch, "dtype": dt, "remat": remat}, sort_keys=True),
                      L, b, t, d, f, h, kv, k, V) for dt in ("bfloat16", "float32")]  # fmt: skip
        bt = b * t
        rows.append([L * bt * d, L * bt, L * b * h * t * t, L * b * h * t, L * bt * h * k,
                     L * bt * kv * k, L * bt * k, L * bt * f, bt * d, bt, bt * V, 1,
                     L * d * (2 * h * k + 2 * kv * k), L * d * f, V * d, L * t * k, L * d, L * f,
                     L * h * k, L * kv * k, V])  # fmt: skip
        ys.append(y[0] - y[1])
    coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(ys), rcond=None)
    return {u: round(float(c), 3) for u, c in zip(BF16_UNITS, coef, strict=True)}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "bf16":
        family, remat, *extra = args
        arch = {**FAMILY_ARCHITECTURES[family], "family": family,
                **(json.loads(extra[0]) if extra else {})}  # fmt: skip
        print(json.dumps({"family": family, "remat": remat, "extras": bf16_extras(arch, remat)}))
        sys.exit(0)
    remat, dtype, *names = args
    for name in names or VARIANTS:
        family, extra = VARIANTS[name]
        arch = {**FAMILY_ARCHITECTURES[family], "family": family, **extra,
                "remat": remat, "dtype": dtype}  # fmt: skip
        print(json.dumps({"variant": name, "remat": remat, "dtype": dtype,
                          "coef": coefficients(arch)}), flush=True)  # fmt: skip
