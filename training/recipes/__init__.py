"""Five-stage training recipes as YAML files, loaded and validated into dataclasses.

A recipe names a model profile and, for each of the five LongVILA stages (see the reference table),
the trainable modules, the data, the sequence length / frames per video, optimiser and schedule,
LoRA (stage 4), the RoPE base per context length, and the sequence-parallel degrees.

    recipe = load_recipe("smoke")            # training/recipes/smoke.yaml
    recipe = load_recipe("path/to/my.yaml")  # any file
    st = recipe.stage("stage4_context_extension")   # or recipe.stage(4)

Validation is explicit: every problem raises `RecipeError` naming the file, the field and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longvila.errors import InputError
from training.data.options import DataOptions, parse_options

RECIPE_DIR = Path(__file__).resolve().parent

STAGE_NAMES = (
    "stage1_alignment",
    "stage2_pretraining",
    "stage3_short_sft",
    "stage4_context_extension",
    "stage5_long_sft",
)
MODULES = ("vision_tower", "mm_projector", "llm")
DATA_KINDS = ("captions", "short_qa", "caption_and_qa", "external", "passkey", "long_text", "long_video_sft", "smoke")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


class RecipeError(InputError):
    """A recipe file that is malformed or inconsistent."""


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "cosine"
    warmup_steps: int | None = None
    warmup_ratio: float | None = None

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        if self.warmup_ratio is not None:
            return int(round(self.warmup_ratio * total_steps))
        return 0


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # names (substrings) of parameters that stay fully trainable next to the adapters
    trainable_extra: tuple[str, ...] = ("embed_tokens", "norm")


@dataclass(frozen=True)
class ContextPhase:
    """One step of progressive context extension: train at `max_length` with RoPE base `rope_theta`."""

    max_length: int
    rope_theta: float
    max_steps: int | None = None


@dataclass(frozen=True)
class DataSpec:
    kind: str
    # dataset asset / directory name under <storage>/datasets/ (our own datasets), or an external path/URL
    dataset: str | None = None
    paths: tuple[str, ...] = ()
    # stage-4 passkey / long-text generation (smoke)
    num_samples: int | None = None
    min_samples: int = 1
    # what the dataset builder mixes in (training.data.options: short QA, passkey, retrieval samples)
    options: DataOptions = field(default_factory=DataOptions)


@dataclass(frozen=True)
class StageSpec:
    name: str
    index: int
    trainable: tuple[str, ...]
    data: DataSpec
    max_length: int
    num_frames: int
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    micro_batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 10
    epochs: float | None = None
    ulysses_degree: int = 1
    ring_degree: int = 1
    lora: LoraSpec | None = None
    rope_theta: float | None = None
    phases: tuple[ContextPhase, ...] = ()
    packing: bool = True
    checkpoint_every: int = 0
    gradient_checkpointing: bool | None = None  # per decoder layer; None: on for long stages (training.config)
    cpu_offload: bool = False  # FSDP: sharded parameters, gradients and optimizer states in host memory
    fps: float | None = None

    @property
    def sp_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def dataset_name(self) -> str:
        return self.data.dataset or f"{self.name}_dataset"


@dataclass(frozen=True)
class Recipe:
    name: str
    model_profile: str
    description: str
    stages: tuple[StageSpec, ...]
    source: str = ""
    seed: int = 0

    def stage(self, which: str | int) -> StageSpec:
        if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
            idx = int(which)
            for s in self.stages:
                if s.index == idx:
                    return s
        else:
            for s in self.stages:
                if s.name == which or s.name.split("_", 1)[0] == which:
                    return s
        raise RecipeError(self.source or self.name, f"no stage {which!r}; stages are {[s.name for s in self.stages]}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Stable hash of the recipe content (used in code versions)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def stage_fingerprint(self, which: str | int) -> str:
        d = dataclasses.asdict(self.stage(which))
        d["model_profile"] = self.model_profile
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- parsing


def _check_keys(src: str, where: str, d: dict, allowed: set[str]) -> None:
    if not isinstance(d, dict):
        raise RecipeError(src, f"{where}: expected a mapping, got {type(d).__name__}")
    extra = set(d) - allowed
    if extra:
        raise RecipeError(src, f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}")


def _num(src: str, where: str, v: Any, kind=float, minimum: float | None = None, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        # YAML reads 1e-4 as a string in some dialects; accept numeric strings
        try:
            v = float(v) if kind is float else int(str(v))
        except (TypeError, ValueError):
            raise RecipeError(src, f"{where}: expected a {kind.__name__}, got {v!r}") from None
    v = kind(v)
    if minimum is not None and v < minimum:
        raise RecipeError(src, f"{where}: must be >= {minimum}, got {v}")
    return v


def _flag(src: str, where: str, v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    raise RecipeError(src, f"{where}: expected true or false, got {v!r}")


def _dc_from(src: str, where: str, cls, d: dict | None, **casts):
    d = {} if d is None else d
    names = {f.name for f in dataclasses.fields(cls)}
    _check_keys(src, where, d, names)
    out = {}
    for k, v in d.items():
        if k in casts:
            out[k] = casts[k](v)
        else:
            out[k] = v
    try:
        return cls(**out)
    except TypeError as e:
        raise RecipeError(src, f"{where}: {e}") from None


def _data_options(src: str, where: str, value) -> DataOptions:
    try:
        return parse_options(value, src)
    except InputError as e:
        raise RecipeError(src, f"{where}.{e.reason}") from None


def _parse_stage(src: str, name: str, d: dict, defaults: dict) -> StageSpec:
    merged = {**defaults, **(d or {})}
    allowed = {f.name for f in dataclasses.fields(StageSpec)} - {"name", "index"} | {"sp"}
    _check_keys(src, f"stages.{name}", merged, allowed)
    w = f"stages.{name}"
    if "trainable" not in merged:
        raise RecipeError(src, f"{w}.trainable: required (a list of {MODULES})")
    trainable = tuple(merged["trainable"] or ())
    for m in trainable:
        if m not in MODULES:
            raise RecipeError(src, f"{w}.trainable: unknown module {m!r}; use {MODULES}")
    if "data" not in merged:
        raise RecipeError(src, f"{w}.data: required")
    data = _dc_from(src, f"{w}.data", DataSpec, merged["data"], paths=lambda v: tuple(v or ()),
                    options=lambda v: _data_options(src, w, v))
    if data.kind not in DATA_KINDS:
        raise RecipeError(src, f"{w}.data.kind: {data.kind!r} is not one of {DATA_KINDS}")
    if data.kind == "external" and not data.paths:
        raise RecipeError(src, f"{w}.data.paths: an external data set needs at least one path or URL")
    opt = _dc_from(src, f"{w}.optimizer", OptimizerSpec, merged.get("optimizer"),
                   lr=lambda v: _num(src, f"{w}.optimizer.lr", v, float, 0.0),
                   weight_decay=lambda v: _num(src, f"{w}.optimizer.weight_decay", v, float, 0.0),
                   eps=lambda v: _num(src, f"{w}.optimizer.eps", v, float, 0.0),
                   grad_clip=lambda v: _num(src, f"{w}.optimizer.grad_clip", v, float, 0.0, allow_none=True),
                   betas=lambda v: tuple(float(x) for x in v))
    if opt.name not in OPTIMIZERS:
        raise RecipeError(src, f"{w}.optimizer.name: {opt.name!r} is not one of {OPTIMIZERS}")
    if opt.lr <= 0:
        raise RecipeError(src, f"{w}.optimizer.lr: must be > 0")
    sch = _dc_from(src, f"{w}.schedule", ScheduleSpec, merged.get("schedule"),
                   warmup_steps=lambda v: _num(src, f"{w}.schedule.warmup_steps", v, int, 0, allow_none=True),
                   warmup_ratio=lambda v: _num(src, f"{w}.schedule.warmup_ratio", v, float, 0.0, allow_none=True))
    if sch.name not in SCHEDULES:
        raise RecipeError(src, f"{w}.schedule.name: {sch.name!r} is not one of {SCHEDULES}")
    if sch.warmup_ratio is not None and sch.warmup_ratio >= 1:
        raise RecipeError(src, f"{w}.schedule.warmup_ratio: must be < 1")
    lora = None
    if merged.get("lora") is not None:
        lora = _dc_from(src, f"{w}.lora", LoraSpec, merged["lora"],
                        r=lambda v: _num(src, f"{w}.lora.r", v, int, 1),
                        alpha=lambda v: _num(src, f"{w}.lora.alpha", v, int, 1),
                        target_modules=lambda v: tuple(v), trainable_extra=lambda v: tuple(v))
        if "llm" not in trainable:
            raise RecipeError(src, f"{w}.lora: LoRA adapts the LLM, so `llm` must be trainable")
    sp = merged.get("sp") or {}
    _check_keys(src, f"{w}.sp", sp, {"ulysses_degree", "ring_degree"})
    phases = tuple(
        _dc_from(src, f"{w}.phases[{i}]", ContextPhase, p,
                 max_length=lambda v, i=i: _num(src, f"{w}.phases[{i}].max_length", v, int, 1),
                 rope_theta=lambda v, i=i: _num(src, f"{w}.phases[{i}].rope_theta", v, float, 1.0),
                 max_steps=lambda v, i=i: _num(src, f"{w}.phases[{i}].max_steps", v, int, 1, allow_none=True))
        for i, p in enumerate(merged.get("phases") or ())
    )
    for a, b in zip(phases, phases[1:]):
        if b.max_length <= a.max_length or b.rope_theta <= a.rope_theta:
            raise RecipeError(src, f"{w}.phases: context extension must raise both max_length and rope_theta "
                                   f"at each phase ({a.max_length}/{a.rope_theta} -> {b.max_length}/{b.rope_theta})")
    st = StageSpec(
        name=name,
        index=STAGE_NAMES.index(name) + 1,
        trainable=trainable,
        data=data,
        max_length=_num(src, f"{w}.max_length",
                        merged.get("max_length", phases[-1].max_length if phases else None), int, 8),
        num_frames=_num(src, f"{w}.num_frames", merged.get("num_frames", 0), int, 0),
        optimizer=opt,
        schedule=sch,
        micro_batch_size=_num(src, f"{w}.micro_batch_size", merged.get("micro_batch_size", 1), int, 1),
        grad_accum=_num(src, f"{w}.grad_accum", merged.get("grad_accum", 1), int, 1),
        max_steps=_num(src, f"{w}.max_steps", merged.get("max_steps", 10), int, 1),
        epochs=_num(src, f"{w}.epochs", merged.get("epochs"), float, 0.0, allow_none=True),
        ulysses_degree=_num(src, f"{w}.sp.ulysses_degree", sp.get("ulysses_degree", 1), int, 1),
        ring_degree=_num(src, f"{w}.sp.ring_degree", sp.get("ring_degree", 1), int, 1),
        lora=lora,
        rope_theta=_num(src, f"{w}.rope_theta", merged.get("rope_theta"), float, 1.0, allow_none=True),
        phases=phases,
        packing=bool(merged.get("packing", True)),
        checkpoint_every=_num(src, f"{w}.checkpoint_every", merged.get("checkpoint_every", 0), int, 0),
        gradient_checkpointing=_flag(src, f"{w}.gradient_checkpointing", merged.get("gradient_checkpointing")),
        cpu_offload=bool(_flag(src, f"{w}.cpu_offload", merged.get("cpu_offload", False))),
        fps=_num(src, f"{w}.fps", merged.get("fps"), float, 0.0, allow_none=True),
    )
    if not st.trainable:
        raise RecipeError(src, f"{w}.trainable: at least one module must train")
    if phases and st.rope_theta is not None and st.rope_theta != phases[-1].rope_theta:
        raise RecipeError(src, f"{w}.rope_theta: differs from the last phase's rope_theta")
    return st


def parse_recipe(d: dict, source: str = "<recipe>") -> Recipe:
    _check_keys(source, "recipe", d, {"name", "model_profile", "description", "defaults", "stages", "seed"})
    for k in ("name", "model_profile", "stages"):
        if k not in d:
            raise RecipeError(source, f"missing required field {k!r}")
    stages_d = d["stages"]
    if not isinstance(stages_d, dict):
        raise RecipeError(source, "stages: expected a mapping of stage name -> settings")
    unknown = set(stages_d) - set(STAGE_NAMES)
    if unknown:
        raise RecipeError(source, f"stages: unknown stage(s) {sorted(unknown)}; the five stages are {STAGE_NAMES}")
    missing = [s for s in STAGE_NAMES if s not in stages_d]
    if missing:
        raise RecipeError(source, f"stages: missing {missing}; a recipe defines all five stages in order")
    defaults = d.get("defaults") or {}
    stages = tuple(_parse_stage(source, n, stages_d[n], defaults) for n in STAGE_NAMES)
    return Recipe(name=str(d["name"]), model_profile=str(d["model_profile"]), description=str(d.get("description", "")),
                  stages=stages, source=source, seed=int(d.get("seed", 0)))


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return RECIPE_DIR / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load a recipe by name (`smoke`, `longvila-7b`) or path, validating every field."""
    path = recipe_path(name_or_path)
    if not path.exists():
        raise RecipeError(str(path), f"no such recipe; available: {available_recipes()}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(str(path), f"not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise RecipeError(str(path), "a recipe is a YAML mapping")
    return parse_recipe(d, str(path))


def stage_names() -> tuple[str, ...]:
    return STAGE_NAMES


__all__ = [
    "Recipe", "StageSpec", "DataSpec", "OptimizerSpec", "ScheduleSpec", "LoraSpec", "ContextPhase",
    "RecipeError", "STAGE_NAMES", "load_recipe", "parse_recipe", "available_recipes", "stage_names",
]
