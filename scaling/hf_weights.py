"""Hugging Face safetensors ↔ the shared model's parameters: the one key mapping, read off the
parameter table (``scaling.roles.parameters``), and streaming readers/writers. Never imports
jax, torch or transformers (numpy, ml_dtypes for bfloat16, and ``safetensors``).

Every parameter of the table maps to one Hugging Face tensor name per layer (``{i}``), with
two layout rules:

- ``torch.nn.Linear`` stores ``(out, in)``; our matrices are ``(in, out)``: transposed.
  GPT-2's ``Conv1D`` already stores ``(in, out)``: kept.
- GPT-2 fuses q, k and v into ``c_attn`` ``(d, 3d)`` (and its bias): each of ours is a column
  slice of it.

Per-layer tensors are stacked into the leading layer axis the model scans over (and
unstacked on export); Mixtral's per-expert tensors (``block_sparse_moe.experts.{e}.w1``, the
checkpoint layout on the Hub) are stacked into the expert axis after it. A checkpoint key
that no parameter takes raises ``ValueError`` unless it is a known non-parameter buffer
(GPT-2's causal-mask ``attn.bias``, rotary ``inv_freq``)
or the duplicate ``lm_head.weight`` of a tied model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from scaling.config import ModelConfig
from scaling.estimate.hf_config import hf_model_type
from scaling.roles import Param, Role, parameters
from scaling.roles import Path as ParamPath

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
NUMPY_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# Checkpoint entries that hold no parameter: GPT-2's causal mask buffers, rotary tables.
_BUFFERS = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")

_GPT2_NAMES: dict[ParamPath, str] = {
    ("embed", "weight"): "wte.weight",
    ("pos_embed", "weight"): "wpe.weight",
    ("blocks", "attn_norm", "weight"): "h.{i}.ln_1.weight",
    ("blocks", "attn_norm", "bias"): "h.{i}.ln_1.bias",
    ("blocks", "ffn_norm", "weight"): "h.{i}.ln_2.weight",
    ("blocks", "ffn_norm", "bias"): "h.{i}.ln_2.bias",
    ("blocks", "attn", "q", "weight"): "h.{i}.attn.c_attn.weight",
    ("blocks", "attn", "k", "weight"): "h.{i}.attn.c_attn.weight",
    ("blocks", "attn", "v", "weight"): "h.{i}.attn.c_attn.weight",
    ("blocks", "attn", "q", "bias"): "h.{i}.attn.c_attn.bias",
    ("blocks", "attn", "k", "bias"): "h.{i}.attn.c_attn.bias",
    ("blocks", "attn", "v", "bias"): "h.{i}.attn.c_attn.bias",
    ("blocks", "attn", "o", "weight"): "h.{i}.attn.c_proj.weight",
    ("blocks", "attn", "o", "bias"): "h.{i}.attn.c_proj.bias",
    ("blocks", "ffn", "w1", "weight"): "h.{i}.mlp.c_fc.weight",
    ("blocks", "ffn", "w1", "bias"): "h.{i}.mlp.c_fc.bias",
    ("blocks", "ffn", "w2", "weight"): "h.{i}.mlp.c_proj.weight",
    ("blocks", "ffn", "w2", "bias"): "h.{i}.mlp.c_proj.bias",
    ("final_norm", "weight"): "ln_f.weight",
    ("final_norm", "bias"): "ln_f.bias",
}
_LLAMA_LINEARS = {
    ("attn", "q"): "self_attn.q_proj",
    ("attn", "k"): "self_attn.k_proj",
    ("attn", "v"): "self_attn.v_proj",
    ("attn", "o"): "self_attn.o_proj",
    ("ffn", "w1"): "mlp.gate_proj",  # the activated branch
    ("ffn", "w3"): "mlp.up_proj",  # the linear branch
    ("ffn", "w2"): "mlp.down_proj",
}
_LLAMA_NAMES: dict[ParamPath, str] = {
    ("embed", "weight"): "embed_tokens.weight",
    ("blocks", "attn_norm", "weight"): "layers.{i}.input_layernorm.weight",
    ("blocks", "ffn_norm", "weight"): "layers.{i}.post_attention_layernorm.weight",
    ("final_norm", "weight"): "norm.weight",
    **{
        ("blocks", *module, leaf): f"layers.{{i}}.{name}.{leaf}"
        for module, name in _LLAMA_LINEARS.items()
        for leaf in ("weight", "bias")
    },
}
_MIXTRAL_NAMES: dict[ParamPath, str] = {
    **{k: v for k, v in _LLAMA_NAMES.items() if k[1] != "ffn"},
    ("blocks", "ffn", "router", "weight"): "layers.{i}.block_sparse_moe.gate.weight",
    **{
        ("blocks", "ffn", "experts", name): (
            f"layers.{{i}}.block_sparse_moe.experts.{{e}}.{name}.weight"
        )
        for name in ("w1", "w2", "w3")  # w1 the activated branch, w3 the linear one (as ours)
    },
}
# model type → (prefix of the decoder's tensors in a *ForCausalLM checkpoint, names)
_NAMES = {
    "gpt2": ("transformer.", _GPT2_NAMES),
    "llama": ("model.", _LLAMA_NAMES),
    "mistral": ("model.", _LLAMA_NAMES),
    "gemma": ("model.", _LLAMA_NAMES),
    "mixtral": ("model.", _MIXTRAL_NAMES),
}
HEAD_KEY = "lm_head.weight"


@dataclass(frozen=True)
class TensorMap:
    """One of our parameters and the Hugging Face tensor(s) it comes from."""

    param: Param
    hf_name: str  # without the model prefix; ``{i}`` is the layer of a stacked parameter
    transpose: bool  # the Hugging Face tensor is (out, in) (torch.nn.Linear)
    columns: tuple[int, int] | None = None  # a slice of the last axis (GPT-2's fused c_attn)

    def hf_keys(self, prefix: str, n_layers: int) -> list[tuple[tuple[int, ...], str]]:
        """(index into our array, Hugging Face key) pairs: () for an unstacked parameter,
        (layer,) for a stacked one, (layer, expert) for expert matrices."""
        name = self.hf_name if self.param.role is Role.HEAD else prefix + self.hf_name
        if not self.param.stacked:
            return [((), name)]
        if "{e}" in name:
            experts = self.param.shape[1]
            pairs = [(i, e) for i in range(n_layers) for e in range(experts)]
            return [((i, e), name.format(i=i, e=e)) for i, e in pairs]
        return [((i,), name.format(i=i)) for i in range(n_layers)]

    def tensor_shape(self, index: tuple[int, ...]) -> tuple[int, ...]:
        return self.param.shape[len(index) :]


def tensor_maps(cfg: ModelConfig) -> tuple[TensorMap, ...]:
    """The Hugging Face source of every parameter of ``cfg`` (``roles.parameters``)."""
    model_type = hf_model_type(cfg)
    _, names = _NAMES[model_type]
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    fused = {"q": (0, q_width), "k": (q_width, q_width + kv_width),
             "v": (q_width + kv_width, q_width + 2 * kv_width)}  # fmt: skip
    maps = []
    for p in parameters(cfg):
        if p.role is Role.HEAD:
            maps.append(TensorMap(p, HEAD_KEY, transpose=True))
            continue
        if p.path not in names:
            raise ValueError(f"no {model_type} tensor for parameter {'/'.join(p.path)}")
        linear = p.role.matrix and p.role not in (Role.EMBED, Role.POSITION)
        columns = None
        if model_type == "gpt2" and p.path[1:3] in (("attn", "q"), ("attn", "k"), ("attn", "v")):
            columns = fused[p.path[2]]
        maps.append(TensorMap(p, names[p.path], linear and model_type != "gpt2", columns))
    return tuple(maps)


# ----------------------------------------------------------------------------- reading


class SafetensorsDir:
    """The tensors of a Hugging Face folder: ``model.safetensors`` or the shards listed by
    ``model.safetensors.index.json``. Files are opened one at a time (memory-mapped by
    safetensors), so reading never holds more than the current file mapped."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise ValueError(f"{index}: not a safetensors index ({err})") from err
            self.file_of = {key: self.folder / name for key, name in weight_map.items()}
        elif (self.folder / SINGLE_FILE).is_file():
            from safetensors import safe_open

            with safe_open(self.folder / SINGLE_FILE, "numpy") as f:
                self.file_of = dict.fromkeys(f.keys(), self.folder / SINGLE_FILE)
        else:
            raise ValueError(
                f"{str(self.folder)!r} holds no {SINGLE_FILE} or {INDEX_FILE} "
                "(PyTorch .bin checkpoints are not read; save with safetensors)"
            )

    def keys(self) -> set[str]:
        return set(self.file_of)

    def files(self) -> list[Path]:
        return sorted(set(self.file_of.values()))

    def each_tensor(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every tensor, file by file (each file is closed before the next one opens)."""
        from safetensors import safe_open

        for path in self.files():
            with safe_open(path, "numpy") as f:
                for key in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    yield key, f.get_tensor(key)


def _prefix(model_type: str, keys: set[str], embed_name: str) -> str:
    """``transformer.`` / ``model.`` for a *ForCausalLM checkpoint, '' for a bare model's."""
    prefix, _ = _NAMES[model_type]
    return prefix if prefix + embed_name in keys else ""


def read_params(
    folder: str | Path,
    cfg: ModelConfig,
    *,
    dtype: str = "float32",
    on_tensor: Callable[[str], None] | None = None,
) -> dict[ParamPath, np.ndarray]:
    """Every parameter of ``cfg`` from a Hugging Face folder, in our layout and ``dtype``.

    The output arrays are allocated once; each checkpoint tensor is copied (transposed, cast)
    into its layer's slice as it is read, file by file, so host memory peaks near one copy of
    the model plus one file's mapping. Raises ``ValueError`` for missing, unexpected or
    mis-shaped tensors, naming the key."""
    source = SafetensorsDir(folder)
    maps = tensor_maps(cfg)
    keys = source.keys()
    prefix = _prefix(hf_model_type(cfg), keys, maps[0].hf_name)
    wanted: dict[str, list[tuple[TensorMap, tuple[int, ...]]]] = {}
    for m in maps:
        for index, key in m.hf_keys(prefix, cfg.n_layers):
            wanted.setdefault(key, []).append((m, index))
    missing = sorted(set(wanted) - keys)
    if missing:
        raise ValueError(f"{folder}: missing tensors {missing[:5]} (of {len(missing)})")
    out = {m.param.path: np.empty(m.param.shape, NUMPY_DTYPES[dtype]) for m in maps}
    for key, tensor in source.each_tensor():
        if key not in wanted:
            if _BUFFERS.search(key) or (key == HEAD_KEY and cfg.tied_embeddings):
                continue
            raise ValueError(f"{folder}: unexpected tensor {key!r} {list(tensor.shape)} "
                             f"for a {hf_model_type(cfg)} model")  # fmt: skip
        for m, index in wanted[key]:
            value = tensor.T if m.transpose else tensor
            if m.columns is not None:
                value = value[..., m.columns[0] : m.columns[1]]
            if value.shape != m.tensor_shape(index):
                need = f"{'/'.join(m.param.path)} needs {list(m.tensor_shape(index))}"
                raise ValueError(f"{folder}: tensor {key!r} has shape {list(tensor.shape)}; {need}")
            target = out[m.param.path][index]
            target[...] = value.astype(target.dtype)
        if on_tensor is not None:
            on_tensor(key)
    return out


# ----------------------------------------------------------------------------- writing


def hf_tensors(
    params: dict[ParamPath, np.ndarray], cfg: ModelConfig, *, dtype: str = "float32"
) -> Iterator[tuple[str, np.ndarray]]:
    """The Hugging Face tensors of ``params`` (our layout), one at a time, in ``dtype``."""
    groups: dict[str, list[tuple[TensorMap, tuple[int, ...]]]] = {}
    prefix, _ = _NAMES[hf_model_type(cfg)]
    for m in tensor_maps(cfg):
        for index, key in m.hf_keys(prefix, cfg.n_layers):
            groups.setdefault(key, []).append((m, index))
    np_dtype = NUMPY_DTYPES[dtype]
    for key, parts in groups.items():
        pieces = []
        for m, index in parts:
            pieces.append((m, np.asarray(params[m.param.path])[index]))
        if len(pieces) == 1 and pieces[0][0].columns is None:
            m, value = pieces[0]
            tensor = value.T if m.transpose else value
        else:  # GPT-2's fused c_attn: q, k, v side by side
            ordered = sorted(pieces, key=lambda piece: piece[0].columns[0])
            tensor = np.concatenate([value for _, value in ordered], axis=-1)
        yield key, np.ascontiguousarray(tensor, dtype=np_dtype)


def write_safetensors(
    tensors: Iterator[tuple[str, np.ndarray]],
    folder: str | Path,
    *,
    max_shard_bytes: int = 5 * 2**30,
) -> list[Path]:
    """Write tensors as ``model.safetensors``, or as shards plus ``model.safetensors.index.json``
    when they exceed ``max_shard_bytes``; at most one shard is held in memory. Every file is
    written to a temporary name and renamed (``scaling.records.atomic_path``)."""
    from safetensors.numpy import save_file

    from scaling.records import atomic_path, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shard: dict[str, np.ndarray] = {}
    shard_bytes = total_bytes = 0
    written: list[tuple[Path, list[str]]] = []

    def flush(tensors_of_shard: dict[str, np.ndarray]) -> None:
        path = folder / f".shard-{len(written) + 1:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors_of_shard, str(tmp), metadata={"format": "pt"})
        written.append((path, list(tensors_of_shard)))

    for key, tensor in tensors:
        if shard and shard_bytes + tensor.nbytes > max_shard_bytes:
            flush(shard)
            shard, shard_bytes = {}, 0
        shard[key] = tensor
        shard_bytes += tensor.nbytes
        total_bytes += tensor.nbytes
    flush(shard)
    shard.clear()
    if len(written) == 1:
        written[0][0].replace(folder / SINGLE_FILE)
        return [folder / SINGLE_FILE]
    weight_map, paths = {}, []
    for i, (path, keys) in enumerate(written):
        target = folder / f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        path.replace(target)
        paths.append(target)
        weight_map.update(dict.fromkeys(keys, target.name))
    index = {
        "metadata": {"total_size": total_bytes},
        "weight_map": dict(sorted(weight_map.items())),
    }
    write_json_atomic(index, folder / INDEX_FILE, indent=2)
    return paths
