"""Training assets through Dagster Pipes on a small materialised graph, the lineage audit, the stage-5
checkpoint answering a question in a fresh process, and staleness after a video changes.

Upstream curation/caption layers are stand-ins with the real asset keys that write the real formats
(clip frames / video frames Parquet, caption Parquet, LLaVA instruction JSONL); the long-video SFT
dataset is built by the real `curation.captioning.dataset.build_long_video_sft`.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from training.recipes import load_recipe
from dagster import (
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    DataVersion,
    Definitions,
    MaterializeResult,
    asset,
    in_process_executor,
    materialize,
)

from longvila import io as lio
from longvila import layout
from assets.partitions import videos
from assets.resources import LakeResource
from training.config import TRAINER_VERSION

KEYS = ["alpha-0000000a", "beta-0000000b"]
STAGES = ["stage1_alignment", "stage2_pretraining", "stage3_short_sft", "stage4_context_extension", "stage5_long_sft"]
DATASET_ASSETS = ["stage1_dataset", "stage2_dataset", "stage3_dataset", "stage4_dataset", "long_video_sft_dataset"]
REPO = Path(__file__).resolve().parents[2]


def _jpeg(seed: bytes, i: int) -> bytes:
    import io

    from PIL import Image

    h = hashlib.sha256(seed + bytes([i])).digest()
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (h[0], h[1], h[2])).save(buf, format="JPEG")
    return buf.getvalue()


def standin_assets(source: Path):
    """raw_video -> clip_frames, video_frames -> clip_captions -> video_instructions -> long_video_sft_dataset."""

    @asset(key="raw_video", partitions_def=videos, code_version="standin-raw-1")
    def raw_video(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        data = (source / f"{context.partition_key}.bin").read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        # like curation's probe layer: the raw sha256 the datasets' lineage tables read
        lio.write_json(layout.layer_path(lake.storage_root, "probe", context.partition_key), {"sha256": sha})
        return MaterializeResult(data_version=DataVersion(sha),
                                 metadata={"path": str(source / f"{context.partition_key}.bin")})

    def _seed(k):
        return (source / f"{k}.bin").read_bytes()

    @asset(key="clip_frames", partitions_def=videos, deps=["raw_video"], code_version="standin-frames-1")
    def clip_frames(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        k = context.partition_key
        rows = [(c, f, c * 50 + f, _jpeg(_seed(k), 10 * c + f)) for c in range(3) for f in range(4)]
        t = pa.table({"clip_index": pa.array([r[0] for r in rows], pa.int32()),
                      "frame_index_in_clip": pa.array([r[1] for r in rows], pa.int32()),
                      "frame_number": pa.array([r[2] for r in rows], pa.int64()),
                      "pts_s": [r[2] / 25 for r in rows], "width": pa.array([32] * len(rows), pa.int32()),
                      "height": pa.array([32] * len(rows), pa.int32()),
                      "jpeg": pa.array([r[3] for r in rows], pa.binary())})
        url = layout.layer_path(lake.storage_root, "clip_frames", k)
        lio.write_parquet(t, url)
        return MaterializeResult(data_version=DataVersion(lio.sha256_file(url)))

    @asset(key="video_frames", partitions_def=videos, deps=["raw_video"], code_version="standin-vframes-1")
    def video_frames(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        k = context.partition_key
        t = pa.table({"frame_number": pa.array(list(range(0, 160, 10)), pa.int64()),
                      "pts_s": [i / 2.5 for i in range(16)], "width": pa.array([32] * 16, pa.int32()),
                      "height": pa.array([32] * 16, pa.int32()),
                      "jpeg": pa.array([_jpeg(_seed(k), 100 + i) for i in range(16)], pa.binary())})
        url = layout.layer_path(lake.storage_root, "video_frames", k)
        lio.write_parquet(t, url)
        return MaterializeResult(data_version=DataVersion(lio.sha256_file(url)))

    @asset(key="clip_captions", partitions_def=videos, deps=["clip_frames"], code_version="standin-captions-1")
    def clip_captions(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        k = context.partition_key
        colour = ["red", "green", "blue", "yellow"][_seed(k)[0] % 4]
        caps = [f"A {colour} ball rolls across the table. Then it stops.", f"A {colour} car drives along the street.",
                f"A cat jumps onto the {colour} table."]
        url = layout.layer_path(lake.storage_root, "captions", k)
        lio.write_parquet(pa.table({"clip_index": pa.array([0, 1, 2], pa.int32()), "caption": caps,
                                    "ok": [True, True, True], "source": ["annotation"] * 3,
                                    "start_s": [0.0, 2.0, 4.0], "end_s": [2.0, 4.0, 6.4],
                                    "on_screen_text": [str(_seed(k)[1] % 10), None, None]}), url)
        return MaterializeResult(data_version=DataVersion(lio.sha256_file(url)))

    @asset(key="video_instructions", partitions_def=videos, deps=["clip_captions", "video_frames"],
           code_version="standin-instr-1")
    def video_instructions(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        k = context.partition_key
        caps = lio.read_parquet(layout.layer_path(lake.storage_root, "captions", k)).column("caption").to_pylist()
        fr = {"layer": "video_frames", "path": lake.layer_url("video_frames", k), "start_s": 0.0, "end_s": 6.4,
              "duration_s": 6.4}
        recs = [{"id": f"{k}-caption", "video": k, "video_key": k, "frames": fr, "question_type": "Caption",
                 "conversations": [{"from": "human", "value": "<video>\nDescribe the video in detail."},
                                   {"from": "gpt", "value": " ".join(caps)}]},
                {"id": f"{k}-qa-000", "video": k, "video_key": k, "frames": fr, "question_type": "Object",
                 "conversations": [{"from": "human", "value": "<video>\nWhat jumps onto the table?"},
                                   {"from": "gpt", "value": "A cat."}]}]
        body = "".join(json.dumps(r) + "\n" for r in recs).encode()
        lio.write_bytes(layout.layer_path(lake.storage_root, "instructions", k), body)
        return MaterializeResult(data_version=DataVersion(hashlib.sha256(body).hexdigest()))

    from dagster import AllPartitionMapping, AssetDep

    @asset(key="long_video_sft_dataset", deps=[AssetDep("video_instructions", partition_mapping=AllPartitionMapping())],
           code_version="standin-sft-1")
    def long_video_sft_dataset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        from curation.captioning.dataset import build_long_video_sft

        m = build_long_video_sft(lake.storage_root, sorted(context.instance.get_dynamic_partitions("videos")))
        return MaterializeResult(data_version=DataVersion(m["content_hash"]),
                                 metadata={"path": layout.dataset_dir(lake.storage_root, "long_video_sft"),
                                           "num_records": m["num_records"]})

    return [raw_video, clip_frames, video_frames, clip_captions, video_instructions, long_video_sft_dataset]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from assets.training import TrainingLauncher, build_training_defs

    root = tmp_path_factory.mktemp("graph")
    source = root / "raw"
    source.mkdir()
    for i, k in enumerate(KEYS):
        (source / f"{k}.bin").write_bytes(f"video {k} content {i}".encode() * 10)
    lake = LakeResource(source=str(source), storage=str(root / "lake"))
    from orchestration.reports import training_lineage_report

    launcher = TrainingLauncher(max_steps=2, num_threads=1)
    tdefs = build_training_defs(launcher=launcher)
    tdefs = Definitions(assets=[*tdefs.assets, training_lineage_report], asset_checks=tdefs.asset_checks,
                        resources=tdefs.resources)
    standins = standin_assets(source)
    defs = Definitions(assets=[*standins, *tdefs.assets], asset_checks=tdefs.asset_checks,
                       resources={"lake": lake, "training_launcher": launcher}, executor=in_process_executor)
    (root / "dagster_home").mkdir()
    inst = DagsterInstance.local_temp(str(root / "dagster_home"))  # persistent: schedules evaluate against it
    inst.add_dynamic_partitions("videos", KEYS)
    part = [a for a in standins if a.partitions_def is not None]
    resources = {"lake": lake}
    for k in KEYS:
        assert materialize(part, partition_key=k, instance=inst, resources=resources).success
    g = defs.resolve_asset_graph()
    unpart = [k for k in g.toposorted_asset_keys if not g.get(k).is_partitioned]
    res = materialize([*standins, *tdefs.assets, *tdefs.asset_checks], selection=unpart, instance=inst,
                      resources={"lake": lake, "training_launcher": launcher}, raise_on_error=False)
    assert res.success, [e.event_specific_data for e in res.all_events if e.is_failure]
    return {"defs": defs, "instance": inst, "lake": lake, "source": source, "root": root, "resources": resources,
            "all": [*standins, *tdefs.assets, *tdefs.asset_checks], "launcher": launcher}


def _latest(inst, key):
    return inst.get_latest_materialization_event(AssetKey(key)).asset_materialization


@pytest.mark.slow
@pytest.mark.distributed
def test_stage_assets_report_metadata_and_checkpoint_hash(graph):
    from longvila.io import sha256_tree

    inst = graph["instance"]
    for i, st in enumerate(STAGES):
        m = _latest(inst, st)
        md = m.metadata
        assert md["final_loss"].value > 0 and md["tokens_per_s"].value > 0
        assert md["steps"].value == 2
        assert md["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")
        ckpt = Path(md["checkpoint"].value)  # the immutable export; `final` points at it
        assert ckpt.parent.name == "exports" and ckpt.parent.parent.name == st
        assert (ckpt.parent.parent / "final").resolve() == ckpt.resolve()
        assert m.tags["dagster/data_version"] == sha256_tree(ckpt) == md["checkpoint_sha256"].value
        # the trainer records the verified version of the dataset it read (issue 12: stage 5 had [null])
        # (stage 5 of the smoke recipe also reads its extra samples: the retrieval dataset)
        datasets = [DATASET_ASSETS[i]] + (["stage5_dataset"] if st == "stage5_long_sft" else [])
        assert md["dataset_versions"].value == [_latest(inst, d).tags["dagster/data_version"] for d in datasets]
        if i:  # each stage starts from the previous stage's checkpoint
            assert md["init_from_sha256"].value == _latest(inst, STAGES[i - 1]).tags["dagster/data_version"]
    assert _latest(inst, "stage5_long_sft").metadata["sp_degree"].value == 2
    from orchestration.demo import training_summary

    lines = training_summary(inst)
    # one line per stage, then the lineage audit of the stage-5 checkpoint (what `make demo` prints)
    assert all("final loss" in line and "tokens/s" in line for line in lines[:5])
    audit = "\n".join(lines[5:])
    assert "# Lineage of `stage5_long_sft`" in audit and "## Raw videos" in audit and "## Stage checkpoints" in audit
    assert _latest(inst, "stage5_long_sft").tags["dagster/data_version"] in audit
    assert _latest(inst, "stage1_dataset").metadata["num_samples"].value == 6
    # stage-4 export has the extended RoPE base and no LoRA leftovers
    cfg = json.loads((Path(_latest(inst, STAGES[3]).metadata["checkpoint"].value) / "config.json").read_text())
    assert cfg["text_config"]["rope_parameters"]["rope_theta"] == load_recipe("smoke").stage(4).phases[-1].rope_theta
    st = (Path(_latest(inst, STAGES[3]).metadata["checkpoint"].value) / "model.safetensors").read_bytes()[:20000]
    assert b"lora_" not in st


@pytest.mark.slow
def test_lineage_walks_to_raw_videos(graph, capsys):
    import argparse

    from orchestration.lineage import fed_by, lineage, run_cli, to_markdown

    inst = graph["instance"]
    rep = lineage(inst, "stage5_long_sft")
    raw = {v["video_key"]: v["sha256"] for v in rep["raw_videos"]}
    assert raw == {k: hashlib.sha256((graph["source"] / f"{k}.bin").read_bytes()).hexdigest() for k in KEYS}
    assert [c["asset"] for c in rep["checkpoints"]] == STAGES
    assert all(len(c["sha256"]) == 64 for c in rep["checkpoints"])
    assert {d["asset"] for d in rep["datasets"]} == {"stage1_dataset", "stage2_dataset", "stage3_dataset",
                                                      "stage4_dataset", "long_video_sft_dataset", "stage5_dataset"}
    assert rep["code_versions"]["clip_captions"] == ["standin-captions-1"]
    assert rep["code_versions"]["stage5_long_sft"][0].startswith(f"{TRAINER_VERSION}:smoke:")
    # every stage's checkpoint states the dataset versions it was trained on
    assert all(c["dataset_versions"] and None not in c["dataset_versions"] for c in rep["checkpoints"])
    assert not rep["unresolved"]
    # per-video inputs come from the lineage table the dataset recorded; --verify checks it against the event log
    s1 = next(n for n in rep["nodes"] if n["asset"] == "stage1_dataset")
    assert {u["asset"]: u["how"] for u in s1["upstream"]} == {"clip_captions": "lineage-table",
                                                               "clip_frames": "lineage-table"}
    assert not lineage(inst, "stage5_long_sft", verify=True)["unresolved"]
    assert fed_by(rep, KEYS[0]) and not fed_by(rep, "gamma-0000000c")
    md = to_markdown(rep)
    assert KEYS[0] in md and "## Stage checkpoints" in md and "trained on dataset versions" in md
    assert "(not recorded)" not in md
    # stage 4 trains on the generated passkey set only: no raw video feeds it... except through stage 3
    rep4 = lineage(inst, "stage4_dataset")
    assert rep4["raw_videos"] == []
    # the CLI: exit 0 yes / 1 no with a sentence
    import dagster

    old_get = dagster.DagsterInstance.get
    dagster.DagsterInstance.get = staticmethod(lambda: inst)
    try:
        assert run_cli(argparse.Namespace(asset_key="stage5_long_sft", partition=None, video=KEYS[1], json=False)) == 0
        assert capsys.readouterr().out.startswith(f"Yes: video {KEYS[1]} fed stage5_long_sft")
        assert run_cli(argparse.Namespace(asset_key="stage5_long_sft", partition=None, video="nope-00000000",
                                          json=False)) == 1
        assert capsys.readouterr().out.startswith("No: video nope-00000000 did not feed")
        assert run_cli(argparse.Namespace(asset_key="stage5_long_sft", partition=None, video=None, json=True)) == 0
        assert json.loads(capsys.readouterr().out)["raw_videos"]
    finally:
        dagster.DagsterInstance.get = old_get
    # the report asset renders the same markdown in the UI
    rmd = _latest(inst, "training_lineage_report").metadata["report"].value
    assert KEYS[0] in rmd and "stage5_long_sft" in rmd


@pytest.mark.slow
def test_stage5_checkpoint_answers_about_a_video_in_fresh_process(graph):
    ckpt = _latest(graph["instance"], "stage5_long_sft").metadata["checkpoint"].value
    frames = layout.layer_path(graph["lake"].storage_root, "video_frames", KEYS[0])
    code = f"""
