import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import last_json
from jax.sharding import PartitionSpec as P

from scaling import parallel
from scaling.presets import build_run, get_preset
from scaling.sharding import DENSE_MODES as MODES
from scaling.train import plan, run

MESH = {"none": (1, 1), "dp": (8, 1), "fsdp": (8, 1), "tp": (1, 8), "fsdp_tp": (4, 2)}
# Expected specs, written out per mode (the documented table), for a few parameter kinds.
EXPECTED = {
    "none": {"w1": P(), "w2": P(), "q": P(), "embed": P(), "norm": P()},
    "dp": {"w1": P(), "w2": P(), "q": P(), "embed": P(), "norm": P()},
    "fsdp": {
        "w1": P(None, "data", None),
        "w2": P(None, "data", None),
        "q": P(None, "data", None),
        "embed": P("data", None),
        "norm": P(),
    },
    "tp": {
        "w1": P(None, None, "tensor"),
        "w2": P(None, "tensor", None),
        "q": P(None, None, "tensor"),
        "embed": P("tensor", None),
        "norm": P(),
    },
    "fsdp_tp": {
        "w1": P(None, "data", "tensor"),
        "w2": P(None, "tensor", "data"),
        "q": P(None, "data", "tensor"),
        "embed": P("tensor", "data"),
        "norm": P(),
    },
}


def _leaves(tree):
    return {
        "w1": tree["blocks"]["ffn"]["w1"]["weight"],
        "w2": tree["blocks"]["ffn"]["w2"]["weight"],
        "q": tree["blocks"]["attn"]["q"]["weight"],
        "embed": tree["embed"]["weight"],
        "norm": tree["blocks"]["attn_norm"]["weight"],
    }


def _shard_shape(shape, spec, mesh_shape):
    sizes = {"data": mesh_shape[0], "tensor": mesh_shape[1]}
    out = list(shape)
    for dim, axis in enumerate(spec):
        if axis is not None:
            out[dim] //= sizes[axis]
    return tuple(out)


