"""The trainer's run configuration: command-line arguments (`TrainArgs`) resolved once against the recipe
stage and the process layout into a validated, immutable `RunConfig`; and the run identity.

Resolution order for every setting: explicit argument > recipe stage > built-in default. Validation
raises `InputError` naming the setting; nothing downstream re-checks or re-derives a setting.

| setting | default when neither argument nor recipe sets it |
|---|---|
| sharding | `fsdp` when torch.distributed is initialised (torchrun, any world size), else `replicate` |
| dtype (compute) | bfloat16 on CUDA, float32 on CPU; FSDP keeps float32 master weights and reduces in float32 |
| activation checkpointing | on for stages whose longest sequence is >= `LONG_CONTEXT_TOKENS` |
| cpu offload | off (FSDP only: sharded parameters, gradients and optimizer states live in host memory) |

Run identity: `RunConfig.identity(data_versions, init_version)` lists everything that decides the
numbers a run produces (recipe stage, model, data versions, layout, batch, steps, seed, lr, dtype,
trainer version); its hash (`fingerprint`) names the run's checkpoint directory, so a checkpoint is
only ever resumed by the run that wrote it (training.checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from longvila.errors import InputError

TRAINER_VERSION = "trainer-v2"  # bump when a change alters the numbers a run produces or the checkpoint format
LONG_CONTEXT_TOKENS = 16384
SHARDINGS = ("auto", "fsdp", "replicate")
DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainArgs:
    """Command-line level inputs (training/train.py); `None` means "from the recipe, else the default"."""

    profile: str = "smoke"
    recipe: str | None = None
    stage: str | None = None
    ulysses_degree: int | None = None
    ring_degree: int | None = None
    max_steps: int | None = None
    seed: int = 0
    metrics_out: str | None = None
    init_from: str | None = None
    output_dir: str = "runs/train"
    resume: bool = False
    data: list[str] = field(default_factory=list)
    micro_batch_size: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    keep_runs: int = 2
    gradient_checkpointing: bool | None = None
    dtype: str = "auto"
    sharding: str = "auto"
    cpu_offload: bool | None = None
    lock_timeout: float = 0.0       # seconds to wait for another run's lock on output_dir (0: fail at once)
    export: bool = True
    num_threads: int | None = None
    log_every: float = 5.0           # seconds between progress lines
    kill_after_step: int | None = None  # test hook: SIGKILL this process right after that step


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs, resolved and validated (see module doc)."""

    recipe: Any                      # training.recipes.Recipe | None (None: the smoke batches)
    stage: Any                       # training.recipes.StageSpec | None
    profile: str
    init_from: str | None
    ulysses: int
    ring: int
    world: int
    seed: int
    micro_batch: int
    grad_accum: int
    total_steps: int
    checkpoint_every: int
    keep_checkpoints: int
    keep_runs: int
    activation_checkpointing: bool
    sharding: str                    # fsdp | replicate
    compute_dtype: torch.dtype
    cpu_offload: bool
    optimizer: Any                   # training.recipes.OptimizerSpec (lr resolved)
    schedule: Any                    # training.recipes.ScheduleSpec
    data: tuple[str, ...]
    output_dir: str
    metrics_out: str | None
    resume: bool
    export: bool
    lock_timeout: float
    log_every: float
    kill_after_step: int | None

    @property
    def sp_degree(self) -> int:
        return self.ulysses * self.ring

    @property
    def dp_size(self) -> int:
        return self.world // self.sp_degree

    @property
    def stage_name(self) -> str:
        return self.stage.name if self.stage is not None else "smoke"

    @property
    def master_dtype(self) -> torch.dtype:
        """dtype of the weights the optimizer updates: float32 under FSDP (mixed precision), else compute."""
        return torch.float32 if self.sharding == "fsdp" else self.compute_dtype

    def identity(self, data_versions: list[str | None], init_version: str | None) -> dict:
        return {
            "recipe_stage": self.recipe.stage_fingerprint(self.stage.name) if self.stage is not None else None,
            "profile": self.profile, "init": init_version, "data": list(data_versions),
            "ulysses": self.ulysses, "ring": self.ring, "world": self.world, "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum, "steps": self.total_steps, "seed": self.seed, "lr": self.optimizer.lr,
            "dtype": str(self.compute_dtype).removeprefix("torch."), "trainer": TRAINER_VERSION,
        }


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pick(arg, from_stage, default):
    if arg is not None:
        return arg
    return from_stage if from_stage is not None else default


