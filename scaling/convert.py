"""Checkpoints of imported weights: Hugging Face folder → Orbax checkpoint → Hugging Face folder,
and the start of a training run from imported weights (``scaling train --init``).

A converted checkpoint is one Orbax checkpoint (the v1 API's directory layout): the pytree of the
model's parameters (our layout, stacked layers) with the config as its custom metadata (the
``ModelConfig`` under ``"model"``, and the source folder). It is written with Orbax's partial
saves, a group of parameters at a time, each group released once written: Orbax's own
save of a whole tree keeps a second copy of it in write buffers (measured: 2.1 copies for
GPT-2-large), a partial save does not, so host memory peaks at the read (one copy plus one
mapped safetensors file). A training checkpoint (``scaling train --checkpoint-dir``, a
``CheckpointManager`` directory) holds ``state`` and ``config`` (the ``RunConfig``, whose
``"model"`` is the same dict); ``load_params``, ``load_model_config`` and ``to_hf`` read
either.

The key mapping and the safetensors I/O live in ``scaling.hf_weights``; the config mapping in
``scaling.estimate.hf_config``.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaling.config import MODEL_FIELDS, ModelConfig, model_config_from_dict
from scaling.estimate.hf_config import hf_config_of, model_config_from_hf
from scaling.hf_weights import hf_tensors, read_params, write_safetensors
from scaling.roles import Path as ParamPath
from scaling.roles import parameters

STATE_ITEM, CONFIG_ITEM = "state", "config"  # items of a training checkpoint


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote and what it cost (seconds, bytes of host memory)."""

    model: ModelConfig
    out: Path
    n_params: int
    seconds: float
    peak_rss_bytes: int  # the process's peak resident memory (ru_maxrss), whole process
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "family": self.model.family,
            "out": str(self.out),
            "n_params": self.n_params,
            "seconds": self.seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
            "files": list(self.files),
        }


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def nest(flat: dict[ParamPath, Any]) -> dict:
    """``{("blocks", "q", "weight"): a}`` → ``{"blocks": {"q": {"weight": a}}}``."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def flatten(tree: dict, prefix: ParamPath = ()) -> dict[ParamPath, Any]:
    out: dict[ParamPath, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, (*prefix, str(key))))
        else:
            out[(*prefix, str(key))] = value
    return out


def _manager(path: str | Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(Path(path).absolute())


SAVE_GROUP_BYTES = 2**26  # bytes of parameters per partial save (then released)


def save_params(
    out: str | Path, flat: dict[ParamPath, Any], cfg: ModelConfig, *, source: str
) -> None:
    """Write ``flat`` (parameter path → array, our layout) and the config as a new Orbax
    checkpoint at ``out``, a group of about ``SAVE_GROUP_BYTES`` at a time; the arrays are
    removed from ``flat`` as they are written. The checkpoint appears at ``out`` only once
    complete (Orbax's partial-save session is finalized last)."""
    import orbax.checkpoint.experimental.v1 as ocp

    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{str(out)!r} is not empty; choose a new --out directory")
    if out.exists():
        out.rmdir()  # Orbax creates it when the session is finalized
    metadata = {"model": dataclasses.asdict(cfg), "source": source}
    group: dict[ParamPath, Any] = {}
    size = 0
    for path in list(flat):
        group[path] = flat.pop(path)
        size += int(np.asarray(group[path]).nbytes)
        if size >= SAVE_GROUP_BYTES or not flat:
            ocp.partial.save(out, nest(group), custom_metadata=metadata)
            group, size = {}, 0
    ocp.partial.finalize(out)


def from_hf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    name: str | None = None,
    on_tensor=None,
) -> ConvertResult:
    """Import a Hugging Face folder (config.json + safetensors) as an Orbax checkpoint."""
    t0 = time.perf_counter()
    cfg = model_config_from_hf(hf_dir, name=name)
    out = Path(out)
    if out.exists() and any(out.iterdir()):  # before reading anything
        raise ValueError(f"{str(out)!r} is not empty; choose a new --out directory")
    flat = read_params(hf_dir, cfg, dtype=dtype, on_tensor=on_tensor)
    n_params = sum(int(a.size) for a in flat.values())
    save_params(out, flat, cfg, source=str(Path(hf_dir).absolute()))
    return ConvertResult(cfg, out, n_params, time.perf_counter() - t0, peak_rss_bytes())


# ----------------------------------------------------------------------------- reading back


def _upgrade_model_dict(model: dict) -> dict:
    """A model config written before the architecture fields existed: its family decided the
    architecture (gpt2 = LayerNorm with bias, learned positions, tanh-GELU, no linear biases)."""
    model = {k: v for k, v in model.items() if k in MODEL_FIELDS}
    if "norm" not in model and model.get("family") == "gpt2":
        model.update(norm="layer", norm_bias=True, positions="learned", ffn="gelu_tanh")
    return model


def _is_converted(path: str | Path) -> bool:
    import orbax.checkpoint.experimental.v1 as ocp

    return ocp.is_orbax_checkpoint(Path(path).absolute())