@pytest.mark.parametrize("mode", MODES)
def test_params_moments_and_batch_have_the_table_specs_and_shard_shapes(mode):
    p = plan(build_run("tiny", mode=mode, batch=8, seq=16))
    state = p.init()
    adam = state.opt_state[1]
    for tree in (state.params, adam.mu, adam.nu):
        for kind, array in _leaves(tree).items():
            expected = EXPECTED[mode][kind]
            assert array.sharding.spec == expected, (mode, kind)
            shard = array.addressable_shards[0].data.shape
            assert shard == _shard_shape(array.shape, expected, MESH[mode]), (mode, kind)
    assert len(state.params["embed"]["weight"].sharding.device_set) == (1 if mode == "none" else 8)
    tokens = parallel.place_batch(
        np.zeros(p.batch_shape, np.int32), p.batch_sharding, p.batch_shape
    )
    assert tokens.sharding.spec == P("data")
    assert tokens.addressable_shards[0].data.shape == (8 // MESH[mode][0], 17)


def test_fsdp_tp_ffn_shard_is_a_quarter_by_a_half():
    p = plan(build_run("tiny", mode="fsdp_tp", mesh="4x2", batch=8, seq=16))
    w1 = p.init().params["blocks"]["ffn"]["w1"]["weight"]
    n_layers, d, f = w1.shape
    assert w1.addressable_shards[0].data.shape == (n_layers, d // 4, f // 2)


def test_sharded_init_never_materialises_the_whole_state_on_one_device():
    p = plan(build_run("10m", mode="fsdp", batch=8, seq=16))
    memory = p.init.lower().compile().memory_analysis()  # per device
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(p.abstract_state))
    # Each device outputs only its shards (~1/8 plus replicated norms) and never needs the
    # whole state as scratch space.
    assert memory.output_size_in_bytes < 0.15 * whole
    assert memory.temp_size_in_bytes < 0.15 * whole


@pytest.mark.parametrize(
    ("mode", "mesh", "size", "batch", "message"),
    [
        ("pp", None, "tiny", 8, "unknown mode 'pp'"),
        ("dp", (4, 2), "tiny", 8, "mode dp needs tensor=1"),
        ("fsdp", (2, 4), "tiny", 8, "mode fsdp needs tensor=1"),
        ("tp", (4, 2), "tiny", 8, "mode tp needs data=1"),
        ("fsdp_tp", (8, 1), "tiny", 8, "needs data>1 and tensor>1"),
        ("fsdp_tp", (1, 8), "tiny", 8, "needs data>1 and tensor>1"),
        ("dp", (4, 1), "tiny", 8, "needs 4 devices but 8 are available"),
        ("tp", (1, 8), "125m", 8, "n_heads=12 of 125m is not divisible by tensor=8"),
        ("dp", (8, 1), "tiny", 12, "global batch 12 is not divisible by data=8"),
    ],
)
def test_invalid_plans_raise_value_error(mode, mesh, size, batch, message):
    with pytest.raises(ValueError, match=message):
        parallel.validate(mode, mesh or (1, 1), 8, get_preset(size), batch)


def test_d_ff_not_divisible_by_tensor_is_rejected():
    import dataclasses

    cfg = dataclasses.replace(get_preset("tiny"), d_ff=100)
    with pytest.raises(ValueError, match="d_ff=100"):
        parallel.validate("tp", (1, 8), 8, cfg, 8)


def test_none_runs_on_one_device():
    p = plan(build_run("tiny", mode="none", batch=2, seq=8))
    assert p.mesh.size == 1


def test_losses_are_equal_across_modes():
    losses = {m: run(build_run("tiny", mode=m, steps=5, batch=8, seq=32)).losses for m in MODES}
    base = np.array(losses["none"])
    for mode, values in losses.items():
        np.testing.assert_allclose(values, base, rtol=1e-5, err_msg=mode)


def _cli_json(args, timeout=300):
    out = subprocess.run(
        [sys.executable, "-m", "scaling", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return last_json(out.stdout)


def test_two_processes_equal_one_process():
    common = [
        "train",
        "--size",
        "tiny",
        "--steps",
        "4",
        "--seq",
        "32",
        "--mode",
        "fsdp_tp",
        "--devices",
        "8",
    ]
    two = _cli_json([*common, "--local-processes", "2", "--timeout", "240"])
    one = _cli_json(common)
    assert (two["n_processes"], one["n_processes"]) == (2, 1)
    assert two["n_devices"] == one["n_devices"] == 8
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)


def test_a_probe_sample_is_the_fastest_of_its_timed_calls(monkeypatch):
    """One untimed call, then ``PROBE_CALLS`` timed ones: a call slowed by something else on
    the host must not lower the peak (and raise MFU)."""
    import time

    from scaling import measure

    probe = measure.MatmulProbe(n=64)
    durations = iter([0.0, 0.06, 0.02, 0.04])  # untimed, then the timed calls
    monkeypatch.setattr(probe, "_call", lambda: time.sleep(next(durations)))
    assert measure.PROBE_CALLS == 3
    flops = probe.sample()
    assert next(durations, None) is None  # all four calls made
    assert flops == pytest.approx(2 * 64**3 / 0.02, rel=0.2)  # the fastest, not 0.06 or 0.04
    assert probe.samples == [flops]


def test_matmul_probe_runs_on_one_device_even_under_the_training_mesh():
    """The CPU peak probe is sampled inside train.run's mesh context; replicated over the
    mesh it would do the work once per device and under-read the peak (MFU > 100 %)."""
    from scaling.measure import MatmulProbe

    probe = MatmulProbe(n=64)
    with jax.set_mesh(parallel.make_mesh((4, 2))):
        out = probe._call()
        probe.sample()
    assert len(out.sharding.device_set) == 1
    assert len(probe.samples) == 1 and probe.median > 0
