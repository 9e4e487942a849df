"""Values refused before any run starts (issue 19): one line naming the value and what is
valid, exit code 2, no traceback, nothing written."""

import errno
import json

import pytest
from helpers import one_error_line

from scaling.cli.common import describe

SWEEP = ["sweep", "none", "--sizes", "tiny", "--steps", "1", "--seq", "16", "--batch", "4"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--steps", "0"], "steps must be in 1..2147483647, got 0"),
        (["train", "--steps", "99999999989"], "got 99999999989"),
        (["train", "--warmup", "99999999989"], "warmup must be in 0..2147483647"),
        (["train", "--devices", "100000"], "--devices must be in 1..512"),
        (["train", "--devices", "0"], "--devices must be in 1..512"),
        (
            ["train", "--coordinator", "nonsense"],
            "bad --coordinator 'nonsense'; expected HOST:PORT",
        ),
        (["train", "--coordinator", "h:99999"], "bad --coordinator 'h:99999'"),
        (["train", "--local-processes", "-1"], "--local-processes must be >= 0"),
        (["train", "--num-processes", "2", "--process-id", "2"], "--process-id 2 is out of range"),
        (["train", "--init-timeout", "0"], "--init-timeout must be a positive number"),
        (["train", "--allow-config-change", "colour"], "unknown field 'colour'"),
        (["train", "--batch", "99999999999"], "batch 99999999999×128: the memory estimate is"),
        ([*SWEEP, "--steps", "0"], "steps must be in 1..2147483647, got 0"),
        (["sweep", "dp", "--sizes", "tiny", "--devices", "0"], "--devices must be in 1..512"),
        (["sweep", "dp", "--sizes", "tiny", "--devices", "-2"], "got -2"),
        (
            ["sweep", "dp", "--sizes", "tiny", "--mesh", "3x3", "--devices", "8"],
            "mode dp needs tensor=1; got mesh 3x3",
        ),
        (
            ["sweep", "dp", "--sizes", "tiny", "--mesh", "4x1", "--devices", "8"],
            "mesh 4x1 needs 4 devices but 8 are available",
        ),
        ([*SWEEP, "--timeout", "0"], "--timeout must be a positive number of seconds, got 0"),
        ([*SWEEP, "--timeout", "-5"], "got -5"),
        ([*SWEEP, "--timeout", "nan"], "got nan"),
        ([*SWEEP, "--init-timeout", "-1"], "--init-timeout must be a positive number"),
        ([*SWEEP, "--coordinator", "nonsense"], "bad --coordinator 'nonsense'"),
        ([*SWEEP, "--local-processes", "-1"], "--local-processes must be >= 0"),
        (["estimate", "--sizes", "125m", "--seq", "0"], "seq=0 is out of range; valid: 1..2048"),
        (
            ["estimate", "--sizes", "125m", "--mode", "tp", "--mesh", "1x7"],
            "n_heads=12 of 125m is not divisible by tensor=7",
        ),
        (
            ["estimate", "--sizes", "125m", "--mode", "dp", "--mesh", "3x3"],
            "mode dp needs tensor=1",
        ),
    ],
)
def test_bad_values_are_refused_before_anything_runs(cli, tmp_path, args, message):
    out = tmp_path / "rec"
    if args[0] == "sweep":
        args = [*args, "--out", out]
    assert message in one_error_line(cli(*args))
    assert not out.exists()  # the sweep refused before writing anything


def test_a_run_the_estimate_says_cannot_fit_is_refused_unless_forced(cli, monkeypatch):
    """1.3b at batch 8 × 128 needs ~25 GB by the estimate; on a 16 GiB host it is refused in a
    second instead of growing into swap until the kernel kills it. (The host is far below the
    estimate on purpose: a run the check let through would really train 1.3b here.)"""
    from scaling import preflight

    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: 16 * 2**30)
    line = one_error_line(cli("train", "--size", "1.3b", "--seq", "128", "--steps", "1"))
    assert "1.3b none 1x1, batch 8×128: the memory estimate is" in line
    assert "17.2 GB of RAM" in line and "--force" in line


