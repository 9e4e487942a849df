"""Closed-form estimates for the shared model: parameters, FLOPs, memory, communication,
roofline step time. Pure arithmetic on a ModelConfig; never imports jax (``xla_check``, the
compiler cross-check, imports it on first use).

Letters: L layers, d d_model, h heads, k d_head (h·k = attention width), f d_ff, V vocabulary,
b batch (sequences), t/s sequence length, c bytes of the compute dtype (2 bf16, 4 f32).
Mesh is (data, tensor); which parameter is split over which axis follows
``scaling.sharding.RULES`` applied to ``scaling.roles.parameters``. Every byte figure is per
device unless its name says otherwise.

What the model computes (scaling/model.py), which every count here follows:
- the architecture is ``ModelConfig``'s fields (norm, positions, FFN kind, biases, window,
  soft-caps...); parameter counts come from the same role table the model is built from, the
  elementwise FLOPs from per-component tables (``flops``);
- parameters are float32 and cast to the compute dtype at use;
- attention is unfused: the b·h·t·t scores are materialised in float32, masked to causal, and
  the softmax weights are cast back to the compute dtype (no flash attention, no dropout);
- the logits are float32; the embedding lookup is a gather (0 FLOPs);
- remat wraps each layer (the scanned body), never the embedding or the head.

Modules: ``params`` (counts, what a device holds), ``flops`` (model, hardware and XLA-convention
elementwise FLOPs), ``memory``, ``comm``, ``traffic`` (HBM bytes), ``roofline`` (``estimate``:
all of it for one configuration, the overlap model and the binding term), ``calibrate``
(efficiencies fitted to measured runs), ``hardware`` (peak figures with sources), ``hf_config``
(Hugging Face configs, both directions), ``hlo_comm`` (collective bytes of a partitioned
HLO), ``xla_check`` (XLA's own counts of the compiled step).
"""

from scaling.estimate.comm import CommEstimate, comm_bytes_per_device
from scaling.estimate.flops import (
    CONVENTION_CAUSAL,
    CONVENTION_FULL,
    ElementwiseFlops,
    FlopCounts,
    attention_flops_per_token,
    elementwise_flops,
    flop_counts,
    flops_per_step,
    flops_per_token,
    hardware_flops_per_token,
    remat_flops_per_token,
)
from scaling.estimate.memory import (
    ActivationTerm,
    MemoryEstimate,
    activation_terms,
    korthikanti_activation_bytes_per_layer,
    memory_capacity_per_device,
    memory_per_device,
)
from scaling.estimate.mesh import DTYPE_BYTES, effective_mesh, n_devices
from scaling.estimate.params import ParamCounts, param_counts, params_per_device
from scaling.estimate.roofline import Efficiency, Estimate, estimate
from scaling.estimate.traffic import Matmul, TrafficEstimate, hbm_traffic_per_device, matmuls

__all__ = [
    "CONVENTION_CAUSAL",
    "CONVENTION_FULL",
    "DTYPE_BYTES",
    "ActivationTerm",
    "CommEstimate",
    "Efficiency",
    "ElementwiseFlops",
    "Estimate",
    "FlopCounts",
    "Matmul",
    "MemoryEstimate",
    "ParamCounts",
    "TrafficEstimate",
    "activation_terms",
    "attention_flops_per_token",
    "comm_bytes_per_device",
    "effective_mesh",
    "elementwise_flops",
    "estimate",
    "flop_counts",
    "flops_per_step",
    "flops_per_token",
    "hbm_traffic_per_device",
    "hardware_flops_per_token",
    "korthikanti_activation_bytes_per_layer",
    "matmuls",
    "memory_capacity_per_device",
    "memory_per_device",
    "n_devices",
    "param_counts",
    "params_per_device",
    "remat_flops_per_token",
]
