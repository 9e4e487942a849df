"""The inference estimator (scaling.estimate.inference) against hand counts, and
`scaling estimate --task decode`."""

import dataclasses

import pytest
from helpers import last_json

from scaling.estimate.hardware import HardwareProfile
from scaling.estimate.inference import (
    decode_estimate,
    kv_cache_bytes,
    kv_cache_bytes_per_device,
    prefill_flops,
    weight_bytes_read_per_step,
)
from scaling.presets import get_preset

TINY = get_preset("tiny")  # L 4, d 128, 8 heads of 16, SwiGLU f 384, V 2048, tied, RoPE
# Hand count: per layer q, k, v, o 4·128·128 + FFN 3·128·384; the tied table 2048·128; two
# RMSNorm gains per layer and the final one.
LAYER_MATRICES = 4 * (4 * 128 * 128 + 3 * 128 * 384)
TABLE = 2048 * 128
GAINS = 4 * 2 * 128 + 128
N_MATMUL = LAYER_MATRICES + TABLE


def profile(peak: float, bandwidth: float, shared: bool = False) -> HardwareProfile:
    return HardwareProfile("test", peak, peak, 10**12, bandwidth, 1e9, "hand-made", shared)


def test_kv_cache_bytes_by_hand():
    # 2 (k, v) · L 4 · b 2 · h_kv 8 · S 32 · k 16 · 4 bytes
    assert kv_cache_bytes(TINY, batch=2, max_len=32) == 2 * 4 * 2 * 8 * 32 * 16 * 4
    gqa = dataclasses.replace(TINY, n_kv_heads=2, dtype="bfloat16")
    assert kv_cache_bytes(gqa, batch=2, max_len=32) == 2 * 4 * 2 * 2 * 32 * 16 * 2
    # rows over data, heads over tensor; 2 kv heads on tensor 4 stay whole
    per_device = kv_cache_bytes_per_device(gqa, batch=4, max_len=32, mode="fsdp_tp", mesh=(2, 4))
    assert per_device == 2 * 4 * 2 * 2 * 32 * 16 * 2
    assert kv_cache_bytes_per_device(TINY, batch=4, max_len=32, mode="tp", mesh=(1, 4)) == (
        2 * 4 * 4 * 2 * 32 * 16 * 4
    )


def test_prefill_flops_by_hand():
    # per prompt token: 2·N_matmul + 4·L·h·k·S (scores and values over all S slots)
    want = 3 * 10 * (2 * N_MATMUL + 4 * 4 * 8 * 16 * 40)
    assert prefill_flops(TINY, batch=3, prompt_len=10, max_len=40) == want


def test_weight_bytes_read_by_hand():
    assert weight_bytes_read_per_step(TINY, mode="none", mesh=None) == 4 * (N_MATMUL + GAINS)
    # tp splits the matrices and the table over tensor, norms replicated
    tp = weight_bytes_read_per_step(TINY, mode="tp", mesh=(1, 2))
    assert tp == 4 * (N_MATMUL / 2 + GAINS)
    # fsdp gathers the weights: every device reads them all
    assert weight_bytes_read_per_step(TINY, mode="fsdp", mesh=(4, 1)) == 4 * (N_MATMUL + GAINS)
    # an untied token table is a gather, the head a full read
    untied = dataclasses.replace(TINY, tied_embeddings=False)
    assert weight_bytes_read_per_step(untied, mode="none", mesh=None) == 4 * (
        N_MATMUL + GAINS
    )  # the head (d, V) replaces the table as the read-out


def test_decode_roofline_memory_bound_by_hand():
    est = decode_estimate(TINY, profile(1e12, 1e10), batch=2, prompt_len=8, gen_len=24)
    flops = 2 * (2 * N_MATMUL + 4 * 4 * 8 * 16 * 32)
    moved = 4 * (N_MATMUL + GAINS) + 2 * 4 * 2 * 8 * 32 * 16 * 4
    assert est.decode_flops_per_step == flops and est.decode_bytes_per_step == moved
    assert est.decode_step_s == pytest.approx(moved / 1e10)
    assert est.decode_tokens_per_s == pytest.approx(2 / (moved / 1e10))
    assert est.decode_bound == "memory"
    # per row the cache read (131 kB / 10 GB/s) outlasts its FLOPs (2.3 MFLOP / 1 TFLOP/s)
    assert est.compute_bound_batch is None


def test_compute_bound_batch_is_where_compute_time_meets_memory_time():
    hw = profile(1e11, 1e12)
    est = decode_estimate(TINY, hw, batch=1, prompt_len=8, gen_len=24)
    b = est.compute_bound_batch
    per_token = 2 * N_MATMUL + 4 * 4 * 8 * 16 * 32
    kv_row = 2 * 4 * 8 * 32 * 16 * 4
    weights = 4 * (N_MATMUL + GAINS)
    assert b * per_token / 1e11 == pytest.approx((weights + b * kv_row) / 1e12)
    assert est.decode_bound == "compute"  # b ≈ 0.2 < 1


def test_simulated_cpu_devices_share_the_host_peak_and_bandwidth():
    one = decode_estimate(TINY, profile(1e11, 1e10, shared=True), batch=4, prompt_len=8,
                          gen_len=8, mode="dp", mesh=(4, 1))  # fmt: skip
    assert one.peak_flops_per_s == pytest.approx(1e11 / 4)
    assert one.bandwidth_bytes_per_s == pytest.approx(1e10 / 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch=0, prompt_len=8, gen_len=8), "must be >= 1"),
        (dict(batch=1, prompt_len=500, gen_len=20), "exceed the context of tiny"),
        (dict(batch=3, prompt_len=8, gen_len=8, mode="dp", mesh=(2, 1)), "not divisible"),
    ],
)
def test_bad_decode_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decode_estimate(TINY, profile(1e12, 1e10), **kwargs)


def test_cli_estimate_decode_json_and_errors(cli):
    result = cli("estimate", "--task", "decode", "--sizes", "tiny,10m", "--batch", 2,
                 "--prompt-len", 8, "--gen-len", 24, "--hardware", "h100", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = last_json(result.stdout)
    assert [r["size"] for r in rows] == ["tiny", "10m"]
    assert rows[0]["kv_cache_bytes_per_device"] == 2 * 4 * 2 * 8 * 32 * 16 * 4
    table = cli("estimate", "--task", "decode", "--sizes", "tiny", "--hardware", "h100")
    assert table.exit_code == 0 and "decode latency / token" in table.stdout
    bad = cli("estimate", "--task", "decode", "--sizes", "tiny", "--prompt-len", 600)
    assert bad.exit_code == 2 and "exceed the context of tiny (512)" in bad.stderr
    bad = cli("estimate", "--task", "serve", "--sizes", "tiny")
    assert bad.exit_code == 2 and "unknown task 'serve'" in bad.stderr