def test_memory_check_counts_every_simulated_device_sharing_the_host(monkeypatch):
    from scaling import preflight
    from scaling.estimate import memory_per_device
    from scaling.presets import build_run

    run = build_run("tiny", mode="dp", batch=8, seq=64)
    need = memory_per_device(run.model, mode="dp", mesh=(4, 1), batch=8, seq=64).total
    cpu = dict(n_local_devices=4, platform="cpu", device_bytes=None)
    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: 4 * need)
    assert preflight.memory_problem(run, (4, 1), **cpu) is None
    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: 4 * need - 1)
    assert "for 4 simulated devices" in preflight.memory_problem(run, (4, 1), **cpu)
    gpu = dict(n_local_devices=8, platform="gpu")
    assert preflight.memory_problem(run, (4, 1), device_bytes=need, **gpu) is None
    assert "a gpu device has" in preflight.memory_problem(run, (4, 1), device_bytes=need - 1, **gpu)
    assert preflight.memory_problem(run, (4, 1), device_bytes=None, **gpu) is None  # unknown


def test_repeated_sizes_run_once_with_a_note(cli, tmp_path):
    result = cli(*SWEEP, "--sizes", "tiny,tiny", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert "size lists tiny more than once; each run runs once" in result.stderr
    assert len(list((tmp_path / "runs").glob("*.parquet"))) == 1


def _hf(tmp_path, **fields) -> str:
    config = {
        "model_type": "mistral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        **fields,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"num_local_experts": 8},
            "mixture-of-experts models are supported as model_type 'mixtral' only",
        ),
        (
            {"hidden_size": {"value": 4096}},
            "'hidden_size' must be a positive integer, got {'value': 4096} (an object)",
        ),
        (
            {"hidden_size": "4096x"},
            "'hidden_size' must be a positive integer, got '4096x' (a string)",
        ),
        (
            {"tie_word_embeddings": "false"},
            "'tie_word_embeddings' must be true or false, got 'false' (a string)",
        ),
        ({"rms_norm_eps": "1e-5"}, "'rms_norm_eps' must be a positive number, got '1e-5'"),
        (
            {"num_key_value_heads": True},
            "'num_key_value_heads' must be a positive integer, got True (a boolean)",
        ),
    ],
)
def test_malformed_hugging_face_configs_name_the_field(cli, tmp_path, fields, message):
    assert message in one_error_line(cli("estimate", "--hf-config", _hf(tmp_path, **fields)))


def test_a_well_formed_hugging_face_config_still_reads(cli, tmp_path):
    path = _hf(tmp_path, hidden_size=4096.0, tie_word_embeddings=False)
    assert cli("estimate", "--hf-config", path, "--json").exit_code == 0


def test_data_from_text_refuses_an_empty_file_and_a_directory_as_output(cli, tmp_path):
    empty, text = tmp_path / "e.txt", tmp_path / "a.txt"
    empty.write_text("")
    text.write_text("some text " * 50)
    line = one_error_line(cli("data", "from-text", empty, "--out", tmp_path / "e.bin"))
    assert "is empty" in line and not (tmp_path / "e.bin").exists()
    (tmp_path / "d.bin").mkdir()
    assert "is a directory" in one_error_line(
        cli("data", "from-text", text, "--out", tmp_path / "d.bin")
    )
    line = one_error_line(cli("data", "from-text", text, "--out", tmp_path / ("z" * 300 + ".bin")))
    assert "File name too long" in line and "use a shorter name" in line


def test_os_and_number_errors_become_one_line_naming_the_path_or_value():
    full = OSError(errno.ENOSPC, "No space left on device", "/rec/runs/a.parquet")
    assert describe(full) == (
        "No space left on device: '/rec/runs/a.parquet' (free some space or choose another "
        "location)"
    )
    assert "read-only" in describe(OSError(errno.EROFS, "Read-only file system", "/r"))
    try:
        "rec-\udcff".encode()
    except UnicodeEncodeError as exc:
        assert describe(exc) == "the name 'rec-\\udcff' is not valid UTF-8; use a UTF-8 file name"
    assert describe(OverflowError("int too big")) == "a number is out of range: int too big"
    assert describe(MemoryError("Unable to allocate 12.0 TiB")).startswith("out of memory")


def test_a_sweep_records_runs_that_cannot_fit_as_oom_predicted_without_running_them(cli, tmp_path):
    """175b needs ~3 TB by the estimate: recorded oom-predicted by its worker before any
    allocation, beside a tiny run that trains."""
    result = cli(*SWEEP, "--sizes", "tiny,175b", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    rows = {r["size"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])}
    assert rows["tiny"]["status"] == "ok"
    assert rows["175b"]["status"] == "oom-predicted"
    assert "the memory estimate is" in rows["175b"]["error"] and "--force" in rows["175b"]["error"]
    assert rows["175b"]["n_params"] == 0  # nothing was built
    assert "1 run(s) not run: the memory estimate says they do not fit" in result.stderr
