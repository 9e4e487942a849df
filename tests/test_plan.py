"""Study planners: IsoFLOP runs spend their budget by the project's own FLOP count, sit around
the target tokens per parameter, and the TOML they write is a valid sweep spec."""

from __future__ import annotations

import tomllib

import pytest
from helpers import last_json

from scaling.estimate import flops_per_step, param_counts
from scaling.plan import Plan, parse_shapes, plan_isoflop, plan_ladder
from scaling.spec import SweepSpec, run_config_from_settings

SIZES = "1x32,1x64,2x64,2x96,3x128,4x128"
TOKENS_PER_STEP = 8 * 128


def test_shapes_count_what_the_run_builds():
    shapes = parse_shapes("4x128,1x32,tiny", seq=128)
    assert [s.label for s in shapes] == ["1x32", "4x128", "tiny"]  # by parameters, stable
    assert shapes[1].n_params == shapes[2].n_params  # tiny is 4 layers of width 128
    for s in shapes:
        settings = {"size": s.size, "layers": s.layers, "width": s.width}
        cfg = run_config_from_settings(
            {**SweepSpec("x", {"size": ["tiny"]}).grid()[0], **settings}
        ).model
        assert s.n_params == param_counts(cfg).total
        assert s.flops_per_token * 128 == flops_per_step(
            cfg, batch=1, seq=128, causal_halving=False
        )
    with pytest.raises(ValueError, match="bad size '3y5'"):
        parse_shapes("3y5")


def test_isoflop_runs_spend_their_budget_and_centre_on_the_target_ratio():
    shapes = parse_shapes(SIZES)
    budgets = [3e11, 1e12, 3e12]
    runs = plan_isoflop(shapes, budgets, points_per_budget=4, tokens_per_step=TOKENS_PER_STEP)
    assert len(runs) == 12
    for budget in budgets:
        on = [r for r in runs if r.budget == budget]
        assert len({r.shape.label for r in on}) == 4
        for r in on:
            # whole steps: within half a step's FLOPs of the budget
            assert abs(r.compute - budget) <= r.shape.flops_per_token * TOKENS_PER_STEP / 2
            assert r.steps >= 40 and r.tokens == r.steps * TOKENS_PER_STEP
        ratios = sorted(r.tokens / r.shape.n_params for r in on)
        # the window holds the size nearest 20 tokens/param (or is the feasible end)
        nearest = min(ratios, key=lambda x: abs(x / 20 - 1) if x > 20 else abs(20 / x - 1))
        assert nearest in ratios


def test_plan_toml_is_a_sweep_spec_whose_runs_record_the_planned_compute():
    shapes = parse_shapes(SIZES)
    runs = plan_isoflop(shapes, [1e12, 3e12], points_per_budget=3, tokens_per_step=1024)
    plan = Plan("iso", "test", runs, {"batch": 8, "seq": 128, "eval_every": 50})
    data = tomllib.loads(plan.to_toml())
    spec = SweepSpec(data["name"], {}, data["fixed"], data["description"], data["points"])
    grid = spec.grid()
    assert len(grid) == len(runs)
    for settings, run in zip(grid, runs, strict=True):
        cfg = run_config_from_settings(settings)
        per_step = flops_per_step(cfg.model, batch=cfg.batch, seq=cfg.seq, causal_halving=False)
        assert per_step * cfg.steps == pytest.approx(run.compute, rel=1e-12)


def test_isoflop_refuses_close_budgets_too_few_sizes_and_two_points():
    shapes = parse_shapes(SIZES)
    with pytest.raises(ValueError, match="< 25 % apart"):
        plan_isoflop(shapes, [1e12, 1.1e12], tokens_per_step=1024)
    with pytest.raises(ValueError, match="a parabola needs 3"):
        plan_isoflop(shapes, [1e9], tokens_per_step=1024)
    with pytest.raises(ValueError, match="must be ≥ 3"):
        plan_isoflop(shapes, [1e12], points_per_budget=2, tokens_per_step=1024)


def test_ladder_trains_every_size_for_each_multiple():
    shapes = parse_shapes("1x32,2x64")
    runs = plan_ladder(shapes, [20, 5], tokens_per_step=256, min_steps=1)
    assert [(r.shape.label, round(r.tokens / r.shape.n_params)) for r in runs] == [
        ("1x32", 5),
        ("1x32", 20),
        ("2x64", 5),
        ("2x64", 20),
    ]


def test_plan_cli_writes_toml_to_stdout_and_bad_input_exits_2(cli, tmp_path):
    result = cli("plan", "isoflop", "--budgets", "1e12,3e12", "--sizes", SIZES)
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.stdout)
    assert data["fixed"]["eval_every"] == min(p["steps"] for p in data["points"])
    result = cli("plan", "ladder", "--sizes", "1x32,2x64", "--tokens-per-param", "10,40")
    assert result.exit_code == 0 and len(tomllib.loads(result.stdout)["points"]) == 4
    for args, message in [
        (["isoflop", "--budgets", "lots", "--sizes", SIZES], "bad --budgets 'lots'"),
        (["isoflop", "--budgets", "1e12", "--sizes", "9q"], "bad size '9q'"),
        (["ladder", "--sizes", "1x32", "--tokens-per-param", "-1"], "bad tokens per parameter"),
    ]:
        result = cli("plan", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_plan_sweep_fit_end_to_end(cli, tmp_path):
    """README's "done when" chain in miniature: plan isoflop → sweep → fit --law chinchilla
    --holdout largest --json (9 runs on synthetic data, validation loss at the end)."""
    plan = cli(
        "plan", "isoflop", "--budgets", "5e9,1.5e10,4.5e10", "--sizes", "1x16,1x32,2x32,2x48",
        "--points-per-budget", "3", "--seq", "32", "--batch", "4", "--min-steps", "10",
    )  # fmt: skip
    assert plan.exit_code == 0, plan.output
    spec = tmp_path / "spec.toml"
    spec.write_text(plan.stdout)
    out = tmp_path / "iso"
    sweep = cli("sweep", "--spec", spec, "--out", out, "--json")
    assert sweep.exit_code == 0, sweep.output
    assert [r["status"] for r in last_json(sweep.stdout)] == ["ok"] * 9
    fit = cli("fit", out, "--law", "chinchilla", "--holdout", "largest", "--json")
    assert fit.exit_code == 0, fit.output
    (group,) = last_json(fit.stdout)
    assert group["runs"] == 9 and group["parametric"]["n_points"] == 9 - len(group["heldout"])
    assert all(abs(h["error"]) < 1 for h in group["heldout"])
