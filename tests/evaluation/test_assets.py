"""Dagster benchmark assets: materialisation on a smoke checkpoint, metadata, checks, regression flag."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, Definitions, materialize

import assets.evaluation as ae
from longvila import layout
from assets.resources import LakeResource

SETTINGS = dict(niah_frame_counts=[2, 4], niah_depths=[0.0, 100.0], niah_needles=1, niah_frame_size=48,
                num_frames=2, max_caption_videos=2, videomme_max_new_tokens=2, caption_max_new_tokens=8)


@pytest.fixture(scope="module")
def lake(tmp_path_factory, smoke_checkpoint, haystack_video) -> str:
    """A lake with the stage-5 checkpoint and one video's `video_frames` layer file (the haystack)."""
    from curation.frames import sample_video_frames
    from longvila import io as lio

    root = tmp_path_factory.mktemp("lake")
    shutil.copytree(smoke_checkpoint, layout.checkpoint_dir(str(root), "stage5_long_sft"))
    lio.write_parquet(sample_video_frames(haystack_video, fps=1.0, max_frames=8, size=64),
                      layout.layer_path(str(root), "video_frames", "haystack-0123abcd"))
    return str(root)


def _resources(lake, **over):
    return {"lake": LakeResource(storage=lake), "eval_settings": ae.EvalSettings(**{**SETTINGS, **over})}


def test_definitions_load_and_name_the_assets():
    defs = ae.build_evaluation_defs(["stage3", "stage5"])
    keys = {k.to_user_string() for k in Definitions.merge(defs, Definitions(
        resources={"lake": LakeResource()})).resolve_all_asset_keys()}
    assert {"niah_stage5", "videomme_stage5", "caption_score_stage5", "niah_stage3"} <= keys
    a, checks = ae.build_stage_benchmarks("stage5")
    assert {str(d.key.path[0]) for d in a} == {"niah_stage5", "videomme_stage5", "caption_score_stage5"}
    deps = {k.to_user_string() for d in a for k in d.asset_deps[d.key]}
    assert deps == {"stage5_long_sft"}
    with pytest.raises(ValueError):
        import os

        os.environ["LONGVILA_EVAL_STAGES"] = "stage9"
        try:
            ae.eval_stages()
        finally:
            del os.environ["LONGVILA_EVAL_STAGES"]


def test_materialise_all_benchmarks_with_metadata_and_checks(lake):
    inst = DagsterInstance.ephemeral()
    a, c = ae.build_stage_benchmarks("stage5")
    res = materialize([*a, *c], resources=_resources(lake), instance=inst)
    assert res.success
    mats = {e.asset_key.to_user_string(): e.materialization.metadata for e in res.get_asset_materialization_events()}
    niah = mats["niah_stage5"]
    assert 0.0 <= niah["accuracy"].value <= 1.0 and niah["samples"].value == 4
    assert niah["scoring"].value == "teacher_forced_greedy"
    assert niah["haystack"].value.startswith("video_frames:") and "haystack-0123abcd" in niah["haystack"].value
    png_md = niah["heatmap"].value
    assert png_md.startswith("![V-NIAH heatmap](data:image/png;base64,")
    assert base64.b64decode(png_md.split(",", 1)[1].rstrip(")"))[:4] == b"\x89PNG"
    assert Path(niah["heatmap_path"].value).read_bytes()[:4] == b"\x89PNG"
    assert "| depth \\ frames | 2 | 4 |" in niah["grid"].value
    vm = mats["videomme_stage5"]
    assert vm["questions"].value == 9 and vm["errors"].value == 0 and vm["inputs"].value == "generated fixture"
    assert "accuracy_with_subtitles" in vm and "accuracy_short" in vm and "| duration |" in vm["table"].value
    cap = mats["caption_score_stage5"]
    assert cap["videos"].value == 2 and cap["references"].value == "fixture references"
    assert 0.0 <= cap["similarity_combined"].value <= 1.0
    # default judge: the tiny smoke LLM with schema-constrained replies -> every score valid, in 1..5
    assert cap["judge"].value == "local:smoke" and cap["invalid_judgements"].value == 0
    judged = {k: v.value for k, v in cap.items() if k.startswith("judge_") and isinstance(v.value, float)}
    assert judged and all(1.0 <= v <= 5.0 for v in judged.values()), judged
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in res.get_asset_check_evaluations()}
    assert checks[("caption_score_stage5", "judge_replies_valid")]
    assert checks[("niah_stage5", "grid_complete")] and checks[("videomme_stage5", "all_videos_found")]
    assert checks[("niah_stage5", "no_regression")]  # first materialisation: nothing to compare
    assert (Path(lake) / "eval" / "videomme" / "stage5_long_sft" / "results.json").exists()
    from orchestration.demo import evaluation_summary

    lines = evaluation_summary(inst)
    assert any(line.startswith("niah_stage5: accuracy") for line in lines) and "near chance" in lines[-1]


