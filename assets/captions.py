"""Caption layer: clip captions (VLM), video summaries and question-answer instructions (LLM), and the
long-video SFT dataset over all videos.

    video_clips ─┐
    clip_frames ─┴─> clip_captions ─> video_summary ─> video_instructions ═(all videos)═> long_video_sft_dataset
    video_probe ────────────────────────┴──────────────────────┘ (duration)
    video_frames ──────────────────────────────────────────────┘ (frame reference of the records)

Per-video assets are partitioned by `assets.partitions.videos`; the dataset is unpartitioned
and depends on every partition of `video_instructions`. All outputs follow `longvila.layout`
(captions/, summaries/, instructions/, datasets/long_video_sft/) and are written atomically.

Models and prompts come from `curation.captioning.config.CaptioningConfig.from_env()` (LONGVILA_CAPTION_*
/ LONGVILA_LLM_* variables) when the Definitions are loaded; the resource ``caption_models`` carries
the same settings into the runs. Code versions contain the prompt tags (version + content hash),
model ids and decoding parameters, so editing `curation/prompts/video_qa.v1.txt` marks only
`video_instructions` (and the dataset) stale, a new VLM marks `clip_captions` and everything below.

Automation: every per-video asset has the shared `assets.policies.ON_NEW_DATA` condition, so captions are
re-made only when an input's bytes (data version) or the models/prompts (code version) changed.

Failure policy: a backend that is unreachable (connection refused, timeouts, 5xx after retries)
fails the partition's run (retried with backoff by `assets.policies.TRANSIENT_RETRY`; nothing is written); so
does a configuration error (HTTP 401/403/404: wrong key, endpoint or model name; not retryable). Bad model output
is data, not a crash: a rejected caption is a row with ok = false and the reason; a summary or QA reply that stays
invalid after the retries is written as the video's failure record (summary JSON `ok: false`,
`instructions/<key>.report.json` `ok: false`, no records) and reported in the metadata and checks.
"""



import json
import time
from typing import Optional

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    ConfigurableResource,
    DataVersion,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from assets.common import (
    dataset_video_keys,
    failure,
    input_failure,
    layer_result,
    lineage_metadata,
    md_table,
    per_video_asset,
    per_video_check,
    per_video_code_versions,
    write_json,
    write_table,
    write_versioned,
)
from assets.curation import CLIP_FRAMES, VIDEO_CLIPS, VIDEO_FRAMES, VIDEO_PROBE
from assets.partitions import partitioned_checks
from assets.policies import TRANSIENT_RETRY
from assets.resources import LakeResource
from curation.captioning import checks
from curation.captioning.config import CaptioningConfig, ModelSettings, code_versions, make_annotator, make_captioner
from curation.captioning.types import CONFIG_ERROR, UNAVAILABLE
from longvila import io as lio
from longvila.errors import InputError

GROUP = "captions"
CLIP_CAPTIONS = AssetKey("clip_captions")
VIDEO_SUMMARY = AssetKey("video_summary")
VIDEO_INSTRUCTIONS = AssetKey("video_instructions")
LONG_VIDEO_SFT = AssetKey("long_video_sft_dataset")


