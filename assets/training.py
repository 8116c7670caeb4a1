"""Training assets (group ``training``): one dataset and one checkpoint asset per LongVILA stage.

    clip_captions, clip_frames (all videos) ─> stage1_dataset ─> stage1_alignment
    clip_captions, clip_frames (all videos) ─> stage2_dataset ─> stage2_pretraining  (after stage 1)
    clip_captions, clip_frames (all videos) ─> stage3_dataset ─> stage3_short_sft    (after stage 2)
    (generated passkey set)                 ─> stage4_dataset ─> stage4_context_extension (after 3)
    long_video_sft_dataset                                    ─> stage5_long_sft     (after 4)
    video_frames, clip_captions (all videos) ─> stage5_dataset ─┘ (only when the recipe's stage-5
        data.options add samples: V-NIAH-style retrieval, passkey; trained together with the SFT set)

(`training_lineage_report`, the markdown audit of stage 5, is defined with the audit in `orchestration.lineage`.)

Each stage asset launches ``torchrun -m training.train`` through Dagster Pipes (the launcher is the
``training_launcher`` resource: a local subprocess by default, Kubernetes via ``PipesK8sClient`` when
configured). Only rank 0 opens the Pipes context; it streams the logs and reports final loss, tokens/s,
the loss curve (PNG, inline markdown) and the checkpoint's content hash as the data version. The run
always passes ``--resume``: a re-run after a cancelled/failed one continues from the last checkpoint
whose configuration fingerprint matches. ``forward_termination=True`` plus parent-death signals
(training.launch) guarantee that no rank outlives a cancelled run.

Configuration (fixed when the Definitions load, since it decides code versions):

| env var | default | meaning |
|---|---|---|
| LONGVILA_RECIPE | smoke | recipe name or path (training/recipes/*.yaml) |
| LONGVILA_TRAIN_MAX_STEPS | unset | cap every stage's steps (a quick plumbing run of the whole lineage) |

``training_launcher`` resource fields: see `TrainingLauncher`. Example run config for the
Kubernetes path (UNTESTED here: dagster-k8s is not installed and there is no cluster)::

    resources:
      training_launcher:
        config:
          backend: k8s
          k8s_image: registry.example.com/longvila-stack:latest
          k8s_namespace: training
          k8s_gpus: 8
          checkpoint_root: /mnt/checkpoints          # a PVC mounted at the same path in the pod
          k8s_base_pod_spec:
            volumes: [{name: ckpt, persistentVolumeClaim: {claimName: longvila-checkpoints}}]
            containers: [{name: trainer, volumeMounts: [{name: ckpt, mountPath: /mnt/checkpoints}],
                          resources: {limits: {nvidia.com/gpu: 8}}}]

Stage assets share the Dagster pool ``training``, which the project's dagster.yaml limits to one slot
(`orchestration.instance`: pools default to 1), so stages never compete for the GPUs.
"""


import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    ConfigurableResource,
    DataVersion,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from assets.captions import CLIP_CAPTIONS, LONG_VIDEO_SFT, VIDEO_INSTRUCTIONS
from assets.common import dataset_video_keys, lineage_metadata, md_table, per_video_code_versions
from assets.curation import CLIP_FRAMES, VIDEO_FRAMES
from assets.freshness import freshness_check
from assets.policies import TRANSIENT_RETRY
from assets.resources import LakeResource
from longvila import io as lio
from longvila import layout
from longvila.errors import InputError
from training.data.build import BUILD_VERSION, build_stage_dataset
from training.recipes import STAGE_NAMES, Recipe, load_recipe
from training.multinode import LaunchSpec
from training.trainer import TRAINER_VERSION

GROUP = "training"
STAGE_KEYS = [AssetKey(n) for n in STAGE_NAMES]
DATASET_KEYS = {1: AssetKey("stage1_dataset"), 2: AssetKey("stage2_dataset"), 3: AssetKey("stage3_dataset"),
                4: AssetKey("stage4_dataset"), 5: LONG_VIDEO_SFT}