import io, sys
import pyarrow.parquet as pq
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor
import training.model  # registers model_type "longvila" with the Auto classes
model = AutoModelForCausalLM.from_pretrained({ckpt!r})
proc = AutoProcessor.from_pretrained({ckpt!r})
print(type(model).__name__)
imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in pq.read_table({frames!r}).column("jpeg").to_pylist()][:8]
b = proc(conversations=[{{"from": "human", "value": "<video>\\nWhat jumps onto the table?"}}], frames=imgs,
         add_generation_prompt=True)
out = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"],
                     max_new_tokens=8, do_sample=False)
ans = proc.decode(out[0, b["input_ids"].shape[1]:], skip_special_tokens=True)
print("ANSWER:", repr(ans))
assert out.shape[1] > b["input_ids"].shape[1]
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "LongVILAForCausalLM" in p.stdout and "ANSWER:" in p.stdout


@pytest.mark.slow
def test_changed_video_marks_exactly_downstream_stale(graph):
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    inst, defs, source = graph["instance"], graph["defs"], graph["source"]
    (source / f"{KEYS[0]}.bin").write_bytes(b"a changed video" * 7)
    part = [a for a in standin_assets(source) if a.partitions_def is not None]
    assert materialize(part, partition_key=KEYS[0], instance=inst, resources=graph["resources"]).success
    g = defs.resolve_asset_graph()
    assert materialize(standin_assets(source), selection=["long_video_sft_dataset"], instance=inst,
                       resources=graph["resources"]).success

    def status():
        view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                              instance=inst, asset_graph=g)
        r = CachingStaleStatusResolver(instance=inst, asset_graph=g, loading_context=view)
        return {k.to_user_string(): r.get_status(k, None) for k in g.toposorted_asset_keys
                if not g.get(k).is_partitioned}

    st = status()
    direct = {k for k, v in st.items() if v == StaleStatus.STALE}
    # (stage5_dataset: its retrieval samples' haystack holds the changed video's frames)
    assert direct == {"stage1_dataset", "stage2_dataset", "stage3_dataset", "stage5_dataset", "stage5_long_sft"}
    # transitively (what must be recomputed): every stage and the report, but not the passkey dataset
    trans = set(direct)
    for k in g.toposorted_asset_keys:
        if any(p.to_user_string() in trans for p in g.get(k).parent_keys) and not g.get(k).is_partitioned:
            trans.add(k.to_user_string())
    assert trans == {"stage1_dataset", "stage2_dataset", "stage3_dataset", "stage5_dataset", *STAGES,
                     "training_lineage_report"}
    assert st["stage4_dataset"] == StaleStatus.FRESH


