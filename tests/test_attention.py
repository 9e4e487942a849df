"""Attention implementations (scaling.attention) and the chunked loss (scaling.loss): same loss
and gradients as the reference paths on CPU, clear refusals, and what the estimator counts."""

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import one_error_line

from scaling import attention
from scaling.config import RunConfig
from scaling.estimate.memory import activation_terms, memory_per_device
from scaling.loss import next_token_loss
from scaling.model import build_model
from scaling.presets import get_preset, with_family

# tiny at two layers and width 64; every family's architecture, plus grouped-query heads and a
# window shorter than the sequence (mistral's own 4096 would not bite at 32 positions). The
# default suite runs one of them (the others are slow-marked: each compiles two steps).
TINY = dataclasses.replace(get_preset("tiny"), n_layers=2, d_model=64, n_heads=4, d_ff=192,
                           vocab_size=512)  # fmt: skip
CASES = {
    "llama": TINY,
    "gpt2": with_family(TINY, "gpt2"),
    "mistral-window-7": dataclasses.replace(with_family(TINY, "mistral"), sliding_window=7),
    "gemma": with_family(TINY, "gemma"),
    "llama-gqa-4/1": dataclasses.replace(TINY, n_kv_heads=1),
    "mistral-gqa-window": dataclasses.replace(TINY, n_kv_heads=2, sliding_window=5),
}
FAST = ("mistral-gqa-window",)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 33)), jnp.int32)


def assert_grads_close(got_leaves, ref_leaves, tol: float) -> None:
    """Each gradient within ``tol`` of its leaf's largest entry, or of 1e-3 × the largest of
    all where a leaf is ~0 in exact arithmetic (GPT-2's key bias: softmax ignores it)."""
    overall = max(float(jnp.max(jnp.abs(r))) for r in ref_leaves)
    for ref, got in zip(ref_leaves, got_leaves, strict=True):
        scale = max(float(jnp.max(jnp.abs(ref))), 1e-3 * overall)
        np.testing.assert_allclose(got, ref, atol=tol * scale, rtol=0)


@functools.lru_cache(maxsize=16)
def loss_and_grads(cfg, loss_chunk: int = 0):
    graphdef, params = nnx.split(build_model(cfg, seed=0))
    fn = jax.jit(jax.value_and_grad(lambda p: next_token_loss(nnx.merge(graphdef, p), TOKENS,
                                                                 loss_chunk)))  # fmt: skip
    loss, grads = fn(params)
    return float(loss), jax.tree.leaves(grads)


@pytest.mark.parametrize(
    "case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES]
)
def test_xla_attention_gives_the_reference_loss_and_gradients(case):
    """f32: loss within 1e-5 (relative), gradients within 1e-5 (``assert_grads_close``)."""
    cfg = CASES[case]
    ref_loss, ref_grads = loss_and_grads(cfg)
    xla_loss, xla_grads = loss_and_grads(dataclasses.replace(cfg, attention="xla"))
    assert xla_loss == pytest.approx(ref_loss, rel=1e-5)
    assert_grads_close(xla_grads, ref_grads, 1e-5)


def test_reference_loss_is_numpy_cross_entropy_of_the_logits():
    """The whole-logits path against a float64 NumPy log-softmax of the model's logits."""
    model = build_model(TINY, seed=0)
    logits = np.asarray(model(TOKENS[:, :-1]), np.float64)
    targets = np.asarray(TOKENS[:, 1:])
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
    assert float(next_token_loss(model, TOKENS)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("case", "chunk"),
    [("gpt2", 8), pytest.param("gemma", 8, marks=pytest.mark.slow),
     pytest.param("llama", 32, marks=pytest.mark.slow)],
)  # fmt: skip
def test_chunked_loss_matches_the_whole_logits(case, chunk):
    """Same loss (f32, 1e-6 relative) and gradients (1e-5, ``assert_grads_close``) as
    the whole-logits path; 32 = one chunk of the whole sequence."""
    cfg = CASES[case]
    whole_loss, whole_grads = loss_and_grads(cfg)
    loss, grads = loss_and_grads(cfg, loss_chunk=chunk)
    assert loss == pytest.approx(whole_loss, rel=1e-6)
    assert_grads_close(grads, whole_grads, 1e-5)


def test_chunked_loss_never_holds_the_whole_logits():
    """The chunked step's jaxpr has no (b, t, v) array; the whole-logits one has."""
    graphdef, params = nnx.split(build_model(TINY, seed=0))
    b, t, v = TOKENS.shape[0], TOKENS.shape[1] - 1, TINY.vocab_size

    def shapes(chunk):
        grad = jax.grad(lambda p: next_token_loss(nnx.merge(graphdef, p), TOKENS, chunk))
        jaxpr = jax.make_jaxpr(grad)(params)
        found = set()

        def walk(jp):
            for eqn in jp.eqns:
                found.update(tuple(o.aval.shape) for o in eqn.outvars if hasattr(o.aval, "shape"))
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jaxpr.jaxpr)
        return found

    assert (b, t, v) in shapes(0)
    chunked = shapes(8)
    assert (b, t, v) not in chunked and (b, 8, v) in chunked


