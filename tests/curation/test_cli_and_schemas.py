import argparse
import json

import pyarrow as pa
import pytest

from curation import cli as curation_cli
from curation.clips import make_clips
from curation.schemas import (CLIP_FRAMES, CLIPS, PROBE, SHOTS, VIDEO_FRAMES, clips_to_table, probe_to_table,
                              shots_to_table, table_to_clips, table_to_shots)
from curation.shots import detect_shots


def _main(argv):
    """`longvila ...` through orchestration.cli when every area's module imports, else our own register()."""
    try:
        from orchestration.cli import main

        return main(argv)
    except ImportError:
        parser = argparse.ArgumentParser(prog="longvila")
        curation_cli.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return args.func(args)


def test_shots_cli_json(corpus, capsys):
    root, info = corpus
    path = str(root / "bars_and_colours.mp4")
    assert _main(["shots", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["start_frame"] for s in out["shots"][1:]] == info["bars_and_colours.mp4"]["cuts"]
    assert out["frame_count"] == 300 and out["detector"] == "fast"
    assert out["shots"][1]["start_s"] == pytest.approx(60 / 25)


def test_shots_cli_table_and_clips(corpus, capsys):
    root, _ = corpus
    assert curation_cli.main(["shots", str(root / "street_cuts.mp4"), "--clips", "--max-clip-s", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "4 shots, 300 frames" in out and "7 clips" in out
    rows = [line.split() for line in out.splitlines() if line and not line.startswith(("#", " shot", " clip"))]
    assert ["1", "75", "125", "3.000", "5.000", "cut"] in rows  # shot 1: frames 75..125, 3 s..5 s, after a cut
    assert ["2", "1", "75", "125", "3.000", "5.000"] in rows  # clip 2 is the whole of shot 1


def test_probe_cli(corpus, capsys):
    root, _ = corpus
    assert _main(["probe", str(root / "single_shot.mp4"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["frame_count"] == 150 and d["has_audio"] is True


def test_cli_bad_input_exit_code(bad_inputs, capsys):
    root, _ = bad_inputs
    assert _main(["shots", str(root / "not_a_video.mp4")]) == 2
    err = capsys.readouterr().err
    assert "not_a_video.mp4" in err and "error" in err


def test_schema_roundtrips(corpus):
    root, _ = corpus
    path = str(root / "street_cuts.mp4")
    shots = detect_shots(path)
    t = shots_to_table(shots)
    assert t.schema.equals(SHOTS) and table_to_shots(t) == shots
    clips = make_clips(shots, 25.0, max_clip_s=2.5)
    ct = clips_to_table(clips)
    assert ct.schema.equals(CLIPS) and table_to_clips(ct) == clips
    # through Parquet
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(ct, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    assert table_to_clips(back) == clips
    assert back.schema.field("start_frame").metadata[b"doc"]
    assert table_to_shots(shots_to_table([])) == []
    for schema in (SHOTS, CLIPS, CLIP_FRAMES, VIDEO_FRAMES, PROBE):
        assert all(f.metadata and f.metadata.get(b"doc") for f in schema)
    with pytest.raises(ValueError):
        table_to_clips(pa.table({"index": [1]}))


def test_probe_table(corpus):
    from curation.probe import probe_video

    root, _ = corpus
    t = probe_to_table(probe_video(str(root / "single_shot.mp4"), sha256="x"))
    assert t.num_rows == 1 and t.schema.equals(PROBE) and t.column("frame_count")[0].as_py() == 150


def test_library_and_cli_never_import_dagster(corpus):
    """`longvila shots` works without Dagster: the curation media modules never import it."""
    import subprocess
    import sys

    root, _ = corpus
    code = (
        "import sys\n"
        "import curation.probe, curation.synth, curation.shots, curation.clips, curation.frames, "
        "curation.clipfiles, curation.schemas, curation.video\n"
        "from curation.cli import main\n"
        f"rc = main(['shots', {str(root / 'single_shot.mp4')!r}, '--json'])\n"
        "assert rc == 0, rc\n"
        "bad = [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"frame_count": 150' in proc.stdout
