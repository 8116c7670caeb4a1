"""Model states over the ranks: FSDP2 (`torch.distributed.fsdp.fully_shard`) or plain replicas, and the full
(gathered) state dicts that checkpoints and exports are made of, the same for both.

The trainer calls one module, `LossModule`: its forward runs one micro-batch's MM-SP loss and backward
(training.sp.sharding.mmsp_loss with ``backward=True``, so that activation checkpointing recomputes
inside the MM-SP attention context). That module is the FSDP root, because the loss path calls the
model's parts (vision tower, projector, embeddings, LLM) directly rather than `model.forward`.

FSDP layout (`shard`), over ONE mesh of all ranks (data parallel x SP: the SP group shards parameters too):

* each decoder layer of the LLM is its own unit: gathered just before it runs, resharded after forward,
  gathered again for backward, its gradients reduce-scattered as soon as they are complete;
* the root unit holds the rest (vision tower, projector, embeddings, final norm, LM head: ~1.5B
  parameters of the 7B profile); it is gathered for the whole micro-batch. The vision path stays in the
  root on purpose: a rank of an SP group may own no frames and a text-only micro-batch runs no vision
  tower, while FSDP needs every rank to gather every unit it uses; the root is gathered by all ranks
  at once, and unused parameters reduce-scatter zeros (`set_reduce_scatter_unused_params`).
* mixed precision: parameters (the optimizer's master weights) stay float32 and sharded; compute runs in
  the run's compute dtype (bfloat16 on GPU); gradients are reduced in float32.
* reductions are SUMS (divide factor 1): the trainer normalises the loss by the step's global count of
  supervised tokens, so the summed gradient is exactly the gradient of the global mean token loss, the
  same normalisation as the replicated path (training.sp.sharding.sync_gradients with ``dp_reduce="sum"``).
* optional CPU offload (`CPUOffloadPolicy`): sharded parameters, gradients and optimizer states in host
  memory; the optimizer steps on the CPU.

Frozen sub-modules (per stage) and LoRA adapters need nothing special: FSDP2 shards per parameter and
reduces only parameters that require gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class LossModule(nn.Module):
    """One micro-batch: MM-SP loss forward + backward. Returns ``(loss, n)``: the loss of the micro-batch
    over all ranks (its gradient is this rank's share of the token-loss sum / n) and n, the micro-batch's
    supervised tokens over all ranks."""

    def __init__(self, model: nn.Module, groups):
        super().__init__()
        self.model = model
        self.groups = groups

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        from .sp.sharding import mmsp_loss

        return mmsp_loss(self.model, batch, self.groups, count_over="world", backward=True)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers (the classes the model declares as never to be split)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for n, m in model.named_modules() if n.startswith("llm.") and type(m).__name__ in names]
    if not layers:
        raise ValueError(f"no decoder layers of types {sorted(names)} found under model.llm")
    return layers


def shard(loss_module: LossModule, device: torch.device, compute_dtype: torch.dtype, cpu_offload: bool) -> None:
    """Apply FSDP2 in place (see module doc). Needs torch.distributed to be initialised."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
              offload_policy=CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy())
    for layer in decoder_layers(loss_module.model):
        fully_shard(layer, **kw)
    fully_shard(loss_module, **kw)
    for m in loss_module.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    loss_module.set_reduce_scatter_unused_params(True)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    distributed = dist.is_available() and dist.is_initialized()
    return StateDictOptions(full_state_dict=True, cpu_offload=distributed, **kw)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """(model state, optimizer state), full tensors on the CPU, keyed by the model's parameter names.
    Collective under torch.distributed; with it, only rank 0 gets the dicts (others get empty ones)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    msd = get_model_state_dict(model, options=_options())
    osd = get_optimizer_state_dict(model, optimizer, options=_options()) if optimizer is not None else None
    return msd, osd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                    optim_state: dict | None) -> None:
    """Inverse of `full_state`: rank 0 passes the full dicts, which are broadcast and resharded (other
    ranks pass empty dicts). Collective under torch.distributed."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    distributed = dist.is_available() and dist.is_initialized()
    opts = _options(broadcast_from_rank0=distributed)
    set_model_state_dict(model, model_state, options=opts)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_state or {}, options=opts)
