"""The Dagster UI in a real browser (Debian's Chromium through its chromedriver, installed by ``make test``
through ``make system-packages``):
the asset graph, the per-video partitions, a materialisation of one video's curation launched from the UI
and seen to succeed, the stage-5 loss curve and the V-NIAH heatmap.

The project's whole lineage is first materialised on one small video with ``longvila demo``'s own code
(`orchestration.demo.run_demo`); then a real daemon (`orchestration.harness`) and ``dagster-webserver``
serve that instance, as ``longvila dev`` does. Screenshots of every step are kept in
``tests/artifacts/browser/`` (or ``$LONGVILA_TEST_ARTIFACTS/browser``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000"]
REPO = Path(__file__).resolve().parents[2]
WAIT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("LONGVILA_TEST_ARTIFACTS") or REPO / "tests" / "artifacts") / "browser"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_video_cache):
    """The whole lineage materialised on one video, then a daemon and a webserver on that instance."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make system-packages installs them)")
    from orchestration.demo import run_demo
    from orchestration.harness import ProjectDaemon

    work = tmp_path_factory.mktemp("ui")
    (work / "raw").mkdir()
    (work / "dagster_home").mkdir()
    shutil.copyfile(small_video_cache[0], work / "raw" / "clip one.mp4")
    env = {"DAGSTER_HOME": str(work / "dagster_home"), "LONGVILA_MODELS_DIR": str(work / "models"),
           "OMP_NUM_THREADS": "1", "LONGVILA_TRAIN_MAX_STEPS": "2"}  # plumbing, not the curriculum's learning
    saved = {k: os.environ.get(k) for k in (*env, "LONGVILA_SOURCE", "LONGVILA_STORAGE")}
    os.environ.update(env)
    try:
        lines: list[str] = []
        assert run_demo(source=str(work / "raw"), storage=str(work / "lake"), log=lines.append) == 0, "\n".join(lines)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    daemon = ProjectDaemon(work, env=env)
    port = _free_port()
    web_log = open(work / "webserver.log", "wb")
    web = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml",
                            "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=daemon.env, stdout=web_log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        daemon.wait("the webserver", lambda: _answers(url + "/server_info"), timeout=WAIT_S)
        yield {"url": url, "daemon": daemon}
    finally:
        web.terminate()
        web.wait(60)
        web_log.close()
        daemon.stop()


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser(project):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(WAIT_S)
    try:
        yield drv
    finally:
        drv.quit()