def _stage_of(args: TrainArgs):
    if not args.recipe:
        return None, None
    from .recipes import load_recipe

    recipe = load_recipe(args.recipe)
    return recipe, recipe.stage(args.stage or 1)


def _longest(stage) -> int:
    return max([stage.max_length, *(p.max_length for p in stage.phases)])


def _checked(name: str, value, minimum) -> Any:
    if value is None or value < minimum:
        raise InputError(name, f"must be >= {minimum}, got {value}")
    return value


def resolve(args: TrainArgs, world: int, distributed: bool, device: torch.device) -> RunConfig:
    """Resolve `args` against the recipe stage and the process layout; raises InputError on any problem."""
    from .recipes import OptimizerSpec, ScheduleSpec

    recipe, stage = _stage_of(args)
    profile = recipe.model_profile if recipe is not None and args.profile == "smoke" else args.profile
    ulysses = _checked("--ulysses-degree", _pick(args.ulysses_degree, stage and stage.ulysses_degree, 1), 1)
    ring = _checked("--ring-degree", _pick(args.ring_degree, stage and stage.ring_degree, 1), 1)
    if world % (ulysses * ring):
        raise InputError("torchrun", f"world size {world} is not divisible by ulysses x ring = {ulysses} x {ring}")
    if args.sharding not in SHARDINGS:
        raise InputError("--sharding", f"{args.sharding!r} is not one of {SHARDINGS}")
    sharding = args.sharding if args.sharding != "auto" else ("fsdp" if distributed else "replicate")
    if sharding == "fsdp" and not distributed:
        raise InputError("--sharding", "fsdp needs torch.distributed (run under torchrun, any number of ranks)")
    if args.dtype not in DTYPES:
        raise InputError("--dtype", f"{args.dtype!r} is not one of {DTYPES}")
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    cpu_offload = bool(_pick(args.cpu_offload, stage and stage.cpu_offload, False))
    if cpu_offload and sharding != "fsdp":
        raise InputError("--cpu-offload", "offloading sharded states needs --sharding fsdp")
    long_default = stage is not None and _longest(stage) >= LONG_CONTEXT_TOKENS
    opt = stage.optimizer if stage is not None else OptimizerSpec(lr=1e-3, betas=(0.9, 0.95))
    if args.lr is not None:
        opt = OptimizerSpec(**{**opt.__dict__, "lr": _checked("--lr", args.lr, 1e-12)})
    return RunConfig(
        recipe=recipe, stage=stage, profile=profile, init_from=args.init_from, ulysses=ulysses, ring=ring,
        world=world, seed=args.seed,
        micro_batch=_checked("--micro-batch-size",
                             _pick(args.micro_batch_size, stage and stage.micro_batch_size, 1), 1),
        grad_accum=_checked("--grad-accum", _pick(args.grad_accum, stage and stage.grad_accum, 1), 1),
        total_steps=_checked("--max-steps", _pick(args.max_steps, stage and stage.max_steps, 10), 1),
        checkpoint_every=_checked("--checkpoint-every",
                                  _pick(args.checkpoint_every, stage and stage.checkpoint_every, 0), 0),
        keep_checkpoints=_checked("--keep-checkpoints", args.keep_checkpoints, 1),
        keep_runs=_checked("--keep-runs", args.keep_runs, 0),
        activation_checkpointing=bool(_pick(args.gradient_checkpointing, stage and stage.gradient_checkpointing,
                                            long_default)),
        sharding=sharding, compute_dtype=dtype, cpu_offload=cpu_offload, optimizer=opt,
        schedule=stage.schedule if stage is not None else ScheduleSpec(name="constant"),
        data=tuple(args.data) or (tuple(stage.data.paths) if stage and stage.data.kind == "external" else ()),
        output_dir=args.output_dir, metrics_out=args.metrics_out, resume=args.resume, export=args.export,
        lock_timeout=float(args.lock_timeout), log_every=args.log_every, kill_after_step=args.kill_after_step,
    )
