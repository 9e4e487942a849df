import json
import math

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import last_json

from scaling import train
from scaling.data import prepared_for_model, validation_batches
from scaling.evaluate import Evaluator, bits_per_byte
from scaling.prepared import EVAL_SEED, padded_vocab
from scaling.presets import build_run
from scaling.sharding import DENSE_MODES as MODES

SEQ, BATCH, BATCHES = 32, 8, 2


def _windows_by_hand(prepared_dir) -> np.ndarray:
    """The documented validation windows, read straight from val.bin: non-overlapping
    windows of SEQ+1 tokens at multiples of SEQ, in the order of a permutation seeded with
    EVAL_SEED, the first BATCHES·BATCH of them."""
    meta = json.loads((prepared_dir / "meta.json").read_text())
    val = np.fromfile(prepared_dir / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    n = (len(val) - 1) // SEQ
    starts = np.random.default_rng(EVAL_SEED).permutation(n)[: BATCHES * BATCH] * SEQ
    return np.stack([val[s : s + SEQ + 1] for s in starts])


def _numpy_loss(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    log_z = (peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True)))[..., 0]
    return float(np.mean(log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]))


def _run(prepared_dir, **overrides):
    fields = {"steps": 4, "batch": BATCH, "seq": SEQ, "eval_batches": BATCHES, **overrides}
    return build_run("tiny", data=str(prepared_dir), **fields)


def test_validation_loss_equals_numpy_on_the_same_windows(prepared_dir):
    run_cfg = _run(prepared_dir)
    plan = train.plan(run_cfg)
    with jax.set_mesh(plan.mesh):
        state = plan.init()
        got = Evaluator(run_cfg, plan, BATCHES)(state.params)
    windows = _windows_by_hand(prepared_dir)
    np.testing.assert_array_equal(
        validation_batches(
            str(prepared_dir), vocab_size=512, batch=BATCH, seq=SEQ, seed=0, n_batches=BATCHES
        ).reshape(-1, SEQ + 1),
        windows,
    )
    params = jax.device_get(state.params)
    logits = np.asarray(nnx.merge(plan.graphdef, params)(windows[:, :-1]))  # no jit, one device
    expected = _numpy_loss(logits, windows[:, 1:])
    assert got == pytest.approx(expected, rel=2e-6)
    assert 5.5 < expected < 7.5  # near ln(512) = 6.24 at initialisation: a real loss


def test_validation_loss_is_the_same_in_every_sharding_mode(prepared_dir):
    """The same parameters, placed in each mode's shardings on 8 simulated devices, evaluate to
    the same loss (float32 reductions in another order: within 1e-6 relative)."""
    base_cfg = _run(prepared_dir)
    base = train.plan(base_cfg)
    with jax.set_mesh(base.mesh):
        params = jax.device_get(base.init().params)
        reference = Evaluator(base_cfg, base, BATCHES)(params)
    for mode in MODES:
        run_cfg = _run(prepared_dir, mode=mode)
        plan = train.plan(run_cfg)
        with jax.set_mesh(plan.mesh):
            placed = jax.device_put(params, plan.state_shardings.params)
            loss = Evaluator(run_cfg, plan, BATCHES)(placed)
        assert loss == pytest.approx(reference, rel=1e-6), mode


def test_validation_windows_do_not_depend_on_the_run_seed(prepared_dir):
    kw = {"vocab_size": 512, "batch": BATCH, "seq": SEQ, "n_batches": BATCHES}
    a = validation_batches(str(prepared_dir), seed=0, **kw)
    b = validation_batches(str(prepared_dir), seed=7, **kw)
    np.testing.assert_array_equal(a, b)
    more = validation_batches(str(prepared_dir), seed=0, **{**kw, "n_batches": 3})
    np.testing.assert_array_equal(more[:BATCHES], a)  # more batches: a superset, same order
    rows = validation_batches(str(prepared_dir), seed=0, rows=slice(2, 6), **kw)
    np.testing.assert_array_equal(rows, a[:, 2:6])  # a process's rows of the same windows
    available = (json.loads((prepared_dir / "meta.json").read_text())["val"]["tokens"] - 1) // SEQ
    with pytest.raises(ValueError, match=f"holds {available} windows of {SEQ + 1} tokens"):
        validation_batches(str(prepared_dir), seed=0, **{**kw, "n_batches": 1000})


def test_data_vocabulary_sets_the_model_and_a_smaller_model_is_an_error(prepared_dir):
    assert build_run("10m", data=str(prepared_dir)).model.vocab_size == 512
    assert build_run("10m").model.vocab_size == 2048
    assert padded_vocab(257) == 320 and padded_vocab(4096) == 4096
    with pytest.raises(ValueError, match="vocabulary of 512 tokens but the model has 256"):
        prepared_for_model(prepared_dir, 256)


