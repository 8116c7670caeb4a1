"""clip_captions through Dagster with annotation sidecars: a lesson video of the demo corpus gets its
captions from its sidecar (the lineage says so, per row and in the metadata); a video with a bad
sidecar fails its own partition with an error naming the sidecar; a video without one uses the VLM."""

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def annotated_lake(tmp_path_factory):
    from curation.demo_corpus import make_demo_corpus
    from longvila import io as lio

    from .conftest import curate_layers

    root = tmp_path_factory.mktemp("annotated")
    raw, storage = root / "raw", str(root / "lake")
    make_demo_corpus(str(raw), lessons=1, glyph_shots=6, with_sample_corpus=False)
    shutil.copyfile(raw / "lesson_01.mp4", raw / "bad_sidecar.mp4")
    shutil.copyfile(raw / "lesson_01.mp4", raw / "no_sidecar.mp4")
    segs = json.loads((raw / "lesson_01.json").read_text())["segments"]
    segs[-1]["end"] = 500.0  # far after the end of the video
    (raw / "bad_sidecar.json").write_text(json.dumps({"segments": segs}))
    from longvila.keys import partition_key_for

    keys = {n: partition_key_for(f"{n}.mp4") for n in ("lesson_01", "bad_sidecar", "no_sidecar")}
    for name, key in keys.items():
        curate_layers(storage, key, str(raw / f"{name}.mp4"), max_clip_s=10.0, min_clip_s=1.0)
    manifest = {"version": 1, "source": str(raw), "videos": {
        k: {"relpath": f"{n}.mp4", "url": str(raw / f"{n}.mp4"), "status": "present"} for n, k in keys.items()},
        "rejected": {}}
    lio.write_json(f"{storage}/manifest/videos.json", manifest)
    return storage, raw, keys


def test_clip_captions_from_sidecars_with_lineage_and_bad_sidecar_isolated(annotated_lake, smoke_paths):
    from pathlib import Path

    from dagster import DagsterInstance, materialize

    from assets.captions import CLIP_CAPTIONS, build_caption_defs
    from curation.captioning.captioner import caption_sources
    from curation.captioning.config import CaptioningConfig
    from longvila import io as lio
    from longvila.layout import layer_path
    from assets.resources import LakeResource

    storage, raw, keys = annotated_lake
    defs = build_caption_defs(CaptioningConfig(models_dir=str(Path(smoke_paths.root).parent), caption_max_new_tokens=8))
    clip_captions = [a for a in defs.assets if CLIP_CAPTIONS in a.keys]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", list(keys.values()))
    resources = {"lake": LakeResource(storage=storage, source=str(raw)),
                 "caption_models": defs.resources["caption_models"]}

    def run(name):
        return materialize(clip_captions, partition_key=keys[name], instance=instance, resources=resources,
                           raise_on_error=False)

    good = run("lesson_01")
    assert good.success
    mat = good.asset_materializations_for_node("clip_captions")[0]
    md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    table = lio.read_parquet(layer_path(storage, "captions", keys["lesson_01"]))
    sources = caption_sources(table)
    assert md["num_from_annotation"] == sources.count("annotation") >= 6
    assert md["num_from_model"] == sources.count("model")
    assert md["annotation_file"].endswith("lesson_01.json") and len(md["annotation_sha256"]) == 64
    texts = [t for t in table.column("on_screen_text").to_pylist() if t]
    assert len(texts) >= 5 and all(t.isdigit() for t in texts)

    bad = run("bad_sidecar")
    assert not bad.success
    failure = [e for e in bad.all_events if e.event_type_value == "STEP_FAILURE"][0]
    text = str(failure.event_specific_data.user_failure_data.description)
    assert "bad_sidecar.json" in str(failure.event_specific_data.user_failure_data.metadata) and "after the end" in text
    assert not lio.exists(layer_path(storage, "captions", keys["bad_sidecar"]))  # nothing half-written

    plain = run("no_sidecar")
    assert plain.success
    assert set(caption_sources(lio.read_parquet(layer_path(storage, "captions", keys["no_sidecar"])))) == {"model"}
