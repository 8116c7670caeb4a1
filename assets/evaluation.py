"""Benchmark assets for the training-stage checkpoints (group ``evaluation``).

For each evaluated stage (default: stage 5 only; ``LONGVILA_EVAL_STAGES=stage3,stage5`` adds others):

    stage5_long_sft ─┬─> niah_stage5           V-NIAH grid (frame count x depth), heatmap
                     ├─> videomme_stage5       VideoMME-format multiple choice, per duration / subtitles
                     └─> caption_score_stage5  LLM-judge caption score + ROUGE-L / n-gram F1 / BLEU

V-NIAH has a heatmap asset for every stage (``LONGVILA_NIAH_STAGES``, default all five), so the UI
shows retrieval appear across the curriculum, and the context extension has its passkey benchmark
(``LONGVILA_PASSKEY_STAGES``, default stage3,stage4): ``passkey_stageN`` scores retrieval of a key
hidden in long text at 1x and 4x the pre-extension context (stage 3's max length in the recipe).

Each asset resolves the stage's checkpoint (the upstream materialisation's ``checkpoint_path``
metadata, else ``longvila.layout.checkpoint_dir(storage, <stage asset>)``), runs the `evaluation`
library and writes its outputs to ``<storage>/eval/<benchmark>/<stage asset>/`` (results.json,
summary.md, heatmap.png). Metadata: the headline numbers as floats (plotted by the UI across
materialisations), a markdown table, and for V-NIAH the heatmap embedded in markdown as a base64
PNG (the UI renders data-URI images in markdown) plus its path.

Inputs in smoke runs (settings in the ``eval_settings`` resource, `EvalSettings`):
* V-NIAH haystack: ``niah_haystack_video`` of the lake's ``video_frames`` layer, by default the video
  with the most frames free of annotated on-screen text (`evaluation.niah.pick_lake_haystack`), else a
  synthetic video; needles: the built-in digit set rendered with ``niah_seed`` (held out: the stage-5
  retrieval samples use the recipe's ``needle_seed``), or a user's set (``niah_needles_dir``);
* VideoMME: the question file / video folder given in the settings, else a fixture generated under
  ``<storage>/eval/fixtures/videomme`` (`evaluation.fixtures`);
* captions: references from the lake's ``summaries`` layer (the captioning pipeline's video
  summaries, videos from the manifest), else fixture references.

Automation: each benchmark re-runs when its stage checkpoint gets a new data version (the shared
`assets.policies.ON_NEW_DATA` condition), with the transient-fault retry policy.

Asset checks (``no_regression``, severity WARN): compare the headline metric with the previous
materialisation's metadata in the instance; a drop by more than ``regression_tolerance`` fails the
check. Plus ``outputs_complete`` checks (grid complete / no missing videos / judge mostly valid).
"""

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from dagster import ConfigurableResource
from pydantic import Field

from assets.common import failure, input_failure, latest_metadata, metadata_values, progress
from assets.policies import ON_NEW_DATA, TRANSIENT_RETRY
from assets.resources import LakeResource
from longvila import io as lio
from longvila import layout

GROUP = "evaluation"
EVAL_CODE_VERSION = "eval-v1"

# short name -> training stage asset (assets/training.py)
STAGE_ASSETS = {
    "stage1": "stage1_alignment",
    "stage2": "stage2_pretraining",
    "stage3": "stage3_short_sft",
    "stage4": "stage4_context_extension",
    "stage5": "stage5_long_sft",
}

# headline metric of each benchmark (metadata key compared by the regression check)
HEADLINE = {"niah": "accuracy", "videomme": "accuracy", "caption_score": "similarity_combined"}