class UI:
    """Small helpers over the webdriver: open a page, wait for visible text, click a button by its label."""

    def __init__(self, drv, url: str, artifacts: Path):
        self.drv, self.url, self.artifacts = drv, url, artifacts

    def open(self, path: str) -> None:
        self.drv.get(self.url + path)
        self.dismiss_welcome()

    def dismiss_welcome(self) -> None:
        from selenium.webdriver.common.by import By

        for b in self.drv.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            if b.is_displayed():
                b.click()

    def wait_text(self, *texts: str, timeout: float = WAIT_S) -> str:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def seen(drv):
            self.dismiss_welcome()
            body = drv.find_element(By.TAG_NAME, "body").text
            return body if all(t in body for t in texts) else False

        return WebDriverWait(self.drv, timeout, poll_frequency=1).until(seen, f"{texts} not shown")

    def click(self, label: str, tag: str = "button", exact: bool = False) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        test = f"normalize-space()='{label}'" if exact else f"contains(normalize-space(), '{label}')"

        def target(drv):
            hits = [e for e in drv.find_elements(By.XPATH, f"//{tag}[{test}]") if e.is_displayed() and e.is_enabled()]
            return hits[-1] if hits else False

        WebDriverWait(self.drv, WAIT_S, poll_frequency=0.5).until(target, f"no {tag} {label!r}").click()

    def show_markdown(self, key: str) -> None:
        """Open the markdown of metadata entry `key` (the "[Show Markdown]" link of its row)."""
        self.click("[Show Markdown]", tag=f"tr[.//td[normalize-space()='{key}']]//a", exact=True)

    def images(self, prefix: str = "data:image/png;base64,") -> list:
        """Rendered images whose source starts with `prefix` (naturalWidth > 0: decoded and drawn)."""
        from selenium.webdriver.common.by import By

        return [i for i in self.drv.find_elements(By.TAG_NAME, "img")
                if (i.get_attribute("src") or "").startswith(prefix)
                and self.drv.execute_script("return arguments[0].naturalWidth", i) > 0]

    def shot(self, name: str) -> None:
        """Screenshot once the page settled: no welcome dialog, no "Loading..." placeholders (up to 30 s)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def settled(drv):
            self.dismiss_welcome()
            body = drv.find_element(By.TAG_NAME, "body").text
            return "Join the Dagster community" not in body and "Loading..." not in body

        try:
            WebDriverWait(self.drv, 30, poll_frequency=1).until(settled)
        except Exception:  # noqa: BLE001 - a page still loading is photographed as it is
            pass
        self.drv.save_screenshot(str(self.artifacts / f"{name}.png"))


def test_the_ui_shows_the_graph_partitions_a_launched_run_and_the_training_plots(project, browser, artifacts):
    from selenium.webdriver.support.ui import WebDriverWait

    from longvila.keys import partition_key_for

    ui, daemon = UI(browser, project["url"], artifacts), project["daemon"]
    key = partition_key_for("clip one.mp4")

    # the asset graph: every layer of the lineage, then the curation group's assets
    ui.open("/asset-groups")
    ui.wait_text("curation", "captions", "training", "evaluation")
    ui.shot("1-asset-graph")
    ui.open("/locations/orchestration.definitions/asset-groups/curation")
    ui.wait_text("raw_video", "video_probe", "video_shots", "clip_frames")
    ui.shot("2-curation-group")

    # the per-video partitions of an asset
    ui.open("/assets/video_probe?view=partitions")
    ui.wait_text(key, "Materialized (1)")
    ui.shot("3-partitions")

    # launch one video's curation from the UI: job page, "Materialize all", pick the partition, launch
    before = {r.run_id for r in daemon.runs()}
    ui.open("/locations/orchestration.definitions/jobs/curation_lineage")
    ui.wait_text("raw_video")
    ui.click("Materialize all")
    ui.click("Select a partition or create one", tag="div", exact=True)
    ui.click(key, tag="span", exact=True)
    ui.shot("4-launch-dialog")
    ui.click("Launch 1 run")
    run = daemon.wait("the launched run", lambda: [r for r in daemon.runs(key) if r.run_id not in before],
                      timeout=WAIT_S)[0]
    daemon.wait("the launched run to succeed", lambda: daemon.instance.get_run_by_id(run.run_id).is_finished,
                timeout=600)
    assert daemon.instance.get_run_by_id(run.run_id).status.value == "SUCCESS", daemon.log_path
    ui.open(f"/runs/{run.run_id}")
    ui.wait_text("Success", "curation_lineage")
    ui.shot("5-run-succeeded")

    # the stage-5 loss curve and the V-NIAH heatmap, rendered from the materialisations' metadata
    for path, name, label in (("/assets/stage5_long_sft", "6-stage5-loss-curve", "loss_curve"),
                              ("/assets/niah_stage5", "7-niah-heatmap", "heatmap")):
        ui.open(path)
        ui.wait_text(label)
        ui.show_markdown(label)
        assert WebDriverWait(browser, WAIT_S, poll_frequency=1).until(lambda _: ui.images(), f"no image on {path}")
        ui.shot(name)
    for name in ("1-asset-graph", "3-partitions", "5-run-succeeded", "6-stage5-loss-curve", "7-niah-heatmap"):
        assert (artifacts / f"{name}.png").stat().st_size > 10_000