class CaptionModelsResource(ConfigurableResource):
    """Captioner (VLM) and LLM settings. Defaults come from the environment (see
    `curation.captioning.config`); the code versions are computed from the same settings when the
    Definitions load, so change models via the environment, not per run."""

    vlm_backend: str = Field(default="local", description="'local' (transformers) or 'openai' (HTTP)")
    vlm_model: str = Field(default="smoke", description="VLM path / hub id / served name; 'smoke' = tiny random model")
    vlm_endpoint: Optional[str] = Field(default=None, description="OpenAI-compatible base URL for the VLM")
    llm_backend: str = Field(default="local", description="'local' or 'openai'")
    llm_model: str = Field(default="smoke", description="LLM path / hub id / served name")
    llm_endpoint: Optional[str] = Field(default=None, description="OpenAI-compatible base URL for the LLM")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="env var that holds the API key")
    batch_size: int = Field(default=8, description="prompts per generate call (local)")
    concurrency: int = Field(default=4, description="parallel HTTP requests (openai)")
    timeout_s: float = Field(default=120.0, description="HTTP read timeout per request")
    max_retries: int = Field(default=3, description="HTTP retries (connection errors, timeouts, 429, 5xx)")
    device: str = Field(default="cpu", description="torch device for local models")
    torch_threads: Optional[int] = Field(default=None,
                                         description="torch CPU threads while generating (None: 1 for smoke models)")
    models_dir: Optional[str] = Field(default=None,
                                      description="where smoke models are built (default <root>/data/models)")

    @classmethod
    def from_config(cls, cfg: CaptioningConfig) -> "CaptionModelsResource":
        return cls(
            vlm_backend=cfg.vlm.backend, vlm_model=cfg.vlm.model, vlm_endpoint=cfg.vlm.endpoint,
            llm_backend=cfg.llm.backend, llm_model=cfg.llm.model, llm_endpoint=cfg.llm.endpoint,
            api_key_env=cfg.vlm.api_key_env, batch_size=cfg.vlm.batch_size, concurrency=cfg.vlm.concurrency,
            timeout_s=cfg.vlm.timeout_s, max_retries=cfg.vlm.max_retries, device=cfg.vlm.device,
            torch_threads=cfg.vlm.torch_threads, models_dir=cfg.models_dir,
        )

    def config(self, base: CaptioningConfig) -> CaptioningConfig:
        common = dict(api_key_env=self.api_key_env, batch_size=self.batch_size, concurrency=self.concurrency,
                      timeout_s=self.timeout_s, max_retries=self.max_retries, device=self.device,
                      torch_threads=self.torch_threads)
        return base.replace(
            vlm=ModelSettings(backend=self.vlm_backend, model=self.vlm_model, endpoint=self.vlm_endpoint, **common),
            llm=ModelSettings(backend=self.llm_backend, model=self.llm_model, endpoint=self.llm_endpoint, **common),
            models_dir=self.models_dir or base.models_dir,
        )


def _read(lake: LakeResource, layer: str, key: str, context, what: str, parquet: bool = True):
    url = lake.layer_url(layer, key)
    try:
        return lio.read_parquet(url, lake.settings()) if parquet else lio.read_json(url, lake.settings())
    except FileNotFoundError:
        raise failure(context, what, f"missing input {url} (materialise {layer} first)") from None


def _annotation_sidecar(lake: LakeResource, key: str, context):
    """The video's validated annotation sidecar (`curation.captioning.sidecar`), or None. Raises InputError
    naming the sidecar when it is bad (the partition fails; see the sidecar module for the policy)."""
    from curation.captioning.sidecar import find_sidecar, load_sidecar

    try:
        video = lake.video_entry(key)["url"]
    except InputError:
        return None  # not in the source manifest (materialised without a scan): no source to look beside
    url = find_sidecar(video, lake.settings())
    if url is None:
        return None
    duration = float(_read(lake, "probe", key, context, "clip captions", parquet=False)["duration_s"])
    return load_sidecar(url, duration, lake.settings())


def _caption_source_metadata(table, sidecar) -> dict:
    """Lineage of the captions: how many came from the annotation sidecar and how many from the VLM."""
    from curation.captioning.captioner import caption_sources

    sources = caption_sources(table)
    models = sorted({m for m, s in zip(table.column("model").to_pylist(), sources) if s == "model"})
    prompts = sorted({p for p, s in zip(table.column("prompt_version").to_pylist(), sources) if s == "model"})
    return {
        "num_from_annotation": sources.count("annotation"),
        "num_from_model": sources.count("model"),
        "annotation_file": MetadataValue.path(sidecar.url) if sidecar else "none",
        "annotation_sha256": sidecar.sha256 if sidecar else "",
        "model": ", ".join(models) or "none",
        "prompt_version": ", ".join(prompts) or "none",
    }


