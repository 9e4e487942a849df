"""Attention implementations, chosen by ``ModelConfig.attention``: one dispatch the model calls.

- ``reference``: the explicit einsum path (``model.scaled_dot_product_attention``): float32
  scores, soft-cap, mask, softmax, all materialised as (b, h, t, t) arrays.
- ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``: the same arithmetic as jax
  writes it, on every backend; grouped-query heads without repeating k and v. It still
  materialises the scores (XLA may fuse parts on GPU), so the memory estimator counts them.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``: cuDNN's fused (flash)
  attention on NVIDIA GPUs; the (b, h, t, t) scores are never stored.
- ``splash``: the Pallas splash-attention kernel (``jax.experimental.pallas.ops.tpu``) on TPU;
  the scores are never stored. Runs per example (vmapped over the batch) with the MQA kernel per
  key/value head, so grouped-query attention needs no repeat.

Features each fused path expresses: causal and sliding-window masks (all four), grouped-query
heads (all four), score soft-capping (reference and splash only: ``jax.nn.dot_product_attention``
has no soft-cap, so ``xla``/``cudnn`` with ``attn_softcap`` are refused by ``check_supported``,
never silently changed). Shapes use the model's letters: b batch, h query heads, g key/value
heads, t/s query/key positions, k head width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from scaling.config import ATTENTIONS, FUSED_ATTENTIONS, ModelConfig

__all__ = ["ATTENTIONS", "FUSED_ATTENTIONS", "attend", "available", "check_supported"]


def available(platform: str | None = None) -> tuple[str, ...]:
    """The implementations that run on ``platform`` (``cpu``, ``gpu``/``cuda``, ``tpu``;
    default: this process's first device's)."""
    if platform is None:
        platform = jax.devices()[0].platform
    names = ["reference", "xla"]
    if platform in ("gpu", "cuda"):
        names.append("cudnn")
    if platform == "tpu":
        names.append("splash")
    return tuple(names)


def check_supported(cfg: ModelConfig, platform: str | None = None) -> None:
    """``ValueError`` naming the implementation and what would work, when ``cfg.attention`` is
    not available on ``platform`` or cannot express one of ``cfg``'s attention features."""
    names = available(platform)
    if cfg.attention not in names:
        where = platform or jax.devices()[0].platform
        raise ValueError(
            f"attention {cfg.attention!r} is not available on {where}; available: "
            f"{', '.join(names)}"
        )
    if cfg.attn_softcap is not None and cfg.attention in ("xla", "cudnn"):
        raise ValueError(
            f"attention {cfg.attention!r} cannot soft-cap scores (attn_softcap="
            f"{cfg.attn_softcap}); jax.nn.dot_product_attention has no soft-cap: use "
            f"{' or '.join(n for n in names if n in ('reference', 'splash'))}"
        )


def attend(
    q: Float[Array, "b h t k"],
    k: Float[Array, "b g s k"],
    v: Float[Array, "b g s k"],
    cfg: ModelConfig,
    scale: float,
) -> Float[Array, "b h t k"]:
    """Causal (optionally sliding-window, soft-capped) attention of ``cfg.attention`` (not
    ``reference``: that is the model's own einsum path, ``model.scaled_dot_product_attention``);
    k and v carry the key/value heads (g divides h), not repeated."""
    if cfg.attention in ("xla", "cudnn"):
        return _dot_product_attention(q, k, v, cfg, scale)
    if cfg.attention == "splash":
        return _splash(q, k, v, cfg, scale)
    raise ValueError(
        f"attention {cfg.attention!r} has no kernel here; valid: {', '.join(ATTENTIONS[1:])}"
    )


def _dot_product_attention(q, k, v, cfg: ModelConfig, scale: float) -> Array:
    """``jax.nn.dot_product_attention`` takes (b, t, h, k); a window of w positions (the query
    itself and w − 1 before it, ``model.attention_mask``) is ``local_window_size=(w − 1, 0)``."""
    window = None if cfg.sliding_window is None else (cfg.sliding_window - 1, 0)
    out = jax.nn.dot_product_attention(
        q.transpose(0, 2, 1, 3),
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
        scale=scale,
        is_causal=True,
        local_window_size=window,
        implementation=cfg.attention,
    )
    return out.transpose(0, 2, 1, 3)


def _splash(q, k, v, cfg: ModelConfig, scale: float) -> Array:
    """Splash attention (TPU): q scaled up front (the kernel applies no scale), one MQA kernel
    per key/value head over its group of query heads, vmapped over heads and batch.

    Runs on unsharded or batch-sharded (GSPMD) inputs; the kernel is not partitioned over the
    ``tensor`` axis here (tp/fsdp_tp would need a shard_map around it)."""
    b, h, t, d = q.shape
    g = k.shape[1]
    kernel = _splash_kernel(h // g, t, cfg.sliding_window, cfg.attn_softcap)
    grouped = (q * jnp.asarray(scale, q.dtype)).reshape(b, g, h // g, t, d)
    per_head = jax.vmap(kernel, in_axes=(0, 0, 0))  # over key/value heads
    out = jax.vmap(per_head, in_axes=(0, 0, 0))(grouped, k, v)  # over the batch
    return out.reshape(b, h, t, d).astype(q.dtype)


@functools.lru_cache(maxsize=16)
def _splash_kernel(group: int, t: int, window: int | None, cap: float | None):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    if window is None:
        one = masks.CausalMask(shape=(t, t))
    else:
        one = masks.LocalMask(shape=(t, t), window_size=(window - 1, 0), offset=0)
    block = min(512, t)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    return splash.make_splash_mqa_single_device(
        masks.MultiHeadMask([one] * group), block_sizes=sizes, attn_logits_soft_cap=cap
    )