STAGE5_EXTRA = AssetKey("stage5_dataset")
REPO_ROOT = Path(__file__).resolve().parents[1]


class TrainingLauncher(ConfigurableResource):
    """How the stage assets launch ``training.train`` (Dagster Pipes; only global rank 0 reports).

    One launch spec (`training.multinode.LaunchSpec`: ``nnodes`` x processes per node, the stage's SP
    degrees, static rendezvous so that node 0 holds global rank 0), run by ``backend``:

    * ``subprocess`` (default): ``python -m training.multinode local`` through
      ``PipesSubprocessClient(forward_termination=True)``: ``nnodes`` torchrun agents on 127.0.0.1 (one
      machine; ``nnodes > 1`` exercises the multi-node path on loopback). Every agent dies with it.
    * ``ray``: ``python -m training.multinode ray --address <ray_address>``: Ray Train's TorchTrainer with
      ``nnodes * nproc_per_node`` workers on a Ray cluster; rank 0's Pipes messages travel by the client's
      message channel (a temporary file here: every Ray node must share this machine's file system, as a
      local cluster does; on a real cluster pass a blob-store message reader), never by worker logs.
    * ``k8s``: one pod via ``dagster_k8s.PipesK8sClient`` (``torchrun --standalone``, ``k8s_gpus`` ranks).
      Multi-node Kubernetes is rendered and validated (`python -m training.multinode k8s-render`: headless
      Service + Indexed Job) but not launched from the asset. UNTESTED here (no cluster).
    """

    backend: str = Field(default="subprocess", description="subprocess | ray | k8s")
    nnodes: int = Field(default=1, description="nodes (torchrun agents / Ray machines) per stage")
    ray_address: Optional[str] = Field(default=None, description="Ray cluster address (ray backend)")
    launch_timeout_s: float = Field(default=24 * 3600.0, description="stop every agent after this (subprocess)")
    nproc_per_node: Optional[int] = Field(default=None, description="ranks per stage; default: the stage's SP degree "
                                                                    "(data parallel = nproc / SP)")
    max_steps: Optional[int] = Field(default=None, description="override the recipe's steps per stage (quick "
                                     "plumbing runs, tests); unset: LONGVILA_TRAIN_MAX_STEPS, else the recipe's")
    num_threads: Optional[int] = Field(default=None, description="torch threads per rank (CPU)")
    checkpoint_every: Optional[int] = Field(default=None, description="override the recipe's checkpoint interval")
    checkpoint_root: Optional[str] = Field(default=None, description="local directory for stage checkpoints; "
                                                                     "default: <storage>/checkpoints when local")
    extra_env: dict[str, str] = Field(default_factory=dict, description="environment for the ranks")
    k8s_image: Optional[str] = Field(default=None, description="container image (k8s backend)")
    k8s_namespace: Optional[str] = Field(default=None, description="namespace (k8s backend)")
    k8s_gpus: int = Field(default=8, description="GPUs of the pod = ranks (k8s backend)")
    k8s_base_pod_spec: Optional[dict[str, Any]] = Field(default=None, description="merged into the pod spec")

    def ckpt_root(self, lake: LakeResource) -> str:
        if self.checkpoint_root:
            return self.checkpoint_root
        st = lake.storage_root
        if lio.is_remote(st):
            return str(Path(os.environ.get("LONGVILA_ROOT", os.getcwd())) / "data" / "checkpoints")
        return layout.join(st, "checkpoints")

    def spec(self, train_args: list[str], nproc: int, sp: tuple[int, int]) -> LaunchSpec:
        """The launch spec of one stage (validated: the Ulysses degree divides the processes per node)."""
        return LaunchSpec(nnodes=self.nnodes, nproc_per_node=nproc, ulysses_degree=sp[0], ring_degree=sp[1],
                          train_args=tuple(train_args))

    def _pipes_subprocess(self, context: AssetExecutionContext, cmd: list[str]) -> MaterializeResult:
        env = {"PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.num_threads:
            env["OMP_NUM_THREADS"] = str(self.num_threads)
        pp = os.environ.get("PYTHONPATH", "")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
        context.log.info("launching: " + " ".join(cmd))
        client = PipesSubprocessClient(forward_termination=True, cwd=str(REPO_ROOT))
        with warnings.catch_warnings():  # dagster 1.13's own Pipes internals use a preview API
            warnings.filterwarnings("ignore", message=".*expected_writer_count.*")
            return client.run(context=context, command=cmd, env=env).get_materialize_result()

    def run(self, context: AssetExecutionContext, train_args: list[str], nproc: int,
            sp: tuple[int, int] = (1, 1)) -> MaterializeResult:
        if self.backend in ("subprocess", "ray"):
            spec = self.spec(train_args, nproc, sp)
            opts = ["--nnodes", str(spec.nnodes), "--nproc-per-node", str(spec.nproc_per_node),
                    "--ulysses-degree", str(spec.ulysses_degree), "--ring-degree", str(spec.ring_degree)]
            if self.backend == "subprocess":
                opts += ["--timeout-s", str(self.launch_timeout_s)]
            elif self.ray_address:
                opts += ["--address", self.ray_address]
            launcher = "local" if self.backend == "subprocess" else "ray"
            return self._pipes_subprocess(
                context, [sys.executable, "-m", "training.multinode", launcher, *opts, "--", *train_args])
        if self.backend == "k8s":
            try:
                from dagster_k8s import PipesK8sClient  # noqa: PLC0415 - optional dependency
            except ImportError as e:
                raise Failure("backend k8s needs dagster-k8s (pip install 'dagster-k8s==0.29.*')") from e
            if not self.k8s_image:
                raise Failure("backend k8s needs k8s_image")
            cmd = ["torchrun", "--standalone", "--nproc-per-node", str(self.k8s_gpus), "-m", "training.train",
                   *train_args]
            spec = dict(self.k8s_base_pod_spec or {})
            spec.setdefault("containers", [{"name": "trainer",
                                            "resources": {"limits": {"nvidia.com/gpu": self.k8s_gpus}}}])
            return PipesK8sClient().run(
                context=context, image=self.k8s_image, command=cmd, namespace=self.k8s_namespace,
                base_pod_spec=spec, env=dict(self.extra_env),
            ).get_materialize_result()
        raise Failure(f"unknown training_launcher backend {self.backend!r} (subprocess | ray | k8s)")


# ----------------------------------------------------------------------------------- helpers


def recipe_from_env() -> Recipe:
    return load_recipe(os.environ.get("LONGVILA_RECIPE", "smoke"))


def caption_inputs() -> list[AssetKey]:
    """The partitioned assets the caption datasets read: clip captions and clip frames per video, or the curated
    shards in shard mode (`assets.shards`)."""
    from assets.shards import CURATED_SHARD, shard_mode

    return [CURATED_SHARD] if shard_mode() else [CLIP_CAPTIONS, CLIP_FRAMES]


def per_video_inputs(recipe: Recipe, n: int) -> list[AssetKey]:
    """The per-video assets whose versions tell which videos of the stage-`n` dataset moved on (freshness);
    none for generated data, and none in shard mode, where the datasets read whole shards."""
    if n == 5:
        return [VIDEO_INSTRUCTIONS]
    uses_videos = recipe.stage(n).data.kind in ("captions", "caption_and_qa")
    return [k for k in caption_inputs() if k in (CLIP_CAPTIONS, CLIP_FRAMES)] if uses_videos else []


def dataset_dir_for(storage: str, stage_index: int) -> str:
    if stage_index == 5:
        return layout.dataset_dir(storage, "long_video_sft")
    return layout.dataset_dir(storage, f"stage{stage_index}_dataset")


def has_extra_samples(stage) -> bool:
    """Stage 5 trains on the long-video SFT set plus a built dataset of the samples its options add."""
    opts = stage.data.options
    return stage.data.kind == "long_video_sft" and bool(opts.retrieval_samples or opts.passkey_samples)


def _dataset_key(n: int) -> AssetKey:
    return STAGE5_EXTRA if n == 5 else DATASET_KEYS[n]


def _dataset_dir(storage: str, n: int) -> str:
    return layout.dataset_dir(storage, "stage5_dataset") if n == 5 else dataset_dir_for(storage, n)


# ----------------------------------------------------------------------------------- assets


def _dataset_asset(recipe: Recipe, n: int, upstream: list[AssetKey]):
    stage = recipe.stage(n)
    kind = stage.data.kind
    caption_kinds = ("captions", "caption_and_qa")
    # retrieval samples read whole-video frames and clip captions per video (in shard mode: the curated shards)
    lake_frames = [VIDEO_FRAMES, CLIP_CAPTIONS] if CLIP_CAPTIONS in upstream else upstream
    retrieval = lake_frames if stage.data.options.retrieval_samples else []
    dep_keys = list(dict.fromkeys((upstream if kind in caption_kinds else []) + retrieval))
    deps = [AssetDep(k, partition_mapping=AllPartitionMapping()) for k in dep_keys]
    data_fp = json.dumps({"data": stage.data.__dict__, "frames": stage.num_frames, "seed": recipe.seed},
                         sort_keys=True, default=str)
    cv = f"{BUILD_VERSION}:{hashlib.sha256(data_fp.encode()).hexdigest()[:12]}"

    @asset(key=_dataset_key(n), deps=deps, group_name=GROUP, code_version=cv, kinds={"parquet"},
           retry_policy=TRANSIENT_RETRY,
           description=f"Stage-{n} dataset ({kind}{', extra samples' if n == 5 else ''}) of recipe {recipe.name}: "
                       f"samples.parquet + manifest.json under datasets/stage{n}_dataset/.")
    def _ds(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        storage = lake.storage_root
        keys = dataset_video_keys(context.instance, lake) if dep_keys else []
        t0 = time.perf_counter()
        out = _dataset_dir(storage, n)
        try:
            manifest = build_stage_dataset(out, stage, storage=storage, video_keys=keys, seed=recipe.seed,
                                           code_versions=per_video_code_versions(context), log=context.log.info)
        except InputError as e:
            raise Failure(str(e), metadata={"videos": len(keys)}, allow_retries=False) from e
        inputs = manifest.get("inputs", [])
        summary = {k: v for k, v in manifest.items() if k not in ("inputs", "video_keys")}  # per-video rows: lake
        return MaterializeResult(
            data_version=DataVersion(manifest["content_hash"]),
            metadata={
                "path": MetadataValue.path(out),
                "num_samples": manifest["num_samples"],
                "num_videos": len(manifest.get("video_keys", [])),
                "kind": kind,
                "manifest": MetadataValue.json(summary),
                "inputs": MetadataValue.md(md_table(inputs, limit=10, width=64)),
                **lineage_metadata(out, manifest),
                "seconds": round(time.perf_counter() - t0, 3),
            },
        )

    return _ds


def _stage_asset(recipe: Recipe, n: int):
    stage = recipe.stage(n)
    extra = n == 5 and has_extra_samples(stage)
    deps = [DATASET_KEYS[n]] + ([STAGE5_EXTRA] if extra else []) + ([STAGE_KEYS[n - 2]] if n > 1 else [])

    @asset(key=STAGE_KEYS[n - 1], deps=deps, group_name=GROUP, pool="training",
           code_version=f"{TRAINER_VERSION}:{recipe.name}:{recipe.stage_fingerprint(n)}", kinds={"pytorch"},
           description=f"Stage {n} ({stage.name}) of recipe {recipe.name}: trains {list(stage.trainable)}"
                       f"{' with LoRA' if stage.lora else ''} at max length {stage.max_length}, "
                       f"{stage.num_frames} frames, SP {stage.ulysses_degree}x{stage.ring_degree}; "
                       "the checkpoint's content hash is the data version.")
    def _st(context: AssetExecutionContext, lake: LakeResource,
            training_launcher: TrainingLauncher) -> MaterializeResult:
        storage = lake.storage_root
        root = training_launcher.ckpt_root(lake)
        out_dir = layout.join(root, stage.name)
        data_dir = dataset_dir_for(storage, n)
        if not lio.exists(lio.join(data_dir, "manifest.json")):
            raise Failure(f"{data_dir}: stage-{n} dataset not materialised")
        data_dirs = [data_dir] + ([_dataset_dir(storage, n)] if extra else [])
        args = ["--recipe", recipe.source or recipe.name, "--stage", stage.name, "--data", *data_dirs,
                "--output-dir", out_dir, "--metrics-out", layout.join(out_dir, "metrics.jsonl"),
                "--seed", str(recipe.seed), "--resume"]
        if n > 1:
            prev = layout.join(root, STAGE_NAMES[n - 2], "final")
            if not Path(prev).exists():
                raise Failure(f"{prev}: the previous stage's checkpoint is missing; materialise {STAGE_NAMES[n - 2]}")
            args += ["--init-from", prev]
        else:
            args += ["--profile", recipe.model_profile]
        max_steps = training_launcher.max_steps or int(os.environ.get("LONGVILA_TRAIN_MAX_STEPS") or 0)
        if max_steps:
            args += ["--max-steps", str(max_steps)]
        if training_launcher.checkpoint_every is not None:
            args += ["--checkpoint-every", str(training_launcher.checkpoint_every)]
        if training_launcher.num_threads:
            args += ["--num-threads", str(training_launcher.num_threads)]
        nproc = training_launcher.nproc_per_node or stage.sp_degree
        res = training_launcher.run(context, args, nproc, (stage.ulysses_degree, stage.ring_degree))
        md = dict(res.metadata or {})
        md["recipe"] = recipe.name
        md["stage_config"] = MetadataValue.json({"trainable": list(stage.trainable), "max_length": stage.max_length,
                                                 "num_frames": stage.num_frames, "lora": bool(stage.lora),
                                                 "sp": [stage.ulysses_degree, stage.ring_degree],
                                                 "rope_theta": ([p.rope_theta for p in stage.phases]
                                                                or stage.rope_theta)})
        md["dataset"] = MetadataValue.path(data_dir)
        if extra:
            md["extra_dataset"] = MetadataValue.path(data_dirs[1])
        return MaterializeResult(metadata=md, data_version=res.data_version)

    return _st


def build_training_defs(recipe: Optional[Recipe] = None, launcher: Optional[TrainingLauncher] = None) -> Definitions:
    """The stage datasets and checkpoints (caption datasets read `caption_inputs()`), with the stages'
    freshness checks (`assets.freshness`)."""
    recipe = recipe or recipe_from_env()
    inputs = caption_inputs()
    assets_ = [_dataset_asset(recipe, n, inputs) for n in (1, 2, 3, 4)]
    if has_extra_samples(recipe.stage(5)):
        assets_.append(_dataset_asset(recipe, 5, inputs))
    assets_ += [_stage_asset(recipe, n) for n in (1, 2, 3, 4, 5)]
    checks = [freshness_check(STAGE_KEYS[n - 1], DATASET_KEYS[n], per_video_inputs(recipe, n)) for n in (1, 2, 3, 4, 5)]
    return Definitions(assets=assets_, asset_checks=checks,
                       resources={"training_launcher": launcher or TrainingLauncher()})


defs = build_training_defs()