def _instructions_report_url(lake: LakeResource, key: str) -> str:
    from curation.captioning.dataset import instructions_report_path

    return instructions_report_path(lake.storage_root, key)


def long_video_sft_defs(deps: list, code_version: str):
    """The stage-5 dataset asset and its check, over `deps`: every video's instructions (per-video mode) or the
    curated shards (shard mode, `assets.shards`); the videos come from `assets.common.dataset_video_keys`."""

    @asset(
        key=LONG_VIDEO_SFT,
        deps=deps,
        group_name=GROUP,
        retry_policy=TRANSIENT_RETRY,
        code_version=code_version,
        kinds={"json"},
        description="Stage-5 long-video SFT dataset: the instruction records of every curated video "
        "(datasets/long_video_sft/records-<hash>.jsonl) and manifest.json (videos, data versions, "
        "failures, question-type counts).",
    )
    def long_video_sft_dataset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.captioning.dataset import build_long_video_sft
        from longvila.layout import dataset_dir

        keys = dataset_video_keys(context.instance, lake)
        t0 = time.perf_counter()
        manifest = build_long_video_sft(lake.storage_root, keys, lake.settings(),
                                        code_versions=per_video_code_versions(context))
        out = dataset_dir(lake.storage_root, "long_video_sft")
        return MaterializeResult(
            data_version=DataVersion(manifest["content_hash"]),
            metadata={
                "path": MetadataValue.path(out), **lineage_metadata(out, manifest),
                "num_records": manifest["num_records"], "num_videos": manifest["num_videos"],
                "failed_videos": json.dumps(manifest["failed"])[:2000], "missing_videos": str(manifest["missing"]),
                "question_types": json.dumps(manifest["question_types"]),
                "seconds": round(time.perf_counter() - t0, 3),
                # per-video instruction versions: what the stage-5 freshness check compares (assets.freshness)
                "video_versions": MetadataValue.json({k: v["data_version"] for k, v in manifest["videos"].items()}),
            },
        )

    @asset_check(asset=LONG_VIDEO_SFT,
                 description="the dataset has records and its manifest matches the records file")
    def sft_dataset_consistent(context, lake: LakeResource) -> AssetCheckResult:
        from curation.captioning.dataset import load_long_video_sft

        try:
            manifest, records = load_long_video_sft(lake.storage_root, lake.settings())
        except InputError as e:
            return AssetCheckResult(passed=False, metadata={"reason": str(e)})
        ok = len(records) == manifest["num_records"] and len(records) > 0
        return AssetCheckResult(passed=ok, metadata={"num_records": len(records),
                                                     "num_videos": manifest["num_videos"]})

    return long_video_sft_dataset, sft_dataset_consistent


def build_caption_defs(cfg: Optional[CaptioningConfig] = None) -> Definitions:
    """Definitions of the caption layer for one configuration (default: from the environment)."""
    with partitioned_checks():
        return _build_caption_defs(cfg)


