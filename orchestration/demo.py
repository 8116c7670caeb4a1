"""`longvila demo`: the whole pipeline on a sample corpus, recorded in the real Dagster instance.

    longvila demo [--source URL] [--storage URL] [--skip-generate]

1. Unless ``--source`` is given, generate the demo corpus (`curation.demo_corpus.make_demo_corpus`:
   lesson videos with annotation sidecars, plus the synthetic sample corpus) into ``data/raw``
   (skipped when ``data/raw/.corpus.json`` says it is already there, or with
   ``--skip-generate``).
2. Register the videos as ``videos`` partitions in the instance under DAGSTER_HOME (default
   ``.dagster/``), with the same scan the new-video sensor uses (`longvila.sources`, through
   `orchestration.sensors.register_videos`), and write ``<storage>/manifest/videos.json``.
3. Materialise every materialisable asset of the merged Definitions (`orchestration.definitions`), in
   dependency order, in batches of assets that share a partitioning: the per-video assets once per
   video partition (one run each, so a bad video fails only its own run; the demo goes on), assets with
   other partitions once per partition key, and unpartitioned assets (datasets, training stages,
   benchmarks added by other layers) in one run. Nothing is hard-coded: whatever the Definitions hold
   is run. Asset checks run with their assets.
4. Print a summary: one line per video run (status, seconds, failure reason), then one section per asset
   group present in the Definitions (`GROUP_SUMMARIES`: shots/clips/frames per video, captions and the
   SFT dataset, losses and the lineage audit of stage 5, benchmark headlines), read from the instance's
   latest materialisations, then what the curriculum learned (`learning_summary`: V-NIAH and passkey
   accuracy per stage, checked against the smoke recipe's learning targets), then failures. Exit status
   1 if anything failed or a learning target was missed (after running everything else), 0 otherwise.

Runs use the in-process executor and the real instance (`DagsterInstance.get()`), so ``dagster dev
-w workspace.yaml`` afterwards shows their history, materialisations, checks and data versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Optional

CORPUS_MARKER = ".corpus.json"


@dataclass
class BatchOutcome:
    label: str  # partition key or "(unpartitioned)"
    assets: list[str]
    success: bool
    seconds: float
    run_id: str
    failures: list[dict] = field(default_factory=list)  # {"step", "description", "metadata"}
    group_seconds: dict = field(default_factory=dict)  # asset group -> seconds of its steps (checks included)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="generate a sample corpus and materialise every asset (curation, datasets, training, eval)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", help="fsspec URL of raw videos (default LONGVILA_SOURCE or data/raw); "
                   "when given, no corpus is generated")
    p.add_argument("--storage", help="fsspec URL of the lake (default LONGVILA_STORAGE or data/lake)")
    p.add_argument("--skip-generate", action="store_true", help="do not generate the sample corpus")
    p.add_argument("--verbose", action="store_true", help="show Dagster's own step logs (INFO)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    return run_demo(source=args.source, storage=args.storage, skip_generate=args.skip_generate,
                    log_level="INFO" if args.verbose else "CRITICAL")


def generate_corpus(dest: str, log=print) -> dict:
    """Make the sample corpus in `dest` unless its marker says it is already complete."""
    d = Path(dest)
    marker = d / CORPUS_MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        if all((d / name).exists() for name in info):
            log(f"sample corpus already in {d} ({len(info)} videos)")
            return info
    from curation.demo_corpus import make_demo_corpus

    t0 = time.perf_counter()
    info = make_demo_corpus(str(d))
    from longvila.io import write_json

    write_json(str(marker), info)
    log(f"generated sample corpus in {d}: {len(info)} videos in {time.perf_counter() - t0:.1f}s")
    return info


def _failures(result) -> list[dict]:
    out = []
    for ev in result.all_events:
        if ev.event_type_value != "STEP_FAILURE":
            continue
        data = ev.step_failure_data
        uf = data.user_failure_data if data else None
        if uf is not None:
            desc = uf.description or ""
            meta = {k: getattr(v, "value", v) for k, v in (uf.metadata or {}).items()}
        else:
            err = data.error if data else None
            desc = (err.message.strip().splitlines() or [""])[0] if err else "step failed"
            # a nested cause (e.g. the library's exception) carries the useful message
            while err is not None and err.cause is not None:
                err = err.cause
                desc = err.message.strip().splitlines()[0] if err.message else desc
            meta = {}
        out.append({"step": ev.step_key, "description": desc, "metadata": meta})
    return out


def plan_batches(asset_graph, keys) -> list[tuple[object, list]]:
    """Group `keys` into dependency-ordered batches of assets that share a partitions definition.

    Returns [(partitions_def or None, [AssetKey, ...])]. Within a batch Dagster orders the steps;
    between batches every upstream (inside `keys`) comes first.
    """
    keys = set(keys)
    done: set = set()
    batches: list[tuple[object, list]] = []

    def parents(k):
        return {p for p in asset_graph.get(k).parent_keys if p in keys}

    def pdef(k):
        return asset_graph.get(k).partitions_def

    while len(done) < len(keys):
        ready = sorted((k for k in keys - done if parents(k) <= done), key=lambda k: k.to_user_string())
        if not ready:  # a cycle cannot happen in an asset graph, but never loop forever
            ready = sorted(keys - done, key=lambda k: k.to_user_string())
        # prefer partitioned batches first (per-video work feeds the aggregates)
        ready.sort(key=lambda k: (pdef(k) is None, k.to_user_string()))
        group_def = pdef(ready[0])
        batch: set = set()
        grew = True
        while grew:  # absorb everything of the same partitioning whose parents are done or in the batch
            grew = False
            for k in keys - done - batch:
                if pdef(k) == group_def and parents(k) <= done | batch:
                    batch.add(k)
                    grew = True
        batches.append((group_def, sorted(batch, key=lambda k: k.to_user_string())))
        done |= batch
    return batches


def _group_seconds(defs, instance, run_id: str, asset_keys) -> dict:
    """Seconds spent per asset group in a run (an asset check's step counts for its asset's group)."""
    graph = defs.resolve_asset_graph()
    ops = {k.to_python_identifier(): (graph.get(k).group_name or "default") for k in asset_keys}
    out: dict = {}
    for st in instance.get_run_step_stats(run_id):
        if st.start_time is None or st.end_time is None:
            continue
        match = max((op for op in ops if st.step_key == op or st.step_key.startswith(op + "_")),
                    key=len, default=None)
        group = ops[match] if match else "other"
        out[group] = out.get(group, 0.0) + (st.end_time - st.start_time)
    return out


def run_batch(defs, instance, asset_keys, partition_key: Optional[str], label: str,
              log_level: str = "CRITICAL") -> BatchOutcome:
    """One in-process run of `asset_keys` (and their checks) for one partition key (or none)."""
    job = defs.resolve_implicit_job_def_def_for_assets(asset_keys)
    t0 = time.perf_counter()
    result = job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=list(asset_keys),
        raise_on_error=False,
        tags={"longvila/launched_by": "demo"},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    return BatchOutcome(
        label=label,
        assets=[k.to_user_string() for k in asset_keys],
        success=result.success,
        seconds=time.perf_counter() - t0,
        run_id=result.run_id,
        failures=_failures(result),
        group_seconds=_group_seconds(defs, instance, result.run_id, asset_keys),
    )


def materialize_all(defs, instance, log=print, log_level: str = "CRITICAL") -> list[BatchOutcome]:
    """Materialise every materialisable asset of `defs` (see the module docstring)."""
    from assets.partitions import videos

    asset_graph = defs.resolve_asset_graph()
    keys = [k for k in asset_graph.materializable_asset_keys if asset_graph.get(k).is_executable]
    outcomes: list[BatchOutcome] = []
    for pdef, batch in plan_batches(asset_graph, keys):
        names = ", ".join(k.to_user_string() for k in batch)
        if pdef is None:
            log(f"materialising {len(batch)} unpartitioned asset(s): {names}")
            outcomes.append(run_batch(defs, instance, batch, None, "(unpartitioned)", log_level))
            _log_outcome(outcomes[-1], log)
            continue
        if getattr(pdef, "name", None) == videos.name:
            pkeys = sorted(instance.get_dynamic_partitions(videos.name))
        else:
            pkeys = list(pdef.get_partition_keys(dynamic_partitions_store=instance))
        log(f"materialising {len(batch)} asset(s) for {len(pkeys)} partition(s): {names}")
        for pk in pkeys:
            outcomes.append(run_batch(defs, instance, batch, pk, pk, log_level))
            _log_outcome(outcomes[-1], log)
    return outcomes


# What `make demo` must show with the smoke recipe (issue: the demo proves learning, not only plumbing).
NIAH_TARGET = 0.9  # stage 5, at 4x its training frames, over all depths, held-out needles
PASSKEY_TARGET = 0.9  # stage 4, at 4x stage 3's context
PASSKEY_MARGIN = 0.3  # stage 3 at the same length is at least this much lower


def learning_summary(instance, recipe_name: Optional[str] = None) -> tuple[list[str], list[str]]:
    """The per-stage table of V-NIAH (by frame count) and passkey (by length) accuracy from the latest
    benchmark materialisations, then the smoke recipe's learning targets; returns (lines, missed targets).
    Empty when no benchmark ran."""
    from dagster import AssetKey

    from assets.common import latest_metadata
    from training.recipes import STAGE_NAMES, load_recipe

    recipe = load_recipe(recipe_name or os.environ.get("LONGVILA_RECIPE", "smoke"))
    niah = {n: latest_metadata(instance, AssetKey(f"niah_stage{i}")) for i, n in enumerate(STAGE_NAMES, 1)}
    passkey = {n: latest_metadata(instance, AssetKey(f"passkey_stage{i}")) for i, n in enumerate(STAGE_NAMES, 1)}
    if not any(niah.values()) and not any(passkey.values()):
        return [], []
    frames = sorted({int(k.split("_")[1]) for md in niah.values() for k in md if k.startswith("accuracy_") and
                     k.endswith("_frames")})
    lengths = sorted({int(k.split("_")[1]) for md in passkey.values() for k in md if k.endswith("_tokens")})
    head = f"{'stage':<26} {'V-NIAH':>6} " + " ".join(f"{f'{n} fr':>6}" for n in frames) + "  " + " ".join(
        f"{f'pk {n}':>8}" for n in lengths)
    lines = [head]
    for name in STAGE_NAMES:
        a, p = niah[name], passkey[name]
        cell = lambda md, k: f"{md[k]:.2f}" if k in md else "-"  # noqa: E731
        lines.append(f"{name:<26} {cell(a, 'accuracy'):>6} " + " ".join(f"{cell(a, f'accuracy_{n}_frames'):>6}"
                                                                         for n in frames)
                     + "  " + " ".join(f"{cell(p, f'accuracy_{n}_tokens'):>8}" for n in lengths))
    if recipe.name != "smoke":
        return lines, []
    if os.environ.get("LONGVILA_TRAIN_MAX_STEPS"):  # a plumbing run: the curriculum's steps were capped
        lines.append(f"(steps capped at LONGVILA_TRAIN_MAX_STEPS={os.environ['LONGVILA_TRAIN_MAX_STEPS']}: "
                     "the learning targets are not checked)")
        return lines, []
    n5 = 4 * recipe.stage(5).num_frames
    n3 = 4 * recipe.stage(3).max_length
    v5 = niah[STAGE_NAMES[4]].get(f"accuracy_{n5}_frames")
    p4, p3 = (passkey[STAGE_NAMES[i]].get(f"accuracy_{n3}_tokens") for i in (3, 2))
    checks = [
        (f"stage 5 V-NIAH at {n5} frames (4x its {n5 // 4} training frames) >= {NIAH_TARGET}", v5,
         v5 is not None and v5 >= NIAH_TARGET),
        (f"stage 4 passkey at {n3} tokens (4x stage 3's {n3 // 4}) >= {PASSKEY_TARGET}", p4,
         p4 is not None and p4 >= PASSKEY_TARGET),
        (f"stage 3 passkey at {n3} tokens at least {PASSKEY_MARGIN} below stage 4", p3,
         p3 is not None and p4 is not None and p3 <= p4 - PASSKEY_MARGIN),
    ]
    lines.append("targets of the smoke curriculum:")
    lines += [f"  {'met   ' if ok else 'MISSED'} {what}: {'-' if v is None else f'{v:.2f}'}" for what, v, ok in checks]
    return lines, [f"learning target missed: {what}" for what, _, ok in checks if not ok]


def _log_outcome(o: BatchOutcome, log) -> None:
    if o.success:
        log(f"  ok     {o.label:<40} {o.seconds:7.2f}s")
    else:
        first = o.failures[0]["description"] if o.failures else "failed"
        log(f"  FAILED {o.label:<40} {o.seconds:7.2f}s  {first}")


def run_demo(
    source: Optional[str] = None,
    storage: Optional[str] = None,
    skip_generate: bool = False,
    modules: Optional[list[ModuleType]] = None,
    log=print,
    log_level: str = "CRITICAL",
) -> int:
    """The `longvila demo` command; `modules` restricts the asset modules (tests). Returns the exit code."""
    from longvila.settings import default_source, project_root
    from orchestration.instance import ensure_dagster_home

    if source:
        os.environ["LONGVILA_SOURCE"] = source
    if storage:
        os.environ["LONGVILA_STORAGE"] = storage
    home = ensure_dagster_home()
    t_start = time.perf_counter()
    src = default_source()
    if not source and not skip_generate:
        generate_corpus(src, log)
    log(f"source  {src}\nstorage {os.environ.get('LONGVILA_STORAGE') or str(project_root() / 'data' / 'lake')}"
        f"\nDAGSTER_HOME {home}")

    from dagster import DagsterInstance

    from orchestration import definitions as D
    from orchestration.sensors import register_videos

    defs = D.build_defs(modules=modules) if modules else D.defs
    lake = defs.resources["lake"]
    instance = DagsterInstance.get()
    scan = register_videos(instance, lake, log=log)
    log(f"scan: {scan.summary()}")
    for rel, why in scan.rejected.items():
        log(f"  rejected {rel!r}: {why}")

    outcomes = materialize_all(defs, instance, log, log_level)
    total = time.perf_counter() - t_start

    manifest = scan.manifest.get("videos", {})
    per_video = [o for o in outcomes if o.label in manifest]
    log("\n== per-video runs ==")
    for o in per_video:
        rel = manifest[o.label].get("relpath", o.label)
        status = "ok" if o.success else "FAILED"
        log(f"  {status:<6} {o.seconds:7.2f}s  {rel}")
    for heading, lines in group_summaries(defs, instance):
        log(f"\n== {heading} ==")
        for line in lines:
            log("  " + line)
    learned, missed = learning_summary(instance)
    if learned:
        log("\n== what the curriculum learned (V-NIAH: held-out digit needles; passkey: key hidden in long text) ==")
        for line in learned:
            log("  " + line)
    groups: dict = {}
    for o in outcomes:
        for g, sec in o.group_seconds.items():
            groups[g] = groups.get(g, 0.0) + sec
    log("\n== time per asset group (sum of step durations, checks included) ==")
    for g, sec in sorted(groups.items(), key=lambda kv: -kv[1]):
        log(f"  {g:<24} {sec:8.1f}s")
    failed = [o for o in outcomes if not o.success]
    video_s = sum(o.seconds for o in per_video)
    log(f"\n{len(outcomes)} run(s), {len(failed)} failed; per-video runs {video_s:.1f}s "
        f"for {len(per_video)} video(s); total {total:.1f}s")
    if failed or missed:
        log("\n== failures ==")
        for o in failed:
            name = manifest.get(o.label, {}).get("relpath", o.label)
            for f in o.failures or [{"step": "?", "description": "run failed"}]:
                log(f"  {name}: [{f['step']}] {f['description']}")
        for m in missed:
            log(f"  {m}")
        return 1
    return 0


# ------------------------------------------------------------------------------------ summaries
# One function per asset group: cheap (it reads the instance's latest materialisations, computes nothing).


def curation_summary(instance) -> list[str]:
    from assets.common import latest_metadata
    from assets.curation import CLIP_FRAMES, RAW_VIDEO, VIDEO_CLIPS, VIDEO_FRAMES, VIDEO_PROBE, VIDEO_SHOTS
    from assets.partitions import videos

    lines = [f"{'video':<44} {'dur_s':>7} {'shots':>6} {'clips':>6} {'clip_fr':>8} {'vid_fr':>7} {'secs':>7}"]
    for k in sorted(instance.get_dynamic_partitions(videos.name)):
        raw, probe, shots, clips, cf, vf = (latest_metadata(instance, a, k) for a in (
            RAW_VIDEO, VIDEO_PROBE, VIDEO_SHOTS, VIDEO_CLIPS, CLIP_FRAMES, VIDEO_FRAMES))
        name = str(raw.get("relpath") or k)
        secs = sum(float(m.get("seconds", 0) or 0) for m in (probe, shots, cf, vf))
        lines.append(f"{name[:44]:<44} {probe.get('duration_s', float('nan')):>7.1f} {shots.get('num_shots', '-'):>6} "
                     f"{clips.get('num_clips', '-'):>6} {cf.get('num_frames', '-'):>8} {vf.get('num_frames', '-'):>7} "
                     f"{secs:>7.2f}")
    return lines if len(lines) > 1 else []


def captions_summary(instance) -> list[str]:
    from assets.captions import CLIP_CAPTIONS, LONG_VIDEO_SFT, VIDEO_INSTRUCTIONS, VIDEO_SUMMARY
    from assets.common import latest_metadata
    from assets.partitions import videos

    lines = [f"{'video':<30} {'clips':>5} {'cap_ok':>6} {'clips/s':>8} {'summary':>8} {'records':>8} {'types':>6}"]
    for k in sorted(instance.get_dynamic_partitions(videos.name)):
        c, s, i = (latest_metadata(instance, a, k) for a in (CLIP_CAPTIONS, VIDEO_SUMMARY, VIDEO_INSTRUCTIONS))
        ntypes = sum(1 for v in json.loads(i.get("question_types") or "{}").values() if v)
        lines.append(f"{k[:30]:<30} {c.get('num_clips', '-'):>5} {c.get('num_ok', '-'):>6} "
                     f"{c.get('clips_per_s', 0):>8} "
                     f"{str(s.get('ok', '-')):>8} {i.get('num_records', '-'):>8} {ntypes:>4}/7")
    d = latest_metadata(instance, LONG_VIDEO_SFT)
    if d:
        lines.append(f"long_video_sft_dataset: {d.get('num_records')} records from {d.get('num_videos')} videos "
                     f"(failed: {d.get('failed_videos')})")
    lines.append("note: with the smoke models (tiny random weights) captions and answers are meaningless text")
    return lines


def training_summary(instance) -> list[str]:
    from assets.common import data_version, latest_record, metadata_values
    from assets.training import STAGE_KEYS
    from orchestration.lineage import lineage, to_markdown

    lines = []
    for key in STAGE_KEYS:
        rec = latest_record(instance, key)
        if rec is None:
            lines.append(f"{key.to_user_string()}: not materialised")
            continue
        md = metadata_values(rec)
        fl, tps = md.get("final_loss"), md.get("tokens_per_s")
        lines.append(f"{key.to_user_string()}: final loss {fl if fl is None else round(float(fl), 4)}, "
                     f"{0 if tps is None else round(float(tps))} tokens/s, checkpoint {(data_version(rec) or '')[:12]}")
    if latest_record(instance, STAGE_KEYS[-1]) is not None:  # same audit as `longvila lineage stage5_long_sft`
        try:
            lines += ["", *to_markdown(lineage(instance, STAGE_KEYS[-1].to_user_string())).rstrip("\n").splitlines()]
        except LookupError as e:
            lines.append(f"lineage audit unavailable: {e}")
    return lines


def _benchmark_line(bench: str, name: str, md: dict) -> str:
    if bench == "niah":
        return (f"{name}: accuracy {md.get('accuracy', float('nan')):.3f} over {md.get('samples')} samples "
                f"({md.get('scoring')}); heatmap {md.get('heatmap_path')}")
    if bench == "videomme":
        subs = f", with subtitles {md['accuracy_with_subtitles']:.3f}" if "accuracy_with_subtitles" in md else ""
        return (f"{name}: accuracy {md.get('accuracy', float('nan')):.3f} on {md.get('questions')} questions{subs}; "
                f"{md.get('no_answer')} replies named no option ({md.get('scoring')}, {md.get('inputs')})")
    return (f"{name}: similarity {md.get('similarity_combined', float('nan')):.3f}, judge {md.get('judge')} "
            f"(invalid {md.get('invalid_judgements')}) on {md.get('videos')} videos")


def evaluation_summary(instance) -> list[str]:
    from dagster import AssetKey

    from assets.common import latest_metadata
    from assets.evaluation import HEADLINE, eval_stages

    lines = [_benchmark_line(bench, f"{bench}_{st}", md) for st in eval_stages() for bench in HEADLINE
             if (md := latest_metadata(instance, AssetKey(f"{bench}_{st}")))]
    if lines:
        lines.append("(with the smoke recipe, VideoMME and the caption score stay near chance: the smoke captions and "
                     "answers come from random models; V-NIAH and passkey show what it learned, table below)")
    return lines


GROUP_SUMMARIES = {"curation": curation_summary, "captions": captions_summary, "training": training_summary,
                   "evaluation": evaluation_summary}


def group_summaries(defs, instance) -> list[tuple[str, list[str]]]:
    """(heading, lines) for each asset group of `defs` that has a summary and something to say."""
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.materializable_asset_keys}
    out = []
    for group, summarise in GROUP_SUMMARIES.items():
        if group not in groups:
            continue
        try:
            lines = summarise(instance)
        except Exception as e:  # noqa: BLE001 - a summary must never hide the run results
            lines = [f"(summary failed: {type(e).__name__}: {e})"]
        if lines:
            out.append((group, lines))
    return out


if __name__ == "__main__":  # python -m orchestration.demo
    ap = argparse.ArgumentParser(prog="longvila")
    register(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["demo", *sys.argv[1:]])
    sys.exit(a.func(a))
