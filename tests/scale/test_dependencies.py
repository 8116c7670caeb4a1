"""The dagster family is pinned as one release, and every extra installs without moving it.

dagster 1.13.N ships with dagster-webserver / -pipes / -graphql / -shared 1.13.N and the integration
libraries 0.29.N (dagster-k8s, dagster-postgres): a library release pins its exact dagster. Mixing them
(e.g. `pip install "dagster-k8s==0.29.*"` on top of dagster 1.13.28 when the newest dagster-k8s is 0.29.27)
downgrades dagster and leaves the webserver in conflict. These tests read the pins in pyproject.toml and
the installed distributions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CORE = ("dagster", "dagster-webserver", "dagster-pipes", "dagster-graphql", "dagster-shared")
LIBRARIES = ("dagster-k8s", "dagster-postgres")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extras: tuple[str, ...] | None = None) -> list[Requirement]:
    """The project's requirements plus those of `extras` (default: every extra), self-references expanded."""
    proj = _project()
    optional = proj["optional-dependencies"]
    todo, seen = list(optional if extras is None else extras), set()
    reqs = [Requirement(r) for r in proj["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, optional[extra]):
            if r.name == proj["name"]:
                todo += sorted(r.extras)
            else:
                reqs.append(r)
    return reqs


def _family_version(name: str, version: str) -> str:
    """The core release a distribution belongs to: 1.13.N for core packages, 0.29.N -> 1.13.N for libraries."""
    major, minor, patch = (int(x) for x in version.split(".")[:3])
    if name in LIBRARIES:
        assert major == 0, f"{name} {version}: integration libraries are 0.x"
        return f"1.{minor - 16}.{patch}"
    return f"{major}.{minor}.{patch}"


def test_pyproject_pins_one_dagster_release():
    pins = {r.name: r for r in _requirements() if r.name.startswith("dagster")}
    assert set(CORE[:3]) <= set(pins) and set(LIBRARIES) <= set(pins), f"pins: {sorted(pins)}"
    families = {}
    for name, req in pins.items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, \
            f"{name}: pin one exact release ({req}), so that the family moves together"
        families[name] = _family_version(name, specs[0].version)
    assert len(set(families.values())) == 1, f"pins from different dagster releases: {families}"


def test_installed_dagster_family_is_consistent():
    installed = {}
    for name in CORE + LIBRARIES:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    assert "dagster" in installed and "dagster-postgres" in installed and "dagster-k8s" in installed, installed
    families = {n: _family_version(n, v) for n, v in installed.items()}
    assert len(set(families.values())) == 1, f"installed dagster packages from different releases: {installed}"
    pinned = {r.name: next(iter(r.specifier)).version for r in _requirements() if r.name in installed}
    assert {n: installed[n] for n in pinned} == pinned, "installed versions differ from pyproject's pins"


def test_pip_check_reports_no_dagster_conflict():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    bad = [line for line in out.stdout.splitlines() if re.search(r"\bdagster", line)]
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_every_extra_resolves_without_moving_anything():
    """`pip install --dry-run --no-index` of every requirement of the extras `make test` installs (test ->
    postgres, k8s, ray; offline: only what is installed can satisfy them): pip must find nothing to
    install, i.e. the installed set satisfies all of them together (no downgrade, no conflict)."""
    reqs = [str(r) for r in _requirements(("test",))]
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet",
                          "--report", "-", *reqs], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    to_install = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report.get("install", [])]
    assert to_install == [], f"pip would install/move: {to_install}"
