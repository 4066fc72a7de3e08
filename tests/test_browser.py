"""The comparison as a researcher sees it in the MLflow UI, checked in a real browser: Debian's chromium,
driven headless by Playwright's Python package (never a downloaded browser build). A tiny real run of the
FedKPer spec's four variants, ``fedreg ui`` on a temporary store, then: the runs view at the URL it prints,
the chart view's first section, the parent run's description, and report.html at 1280 px.

Screenshots go to ``$FEDREG_SCREENSHOTS`` (default: the test's tmp folder); README's image is one of them.
Without chromium or playwright the test is skipped, except in CI (``CI=true``), where it fails."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedreg.experiment import run_experiment
from fedreg.spec import load_raw, resolve
from testhelpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

VARIANTS = ["fedkper", "kd-only", "agg-only", "fedavg"]
#: the FedKPer spec at tiny scale: 2 rounds (a curve needs two points), 10 clients, one local epoch
TINY = [
    "federation.rounds=2",
    "data.num_clients=10",
    "training.local_epochs=1",
    "training.batch_size=32",
    "training.optimizer.lr=0.05",
    "checkpoint.every=0",
    "execution.threads=1",
]


def chromium_path() -> str:
    """The system chromium, else skip (fail in CI)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        msg = "needs Debian's chromium (apt-get install chromium) and playwright (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("FEDREG_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_ui(uri: str, port: int) -> tuple[subprocess.Popen, str, float]:
    """``fedreg ui`` in its own process group; (process, the URL it prints, seconds until it printed it)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedreg", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"Latest comparison: (\S+)", line):
            return proc, m.group(1), time.monotonic() - t0
    os.killpg(proc.pid, signal.SIGTERM)
    raise AssertionError("fedreg ui printed no URL")


def test_comparison_in_the_mlflow_ui(data_dir, tracking_uri, shots, tmp_path):
    exe = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    raw = load_raw(REPO / "specs" / "fedkper-bloodmnist.yaml", TINY)
    specs = resolve(raw, _registry())
    res = run_experiment(
        specs, source="specs/fedkper-bloodmnist.yaml", progress=False, echo=lambda *_: None, original=raw
    )
    parent = res.parent_run_id
    assert parent is not None

    from fedreg_report.command import report

    out = report([parent], tracking=tracking_uri, out=tmp_path / "report", echo=lambda *_: None)

    proc, url, ready_s = start_ui(tracking_uri, free_port())
    print(f"fedreg ui ready in {ready_s:.1f} s: {url}")
    try:
        exp_id = MlflowClient(tracking_uri).get_run(parent).info.experiment_id
        assert url.endswith(f"/#/experiments/{exp_id}/runs?workflowType=machine_learning")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)  # two shared cores: the first load takes seconds

            # the runs view: the parent run, its four variants under it
            page.goto(url)
            expect(page.locator(f"a[href$='/runs/{parent}']")).to_be_visible()
            close = page.get_by_role("button", name=re.compile("close", re.I))
            if page.get_by_text("MLflow Assistant").count():  # the assistant's side panel takes a third
                for i in range(close.count()):
                    if close.nth(i).is_visible():
                        close.nth(i).click()
                        break
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            for name in VARIANTS:
                expect(run_link(page, name)).to_be_visible()
            page.screenshot(path=shots / "runs.png")

            # the chart view: its first section is accuracy, global accuracy for all four
            page.locator("label:has(input[value='CHART'])").click()  # the chart view
            expect(page.get_by_text("System metrics").first).to_be_visible()
            # the first charts have drawn their lines (plotly's traces) before the screenshot
            page.wait_for_function(
                "document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 4",
                timeout=90_000,
            )
            page.wait_for_timeout(1000)
            page.screenshot(path=shots / "charts.png")
            body = page.inner_text("body")
            sections = re.findall(r"^([A-Za-z_ ]+)\n\((\d+)\)$", body, re.M)
            assert sections and sections[0][0] == "accuracy", sections
            assert sections[-1][0] == "System metrics", sections
            for name in VARIANTS:  # the legend of the first chart, accuracy/global
                assert f"{name} (accuracy/global)" in body, name

            # the parent's description holds the comparison table
            page.goto(url.split("#")[0] + f"#/experiments/{exp_id}/runs/{parent}")
            table = page.locator("table").filter(has_text="overrides").first
            expect(table).to_be_visible()
            for name in VARIANTS:
                expect(table).to_contain_text(name)
            expect(table).to_contain_text("federation.aggregation=fedavg")
            page.screenshot(path=shots / "parent.png", full_page=True)

            # report.html fits a 1280 px page
            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto((out / "report.html").resolve().as_uri())
            width = page.evaluate("document.documentElement.scrollWidth")
            page.screenshot(path=shots / "report.png")
            assert width <= 1280, f"report.html is {width} px wide at a 1280 px window"
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def run_link(page, name: str):
    """The link of the run named ``name`` in the runs table."""
    return page.locator("a[href*='/runs/']", has_text=re.compile(f"^{re.escape(name)}$")).first


def _registry():
    from fedreg.registry import build_registry

    return build_registry()