def test_unavailable_implementations_are_refused_naming_the_available_ones():
    assert attention.available("cpu") == ("reference", "xla")
    assert attention.available("gpu") == ("reference", "xla", "cudnn")
    assert attention.available("tpu") == ("reference", "xla", "splash")
    for name in ("cudnn", "splash"):
        with pytest.raises(ValueError, match=f"'{name}' is not available on cpu; available: "
                                             "reference, xla"):  # fmt: skip
            attention.check_supported(dataclasses.replace(TINY, attention=name), "cpu")
    capped = dataclasses.replace(TINY, attention="xla", attn_softcap=50.0)
    with pytest.raises(ValueError, match="cannot soft-cap scores.*use reference"):
        attention.check_supported(capped, "cpu")
    attention.check_supported(dataclasses.replace(capped, attention="splash"), "tpu")  # accepted
    with pytest.raises(ValueError, match="unknown attention 'flash'; valid: reference, xla, cudnn"):
        dataclasses.replace(TINY, attention="flash")


def test_cli_cudnn_on_cpu_exits_2_with_the_available_list(cli):
    result = cli("train", "--steps", "1", "--batch", "2", "--seq", "16", "--attention", "cudnn")
    assert result.exit_code == 2
    assert one_error_line(result) == (
        "error: attention 'cudnn' is not available on cpu; available: reference, xla"
    )


def test_loss_chunk_must_divide_seq():
    with pytest.raises(ValueError, match="loss_chunk=5 does not divide seq=32.*e.g. 4, 8, 16"):
        RunConfig(model=TINY, seq=32, loss_chunk=5)
    with pytest.raises(ValueError, match="loss_chunk must be 0"):
        RunConfig(model=TINY, seq=32, loss_chunk=-1)
    assert RunConfig(model=TINY, seq=32, loss_chunk=8).loss_chunk == 8


def _bytes(terms) -> int:
    return sum(t.bytes for t in terms)


def test_fused_attention_stores_no_scores_in_the_estimate():
    """Hand count (f32, remat none, MHA, scanned): reference − fused = per layer the softmax
    weights 4·bht² (``ops.masked_softmax`` keeps only them) − the fused log-sum-exp 4·bht, and
    the hoisted mask (bool) and fill (f32) 5·bht² once; ``xla`` (jax's softmax) keeps the exp
    as well and the row sum and its square: + 4·bht² + 2·4·bht per layer."""
    cfg, b, t = get_preset("125m"), 8, 2048
    h, L = cfg.n_heads, cfg.n_layers
    kw = dict(mode="none", mesh=None, batch=b, seq=t)
    reference = _bytes(activation_terms(cfg, **kw))
    bht2, bht = b * h * t * t, b * h * t
    for fused in ("cudnn", "splash"):
        got = _bytes(activation_terms(dataclasses.replace(cfg, attention=fused), **kw))
        assert reference - got == L * (4 * bht2 - 4 * bht) + 5 * bht2
    xla = _bytes(activation_terms(dataclasses.replace(cfg, attention="xla"), **kw))
    assert xla - reference == L * (4 * bht2 + 8 * bht)  # MHA: k, v at h heads either way


def test_gqa_fused_attention_keeps_k_and_v_at_their_own_heads():
    cfg = dataclasses.replace(get_preset("125m"), n_kv_heads=4)
    kw = dict(mode="none", mesh=None, batch=2, seq=256)
    ref = {t.name: t.bytes for t in activation_terms(cfg, **kw)}
    xla = {t.name: t.bytes for t in activation_terms(dataclasses.replace(cfg, attention="xla"),
                                                     **kw)}  # fmt: skip
    bt = 2 * 256
    (ref_qkv,) = [v for k, v in ref.items() if k.startswith("q, k")]
    (xla_qkv,) = [v for k, v in xla.items() if k.startswith("q (RoPE)")]
    assert ref_qkv - xla_qkv == cfg.n_layers * 2 * bt * (12 - 4) * 64 * 4  # k, v: 8 heads fewer


def test_loss_chunk_counts_one_chunk_of_logits():
    """exp(logits) and the logits gradient, f32: 2·4·b·V·(t − c) fewer bytes."""
    cfg, b, t, c = get_preset("125m"), 8, 2048, 256
    whole = memory_per_device(cfg, mode="none", mesh=None, batch=b, seq=t)
    chunked = memory_per_device(cfg, mode="none", mesh=None, batch=b, seq=t, loss_chunk=c)
    assert whole.activations - chunked.activations == 2 * 4 * b * cfg.vocab_size * (t - c)
    assert whole.params == chunked.params


