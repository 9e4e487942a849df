"""`scaling env`: backend, devices, matched profile and versions of this process."""

import jax
from helpers import last_json


def test_env_json_names_the_backend_profile_attention_and_versions(cli):
    result = cli("env", "--json")
    assert result.exit_code == 0, result.output
    info = last_json(result.stdout)
    assert info["backend"] == "cpu" and info["platform"] == "cpu"
    assert info["device_count"] == jax.device_count() == 8  # conftest's simulated devices
    assert info["device_kind"] == jax.devices()[0].device_kind
    assert info["hardware_profile"] == "cpu" and "matmul probe" in info["peak_source"]
    assert info["attention"] == ["reference", "xla"]
    assert info["versions"]["jax"] == jax.__version__
    assert info["versions"]["jax-cuda12-plugin"] is None  # the CPU environment has no plugin


def test_env_table_lists_the_same(cli):
    result = cli("env")
    assert result.exit_code == 0, result.output
    for text in ("backend", "cpu", "reference, xla", jax.__version__):
        assert text in result.stdout