def test_regression_against_the_previous_materialisation(lake):
    inst = DagsterInstance.ephemeral()
    key = AssetKey("niah_stage5")
    # a previous run that scored perfectly
    inst.report_runless_asset_event(AssetMaterialization(asset_key=key, metadata={"accuracy": 1.0}))
    a, c = ae.build_stage_benchmarks("stage5")
    niah = [x for x in a if x.key == key]
    check = [x for x in c if key in {k.asset_key for k in x.check_keys}]
    res = materialize([*niah, *check], resources=_resources(lake, regression_tolerance=0.05), instance=inst,
                      raise_on_error=False)
    assert res.success  # a WARN check does not fail the run
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}["no_regression"]
    cur = ev.metadata["current"].value
    assert ev.metadata["previous"].value == 1.0
    assert ev.passed == (cur >= 0.95)
    if not ev.passed:
        assert "regression" in ev.description
    # the helpers directly
    prev, cur2 = ae.previous_and_current(inst, key, "accuracy")
    assert prev == 1.0 and cur2 == cur
    assert not ae.regression_result(0.8, 0.7, 0.05, "accuracy").passed
    assert ae.regression_result(0.8, 0.76, 0.05, "accuracy").passed
    assert ae.regression_result(None, 0.5, 0.05, "accuracy").passed
    assert not ae.regression_result(0.5, None, 0.05, "accuracy").passed


def test_checkpoint_from_the_stage_metadata_or_the_trainer_export(lake, tmp_path, smoke_checkpoint):
    from dagster import build_asset_context

    inst = DagsterInstance.ephemeral()
    res = LakeResource(storage=lake)
    ctx = build_asset_context(instance=inst)
    assert ae.resolve_checkpoint(ctx, res, "stage5_long_sft") == layout.checkpoint_dir(lake, "stage5_long_sft")
    # the trainer exports <checkpoints>/<stage>/final
    other = tmp_path / "lake2"
    shutil.copytree(smoke_checkpoint, layout.checkpoint_dir(str(other), "stage5_long_sft") + "/final")
    assert ae.resolve_checkpoint(ctx, LakeResource(storage=str(other)), "stage5_long_sft").endswith("/final")
    # the training asset's metadata wins (key "checkpoint", as assets/training.py reports it)
    inst.report_runless_asset_event(AssetMaterialization(asset_key="stage5_long_sft",
                                                         metadata={"checkpoint": smoke_checkpoint}))
    assert ae.resolve_checkpoint(ctx, res, "stage5_long_sft") == smoke_checkpoint


def test_missing_checkpoint_fails_with_a_clear_message(tmp_path):
    a, _ = ae.build_stage_benchmarks("stage5")
    niah = [x for x in a if x.key == AssetKey("niah_stage5")]
    res = materialize(niah, resources=_resources(str(tmp_path)), instance=DagsterInstance.ephemeral(),
                      raise_on_error=False)
    assert not res.success
    failure = [e for e in res.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "checkpoint of stage5_long_sft not found" in str(failure.event_specific_data.error.message)