def test_sweep_axes_reach_the_run_config_and_keep_old_run_ids():
    from scaling.spec import SweepSpec, run_config_from_settings
    from scaling.sweep import run_id_of

    spec = SweepSpec("k", axes={"size": ["tiny"], "attention": ["reference", "xla"]},
                     fixed={"loss_chunk": 32, "seq": 64})  # fmt: skip
    runs = [run_config_from_settings(s) for s in spec.grid()]
    assert [r.model.attention for r in runs] == ["reference", "xla"]
    assert {r.loss_chunk for r in runs} == {32}
    plain = SweepSpec("k", axes={"size": ["tiny"]}).grid()[0]
    assert "attention" not in plain and "loss_chunk" not in plain  # run ids stay as they were
    assert run_id_of(plain) == run_id_of(dict(plain))
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        run_config_from_settings({**plain, "attention": "flash"})


def test_rows_before_schema_4_load_as_reference_attention_and_whole_logits(tmp_path):
    import pandas as pd
    from helpers import make_run_record, write_runs

    from scaling import records

    write_runs(tmp_path, [make_run_record("new", attention="xla", loss_chunk=16)])
    old = pd.read_parquet(tmp_path / "runs" / "new.parquet").drop(
        columns=["attention", "loss_chunk"]
    )
    old["run_id"] = "old"
    old.to_parquet(tmp_path / "runs" / "old.parquet")
    runs = records.load_runs(tmp_path).set_index("run_id")
    assert runs.loc["old", "attention"] == "reference" and runs.loc["old", "loss_chunk"] == 0
    assert runs.loc["new", "attention"] == "xla" and runs.loc["new", "loss_chunk"] == 16
    assert (
        records.config_of({**runs.loc["old"].to_dict(), "attention": float("nan")})["attention"]
        == "reference"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("window", "cap"), [(None, None), (17, 30.0)])
def test_splash_wrapper_matches_the_reference_in_pallas_interpret_mode(monkeypatch, window, cap):
    """The TPU path's plumbing (scale, GQA groups, causal/local mask, soft-cap) on CPU: the
    splash kernel in Pallas interpret mode against the reference einsum (f32, 1e-5)."""
    import functools

    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    from scaling.model import attention_mask, scaled_dot_product_attention

    real = splash.make_splash_mqa_single_device
    monkeypatch.setattr(splash, "make_splash_mqa_single_device",
                        functools.partial(real, interpret=True))  # fmt: skip
    attention._splash_kernel.cache_clear()
    b, h, g, t, k = 1, 4, 2, 128, 128  # the kernel's blocks are 128 positions
    rng = np.random.default_rng(0)
    q, kv_k, kv_v = (jnp.asarray(rng.normal(size=s), jnp.float32)
                     for s in [(b, h, t, k), (b, g, t, k), (b, g, t, k)])  # fmt: skip
    shape = dict(d_model=h * k, n_heads=h, n_kv_heads=g, max_seq_len=t)
    cfg = dataclasses.replace(TINY, **shape, attention="splash", sliding_window=window,
                              attn_softcap=cap)  # fmt: skip
    got = attention.attend(q, kv_k, kv_v, cfg, 0.088)
    repeat = functools.partial(jnp.repeat, repeats=h // g, axis=1)
    want = scaled_dot_product_attention(q, repeat(kv_k), repeat(kv_v), attention_mask(t, window),
                                        0.088, cap)  # fmt: skip
    attention._splash_kernel.cache_clear()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_chunked_loss_lowers_xla_temp_memory_as_the_estimate_says():
    """tiny with a 32768 vocabulary, batch 8 × 256 (logits dominate): XLA's temp bytes of the
    compiled step fall by ~half with 64-position chunks (measured 816.9 → 432.3 MB, jax 0.10.2),
    and the estimate's gradients + activations stay within 10 % of them both ways."""
    from scaling import train
    from scaling.measure import memory_figures
    from scaling.presets import build_run

    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=32768)
    temp, estimated = {}, {}
    for chunk in (0, 64):
        run = build_run(model=cfg, batch=8, seq=256, loss_chunk=chunk)
        p = train.plan(run)
        with jax.set_mesh(p.mesh):
            compiled = p.step.lower(*p.abstract_inputs()).compile()
        temp[chunk] = memory_figures(compiled)["temp_bytes"]
        est = memory_per_device(cfg, mode="none", mesh=None, batch=8, seq=256, loss_chunk=chunk)
        estimated[chunk] = est.grads + est.activations
        assert estimated[chunk] == pytest.approx(temp[chunk], rel=0.1)
    assert temp[64] < 0.6 * temp[0]
