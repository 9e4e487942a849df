"""Closed-form estimators against hand counts written out as arithmetic (never the function
under test), published parameter counts, and the hardware table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.config import ModelConfig
from scaling.estimate import (
    CONVENTION_CAUSAL,
    CONVENTION_FULL,
    activation_terms,
    comm_bytes_per_device,
    estimate,
    flop_counts,
    flops_per_token,
    hbm_traffic_per_device,
    korthikanti_activation_bytes_per_layer,
    matmuls,
    memory_per_device,
    param_counts,
)
from scaling.estimate.hardware import (
    HARDWARE,
    cached_cpu_peak,
    cpu_profile,
    get_hardware,
    match_device_kind,
    store_cpu_peak,
)
from scaling.estimate.hf_config import model_config_from_hf
from scaling.presets import PRESETS, with_family

DATA = Path(__file__).parent / "data"

# A small llama config whose sizes divide by 8: L=2, d=64, h=4 (k=16), f=128, V=256.
SMALL = ModelConfig(
    name="small", n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=256, max_seq_len=128
)
# Its hand counts: per layer attention 4·64·64, SwiGLU 3·64·128, two RMSNorm gains 2·64.
SMALL_LAYER_MATRICES = 2 * (4 * 64 * 64 + 3 * 64 * 128)  # 81,920
SMALL_TABLE = 256 * 64  # tied: the token table is also the read-out
SMALL_VECTORS = 2 * 2 * 64 + 64  # per-layer norms + final norm
SMALL_TOTAL = SMALL_LAYER_MATRICES + SMALL_TABLE + SMALL_VECTORS
SMALL_MATMUL = SMALL_LAYER_MATRICES + SMALL_TABLE  # 98,304


# ----------------------------------------------------------------------------- parameters

GPT3_PAPER = {  # Brown et al. 2020, table 2.1
    "125m": 125e6,
    "350m": 350e6,
    "760m": 760e6,
    "1.3b": 1.3e9,
    "2.7b": 2.7e9,
    "6.7b": 6.7e9,
    "13b": 13.0e9,
    "175b": 175.0e9,
}


@pytest.mark.parametrize("size", list(GPT3_PAPER))
def test_gpt3_ladder_within_two_percent_of_the_paper(size):
    total = param_counts(PRESETS[size]).total
    assert total == pytest.approx(GPT3_PAPER[size], rel=0.02)


def test_gpt3_125m_exact_hand_count():
    # 12 layers of d=768, SwiGLU f=2048, RMSNorm; tied table of 50304·768; final norm.
    per_layer = 4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768
    expected = 12 * per_layer + 50304 * 768 + 768
    p = param_counts(PRESETS["125m"])
    assert p.total == expected == 123_587_328
    assert p.non_embedding == expected - 50304 * 768


def test_llama2_7b_from_hf_config():
    cfg = model_config_from_hf(DATA / "llama-2-7b.json")
    assert (cfg.family, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff) == (
        "llama",
        32,
        4096,
        32,
        11008,
    )
    assert not cfg.tied_embeddings and cfg.kv_heads == 32 and cfg.max_seq_len == 4096
    assert cfg.norm_eps == 1e-5
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    expected = 32 * per_layer + 2 * 32000 * 4096 + 4096  # untied: table and head
    total = param_counts(cfg).total
    assert total == expected == 6_738_415_616
    assert total == pytest.approx(6.74e9, rel=0.005)


def test_gpt2_small_from_hf_config():
    cfg = model_config_from_hf(DATA / "gpt2-small.json")
    assert cfg.family == "gpt2" and cfg.tied_embeddings and cfg.d_ff == 4 * 768
    assert cfg.name == "gpt2-small" and cfg.max_seq_len == 1024
    assert (cfg.norm, cfg.norm_bias, cfg.positions, cfg.ffn) == (
        "layer",
        True,
        "learned",
        "gelu_tanh",
    )
    biases = 3 * 768 + 768 + 3072 + 768  # c_attn, attn c_proj, c_fc, mlp c_proj
    per_layer = 4 * 768 * 768 + 2 * 768 * 3072 + biases + 2 * 2 * 768  # + two LayerNorms
    expected = 50257 * 768 + 1024 * 768 + 12 * per_layer + 2 * 768
    assert param_counts(cfg).total == expected == 124_439_808  # Hugging Face's count


def test_hf_config_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        model_config_from_hf(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        model_config_from_hf(bad)
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    with pytest.raises(ValueError, match="supported: llama, mistral, gemma, gpt2"):
        model_config_from_hf(tmp_path)


def test_hf_gemma_reads_its_own_architecture_with_head_dim(tmp_path):
    # Gemma-7B's shape: d=3072, 16 heads of 256 (16·256 ≠ 3072), GeGLU f=24576, tied.
    path = tmp_path / "gemma-7b.json"
    path.write_text(
        json.dumps(
            {
                "model_type": "gemma",
                "hidden_size": 3072,
                "num_hidden_layers": 28,
                "num_attention_heads": 16,
                "num_key_value_heads": 16,
                "head_dim": 256,
                "intermediate_size": 24576,
                "vocab_size": 256000,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
            }
        )
    )
    cfg = model_config_from_hf(path)
    assert cfg.family == "gemma" and cfg.d_head == 256 and cfg.tied_embeddings
    assert (cfg.ffn, cfg.norm_unit_offset, cfg.embed_scale) == ("geglu", True, True)
    per_layer = 4 * 3072 * 16 * 256 + 3 * 3072 * 24576 + 2 * 3072
    assert param_counts(cfg).total == 28 * per_layer + 256000 * 3072 + 3072  # 8.54 B


# ----------------------------------------------------------------------------- FLOPs


def test_flops_small_config_by_hand():
    seq, batch = 32, 4
    attention = 12 * 2 * seq * (4 * 16)  # 12·L·t·(h·k)
    full = 6 * SMALL_MATMUL + attention
    halved = 6 * SMALL_MATMUL + attention / 2
    assert flops_per_token(SMALL, seq, causal_halving=False) == full == 638_976
    assert flops_per_token(SMALL, seq, causal_halving=True) == halved
    counts = flop_counts(SMALL, batch=batch, seq=seq, causal_halving=True)
    assert counts.model_per_step == halved * batch * seq
    assert counts.attention_convention == CONVENTION_CAUSAL
    # The hardware executes the full masked t×t attention whatever the convention.
    assert counts.hardware_per_step == full * batch * seq
    assert flop_counts(SMALL, batch=1, seq=seq).attention_convention == CONVENTION_FULL


def test_gqa_attention_flops_use_all_heads():
    gqa = dataclasses.replace(SMALL, n_kv_heads=2)
    matmul = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 256 * 64
    assert flops_per_token(gqa, 32, causal_halving=False) == 6 * matmul + 12 * 2 * 32 * 64


def test_remat_full_adds_one_forward_of_the_layers_but_w2():
    seq, batch = 32, 4
    none = flop_counts(SMALL, batch=batch, seq=seq)
    full = flop_counts(dataclasses.replace(SMALL, remat="full"), batch=batch, seq=seq)
    dots = flop_counts(dataclasses.replace(SMALL, remat="dots"), batch=batch, seq=seq)
    # matmuls + attention forward; w2's output is never needed by the backward, so jax drops
    # that matmul from the recomputation (seen in the lowered HLO, tests/test_xla_check.py).
    w2 = 2 * 128 * 64
    layer_forward = 2 * (SMALL_LAYER_MATRICES - w2) + 4 * 2 * seq * 64
    assert full.hardware_per_step - none.hardware_per_step == layer_forward * batch * seq
    assert dots.hardware_per_step - none.hardware_per_step == 4 * 2 * seq * 64 * batch * seq
    assert full.model_per_step == dots.model_per_step == none.model_per_step


# ----------------------------------------------------------------------------- memory


def test_memory_none_dp_fsdp_ordering_on_8_devices():
    kw = dict(batch=8, seq=32)
    none = memory_per_device(SMALL, mode="none", mesh=(8, 1), **kw)
    dp = memory_per_device(SMALL, mode="dp", mesh=(8, 1), **kw)
    fsdp = memory_per_device(SMALL, mode="fsdp", mesh=(8, 1), **kw)
    assert none.params == dp.params == 4 * SMALL_TOTAL
    assert none.optimizer == dp.optimizer == 8 * SMALL_TOTAL
    # fsdp splits everything but the norms (replicated, parallel.SPEC_TABLE) over data.
    fsdp_held = (SMALL_LAYER_MATRICES + SMALL_TABLE) / 8 + SMALL_VECTORS
    assert fsdp.params == 4 * fsdp_held and fsdp.grads == 4 * fsdp_held
    assert fsdp.optimizer == 8 * fsdp_held
    # ≈ 1/8: the replicated norms are 0.3 % of this small model's parameters.
    eighth = (dp.params + dp.optimizer) / 8
    assert eighth < fsdp.params + fsdp.optimizer < 1.03 * eighth
    # none keeps the whole batch, dp and fsdp an eighth of it.
    assert none.activations > dp.activations == fsdp.activations
    assert none.total >= dp.total >= fsdp.total


def test_tp_divides_matrices_by_tensor():
    mem = memory_per_device(SMALL, mode="tp", mesh=(1, 4), batch=8, seq=32)
    expected = SMALL_LAYER_MATRICES / 4 + SMALL_TABLE / 4 + SMALL_VECTORS  # norms replicated
    assert mem.params == 4 * expected
    both = memory_per_device(SMALL, mode="fsdp_tp", mesh=(2, 4), batch=8, seq=32)
    assert both.params == 4 * (SMALL_LAYER_MATRICES / 8 + SMALL_TABLE / 8 + SMALL_VECTORS)


def test_gpt2_position_table_and_bias_sharding():
    cfg = dataclasses.replace(with_family(SMALL, "gpt2"), name="g")
    positions = 128 * 64  # (max_seq_len, d), learned
    matrices = 2 * (4 * 64 * 64 + 2 * 64 * 256)  # GELU MLP, f = 4·d
    vectors = 2 * 2 * 2 * 64 + 2 * 64  # LayerNorm gain and bias
    column_biases = 2 * (3 * 64 + 256)  # q, k, v, FFN in: split like their columns
    row_biases = 2 * (64 + 64)  # o, FFN out: added after the all-reduce, replicated
    total = matrices + SMALL_TABLE + positions + vectors + column_biases + row_biases
    assert param_counts(cfg).total == total
    replicated = vectors + row_biases
    kw = dict(batch=8, seq=32)
    tp = memory_per_device(cfg, mode="tp", mesh=(1, 4), **kw)  # positions replicated
    assert tp.params == 4 * (
        matrices / 4 + SMALL_TABLE / 4 + positions + column_biases / 4 + replicated
    )
    both = memory_per_device(cfg, mode="fsdp_tp", mesh=(2, 4), **kw)  # positions over data
    assert both.params == 4 * (
        matrices / 8 + SMALL_TABLE / 8 + positions / 2 + column_biases / 4 + replicated
    )


def test_activations_by_hand_gpt2_bf16():
    # GPT-2 family, bf16, remat none, one device, scanned layers; what jax saves for the
    # backward (print_saved_residuals), per layer in bytes with c = 2:
    cfg = dataclasses.replace(
        with_family(ModelConfig(name="g"), "gpt2"), n_layers=3, d_model=64, n_heads=4,
        d_ff=256, vocab_size=512, max_seq_len=64, dtype="bfloat16",
    )  # fmt: skip
    s, b, h, a, V = 64, 2, 64, 4, 512
    per_layer = (
        2 * 2 * s * b * h  # the residual stream into the two norms (they keep their input)
        + 2 * 2 * s * b * h  # the two norm outputs
        + 4 * 2 * s * b * h  # q, k, v, attention output
        + (4 + 2) * a * s * s * b  # softmax weights (f32) and their bf16 cast
        + 2 * 2 * s * b * 4 * h  # GELU-MLP: w1's output and its activation, width f = 4h
        + 2 * s * b * 4  # the norms' 1/std, float32
    )
    # Korthikanti et al. 2022 (16-bit, fused elementwise, dropout) is the smaller reference.
    assert korthikanti_activation_bytes_per_layer(s, b, h, a) == 34 * s * b * h + 5 * a * s * s * b
    assert per_layer > korthikanti_activation_bytes_per_layer(s, b, h, a)
    outside = (
        5 * a * s * s * b  # causal mask (bool) and its fill (f32), hoisted out of the scan
        + 2 * 2 * s * b * h  # final norm: its input and output
        + 2 * 4 * s * b * V  # exp of the logits and their gradient (f32)
        + 2 * V * h  # bf16 copy of the tied read-out table
    )
    weights_bf16 = 2 * 3 * (4 * 64 * 64 + 2 * 64 * 256)  # bf16 copies of the layer matrices
    terms = activation_terms(cfg, mode="none", mesh=None, batch=b, seq=s)
    assert sum(t.bytes for t in terms) == 3 * per_layer + outside + weights_bf16
    assert {t.dtype for t in terms} == {"bfloat16", "float32", "bool"}


def test_remat_and_tp_shrink_activations():
    cfg = PRESETS["125m"]
    act = {
        r: memory_per_device(
            dataclasses.replace(cfg, remat=r), mode="dp", mesh=(8, 1), batch=16, seq=1024
        ).activations
        for r in ("none", "dots", "full")
    }
    assert act["none"] > act["dots"] > act["full"]
    dp = activation_terms(cfg, mode="dp", mesh=(1, 1), batch=4, seq=256)
    tp = activation_terms(cfg, mode="tp", mesh=(1, 4), batch=4, seq=256)
    by_name = {t.name: t.bytes for t in tp}
    for t in dp:
        if "scores" in t.name or "logits" in t.name:
            assert by_name[t.name] == t.bytes / 4  # heads / vocabulary split over tensor
        if "residual" in t.name or "final norm" in t.name:
            assert by_name[t.name] == t.bytes  # (b, t, d) not split


def test_fits():
    h100 = get_hardware("h100")
    assert estimate(
        PRESETS["125m"], mode="none", mesh=None, batch=8, seq=1024, hardware=h100
    ).memory.fits
    big = estimate(PRESETS["175b"], mode="none", mesh=None, batch=1, seq=2048, hardware=h100)
    assert big.memory.fits is False and big.memory.total > 16 * 174e9


# ----------------------------------------------------------------------------- communication


def test_comm_by_mode():
    # Hand counts of what the partitioned HLO does (scaling.estimate.comm); ring factors
    # (n-1)/n, AllReduce sends twice. SMALL is tied, llama, f32; b·t·d activations.
    kw = dict(batch=8, seq=32)
    assert comm_bytes_per_device(SMALL, mode="none", mesh=(8, 1), **kw).total == 0
    assert comm_bytes_per_device(SMALL, mode="dp", mesh=(1, 1), **kw).total == 0
    lm, vec, table = SMALL_LAYER_MATRICES, SMALL_VECTORS, SMALL_TABLE
    dp = comm_bytes_per_device(SMALL, mode="dp", mesh=(8, 1), **kw)
    assert dp.all_gather == dp.reduce_scatter == dp.all_to_all == 0
    # every gradient AllReduced once; the tied table's lookup and read-out gradients apart
    assert dp.all_reduce == pytest.approx(2 * 4 * (lm + vec + 2 * table) * 7 / 8)

    # fsdp, B·t = 8·16 < V = 256: the tied table's rows stay put and activations move
    fsdp = comm_bytes_per_device(SMALL, mode="fsdp", mesh=(8, 1), batch=8, seq=16)
    btd = 8 * 16 * 64 * 4  # the global batch's activations, f32
    assert fsdp.all_gather == pytest.approx((2 * 4 * lm + 2 * btd) * 7 / 8)
    assert fsdp.reduce_scatter == pytest.approx((4 * lm + 2 * btd) * 7 / 8)
    assert fsdp.all_to_all == pytest.approx(1 * 16 * 256 * 4 * 7 / 8)  # logits' gradient
    assert fsdp.all_reduce == pytest.approx(2 * 4 * vec * 7 / 8)  # replicated norms
    # B·t = 8·32 = V: the table is gathered once (the f32 read-out reuses the lookup's
    # gather) and both its gradients reduce-scattered; the compiled HLO moves the same
    # 630,784 / 401,408 bytes (hlo_comm, measured with jax 0.10.2 on 8 CPU devices)
    fsdp = comm_bytes_per_device(SMALL, mode="fsdp", mesh=(8, 1), **kw)
    assert fsdp.all_gather == pytest.approx((2 * 4 * lm + 4 * table) * 7 / 8)
    assert fsdp.reduce_scatter == pytest.approx((4 * lm + 2 * 4 * table) * 7 / 8)
    assert fsdp.all_to_all == 0

    tp = comm_bytes_per_device(SMALL, mode="tp", mesh=(1, 4), **kw)
    act = 8 * 32 * 64 * 4
    # 7 per layer (o, w2 forward; q, k, v, w1, w3 backward) + lookup + the head's dx
    assert tp.all_reduce == pytest.approx((7 * 2 + 2) * 2 * act * 3 / 4)
    assert tp.all_gather == tp.reduce_scatter == 0
    bf16_full = dataclasses.replace(SMALL, dtype="bfloat16", remat="full")
    tp = comm_bytes_per_device(bf16_full, mode="tp", mesh=(1, 4), **kw)
    assert tp.all_reduce == pytest.approx((8 * 2 * 2 * act / 2 + 2 * 2 * act) * 3 / 4)

    both = comm_bytes_per_device(SMALL, mode="fsdp_tp", mesh=(2, 4), **kw)
    act = 4 * 32 * 64 * 4  # b = 4 rows per device
    assert both.all_gather == pytest.approx((2 * 4 * lm / 4 + 2 * 4 * table / 4) / 2)
    assert both.reduce_scatter == pytest.approx((4 * lm / 4 + 4 * table / 4) / 2)
    assert both.all_to_all == pytest.approx(2 * act / 2)
    assert both.all_reduce == pytest.approx(2 * 4 * vec / 2 + 16 * 2 * act * 3 / 4)


def test_bf16_moves_layer_matrices_in_bf16():
    # dp and fsdp move the bf16-cast weights and bf16 gradients: the layer part halves.
    kw = dict(batch=8, seq=32, mesh=(8, 1))
    bf16 = dataclasses.replace(SMALL, dtype="bfloat16")
    dp32 = comm_bytes_per_device(SMALL, mode="dp", **kw).all_reduce
    dp16 = comm_bytes_per_device(bf16, mode="dp", **kw).all_reduce
    assert dp32 - dp16 == pytest.approx(2 * 2 * SMALL_LAYER_MATRICES * 7 / 8)
    fsdp32 = comm_bytes_per_device(SMALL, mode="fsdp", **kw)
    fsdp16 = comm_bytes_per_device(bf16, mode="fsdp", **kw)
    assert fsdp32.reduce_scatter - fsdp16.reduce_scatter == pytest.approx(
        2 * SMALL_LAYER_MATRICES * 7 / 8
    )
    gpt3 = dataclasses.replace(PRESETS["1.3b"], dtype="bfloat16")
    f32 = dataclasses.replace(gpt3, dtype="float32")
    for mode in ("dp", "fsdp"):
        ratio = (
            comm_bytes_per_device(gpt3, mode=mode, mesh=(8, 1), batch=64, seq=2048).total
            / comm_bytes_per_device(f32, mode=mode, mesh=(8, 1), batch=64, seq=2048).total
        )
        assert 0.5 <= ratio < 0.6, (mode, ratio)


# ----------------------------------------------------------------------------- roofline


def test_roofline_bounds_and_mfu():
    h100 = get_hardware("h100")
    cfg = dataclasses.replace(PRESETS["350m"], dtype="bfloat16")
    for mode, mesh in (("none", None), ("dp", (8, 1)), ("fsdp", (8, 1)), ("fsdp_tp", (2, 4))):
        est = estimate(cfg, mode=mode, mesh=mesh, batch=16, seq=1024, hardware=h100)
        assert est.predicted_step_s <= est.predicted_step_s_upper
        # the overlap model: device work (compute + memory), communication hidden under it
        device = est.compute_s + est.memory_time_s
        assert est.matmul_memory_s > 0  # the per-head attention products (below)
        assert est.predicted_step_s == max(device, est.comm_s)
        assert est.predicted_step_s_upper == pytest.approx(device + est.comm_s)
        assert 0 < est.predicted_mfu < 1 and est.memory_s > 0
    one = estimate(cfg, mode="none", mesh=None, batch=16, seq=1024, hardware=h100)
    assert one.compute_s == pytest.approx(
        (6 * param_counts(cfg).matmul + 12 * 24 * 1024 * 1024) * 16 * 1024 / 989e12
    )
    assert one.memory_s == pytest.approx(one.traffic.total / 3.35e12)
    # Hand count: the projections are compute-bound, the per-head (t×k)@(k×t) attention
    # products (k = 64, intensity ≈ 57 FLOP/byte < 989/3.35 = 295) wait on their operands:
    # 24 layers × 16 rows × 16 heads × 3 (forward, two gradients), two products each.
    t, k = 1024, 64
    wait = 24 * 16 * 16 * 3 * 2 * (2 * (2 * t * k + t * t) / 3.35e12 - 2 * t * k * t / 989e12)
    assert one.matmul_memory_s == pytest.approx(wait)
    assert one.predicted_mfu == pytest.approx(
        one.compute_s / (one.compute_s + one.memory_s + one.matmul_memory_s)
    )
    halved = estimate(
        cfg, mode="none", mesh=None, batch=16, seq=1024, hardware=h100, causal_halving=True
    )
    assert halved.predicted_mfu < one.predicted_mfu
    assert halved.predicted_step_s == one.predicted_step_s


def test_hbm_traffic_hand_count():
    # SMALL (tied llama, f32), one device, b=2, t=32: every term written out by hand.
    b, t, d, h, f, L, v = 2, 32, 64, 4, 128, 2, 256
    saved = sum(term.bytes for term in activation_terms(SMALL, mode="none", mesh=None,
                                                        batch=b, seq=t))  # fmt: skip
    traffic = hbm_traffic_per_device(SMALL, mode="none", mesh=None, batch=b, seq=t)
    assert traffic.activations == 2 * saved  # written once, read once
    assert traffic.attention_scores == L * b * h * t * t * (12 + 2 * 4 + 8)
    assert traffic.parameters == SMALL_TOTAL * (4 + 28)  # grad write + AdamW r/w
    # remat full: the layer inputs travel too, and the scores' forward is recomputed
    full = hbm_traffic_per_device(dataclasses.replace(SMALL, remat="full"), mode="none",
                                  mesh=None, batch=b, seq=t)  # fmt: skip
    assert full.activations == 2 * saved + 2 * L * b * t * d * 4
    assert full.attention_scores == L * b * h * t * t * (12 + 2 * 4 + 8 + 12)
    assert (f, v) == (SMALL.d_ff, SMALL.vocab_size)


def test_matmul_groups_sum_to_the_hardware_flops_and_narrow_ones_wait_on_memory():
    h100 = get_hardware("h100")
    for size, mode, mesh, remat in (("tiny", "none", None, "none"), ("125m", "fsdp_tp", (2, 4),
                                    "full"), ("10m", "tp", (1, 4), "dots")):  # fmt: skip
        cfg = dataclasses.replace(PRESETS[size], remat=remat)
        products = matmuls(cfg, mode=mode, mesh=mesh, batch=8, seq=128)
        est = estimate(cfg, mode=mode, mesh=mesh, batch=8, seq=128, hardware=h100)
        assert sum(p.flops for p in products) == pytest.approx(est.hardware_flops_per_device)
    # tiny's q projection: (b·t = 1024, 128) @ (128, 128) in f32, forward + 2 backward products
    q = next(p for p in matmuls(PRESETS["tiny"], mode="none", mesh=None, batch=8, seq=128)
             if p.name == "q")  # fmt: skip
    assert (q.m, q.k, q.n, q.count) == (1024, 128, 128, 3 * 4)
    assert q.flops == 2 * 1024 * 128 * 128 * 12
    assert q.bytes == 4 * (1024 * 128 + 128 * 128 + 1024 * 128) * 12
    # 30 FLOP/byte against a host of 100 GFLOP/s and 1 GB/s (ridge 100 FLOP/byte): it waits
    slow = cpu_profile(1e11, 16 * 2**30, copy_bandwidth_bytes_per_s=1e9)
    est = estimate(PRESETS["tiny"], mode="none", mesh=None, batch=8, seq=128, hardware=slow)
    assert est.matmul_memory_s > 0 and est.binding == "memory"


def test_binding_term_and_the_h100_ceiling():
    # 125m and 1.3b on one H100, batch 64 × 2048, bf16: the unfused attention scores and saved
    # activations make the step memory-bound; the ceiling is below 100 % and says why.
    h100 = get_hardware("h100")
    for size, binding in (("125m", "memory"), ("1.3b", "memory")):
        cfg = dataclasses.replace(PRESETS[size], dtype="bfloat16")
        est = estimate(cfg, mode="none", mesh=None, batch=64, seq=2048, hardware=h100)
        assert est.binding == binding and est.predicted_mfu < 0.6
    short = estimate(dataclasses.replace(PRESETS["1.3b"], dtype="bfloat16"), mode="none",
                     mesh=None, batch=64, seq=256, hardware=h100)  # fmt: skip
    assert short.binding == "compute"  # t² terms shrink with the sequence
    slow_links = dataclasses.replace(h100, interconnect_bandwidth_bytes_per_s=1e9)
    dp = estimate(PRESETS["125m"], mode="dp", mesh=(8, 1), batch=64, seq=256, hardware=slow_links)
    assert dp.binding == "communication" and dp.predicted_step_s == dp.comm_s


@pytest.mark.parametrize(
    ("mode", "mesh", "seq", "message"),
    [
        ("tp", (1, 7), 128, "n_heads=12 of 125m is not divisible by tensor=7"),
        ("dp", (3, 3), 128, "mode dp needs tensor=1"),
        ("tp", (2, 4), 128, "mode tp needs data=1"),
        ("fsdp", (4, 1), 0, "seq=0 is out of range"),
        ("fsdp", (3, 1), 128, "global batch 8 is not divisible by data=3"),
    ],
)
def test_estimate_refuses_what_a_run_refuses(mode, mesh, seq, message):
    with pytest.raises(ValueError, match=message):
        estimate(
            PRESETS["125m"], mode=mode, mesh=mesh, batch=8, seq=seq, hardware=get_hardware("h100")
        )


def test_cpu_devices_share_the_host(tmp_path):
    cpu = cpu_profile(1e11, 16 * 2**30)
    one = estimate(SMALL, mode="none", mesh=None, batch=8, seq=32, hardware=cpu)
    eight = estimate(SMALL, mode="dp", mesh=(8, 1), batch=8, seq=32, hardware=cpu)
    assert eight.compute_s == pytest.approx(one.compute_s)  # 8 simulated devices, same cores
    assert eight.memory.capacity_bytes == 2 * 2**30
    assert cached_cpu_peak(tmp_path / "c.json") is None
    store_cpu_peak(1.5e11, tmp_path / "c.json")
    assert cached_cpu_peak(tmp_path / "c.json") == 1.5e11
    assert cached_cpu_peak(tmp_path / "c.json", dtype="bfloat16") is None


def test_to_dict_keys_and_json():
    est = estimate(SMALL, mode="fsdp", mesh=(4, 1), batch=8, seq=32, hardware=get_hardware("a100"))
    d = est.to_dict()
    for key in (
        "size", "n_params", "n_params_non_embedding", "flops_per_token", "flops_per_step",
        "memory_per_device_bytes", "fits", "comm_bytes_per_device_per_step", "predicted_step_s",
        "predicted_step_s_upper", "predicted_mfu", "attention_convention", "hardware",
        "hbm_bytes_per_device_per_step", "predicted_memory_s", "predicted_binding", "efficiency",
    ):  # fmt: skip
        assert key in d
    assert set(d["memory_per_device_bytes"]) == {
        "params", "grads", "optimizer", "activations", "total"
    }  # fmt: skip
    assert d["size"] == "small" and d["hardware"] == "a100" and d["n_params"] == SMALL_TOTAL
    json.dumps(d)


def test_estimate_rejects_bad_arguments():
    h100 = get_hardware("h100")
    with pytest.raises(ValueError, match="valid: none, dp, fsdp, tp, fsdp_tp"):
        estimate(SMALL, mode="zero", mesh=None, batch=8, seq=32, hardware=h100)
    with pytest.raises(ValueError, match="seq=4096"):
        estimate(SMALL, mode="none", mesh=None, batch=8, seq=4096, hardware=h100)


# ----------------------------------------------------------------------------- hardware


def test_get_hardware_unknown_names_valid():
    with pytest.raises(ValueError) as err:
        get_hardware("h900")
    message = str(err.value)
    assert "unknown hardware 'h900'" in message
    for name in ("h100", "h200", "a100", "tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"):
        assert name in message
    assert get_hardware("H100").peak_flops_bf16 == 989e12
    assert HARDWARE["tpu-v5e"].memory_bytes == 16 * 2**30


def test_new_profiles_and_current_tpu_ici():
    # Datasheet figures (dense, per device) and the scaling book's current W_ici.
    expected = {  # name: (bf16 TF, memory GB, HBM TB/s)
        "b200": (2250, 180, 7.7), "gh200": (989, 96, 4.0), "l4": (121, 24, 0.3),
        "a10g": (70, 24, 0.6), "mi300x": (1307, 192, 5.3),
    }  # fmt: skip
    for name, (tflops, gb, tbs) in expected.items():
        p = HARDWARE[name]
        assert (p.peak_flops_bf16 / 1e12, p.memory_bytes / 1e9) == (tflops, gb)
        assert p.hbm_bandwidth_bytes_per_s == pytest.approx(tbs * 1e12)
        assert p.source and not p.devices_share_host
    assert HARDWARE["tpu-v5e"].interconnect_bandwidth_bytes_per_s == 9e10
    assert HARDWARE["tpu-v5p"].interconnect_bandwidth_bytes_per_s == 1.8e11
    assert HARDWARE["tpu-v6e"].interconnect_bandwidth_bytes_per_s == 1.8e11


@pytest.mark.parametrize(
    "kind, name",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("TPU v4", "tpu-v4"),
        ("TPU v5 lite", "tpu-v5e"),
        ("TPU v5e", "tpu-v5e"),
        ("TPU v5", "tpu-v5p"),
        ("TPU v5p", "tpu-v5p"),
        ("TPU v6 lite", "tpu-v6e"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GH200 480GB", "gh200"),  # not h200, though the name contains it
        ("NVIDIA GB200", None),  # Grace Blackwell: no profile, not read as b200
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", None),
        ("NVIDIA A10G", "a10g"),
        ("AMD Instinct MI300X", "mi300x"),
        ("cpu", None),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_match_device_kind(kind, name):
    profile = match_device_kind(kind)
    assert (profile.name if profile else None) == name


def test_pure_modules_do_not_import_jax():
    code = (
        "import sys, scaling.estimate, scaling.estimate.hardware, scaling.estimate.hf_config; "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_calibration_is_positive_and_cached(tmp_path):
    from scaling.measure import calibrate_matmul_flops, cpu_hardware

    assert calibrate_matmul_flops(n=64, repeats=2) > 0
    store_cpu_peak(2e11, tmp_path / "c.json")
    cpu = cpu_hardware(cache_path=tmp_path / "c.json")  # served from the cache, no calibration
    assert cpu.name == "cpu" and cpu.peak_flops_f32 == 2e11 and cpu.memory_bytes > 0
