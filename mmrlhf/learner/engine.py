"""DeepSpeed setup for one learner rank: the config, the engine, a full-weight gather, checkpoints.

ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models") partitions across the data-parallel ranks the optimizer states (stage 1), also the
gradients (stage 2), also the parameters (stage 3); stage 0 is plain data parallelism. Every stage
computes the same update as one process on the whole batch, so the choice is about memory only.

The optimizer is always `torch.optim.AdamW`, built here and handed to `deepspeed.initialize`.
DeepSpeed's own AdamW (the config's `optimizer` section) means FusedAdam, which needs CUDA or a
compiled CPU op; `torch.optim.AdamW` runs everywhere, and it is on DeepSpeed's list of optimizers
supported by ZeRO (`deepspeed/runtime/zero/utils.py: ZERO_SUPPORTED_OPTIMIZERS`), so no
`zero_allow_untested_optimizer` is needed.

DeepSpeed picks its accelerator once, when `deepspeed` is first imported: set `DS_ACCELERATOR=cpu`
in the environment of the process before that (the learner group does it through the actor's
`runtime_env`); without it DeepSpeed falls back to the CPU anyway when it finds no GPU.

Checkpoints go through DeepSpeed's own `save_checkpoint` / `load_checkpoint` (DeepSpeed docs,
"Model Checkpointing"), which every rank calls: rank 0 writes the module states, each rank its
ZeRO partition of the optimizer (and, under ZeRO-3, of the parameters). Those files are pickles
(`torch.save`); DeepSpeed reads them with `torch.load(weights_only=False)`, which would run any
code a crafted file holds. `load_engine_checkpoint` swaps in `SafeTorchCheckpointEngine`, which
reads them with `weights_only=True` and only DeepSpeed's own enum types allowed.
"""

from __future__ import annotations

import base64
import copy
import pickle
from pathlib import Path

import deepspeed
import torch
from deepspeed import DeepSpeedEngine
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address
from torch import Tensor, nn

ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
DEEPSPEED_TAG = "deepspeed"  # the one checkpoint tag inside a step folder
# Non-builtin types that DeepSpeed (0.19) puts into its checkpoint pickles, ZeRO 1-3 (found with
# `torch.serialization.get_unsafe_globals_in_checkpoint` on its files).
DEEPSPEED_SAFE_GLOBALS = [ZeroStageEnum, LossScaler, fragment_address]


def backend() -> str:
    """The torch.distributed backend for this machine: "nccl" with CUDA, else "gloo"."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed() -> None:
    """`deepspeed.init_distributed` with :func:`backend`, reading the rendezvous from the env:// variables.

    On the CPU it first turns off DeepSpeed's shared-memory all-reduce op (`ShareMemCommBuilder`,
    "deepspeed_shm_comm"), which DeepSpeed's `TorchBackend` otherwise compiles with ninja when it
    starts (`deepspeed/comm/torch.py: build_shm_op`). That op serves only `inference_all_reduce`
    (tensor-parallel inference); training's collectives are `torch.distributed` over gloo either
    way, and `inference_all_reduce` falls back to them. Its JIT build took 40-50 s of both cores on
    a 2-core machine, on the first run of each environment and again whenever another environment
    had rebuilt it in the shared torch-extensions cache. The op is marked incompatible in
    `deepspeed.ops.__compatible_ops__`, the one dict DeepSpeed keeps for it (so `build_shm_op`
    returns None). Raises what `torch.distributed` raises on a failed rendezvous.
    """
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    if backend() == "gloo":
        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    deepspeed.init_distributed(dist_backend=backend())


def deepspeed_config(
    zero_stage: int,
    micro_batch_size: int,
    grad_accum: int,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    bf16: bool = False,
) -> dict:
    """A DeepSpeed config dict (DeepSpeed docs, "Configuration JSON") for one learner group.

    zero_stage: 0, 1, 2 or 3. micro_batch_size: samples per rank per forward/backward.
    grad_accum: micro-batches per optimizer step, so one step sees
    micro_batch_size * grad_accum * world_size samples (DeepSpeed derives `train_batch_size`).
    lr, weight_decay: AdamW's (Loshchilov & Hutter 2019; decoupled decay). grad_clip: max global
    L2 norm of the gradient, 0 for no clipping. bf16: bfloat16 weights and activations with fp32
    master weights; off by default because CPUs without bf16 units run it slowly.
    The `optimizer` section is read by `init_engine`, which builds `torch.optim.AdamW` from it.
    Raises ValueError naming the argument and the allowed values.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed_config: zero_stage={zero_stage!r}, allowed 0, 1, 2, 3")
    for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"deepspeed_config: {name}={value!r}, must be an int >= 1")
    if lr <= 0:
        raise ValueError(f"deepspeed_config: lr={lr!r}, must be > 0")
    if weight_decay < 0:
        raise ValueError(f"deepspeed_config: weight_decay={weight_decay!r}, must be >= 0")
    if grad_clip < 0:
        raise ValueError(
            f"deepspeed_config: grad_clip={grad_clip!r}, must be >= 0 (0: no clipping)"
        )
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(grad_clip),
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bool(bf16)},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "betas": list(ADAMW_BETAS),
                "eps": ADAMW_EPS,
            },
        },
        # DeepSpeed's periodic progress lines would interleave with the run's own logging.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def init_engine(
    model: nn.Module, cfg_dict: dict, optimizer: torch.optim.Optimizer | None = None
) -> DeepSpeedEngine:
    """Wrap `model` in a DeepSpeed engine (`deepspeed.initialize`) on this rank.

    model: the full model, same initial weights on every rank; parameters with
    ``requires_grad=False`` stay frozen (the built optimizer leaves them out).
    cfg_dict: from `deepspeed_config` (not modified). optimizer: None builds `torch.optim.AdamW`
    from cfg_dict["optimizer"]; a given optimizer requires a config without that section.
    Needs torch.distributed set up (`deepspeed.init_distributed`); collective over all ranks.
    Raises ValueError when the optimizer is given twice, or neither given nor AdamW.
    """
    cfg = copy.deepcopy(cfg_dict)
    section = cfg.pop("optimizer", None)
    if optimizer is not None and section is not None:
        raise ValueError(
            "init_engine: an optimizer was passed and the config has an `optimizer` section; "
            "remove one of them"
        )
    if optimizer is None:
        if section is None or str(section.get("type", "")).lower() != "adamw":
            raise ValueError(
                f"init_engine: config `optimizer` section is {section!r}; expected type AdamW "
                "(from deepspeed_config) or pass an optimizer"
            )
        params = section.get("params", {})
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=params["lr"],
            weight_decay=params.get("weight_decay", 0.0),
            betas=tuple(params.get("betas", ADAMW_BETAS)),
            eps=params.get("eps", ADAMW_EPS),
        )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    return engine


