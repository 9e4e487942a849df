"""Shared fixtures. Tests run on 8 simulated CPU devices; this must happen before jax creates its
backend, so it is the first thing pytest imports."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import stdlib_sample  # noqa: E402
from typer.testing import CliRunner  # noqa: E402


@pytest.fixture
def cli():
    """``cli("train", "--size", "tiny")``: invoke the `scaling` app in-process."""
    from scaling.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """STDLIB_SAMPLE prepared with a trained BPE vocabulary of 512, a quarter held out."""
    from scaling.corpus import find_sources
    from scaling.prepare import prepare
    from scaling.tokenizer import parse_tokenizer

    base = tmp_path_factory.mktemp("prepared")
    sources = find_sources([str(stdlib_sample(base / "text"))], "text", "*.py")
    prepare(sources, base / "bpe512", parse_tokenizer("bpe:512"), val_fraction=0.25, seed=0)
    return base / "bpe512"
