"""nox sessions: tests (README's test command), lint, slow (slow-marked tests), bench
(throughput regression check against the committed CPU baseline)."""

import tempfile

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
