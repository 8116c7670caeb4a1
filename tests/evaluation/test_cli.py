"""`longvila eval niah|videomme|caption` (the evaluation sub-commands, registered on a parser)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from evaluation.cli import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="longvila")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_eval_niah(smoke_checkpoint, haystack_video, tmp_path, capsys):
    out = tmp_path / "niah"
    rc = run(["eval", "niah", "--checkpoint", smoke_checkpoint, "--video", haystack_video, "--frame-counts", "2,3",
              "--depths", "0,100", "--needles", "1", "--frame-size", "32", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| depth \\ frames | 2 | 3 |" in printed and "accuracy" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["samples"] == 4 and (out / "heatmap.png").exists()


def test_eval_videomme_on_a_generated_fixture(smoke_checkpoint, tmp_path, capsys):
    out = tmp_path / "vm"
    rc = run(["eval", "videomme", "--checkpoint", smoke_checkpoint, "--make-fixture", str(tmp_path / "fx"),
              "--num-frames", "2", "--subtitle-mode", "never", "--scoring", "option_logits", "--out", str(out),
              "--quiet"])
    assert rc == 0
    assert "| **overall** |" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["modes"] == ["without_subtitles"] and len(saved["records"]) == 9
    assert (tmp_path / "fx" / "videomme" / "test-00000-of-00001.parquet").exists()


def test_eval_caption_with_fixture_references(smoke_checkpoint, tmp_path, capsys):
    out = tmp_path / "cap"
    rc = run(["eval", "caption", "--checkpoint", smoke_checkpoint, "--make-fixture", str(tmp_path / "fx"),
              "--judge", "none", "--num-frames", "2", "--max-new-tokens", "6", "--out", str(out), "--quiet"])
    assert rc == 0
    assert "rouge_l" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["videos"] == 3 and saved["summary"]["judged"] == 0


def test_bad_inputs_exit_2_with_the_reason(smoke_checkpoint, tmp_path, capsys):
    bad = tmp_path / "q.json"
    bad.write_text("{not json")
    rc = run(["eval", "videomme", "--checkpoint", smoke_checkpoint, "--questions", str(bad), "--videos",
              str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not JSON" in capsys.readouterr().out
    assert run(["eval", "videomme", "--checkpoint", smoke_checkpoint]) == 2
    broken = tmp_path / "hay.mp4"
    broken.write_bytes(b"\x00" * 64)
    rc = run(["eval", "niah", "--checkpoint", smoke_checkpoint, "--video", str(broken), "--out", str(tmp_path / "n")])
    assert rc == 2 and "hay.mp4" in capsys.readouterr().out
    assert not (tmp_path / "n").exists()
    with pytest.raises(SystemExit):
        run(["eval", "niah", "--checkpoint", smoke_checkpoint, "--frame-counts", "a,b"])


def test_default_output_folder_follows_the_layout(smoke_checkpoint, haystack_video, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGVILA_STORAGE", str(tmp_path / "lake"))
    rc = run(["eval", "niah", "--checkpoint", smoke_checkpoint, "--video", haystack_video, "--frame-counts", "2",
              "--depths", "50", "--needles", "1", "--frame-size", "32", "--quiet"])
    assert rc == 0
    name = Path(smoke_checkpoint).name
    assert (tmp_path / "lake" / "eval" / "niah" / name / "results.json").exists()