def _build_caption_defs(cfg: Optional[CaptioningConfig] = None) -> Definitions:
    cfg = cfg or CaptioningConfig.from_env()
    cv = code_versions(cfg)

    @per_video_asset(
        key=CLIP_CAPTIONS,
        deps=[VIDEO_CLIPS, CLIP_FRAMES, VIDEO_PROBE],
        group_name=GROUP,
        code_version=cv["clip_captions"],
        kinds={"parquet"},
        description="One caption per clip: the video's annotation sidecar where it covers the clip "
        "(curation.captioning.sidecar), else the VLM (curation.captioning.captioner). captions/<key>.parquet.",
    )
    def clip_captions(context: AssetExecutionContext, lake: LakeResource,
                      caption_models: CaptionModelsResource) -> MaterializeResult:
        from curation.schemas import table_to_clips
        from curation.captioning.captioner import caption_video

        key = context.partition_key
        clips = table_to_clips(_read(lake, "clips", key, context, "clip captions"))
        frames = _read(lake, "clip_frames", key, context, "clip captions")
        run_cfg = caption_models.config(cfg)
        t0 = time.perf_counter()
        with input_failure(context, "clip captions"):
            sidecar = _annotation_sidecar(lake, key, context)
            table = caption_video(lambda: make_captioner(run_cfg), clips, frames, sidecar)
        secs = time.perf_counter() - t0
        d = table.to_pydict()
        for kind, retryable in ((CONFIG_ERROR, False), (UNAVAILABLE, True)):
            bad = [e for e in d["error"] if e and e.startswith(kind)]
            if bad:
                raise failure(context, "clip captions", f"captioning backend {kind} for {len(bad)} clip(s): {bad[0]}",
                              retryable=retryable)
        out = lake.layer_url("captions", key)
        version, _ = write_table(out, table, lake.settings())
        n_ok = sum(d["ok"])
        tokens = sum(d["tokens"])
        failed = [{"clip": ci, "error": e} for ci, ok, e in zip(d["clip_index"], d["ok"], d["error"]) if not ok]
        return layer_result(
            out, version,
            num_clips=len(clips),
            num_ok=n_ok,
            num_failed=len(clips) - n_ok,
            num_truncated=sum("truncated" in f for f in d["flags"]),
            tokens=tokens,
            seconds=round(secs, 3),
            clips_per_s=round(len(clips) / secs, 3) if secs > 0 else 0.0,
            tokens_per_s=round(tokens / secs, 1) if secs > 0 else 0.0,
            **_caption_source_metadata(table, sidecar),
            failures=MetadataValue.md(md_table(failed) if failed else "none"),
            preview=MetadataValue.md(md_table([
                {"clip": ci, "span_s": f"{s:.1f}-{e:.1f}", "ok": ok, "source": src, "caption": c}
                for ci, s, e, ok, src, c in zip(d["clip_index"], d["start_s"], d["end_s"], d["ok"], d["source"],
                                                d["caption"])])),
        )

    @per_video_check(asset=CLIP_CAPTIONS, additional_deps=[VIDEO_CLIPS],
                     description="every clip of video_clips has exactly one caption row, and it is ok")
    def every_clip_captioned(context, lake: LakeResource) -> AssetCheckResult:
        from curation.schemas import table_to_clips

        key = context.partition_key
        caps = lio.read_parquet(lake.layer_url("captions", key), lake.settings())
        clips = table_to_clips(lio.read_parquet(lake.layer_url("clips", key), lake.settings()))
        r = checks.every_clip_captioned(caps, [c.index for c in clips])
        return AssetCheckResult(passed=r["passed"], severity=AssetCheckSeverity.ERROR, metadata={
            "num_clips": r["num_clips"], "missing": str(r["missing"]), "extra": str(r["extra"]),
            "num_failed": len(r["failed"]), "failed": json.dumps(r["failed"])[:2000]})

    @per_video_check(asset=CLIP_CAPTIONS, description="no ok caption is empty")
    def no_empty_captions(context, lake: LakeResource) -> AssetCheckResult:
        caps = lio.read_parquet(lake.layer_url("captions", context.partition_key), lake.settings())
        r = checks.no_empty_captions(caps)
        return AssetCheckResult(passed=r["passed"], metadata={"empty_clips": str(r["empty"])})

    @per_video_check(asset=CLIP_CAPTIONS,
                     description="duplicate or near-duplicate captions (normalised text / char 3-gram Jaccard >= 0.9)")
    def no_duplicate_captions(context, lake: LakeResource) -> AssetCheckResult:
        caps = lio.read_parquet(lake.layer_url("captions", context.partition_key), lake.settings())
        r = checks.duplicate_captions(caps)
        return AssetCheckResult(passed=r["passed"], severity=AssetCheckSeverity.WARN, metadata={
            "num_pairs": len(r["pairs"]), "threshold": r["threshold"],
            "pairs": MetadataValue.md(md_table(r["pairs"], limit=20) if r["pairs"] else "none")})

    @per_video_asset(
        key=VIDEO_SUMMARY,
        deps=[CLIP_CAPTIONS, VIDEO_PROBE],
        group_name=GROUP,
        code_version=cv["video_summary"],
        kinds={"json"},
        description="Video-level summary from the time-stamped clip captions (LLM, JSON-schema "
        "constrained). summaries/<key>.json; ok=false records the video's failure.",
    )
    def video_summary(context: AssetExecutionContext, lake: LakeResource,
                      caption_models: CaptionModelsResource) -> MaterializeResult:
        from curation.captioning.annotate import captions_from_table

        key = context.partition_key
        caps_table = _read(lake, "captions", key, context, "video summary")
        duration = float(_read(lake, "probe", key, context, "video summary", parquet=False)["duration_s"])
        t0 = time.perf_counter()
        with input_failure(context, "video summary"):
            ann = make_annotator(caption_models.config(cfg))
            rec = ann.summarize(key, captions_from_table(caps_table), duration, num_clips=caps_table.num_rows)
        if rec["error_kind"] in (UNAVAILABLE, CONFIG_ERROR):
            raise failure(context, "video summary", rec["error"], retryable=rec["error_kind"] == UNAVAILABLE)
        out = lake.layer_url("summaries", key)
        version = write_json(out, rec, lake.settings())
        if not rec["ok"]:
            context.log.warning(f"video {key}: {rec['error']}")
        return layer_result(
            out, version,
            ok=rec["ok"], error=str(rec["error"] or ""),
            attempts=rec["attempts"], tokens=rec["tokens"], seconds=round(time.perf_counter() - t0, 3),
            captions_used=rec["num_captions_used"], model=rec["model"],
            prompt_version=rec["prompt_version"],
            title=rec["title"], summary=MetadataValue.md(rec["summary"] or "(none)"),
        )

    @per_video_check(asset=VIDEO_SUMMARY, description="the summary reply was valid (ok)")
    def summary_is_valid(context, lake: LakeResource) -> AssetCheckResult:
        rec = lio.read_json(lake.layer_url("summaries", context.partition_key), lake.settings())
        return AssetCheckResult(passed=bool(rec.get("ok")), metadata={
            "error": str(rec.get("error") or "none"), "attempts": rec.get("attempts", 0)})

    @per_video_asset(
        key=VIDEO_INSTRUCTIONS,
        deps=[VIDEO_SUMMARY, CLIP_CAPTIONS, VIDEO_PROBE, VIDEO_FRAMES],
        group_name=GROUP,
        code_version=cv["video_instructions"],
        kinds={"json"},
        description="LLaVA conversation records (one captioning sample + question-answer pairs over the "
        "seven LongVILA question types) for long-video SFT. instructions/<key>.jsonl + .report.json.",
    )
    def video_instructions(context: AssetExecutionContext, lake: LakeResource,
                           caption_models: CaptionModelsResource) -> MaterializeResult:
        from curation.captioning.annotate import (
            captions_from_table,
            instruction_records,
            instructions_report,
            to_jsonl,
        )

        key = context.partition_key
        caps_table = _read(lake, "captions", key, context, "video instructions")
        summary = _read(lake, "summaries", key, context, "video instructions", parquet=False)
        duration = float(_read(lake, "probe", key, context, "video instructions", parquet=False)["duration_s"])
        try:
            video = lake.video_entry(key).get("url") or key
        except InputError:
            video = key
        t0 = time.perf_counter()
        with input_failure(context, "video instructions"):
            ann = make_annotator(caption_models.config(cfg))
            qa = ann.question_answers(key, captions_from_table(caps_table), duration, summary.get("summary", ""))
        if qa["error_kind"] in (UNAVAILABLE, CONFIG_ERROR):
            raise failure(context, "video instructions", qa["error"], retryable=qa["error_kind"] == UNAVAILABLE)
        records = instruction_records(key, summary, qa, video=video, frames_path=lake.layer_url("video_frames", key),
                                      duration_s=duration)
        report = instructions_report(qa, summary, records)
        out = lake.layer_url("instructions", key)
        version = write_versioned(out, to_jsonl(records).encode("utf-8"), lake.settings())
        lio.write_json(_instructions_report_url(lake, key), report, lake.settings())
        if not qa["ok"]:
            context.log.warning(f"video {key}: {qa['error']}")
        return layer_result(
            out, version,
            ok=qa["ok"], error=str(qa["error"] or ""),
            num_records=len(records), num_qa=len(qa["qa"]), num_rejected=len(qa["rejected"]),
            attempts=qa["attempts"], tokens=qa["tokens"], seconds=round(time.perf_counter() - t0, 3),
            question_types=json.dumps(report["question_types"]), model=qa["model"], prompt_version=qa["prompt_version"],
            preview=MetadataValue.md(md_table([
                {"type": r["question_type"], "span_s": f"{r['frames']['start_s']:.0f}-{r['frames']['end_s']:.0f}",
                 "question": r["conversations"][0]["value"].split("\n", 1)[-1],
                 "answer": r["conversations"][1]["value"]}
                for r in records])),
        )

    def _records(lake, key):
        from curation.captioning.annotate import read_jsonl

        url = lake.layer_url("instructions", key)
        return read_jsonl(lio.read_bytes(url, lake.settings()).decode("utf-8"), url)

    @per_video_check(asset=VIDEO_INSTRUCTIONS,
                     description="all seven question types present (absent ones are listed)")
    def question_types_covered(context, lake: LakeResource) -> AssetCheckResult:
        r = checks.question_types_present(_records(lake, context.partition_key))
        return AssetCheckResult(passed=r["passed"], severity=AssetCheckSeverity.WARN, metadata={
            "counts": json.dumps(r["counts"]), "absent": ", ".join(r["absent"]) or "none"})

    @per_video_check(asset=VIDEO_INSTRUCTIONS, additional_deps=[VIDEO_PROBE],
                     description="every record's time span lies inside [0, duration] and start <= end")
    def timestamps_in_bounds(context, lake: LakeResource) -> AssetCheckResult:
        key = context.partition_key
        duration = float(lio.read_json(lake.layer_url("probe", key), lake.settings())["duration_s"])
        r = checks.timestamps_in_bounds(_records(lake, key), duration)
        return AssetCheckResult(passed=r["passed"], metadata={
            "duration_s": duration, "num_out_of_bounds": len(r["out_of_bounds"]),
            "out_of_bounds": json.dumps(r["out_of_bounds"][:20])})

    @per_video_check(asset=VIDEO_INSTRUCTIONS,
                     description="the question-answer reply was valid (else the video's failure record is shown)")
    def instructions_generated(context, lake: LakeResource) -> AssetCheckResult:
        rep = lio.read_json(_instructions_report_url(lake, context.partition_key), lake.settings())
        return AssetCheckResult(passed=bool(rep.get("ok")), metadata={
            "error": str(rep.get("error") or "none"), "attempts": rep.get("attempts", 0),
            "attempt_errors": json.dumps(rep.get("attempt_errors", []))[:2000]})

    long_video_sft_dataset, sft_dataset_consistent = long_video_sft_defs(
        [AssetDep(VIDEO_INSTRUCTIONS, partition_mapping=AllPartitionMapping())], cv["long_video_sft_dataset"])

    return Definitions(
        assets=[clip_captions, video_summary, video_instructions, long_video_sft_dataset],
        asset_checks=[every_clip_captioned, no_empty_captions, no_duplicate_captions, summary_is_valid,
                      question_types_covered, timestamps_in_bounds, instructions_generated, sft_dataset_consistent],
        resources={"caption_models": CaptionModelsResource.from_config(cfg)},
    )


defs = build_caption_defs()