class EvalSettings(ConfigurableResource):
    """Benchmark settings (resource key ``eval_settings``)."""

    niah_frame_counts: list[int] = Field(default=[1, 8, 16, 32], description="V-NIAH frame counts (needle "
                                         "included); 32 = 4x the smoke recipe's stage-5 training frames")
    niah_depths: list[float] = Field(default=[0.0, 25.0, 50.0, 75.0, 100.0], description="needle depths in %")
    niah_needles: int = Field(default=10, description="needles per grid cell (0 = all of niah_needles_dir)")
    niah_needle_set: str = Field(default="digits", description="built-in needles: digits | text")
    niah_needles_dir: Optional[str] = Field(default=None, description="a user's needle set (Parquet or folder in "
                                            "the public V-NIAH layout: image, question, answer)")
    niah_seed: int = Field(default=1, description="render seed of the built-in needles (training uses another)")
    niah_haystack_video: Optional[str] = Field(default=None, description="partition key of the haystack video; "
                                               "default: the one with the most text-free video_frames")
    niah_fps: float = Field(default=1.0, description="haystack sampling rate")
    niah_frame_size: int = Field(default=64, description="side of the square haystack / needle frames")
    passkey_lengths: Optional[list[int]] = Field(default=None, description="passkey context lengths in tokens; "
                                                 "default: 1x and 4x stage 3's max length in the recipe")
    passkey_samples: int = Field(default=4, description="passkey samples per (length, depth) cell")
    niah_nproc: int = Field(default=1, description=">1: run V-NIAH with MM-SP sharded prefill under torchrun")
    videomme_questions: Optional[str] = Field(default=None, description="question file; unset: generated fixture")
    videomme_videos: Optional[str] = Field(default=None, description="video folder for the question file")
    videomme_subtitles: Optional[str] = Field(default=None, description="subtitle folder (<videoID>.srt)")
    num_frames: int = Field(default=8, description="frames per video for VideoMME and captioning")
    videomme_max_new_tokens: int = Field(default=8, description="reply length budget for multiple choice")
    videomme_scoring: str = Field(default="generate", description="generate (free-form reply, letter "
                                  "extracted; the official protocol) or option_logits (highest letter logit)")
    caption_max_new_tokens: int = Field(default=48, description="caption length budget (raise it, e.g. to 512, "
                                        "for real long-video captions)")
    judge: str = Field(default="local:smoke", description="caption judge: none | local:smoke (the tiny smoke "
                       "LLM) | local:PATH | openai:URL#MODEL")
    max_caption_videos: int = Field(default=3, description="videos captioned per run")
    regression_tolerance: float = Field(default=0.05, description="allowed drop of a headline metric")

    def niah_config(self):
        from evaluation.niah import NiahConfig

        return NiahConfig(frame_counts=list(self.niah_frame_counts), depths=list(self.niah_depths),
                          num_needles=self.niah_needles, fps=self.niah_fps, frame_size=self.niah_frame_size,
                          seed=self.niah_seed, needle_set=self.niah_needle_set, needles_dir=self.niah_needles_dir)

    def passkey_config(self):
        from evaluation.passkey import PasskeyConfig

        recipe = _recipe()
        base = recipe.stage(3).max_length
        return PasskeyConfig(lengths=list(self.passkey_lengths or [base, 4 * base]),
                             samples_per_cell=self.passkey_samples, digits=recipe.stage(4).data.options.passkey_digits)

    def code_version(self, benchmark: str) -> str:
        fields = self.model_dump() if hasattr(self, "model_dump") else {}
        h = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{EVAL_CODE_VERSION}-{benchmark}-{h}"


def eval_stages(var: str = "LONGVILA_EVAL_STAGES", default: str = "stage5") -> list[str]:
    raw = os.environ.get(var, default)
    stages = [s.strip() for s in raw.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGE_ASSETS]
    if bad:
        raise ValueError(f"{var} names unknown stages {bad}; known: {sorted(STAGE_ASSETS)}")
    return stages


def niah_stages() -> list[str]:
    """Stages with a V-NIAH heatmap asset (``LONGVILA_NIAH_STAGES``, default all five)."""
    return eval_stages("LONGVILA_NIAH_STAGES", ",".join(STAGE_ASSETS))


def passkey_stages() -> list[str]:
    """Stages with a passkey asset (``LONGVILA_PASSKEY_STAGES``, default stage3,stage4)."""
    return eval_stages("LONGVILA_PASSKEY_STAGES", "stage3,stage4")


def _recipe():
    from training.recipes import load_recipe

    return load_recipe(os.environ.get("LONGVILA_RECIPE", "smoke"))


# ------------------------------------------------------------------------------------ helpers
def resolve_checkpoint(context: AssetExecutionContext, lake: Any, stage_asset: str) -> str:
    """The upstream stage's exported checkpoint directory. Candidates, first loadable wins: the latest
    materialisation's metadata ``checkpoint_path`` or ``checkpoint`` (what the training assets report),
    then ``<checkpoint_dir>/final`` (the trainer's export) and ``<checkpoint_dir>`` itself, with
    ``checkpoint_dir = longvila.layout.checkpoint_dir(storage, stage_asset)``."""
    md = latest_metadata(context.instance, AssetKey(stage_asset))
    candidates = [str(md[k]) for k in ("checkpoint_path", "checkpoint") if md.get(k)]
    base = layout.checkpoint_dir(lake.storage_root, stage_asset)
    candidates += [lio.join(base, "final"), base]
    for path in candidates:
        if lio.exists(lio.join(path, "config.json"), lake.settings()):
            return path
    raise failure(context, "checkpoint lookup", f"checkpoint of {stage_asset} not found (looked for config.json in "
                                                f"{', '.join(candidates)})")


