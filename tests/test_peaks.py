"""Peaks on any device: a datasheet profile, a given --peak-tflops, or this device's own probe,
and never the CPU path (shared probe, peak ÷ devices, host RAM ÷ devices) for an accelerator."""

from __future__ import annotations

import math

import pytest

from scaling import measure, worker
from scaling.records import base_record
from scaling.spec import SWEEP_DEFAULTS


class FakeAccelerator:
    """A device of a kind no profile matches, as jax would describe it."""

    device_kind = "NVIDIA RTX 9090"
    platform = "gpu"

    def memory_stats(self):
        return {"bytes_limit": 32 * 10**9}


class FakeProbe:
    n, dtype, samples = 8192, "bfloat16", [3e14, 2e14, 4e14]
    median = 3e14


def test_unknown_accelerator_is_probed_per_device_not_as_a_cpu():
    device = FakeAccelerator()
    assert measure.needs_probe(device)
    profile, source = measure.device_peak(device, FakeProbe())
    assert profile.peak_flops_bf16 == profile.peak_flops_f32 == 3e14
    assert not profile.devices_share_host  # the estimator will not divide it by n
    assert profile.memory_bytes == 32 * 10**9  # the device's, not host RAM
    assert "bfloat16 matmul probe" in source and "not divided by the device count" in source
    assert "cpu" not in source.lower()


def test_given_peak_wins_and_hbm_replaces_a_profile():
    device = FakeAccelerator()
    assert not measure.needs_probe(device, peak_tflops=150.0)
    profile, source = measure.device_peak(device, None, peak_tflops=150.0, hbm_gbps=900.0)
    assert profile.peak_flops_bf16 == 150e12 and profile.hbm_bandwidth_bytes_per_s == 900e9
    assert "--peak-tflops 150" in source
    device.device_kind = "NVIDIA H100 80GB HBM3"
    profile, _ = measure.device_peak(device, None, hbm_gbps=3000.0)
    assert profile.peak_flops_bf16 == 989e12 and profile.hbm_bandwidth_bytes_per_s == 3e12
    with pytest.raises(ValueError, match="--peak-tflops must be a positive number"):
        measure.device_peak(device, None, peak_tflops=0.0)


def test_a_run_on_an_unknown_accelerator_never_takes_the_cpu_path(monkeypatch):
    # The worker measures a dp run on the 8 test devices while reporting a fake GPU kind: the
    # peak must be this device's own probe, per device (not ÷ 8), and MFU computed from it.
    monkeypatch.setattr(measure, "local_device", FakeAccelerator)
    monkeypatch.setattr(measure, "ACCELERATOR_PROBE", (256, "bfloat16"))
    settings = {**SWEEP_DEFAULTS, "sweep": "t", "size": "tiny", "mode": "dp", "steps": 3,
                "batch": 8, "seq": 32}  # fmt: skip
    record = base_record(settings, "fake")
    outcome = worker.measure_run(settings, record, None)
    r = outcome.record
    assert r.device_kind == "NVIDIA RTX 9090" and r.platform == "gpu"
    assert "matmul probe" in r.peak_source and "shared" not in r.peak_source
    probe_median = float(r.peak_source.split("median ")[1].split(" GFLOP/s")[0]) * 1e9
    # the source prints the median to 0.1 GFLOP/s
    assert r.peak_flops_per_device == pytest.approx(probe_median, abs=0.05e9 + 1)
    peak_time = r.step_time_s_median * r.n_devices * r.peak_flops_per_device
    assert r.n_devices == 8 and r.mfu == pytest.approx(r.model_flops_per_step / peak_time)
    assert math.isfinite(r.mfu)