def _is_zero3_partitioned(tensor: Tensor) -> bool:
    # ZeRO-3 tags the parameters it partitions with a `ds_id`; buffers are never partitioned.
    return hasattr(tensor, "ds_id")


GATHER_BUCKET_BYTES = 32 * 2**20  # ZeRO-3 parameters gathered per collective, at most about this (plus one)


def gather_full_state_dict(engine: DeepSpeedEngine, copy: bool = True) -> dict[str, Tensor]:
    """The model's full, unsharded state dict as CPU tensors, on rank 0; {} on the other ranks.

    Keys and shapes are those of `engine.module.state_dict()` on the unwrapped model (parameters
    and persistent buffers; tied weights appear under each name). Dtype is the engine's module
    dtype (bf16 when the config enables it). Under ZeRO-3 the parameters are gathered in buckets of
    about `GATHER_BUCKET_BYTES` with `deepspeed.zero.GatheredParameters` (DeepSpeed docs, "ZeRO-3:
    gathering parameters"), so peak extra memory is one bucket, not the whole model, and a 100 MB
    model takes 3 collectives instead of one per parameter (0.33 -> 0.11 s for 64 tensors over gloo
    here, `benchmarks/weight_sync.py`); that gather is collective, so every rank must call this
    function, in the same order relative to other collectives.
    copy=False returns the CPU tensors that are not partitioned as they are (views of the live
    weights, for a caller that serialises them at once, e.g. into the object store); partitioned
    ones are always copied out of the gather, whose full tensor is freed after it.
    """
    rank = torch.distributed.get_rank()
    full: dict[str, Tensor] = {}
    bucket: dict[str, Tensor] = {}
    bucket_bytes = 0

    def gather_bucket() -> None:
        unique = list({id(t): t for t in bucket.values()}.values())  # a tied weight is gathered once
        with deepspeed.zero.GatheredParameters(unique, modifier_rank=None):
            if rank == 0:
                full.update((n, t.detach().to("cpu", copy=True)) for n, t in bucket.items())
        bucket.clear()

    tensors = engine.module.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        if _is_zero3_partitioned(tensor):
            bucket[name] = tensor
            bucket_bytes += tensor.ds_numel * tensor.element_size()
            if bucket_bytes >= GATHER_BUCKET_BYTES:
                gather_bucket()
                bucket_bytes = 0
        elif rank == 0:
            full[name] = tensor.detach().to("cpu", copy=copy)
    if bucket:
        gather_bucket()
    return {name: full[name] for name in tensors if name in full}  # in the state dict's order


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with `torch.load(weights_only=True)`.

    Tensors, plain containers and `DEEPSPEED_SAFE_GLOBALS` load; anything else in the pickle is
    refused before it can run. Raises ValueError naming the file.
    """

    def load(self, path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(DEEPSPEED_SAFE_GLOBALS):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path}: refused, the pickle holds more than tensors and DeepSpeed's "
                             f"state ({str(err).splitlines()[0]})") from None


def save_engine_checkpoint(engine: DeepSpeedEngine, folder: Path) -> None:
    """DeepSpeed's `save_checkpoint` into `folder/DEEPSPEED_TAG/` (module, optimizer partitions).

    Collective: every rank calls it. DeepSpeed's own `latest` file is not written; the caller
    commits the checkpoint (see `mmrlhf.checkpoint`).
    """
    engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False)


def load_engine_checkpoint(engine: DeepSpeedEngine, folder: Path) -> None:
    """Load what `save_engine_checkpoint` wrote: module and optimizer state, every ZeRO stage.

    Collective: every rank calls it, with the world size and ZeRO stage of the save.
    Raises FileNotFoundError when `folder` holds no DeepSpeed checkpoint, ValueError when a file
    in it is refused by `SafeTorchCheckpointEngine`.
    """
    if not (Path(folder) / DEEPSPEED_TAG).is_dir():
        raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint ({DEEPSPEED_TAG}/ is missing)")
    engine.checkpoint_engine = SafeTorchCheckpointEngine(engine._config)
    path, _ = engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=True,
                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"{folder}/{DEEPSPEED_TAG}: DeepSpeed found no checkpoint files to load")


def encode_rng(state: Tensor) -> str:
    """A torch RNG state (uint8 tensor) as base64 text, for a JSON file."""
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> Tensor:
    """The inverse of `encode_rng`."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()