def _niah_haystack(lake: Any, settings: EvalSettings) -> tuple[Optional[str], Optional[str]]:
    """(video_frames file, its clip captions or None) of the V-NIAH haystack video; (None, None) when the
    lake has no video_frames (then a synthetic haystack is made)."""
    from evaluation.niah import pick_lake_haystack

    key = settings.niah_haystack_video or pick_lake_haystack(lake.storage_root, lake.settings())
    if key is None:
        return None, None
    frames = layout.layer_path(lake.storage_root, "video_frames", key)
    if not lio.exists(frames, lake.settings()):
        raise Failure(description=f"eval_settings.niah_haystack_video {key!r}: {frames} does not exist")
    captions = layout.layer_path(lake.storage_root, "captions", key)
    return frames, captions if lio.exists(captions, lake.settings()) else None


def _results_version(out_dir: str, settings) -> str:
    return lio.sha256_file(lio.join(out_dir, "results.json"), settings)[:16]


def _png_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# ------------------------------------------------------------------------------------ inputs
def _fixture(lake: Any) -> dict:
    """The generated VideoMME-format fixture under <storage>/eval/fixtures/videomme (a local temp
    folder when the lake is remote: videos must be local files for decoding)."""
    from evaluation.fixtures import ensure_videomme_fixture

    root = lio.join(lake.storage_root, "eval", "fixtures", "videomme")
    if lio.is_remote(root):
        import tempfile

        root = str(Path(tempfile.gettempdir()) / "longvila-videomme-fixture")
    return ensure_videomme_fixture(root)


def _videomme_inputs(lake: Any, settings: EvalSettings) -> tuple[str, str, Optional[str], str]:
    if settings.videomme_questions:
        if not settings.videomme_videos:
            raise Failure(description="eval_settings.videomme_questions is set but videomme_videos is not",
                          allow_retries=False)
        return settings.videomme_questions, settings.videomme_videos, settings.videomme_subtitles, "configured"
    fx = _fixture(lake)
    return fx["parquet"], fx["video_dir"], fx["subtitle_dir"], "generated fixture"


def _summary_text(obj: Any) -> Optional[str]:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        if obj.get("ok") is False:  # a failed summary record of the captioning pipeline
            return None
        for k in ("summary", "caption", "text", "description"):
            if isinstance(obj.get(k), str) and obj[k].strip():
                return obj[k]
    return None


def _caption_items(context, lake: Any, settings: EvalSettings):
    from evaluation.caption_score import CaptionItem

    items = []
    root = lio.join(lake.storage_root, "summaries")
    fs, p = lio.get_fs(root, lake.settings())
    try:
        names = sorted(n for n in fs.ls(p, detail=False) if n.endswith(".json"))
    except FileNotFoundError:
        names = []
    manifest = {}
    if names:
        try:
            manifest = lake.read_manifest().get("videos", {})
        except Exception as exc:  # noqa: BLE001 - a missing manifest only means no lake references
            context.log.warning(f"cannot read the video manifest: {exc}")
    for n in names:
        key = Path(n).stem
        entry = manifest.get(key)
        if not entry or entry.get("status") == "deleted":
            continue
        try:
            text = _summary_text(lio.read_json(layout.layer_path(lake.storage_root, "summaries", key), lake.settings()))
        except Exception as exc:  # noqa: BLE001
            context.log.warning(f"skipping summary {key}: {exc}")
            continue
        if text:
            items.append(CaptionItem(video_id=key, reference=text, video=entry.get("url")))
        if len(items) >= settings.max_caption_videos:
            break
    if items:
        return items, "lake summaries"
    from evaluation.fixtures import make_reference_captions

    refs = make_reference_captions(_fixture(lake))
    return [CaptionItem(video_id=r["video_id"], reference=r["reference"], video=r["video"])
            for r in refs[: settings.max_caption_videos]], "fixture references"