def _freshness(graph, stage: str):
    """Run the stage's trained_on_current_data check alone; its evaluation."""
    from dagster import AssetCheckKey, AssetSelection

    key = AssetCheckKey(AssetKey(stage), "trained_on_current_data")
    res = materialize(graph["all"], selection=AssetSelection.checks(key), instance=graph["instance"],
                      resources={"lake": graph["lake"], "training_launcher": graph["launcher"]})
    (ev,) = res.get_asset_check_evaluations()
    return ev


@pytest.mark.slow
def test_checkpoints_show_when_their_data_moved_on_and_the_schedule_retrains_them(graph):
    """A new video: stage 1-3 and 5 checkpoints turn WARN with the count, the passkey stage does not, and
    the training schedule re-trains from stage 1 (later stages start from its checkpoint)."""
    from dagster import build_schedule_context

    from orchestration.definitions import defs as project_defs
    from orchestration.schedules import training_schedule

    inst, source = graph["instance"], graph["source"]
    before = {st: _freshness(graph, st) for st in ("stage1_alignment", "stage4_context_extension")}
    assert before["stage4_context_extension"].passed  # passkey data: no video involved
    new = "gamma-0000000c"
    (source / f"{new}.bin").write_bytes(b"a new video" * 9)
    inst.add_dynamic_partitions("videos", [new])
    part = [a for a in standin_assets(source) if a.partitions_def is not None]
    assert materialize(part, partition_key=new, instance=inst, resources=graph["resources"]).success
    for stage in ("stage1_alignment", "stage3_short_sft", "stage5_long_sft"):
        ev = _freshness(graph, stage)
        md = {k: v.value for k, v in ev.metadata.items()}
        assert not ev.passed and ev.severity.value == "WARN" and md["new_videos"] == 1, (stage, md)
        assert new in md["examples"] and "1 new" in ev.description
    assert _freshness(graph, "stage4_context_extension").passed
    # the nightly schedule (on by default for the smoke recipe) re-trains stage 1 and every later stage
    with build_schedule_context(instance=inst, resources={"lake": graph["lake"]}) as ctx:
        (req,) = training_schedule.evaluate_tick(ctx).run_requests
    assert {k.to_user_string() for k in req.asset_selection} == {*STAGES, "stage1_dataset", "stage2_dataset",
                                                                 "stage3_dataset", "stage4_dataset",
                                                                 "long_video_sft_dataset"}
    assert req.tags["longvila/automated"] == "true" and req.tags["dagster/priority"] == "-1"
    assert project_defs.resolve_job_def("training").tags["dagster/max_runtime"] == "1800"


