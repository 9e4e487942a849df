"""nox sessions: tests (README's test command), lint, slow (slow-marked tests), bench
(throughput regression check against the committed CPU baseline), validate (parity with
Hugging Face transformers and the notebook that uses it)."""

import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint"]


def _sync(session: nox.Session) -> None:
    session.run_install(
        "uv", "sync", "--frozen", env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite (README's test command)."""
    _sync(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _sync(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def slow(session: nox.Session) -> None:
    """Slow-marked tests (bigger presets, longer runs)."""
    _sync(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run sweeps/ci.toml into a fresh temporary record and check it against
    sweeps/baselines/ci-cpu.parquet (MFU, default tolerance). Extra arguments go to
    `scaling check`, e.g. `nox -s bench -- --metric tokens_per_s`."""
    _sync(session)
    out = tempfile.mkdtemp(prefix="scaling-bench-")
    session.run("scaling", "sweep", "--spec", "sweeps/ci.toml", "--out", out)
    session.run(
        "scaling",
        "check",
        "--baseline",
        "sweeps/baselines/ci-cpu.parquet",
        "--current",
        out,
        *session.posargs,
    )


# Test-only tools of the validate session, never dependencies of the package. torch is pinned
# to the CPU build's version: pip on this machine kind finds a local CPU wheel through its
# find-links (/etc/xdg/pip); elsewhere add `--extra-index-url
# https://download.pytorch.org/whl/cpu` (PIP_EXTRA_INDEX_URL) to avoid PyPI's CUDA build.
VALIDATE_REQUIREMENTS = ["torch==2.13.0", "transformers>=5", "nbclient>=0.10", "ipykernel>=6"]


@nox.session(venv_backend="venv")
def validate(session: nox.Session) -> None:
    """Parity tests (`pytest -m parity`: logits and hidden states against transformers, export
    round trips) and the reports/notebooks/hf_models.ipynb run. A pip venv, not uv: uv does not
    read pip's configuration and would resolve torch to the multi-GB CUDA build. The package's
    own dependencies come from uv.lock (exported), so they are the locked versions."""
    requirements = Path(session.create_tmp()) / "locked.txt"
    session.run(
        "uv", "export", "--frozen", "--no-hashes", "--no-emit-project", "--quiet",
        "-o", str(requirements), external=True,
    )  # fmt: skip
    session.install("-r", str(requirements))
    session.install("--no-deps", "-e", ".")
    session.install(*VALIDATE_REQUIREMENTS)
    session.run("pytest", "-m", "parity", *session.posargs)