# ------------------------------------------------------------------------------------ checks
def previous_and_current(instance, key: AssetKey, metric: str) -> tuple[Optional[float], Optional[float]]:
    """(previous, current) values of a float metadata entry over the last two materialisations."""
    recs = instance.fetch_materializations(key, limit=2).records
    vals = []
    for r in recs:
        v = metadata_values(r).get(metric)
        vals.append(float(v) if isinstance(v, (int, float)) else None)
    cur = vals[0] if vals else None
    prev = vals[1] if len(vals) > 1 else None
    return prev, cur


def regression_result(prev: Optional[float], cur: Optional[float], tolerance: float, metric: str) -> AssetCheckResult:
    md = {"metric": metric, "tolerance": tolerance}
    if cur is None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                description=f"no {metric} in the latest materialisation", metadata=md)
    md["current"] = cur
    if prev is None:
        return AssetCheckResult(passed=True, description="first materialisation: nothing to compare",
                                metadata=md)
    md["previous"] = prev
    md["delta"] = cur - prev
    ok = cur >= prev - tolerance
    return AssetCheckResult(
        passed=ok, severity=AssetCheckSeverity.WARN,
        description=(f"{metric} {cur:.4f} vs previous {prev:.4f}"
                     + ("" if ok else f": regression beyond tolerance {tolerance}")),
        metadata=md,
    )


# ------------------------------------------------------------------------------------ factory
BENCHMARKS = ("niah", "videomme", "caption_score")