def checkpoint_step(path: str | Path) -> int:
    """The latest step of a training checkpoint directory; ``ValueError`` when there is
    none."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"checkpoint {str(p)!r} not found")
    step = _manager(p).latest_step()
    if step is None:
        raise ValueError(f"{str(p)!r} holds no checkpoint (expected `scaling convert from-hf` "
                         "or `scaling train --checkpoint-dir` output)")  # fmt: skip
    return step


def load_model_config(path: str | Path) -> ModelConfig:
    """The model config stored with a converted or training checkpoint."""
    if not Path(path).is_dir():
        raise ValueError(f"checkpoint {str(path)!r} not found")
    if _is_converted(path):
        import orbax.checkpoint.experimental.v1 as ocp

        stored = ocp.metadata(Path(path).absolute()).custom_metadata or {}
    else:
        import orbax.checkpoint as ocp

        step = checkpoint_step(path)
        args = ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()})
        stored = _manager(path).restore(step, args=args)[CONFIG_ITEM] or {}
    model = stored.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{str(path)!r}: its config holds no model")
    return model_config_from_dict(_upgrade_model_dict(model))


def load_params(path: str | Path, target=None) -> dict:
    """The parameters of a converted checkpoint or a training checkpoint (the ``params`` of
    its ``state``). Without ``target`` they come back as NumPy arrays as stored; with
    ``target`` (a tree of ``jax.ShapeDtypeStruct`` with shardings) as sharded jax arrays in
    its dtypes, each array read straight into its shards."""
    if not Path(path).is_dir():
        raise ValueError(f"checkpoint {str(path)!r} not found")
    if _is_converted(path):
        import orbax.checkpoint.experimental.v1 as ocp

        return ocp.load(Path(path).absolute(), target)
    import jax
    import orbax.checkpoint as ocp

    step = checkpoint_step(path)
    if target is None:  # NumPy, whatever devices the run was saved from
        shapes = {p.path: jax.ShapeDtypeStruct(p.shape, np.float32)
                  for p in parameters(load_model_config(path))}  # fmt: skip
        item = {"params": nest(shapes)}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    else:
        item = {"params": target}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    restore = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
    state = _manager(path).restore(step, args=ocp.args.Composite(**{STATE_ITEM: restore}))
    state = state[STATE_ITEM]
    return state["params"] if isinstance(state, dict) else state[0]


def check_same_architecture(stored: ModelConfig, run: ModelConfig) -> None:
    """``ValueError`` naming the first parameter whose shape differs between the checkpoint's
    model and the run's."""
    have = {p.path: p.shape for p in parameters(stored)}
    want = {p.path: p.shape for p in parameters(run)}
    for path in sorted(set(have) | set(want)):
        if have.get(path) != want.get(path):
            raise ValueError(
                f"checkpoint model {stored.name} does not fit {run.name}: parameter "
                f"{'/'.join(path)} is {have.get(path)} there and {want.get(path)} here"
            )


def initial_state(path: str | Path, plan):
    """A train state whose parameters come from the checkpoint at ``path`` (restored straight
    into ``plan``'s shardings) with a fresh optimizer state and step 0."""
    import jax
    import jax.numpy as jnp

    state_type = type(plan.abstract_state)  # scaling.train.TrainState (not imported: no circle)
    check_same_architecture(load_model_config(path), plan.run.model)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        plan.abstract_state.params,
        plan.state_shardings.params,
    )
    params = load_params(path, target)
    start = jax.jit(
        lambda p: state_type(p, plan.tx.init(p), jnp.zeros((), jnp.int32)),
        out_shardings=plan.state_shardings,
    )
    return start(params)


def to_hf(
    ckpt: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    max_shard_bytes: int = 5 * 2**30,
) -> ConvertResult:
    """Write a checkpoint as a Hugging Face folder: config.json and safetensors
    (``hf_config_of`` names the model type; ``ValueError`` when no supported type fits)."""
    from scaling.records import write_json_atomic

    t0 = time.perf_counter()
    cfg = load_model_config(ckpt)
    hf_config = hf_config_of(cfg)  # refuses an architecture with no Hugging Face equivalent
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{str(out)!r} is not empty; choose a new --out directory")
    flat = {k: np.asarray(v) for k, v in flatten(load_params(ckpt)).items()}
    files = write_safetensors(hf_tensors(flat, cfg, dtype=dtype), out,
                              max_shard_bytes=max_shard_bytes)  # fmt: skip
    write_json_atomic({**hf_config, "dtype": dtype}, out / "config.json", indent=2)
    n_params = sum(int(a.size) for a in flat.values())
    names = tuple(f.name for f in files)
    elapsed = time.perf_counter() - t0
    return ConvertResult(cfg, out, n_params, elapsed, peak_rss_bytes(), (*names, "config.json"))


def resolve_hf_dir(path: str | None, repo: str | None) -> Path:
    """A local Hugging Face folder: ``path`` itself, or ``repo`` from the hub cache (downloaded
    when online) through ``huggingface_hub``; ``ValueError`` with what to do otherwise."""
    if (path is None) == (repo is None):
        raise ValueError("give a local Hugging Face folder or --hf-repo ORG/NAME (one of them)")
    if path is not None:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{str(folder)!r} holds no config.json (a Hugging Face model folder)")
        return folder
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(
            f"--hf-repo {repo} needs the huggingface_hub package (pip install huggingface_hub); "
            "or download the repository and pass its folder"
        ) from None
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: try the hub
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:
        raise ValueError(
            f"--hf-repo {repo}: not in the local hub cache and the hub is not reachable "
            f"({type(err).__name__}); download it elsewhere and pass its folder"
        ) from None
