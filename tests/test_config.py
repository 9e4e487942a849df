import dataclasses

import pytest

from scaling.config import parse_mesh
from scaling.presets import PRESETS, build_run, get_preset


def test_presets_are_frozen():
    for cfg in PRESETS.values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.d_model = 1  # type: ignore[misc]


def test_gpt3_ladder_fixes_the_two_inconsistent_rows():
    assert (PRESETS["1.3b"].n_heads, PRESETS["1.3b"].d_head) == (16, 128)
    assert PRESETS["13b"].d_model == 5120
    for name in ("125m", "350m", "760m", "1.3b", "2.7b", "6.7b", "13b", "175b"):
        cfg = PRESETS[name]
        assert cfg.n_heads * cfg.d_head == cfg.d_model
        assert (cfg.vocab_size, cfg.max_seq_len) == (50304, 2048)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "nope"}, "unknown size 'nope'"),
        ({"seq": 10_000}, "seq=10000 is out of range"),
        ({"steps": -1}, "steps must be in 1..2147483647"),
        ({"steps": 0}, "steps must be in 1..2147483647, got 0"),
        ({"steps": 2**31}, "steps must be in 1..2147483647"),
        ({"family": "bert"}, "unknown family 'bert'"),
        ({"dtype": "float16"}, "unknown dtype 'float16'"),
        ({"remat": "some"}, "unknown remat 'some'"),
        ({"mode": "pp"}, "unknown mode 'pp'"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"mesh": "4by2"}, "bad mesh '4by2'"),
    ],
)
def test_bad_run_settings_raise_one_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_run(**kwargs)


def test_build_run_applies_overrides_and_mup_unties_the_head():
    run = build_run("10m", family="gpt2", dtype="bfloat16", remat="dots", mup=True, mesh="2x4")
    assert run.model.family == "gpt2" and run.model.d_ff == 4 * run.model.d_model
    assert (run.model.dtype, run.model.remat) == ("bfloat16", "dots")
    assert run.model.mup and not run.model.tied_embeddings
    assert run.mesh == (2, 4)


def test_mup_with_a_tied_head_is_rejected():
    with pytest.raises(ValueError, match="untied head"):
        dataclasses.replace(get_preset("tiny"), mup=True)


def test_width_and_depth_overrides_keep_head_width():
    run = build_run("tiny", width=256, layers=2)
    assert (run.model.d_model, run.model.n_heads, run.model.d_head) == (256, 16, 16)
    assert run.model.n_layers == 2 and run.model.name == "tiny@256-L2"
    with pytest.raises(ValueError, match="width 100 must be a positive multiple of d_head=16"):
        build_run("tiny", width=100)


def test_parse_mesh():
    assert parse_mesh("4x2") == (4, 2)
    with pytest.raises(ValueError):
        parse_mesh("0x2")