@pytest.mark.slow
@pytest.mark.distributed
def test_stage_asset_on_two_loopback_nodes_matches_one_node(graph, tmp_path):
    """The real stage-1 asset through the training_launcher: 2 torchrun agents on 127.0.0.1 (static
    rendezvous, 1 process each) against 1 agent with 2 processes: same world, same checkpoint bytes."""
    from assets.training import TrainingLauncher, build_training_defs

    inst, lake = graph["instance"], graph["lake"]
    versions, losses = {}, {}
    for nnodes, nproc in ((1, 2), (2, 1)):
        launcher = TrainingLauncher(max_steps=2, num_threads=1, nnodes=nnodes, nproc_per_node=nproc,
                                    checkpoint_root=str(tmp_path / f"{nnodes}x{nproc}"))
        stage1 = next(a for a in build_training_defs(launcher=launcher).assets if a.key == AssetKey(STAGES[0]))
        res = materialize([stage1], instance=inst, resources={"lake": lake, "training_launcher": launcher})
        assert res.success
        mat = res.asset_materializations_for_node(stage1.op.name)[0]
        versions[nnodes] = mat.tags["dagster/data_version"]
        losses[nnodes] = mat.metadata["final_loss"].value
    assert losses[2] == pytest.approx(losses[1], rel=1e-6)
    assert versions[2] == versions[1]
