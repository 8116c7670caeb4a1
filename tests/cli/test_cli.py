"""The `longvila` command line: every sub-command is registered, and `dev` targets the project-local instance."""

import os

from orchestration import cli


def test_all_subcommands_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "shots", "probe", "lineage", "eval", "dev"} <= set(sub.choices)


def test_dev_argv_uses_workspace_and_port():
    args = cli.build_parser().parse_args(["dev", "--port", "3111"])
    assert args.func is cli.run_dev
    assert cli._dev_argv(args) == ["dagster", "dev", "-w", "workspace.yaml", "--port", "3111"]


def test_dev_sets_dagster_home_before_exec(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("LONGVILA_ROOT", str(tmp_path))
    monkeypatch.setattr(os, "execv", lambda exe, argv: seen.update(exe=exe, argv=argv, home=os.environ["DAGSTER_HOME"]))
    cli.main(["dev"])
    assert seen["argv"][1:] == ["dev", "-w", "workspace.yaml"]
    assert seen["home"] == str(tmp_path / ".dagster") and (tmp_path / ".dagster").is_dir()
    # an explicit instance config records the embedded default (SQLite in DAGSTER_HOME); a user's own is kept
    cfg = tmp_path / ".dagster" / "dagster.yaml"
    assert "SQLite" in cfg.read_text()
    cfg.write_text("telemetry:\n  enabled: false\n")
    cli.main(["dev"])
    assert cfg.read_text() == "telemetry:\n  enabled: false\n"