def test_bits_per_byte_by_hand():
    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 2.5) == pytest.approx(2.0 / math.log(2) / 2.5)
    assert math.isnan(bits_per_byte(2.0, None))


def test_train_records_validation_and_eval_reproduces_it(prepared_dir, tmp_path, cli):
    ckpt = tmp_path / "ckpt"
    common = ["--size", "tiny", "--data", prepared_dir, "--seq", SEQ, "--batch", BATCH]
    result = cli(
        "train", *common, "--steps", 4, "--eval-every", 2, "--eval-batches", BATCHES,
        "--checkpoint-dir", ckpt, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = last_json(result.stdout)
    assert [e["step"] for e in out["evals"]] == [1, 3]
    assert out["final_val_loss"] == out["evals"][-1]["val_loss"]
    meta = json.loads((prepared_dir / "meta.json").read_text())
    per_token = meta["val"]["bytes"] / meta["val"]["tokens"]
    assert out["final_val_bpb"] == pytest.approx(out["final_val_loss"] / math.log(2) / per_token)
    assert out["tokens_seen"] == 4 * BATCH * SEQ and out["eval_tokens"] == BATCHES * BATCH * SEQ
    assert len(out["data_wait_s"]) == 4 and min(out["data_wait_s"]) >= 0
    result = cli(
        "eval", "--checkpoint", ckpt, "--data", prepared_dir, "--batches", BATCHES, "--json"
    )
    assert result.exit_code == 0, result.output
    evaluated = last_json(result.stdout)
    assert evaluated["step"] == 4 and evaluated["windows"] == BATCHES * BATCH
    assert evaluated["loss"] == pytest.approx(out["final_val_loss"], rel=1e-6)
    assert evaluated["perplexity"] == pytest.approx(math.exp(evaluated["loss"]))
    result = cli("eval", "--checkpoint", tmp_path / "none", "--data", prepared_dir)
    assert result.exit_code == 2 and "checkpoint directory" in result.output


def test_eval_needs_a_validation_split(tmp_path):
    tokens = tmp_path / "t.bin"
    (np.arange(4000) % 200).astype(np.uint16).tofile(tokens)
    with pytest.raises(ValueError, match="has no validation split"):
        train.run(build_run("tiny", data=str(tokens), steps=1, seq=16, eval_every=1))


def test_sweep_records_validation_loss_tokens_and_data_wait(prepared_dir, tmp_path):
    from scaling.records import load_runs, load_steps
    from scaling.spec import SweepSpec
    from scaling.sweep import run_sweep

    fixed = {"steps": 3, "batch": BATCH, "seq": SEQ, "data": str(prepared_dir)}
    spec = SweepSpec("val", {"size": ["tiny"]}, {**fixed, "eval_every": 2, "eval_batches": 1})
    run_sweep(spec, tmp_path)
    runs, steps = load_runs(tmp_path), load_steps(tmp_path).sort_values("step")
    assert runs["status"].item() == "ok", runs["error"].item()
    assert runs["tokens_seen"].item() == 3 * BATCH * SEQ
    val = steps["val_loss"].to_numpy()
    assert np.isnan(val[0]) and np.isfinite(val[1:]).all()  # after steps 2 and 3 (the last)
    assert runs["final_val_loss"].item() == val[-1]
    assert runs["final_val_bpb"].item() > 0 and (steps["data_wait_s"] >= 0).all()
    assert runs["data_wait_s_median"].item() < runs["step_time_s_median"].item()


@pytest.mark.slow
def test_two_processes_read_their_rows_and_agree_with_one(prepared_dir, tmp_path):
    """Each of 2 processes × 4 devices loads only its rows of every training batch and of the
    validation windows; losses and validation loss equal one 4-device process's."""
    from scaling.records import load_runs, load_steps
    from scaling.spec import SweepSpec
    from scaling.sweep import Distributed, run_sweep

    fixed = {"steps": 3, "batch": BATCH, "seq": SEQ, "data": str(prepared_dir), "devices": 4}
    fixed.update(eval_every=3, eval_batches=1, timeout_s=300)
    spec = SweepSpec("mp", {"size": ["tiny"], "mode": ["fsdp_tp"]}, fixed)
    run_sweep(spec, tmp_path / "two", distributed=Distributed(local_processes=2))
    run_sweep(spec, tmp_path / "one")
    two, one = load_runs(tmp_path / "two"), load_runs(tmp_path / "one")
    assert two["status"].item() == "ok", two["error"].item()
    assert (two["n_processes"].item(), two["n_devices"].item()) == (2, 8)
    np.testing.assert_allclose(
        load_steps(tmp_path / "two").sort_values("step")["loss"],
        load_steps(tmp_path / "one").sort_values("step")["loss"],
        rtol=1e-5,
    )
    assert two["final_val_loss"].item() == pytest.approx(one["final_val_loss"].item(), rel=1e-5)
