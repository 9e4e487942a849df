"""Longer runs, excluded from the default suite; `uvx nox -s slow` runs them."""

import shutil

import numpy as np
import pytest

from scaling.presets import build_run
from scaling.sharding import DENSE_MODES as MODES
from scaling.train import run

pytestmark = pytest.mark.slow


def test_long_run_gets_close_to_the_entropy_floor():
    result = run(build_run("tiny", steps=400, batch=8, seq=128, lr=1e-2, lr_warmup_steps=20))
    losses = np.array(result.losses)
    floor = result.entropy_floor_nats
    assert losses[-20:].mean() - floor < 0.15, (losses[-20:].mean(), floor)
    assert losses.min() > floor - 0.1


def test_sharded_checkpoint_resume_is_exact(tmp_path):
    """fsdp_tp on 8 devices: restore lands each array in its shards and the losses continue
    exactly."""
    common = {"mode": "fsdp_tp", "steps": 6, "batch": 8, "seq": 64, "lr_warmup_steps": 2}
    straight = run(build_run("10m", **common)).losses
    ckpt = tmp_path / "ckpt"
    run(build_run("10m", checkpoint_dir=str(ckpt), checkpoint_every=3, **common))
    shutil.rmtree(ckpt / "6")
    resumed = run(build_run("10m", checkpoint_dir=str(ckpt), resume=True, **common))
    assert resumed.start_step == 3
    assert resumed.losses == straight[3:]


def test_losses_are_equal_across_modes_on_10m():
    losses = {m: run(build_run("10m", mode=m, steps=3, batch=8, seq=64)).losses for m in MODES}
    for mode, values in losses.items():
        np.testing.assert_allclose(values, losses["none"], rtol=1e-5, err_msg=mode)