def build_stage_benchmarks(stage: str, benchmarks: tuple[str, ...] = BENCHMARKS) -> tuple[list, list]:
    """niah_<stage>, videomme_<stage>, caption_score_<stage> (those named in `benchmarks`) and their checks."""
    stage_asset = STAGE_ASSETS[stage]
    upstream = AssetKey(stage_asset)
    niah_key, vm_key, cap_key = (AssetKey(f"niah_{stage}"), AssetKey(f"videomme_{stage}"),
                                 AssetKey(f"caption_score_{stage}"))

    @asset(
        name=niah_key.path[0], group_name=GROUP, deps=[upstream], code_version=EVAL_CODE_VERSION + "-niah",
        description=f"V-NIAH accuracy grid and heatmap of the {stage_asset} checkpoint.",
        kinds={"python", "pytorch"}, automation_condition=ON_NEW_DATA, retry_policy=TRANSIENT_RETRY,
        check_specs=[AssetCheckSpec("grid_complete", asset=niah_key,
                                    description="every (frame count, depth, needle) sample was scored")],
    )
    def niah_asset(context: AssetExecutionContext, lake: LakeResource, eval_settings: EvalSettings):
        from evaluation.benchmarks import run_niah_benchmark, run_niah_sharded
        from evaluation.niah import build_grid, heatmap_png

        ckpt = resolve_checkpoint(context, lake, stage_asset)
        out = layout.eval_dir(lake.storage_root, "niah", stage_asset)
        cfg = eval_settings.niah_config()
        frames_parquet, captions_parquet = _niah_haystack(lake, eval_settings)
        t0 = time.perf_counter()
        with input_failure(context, "V-NIAH"):
            if eval_settings.niah_nproc > 1:
                res = run_niah_sharded(ckpt, out, cfg, nproc=eval_settings.niah_nproc,
                                       frames_parquet=frames_parquet, captions_parquet=captions_parquet)
            else:
                res = run_niah_benchmark(ckpt, out, cfg, frames_parquet=frames_parquet,
                                         progress=progress(context), title=f"V-NIAH {stage_asset}",
                                         captions_parquet=captions_parquet)
        secs = time.perf_counter() - t0
        png = heatmap_png(res, title=f"V-NIAH {stage_asset}")
        expected = len(build_grid(cfg.frame_counts, cfg.depths, cfg.num_needles))
        md = {
            "accuracy": float(res.accuracy),
            "samples": len(res.records),
            "scoring": res.method,
            "haystack": str(res.config.get("haystack_source", "")),
            "needles": cfg.needles_dir or f"built-in {cfg.needle_set}, seed {cfg.seed}",
            "haystack_repeated": bool(res.haystack_repeated),
            "checkpoint_path": MetadataValue.path(ckpt),
            "grid": MetadataValue.md(res.to_markdown()),
            "heatmap": MetadataValue.md(_png_markdown(png, "V-NIAH heatmap")),
            "heatmap_path": MetadataValue.path(lio.join(out, "heatmap.png")),
            "results_path": MetadataValue.path(lio.join(out, "results.json")),
            "seconds": round(secs, 3),
        }
        for n, acc in res.accuracy_by_frame_count().items():
            md[f"accuracy_{n}_frames"] = float(acc)
        return MaterializeResult(
            metadata=md, data_version=DataVersion(_results_version(out, lake.settings())),
            check_results=[AssetCheckResult(
                check_name="grid_complete", passed=len(res.records) == expected,
                metadata={"expected": expected, "scored": len(res.records)})],
        )

    @asset(
        name=vm_key.path[0], group_name=GROUP, deps=[upstream], code_version=EVAL_CODE_VERSION + "-videomme",
        description=f"VideoMME-format multiple-choice accuracy of the {stage_asset} checkpoint.",
        kinds={"python", "pytorch"}, automation_condition=ON_NEW_DATA, retry_policy=TRANSIENT_RETRY,
        check_specs=[AssetCheckSpec("all_videos_found", asset=vm_key,
                                    description="every question's video was found and decoded")],
    )
    def videomme_asset(context: AssetExecutionContext, lake: LakeResource, eval_settings: EvalSettings):
        from evaluation.benchmarks import run_videomme_benchmark

        ckpt = resolve_checkpoint(context, lake, stage_asset)
        out = layout.eval_dir(lake.storage_root, "videomme", stage_asset)
        questions, videos, subs, source = _videomme_inputs(lake, eval_settings)
        t0 = time.perf_counter()
        with input_failure(context, "VideoMME evaluation"):
            res = run_videomme_benchmark(ckpt, questions, videos, out, subtitle_dir=subs,
                                         num_frames=eval_settings.num_frames,
                                         max_new_tokens=eval_settings.videomme_max_new_tokens,
                                         scoring=eval_settings.videomme_scoring, progress=progress(context))
        s = res.summary()
        md: dict[str, Any] = {
            "accuracy": float(s["without_subtitles"]["overall"]["accuracy"] or 0.0),
            "questions": s["without_subtitles"]["overall"]["total"],
            "no_answer": s["without_subtitles"]["overall"]["no_answer"],
            "errors": s["errors"],
            "inputs": source,
            "scoring": res.scoring,
            "questions_path": MetadataValue.path(questions),
            "checkpoint_path": MetadataValue.path(ckpt),
            "table": MetadataValue.md(res.to_markdown()),
            "results_path": MetadataValue.path(lio.join(out, "results.json")),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        for mode in res.modes:
            for d, a in s[mode]["duration"].items():
                if a["accuracy"] is not None:
                    md[f"accuracy_{d}" + ("_subs" if mode == "with_subtitles" else "")] = float(a["accuracy"])
        if "with_subtitles" in res.modes:
            md["accuracy_with_subtitles"] = float(s["with_subtitles"]["overall"]["accuracy"] or 0.0)
        missing = sorted({r["video_id"] for r in res.errors})
        return MaterializeResult(
            metadata=md, data_version=DataVersion(_results_version(out, lake.settings())),
            check_results=[AssetCheckResult(
                check_name="all_videos_found", passed=not missing, severity=AssetCheckSeverity.WARN,
                metadata={"missing_or_bad_videos": ", ".join(missing) or "none"})],
        )

    @asset(
        name=cap_key.path[0], group_name=GROUP, deps=[upstream], code_version=EVAL_CODE_VERSION + "-caption",
        description=f"Long-video caption score (LLM judge + similarity) of the {stage_asset} checkpoint.",
        kinds={"python", "pytorch"}, automation_condition=ON_NEW_DATA, retry_policy=TRANSIENT_RETRY,
        check_specs=[AssetCheckSpec("judge_replies_valid", asset=cap_key,
                                    description="at most half of the judge's scores are invalid")],
    )
    def caption_asset(context: AssetExecutionContext, lake: LakeResource, eval_settings: EvalSettings):
        from evaluation.benchmarks import run_caption_benchmark

        ckpt = resolve_checkpoint(context, lake, stage_asset)
        out = layout.eval_dir(lake.storage_root, "caption", stage_asset)
        items, source = _caption_items(context, lake, eval_settings)
        t0 = time.perf_counter()
        with input_failure(context, "caption score"):
            res = run_caption_benchmark(ckpt, items, out, judge=eval_settings.judge,
                                        num_frames=eval_settings.num_frames,
                                        max_new_tokens=eval_settings.caption_max_new_tokens,
                                        progress=progress(context))
        s = res.summary()
        md: dict[str, Any] = {
            "similarity_combined": float(s["similarity"].get("combined", 0.0)),
            "rouge_l": float(s["similarity"].get("rouge_l", 0.0)),
            "bleu4": float(s["similarity"].get("bleu4", 0.0)),
            "videos": s["videos"],
            "references": source,
            "judge": s["judge"] or "none",
            "invalid_judgements": s["invalid_judgements"],
            "checkpoint_path": MetadataValue.path(ckpt),
            "table": MetadataValue.md(res.to_markdown()),
            "results_path": MetadataValue.path(lio.join(out, "results.json")),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        for k, v in s["judge_scores"].items():
            if v is not None:
                md[f"judge_{k}"] = float(v)
        total = s["judged"] * 3
        ok = s["judged"] == 0 or s["invalid_judgements"] <= total / 2
        return MaterializeResult(
            metadata=md, data_version=DataVersion(_results_version(out, lake.settings())),
            check_results=[AssetCheckResult(
                check_name="judge_replies_valid", passed=ok, severity=AssetCheckSeverity.WARN,
                metadata={"invalid": s["invalid_judgements"], "judged_scores": total})],
        )

    made = {"niah": (niah_asset, niah_key), "videomme": (videomme_asset, vm_key),
            "caption_score": (caption_asset, cap_key)}
    return ([made[b][0] for b in benchmarks],
            [_regression_check(made[b][1], HEADLINE[b]) for b in benchmarks])


def _regression_check(key: AssetKey, metric: str):
    @asset_check(asset=key, name="no_regression",
                 description=f"{metric} did not drop by more than eval_settings.regression_tolerance "
                             "against the previous materialisation")
    def _check(context, eval_settings: EvalSettings) -> AssetCheckResult:
        prev, cur = previous_and_current(context.instance, key, metric)
        return regression_result(prev, cur, eval_settings.regression_tolerance, metric)

    return _check


def build_passkey_asset(stage: str):
    """passkey_<stage>: passkey retrieval at 1x and 4x the pre-extension context (`evaluation.passkey`)."""
    stage_asset = STAGE_ASSETS[stage]
    key = AssetKey(f"passkey_{stage}")

    @asset(name=key.path[0], group_name=GROUP, deps=[AssetKey(stage_asset)],
           code_version=EVAL_CODE_VERSION + "-passkey",
           description=f"Passkey retrieval in long text of the {stage_asset} checkpoint at 1x and 4x the "
                       "pre-extension context (stage 3's max length), the test of the context extension.",
           kinds={"python", "pytorch"})
    def passkey_asset(context: AssetExecutionContext, lake: LakeResource, eval_settings: EvalSettings):
        from evaluation.passkey import run_passkey, write_passkey_outputs
        from training.model import load_checkpoint

        ckpt = resolve_checkpoint(context, lake, stage_asset)
        out = layout.eval_dir(lake.storage_root, "passkey", stage_asset)
        t0 = time.perf_counter()
        model, processor = load_checkpoint(ckpt)
        res = run_passkey(model, processor, eval_settings.passkey_config(), progress=progress(context))
        write_passkey_outputs(res, out)
        md: dict[str, Any] = {"accuracy": float(res.accuracy), "samples": len(res.records),
                              "checkpoint_path": MetadataValue.path(ckpt), "table": MetadataValue.md(res.to_markdown()),
                              "results_path": MetadataValue.path(lio.join(out, "results.json")),
                              "rope_theta": float(model.config.text_config.rope_parameters.get("rope_theta", 0.0)),
                              "seconds": round(time.perf_counter() - t0, 3)}
        for n, acc in res.accuracy_by_length().items():
            md[f"accuracy_{n}_tokens"] = float(acc)
        return MaterializeResult(metadata=md, data_version=DataVersion(_results_version(out, lake.settings())))

    return passkey_asset


def build_evaluation_defs(stages: Optional[list[str]] = None, settings: Optional[EvalSettings] = None) -> Definitions:
    """Definitions for the benchmark assets of `stages` (default `eval_stages()`), the V-NIAH assets of
    `niah_stages()` and the passkey assets of `passkey_stages()`; binds only ``eval_settings`` (``lake``
    is bound by `orchestration.definitions`)."""
    full = stages or eval_stages()
    assets_, checks = [], []
    for st in STAGE_ASSETS:
        benches = BENCHMARKS if st in full else ("niah",) if st in niah_stages() else ()
        a, c = build_stage_benchmarks(st, benches)
        assets_ += a + ([build_passkey_asset(st)] if st in passkey_stages() else [])
        checks += c
    return Definitions(assets=assets_, asset_checks=checks,
                       resources={"eval_settings": settings or EvalSettings()})


defs = build_evaluation_defs()
