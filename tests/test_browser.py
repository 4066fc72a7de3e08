"""The comparison as a researcher sees it in the MLflow UI, checked in a real browser: Debian's chromium,
driven headless by Playwright's Python package (never a downloaded browser build).

The store holds two comparisons of the FedKPer spec at tiny scale: its two ablations, then (the latest)
FedKPer with a grid over tau and FedAvg, two seeds each. ``fedreg ui`` prints the latest comparison's links;
at each, with no click, the page itself must show: only that comparison's child runs, the headline columns
with the values ``fedreg report`` computes for the same runs, the variants in the charts' legends, no GenAI
navigation on any page (a run page reached from the table included), and, grouped by ``fedreg.group``, one
group per variant and grid point. Then report.html at 800 px.

Screenshots go to ``$FEDREG_SCREENSHOTS`` (default: the test's tmp folder); the README's images are these.
Without chromium or playwright the test is skipped, except in CI (``CI=true``), where it fails."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedreg.experiment import run_experiment
from fedreg.spec import load_raw, resolve
from testhelpers import REPO, child, deadline

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

#: the FedKPer spec at tiny scale: a tenth of the data, 2 rounds (a curve needs two points), 10 clients, one
#: local epoch
TINY = [
    "data.subset=0.1",
    "federation.rounds=2",
    "data.num_clients=10",
    "training.local_epochs=1",
    "training.batch_size=32",
    "training.optimizer.lr=0.05",
    "checkpoint.every=0",
    "execution.threads=1",
]
#: the latest comparison: FedKPer over a tau grid and FedAvg, seeds 1 and 2
GRID = [*TINY, "seeds=[1, 2]", "grid={variants: [fedkper], params: {method.params.tau: [1.0, 2.0]}}"]
GROUPS = {"fedkper.tau=1.0", "fedkper.tau=2.0", "fedavg"}
#: the headline columns (MLflow names in a 2-round run) and the report's runs.csv metric of each
HEADLINE = {
    "global acc final pct": "final_global_acc",
    "global acc all2 pct": "last10_global_acc",
    "worst-client local acc at last participation pct": "worst_client_local_acc",
    "global NFR all2 pct": "last10_global_nfr",
    "BwT all2 pct": "last10_bwt",
    "global consistency all2 pct": "last10_global_consistency",
}
#: the side navigation of MLflow's GenAI mode (its model-training mode shows Runs, Models, Traces)
GENAI_NAV = ("Observability", "Evaluation runs", "Prompts & versions", "Judges")

#: seconds that ``fedreg ui`` may take to print its links
UI_READY_S = 300


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


@contextmanager
def running_ui(uri: str, port: int) -> Iterator[tuple[dict[str, str], float]]:
    """``fedreg ui`` for the block: (the links it prints by name, seconds until it printed them). When the
    block ends, SIGTERM (as a job system stops it; fedreg ui then stops its MLflow server), and
    :func:`testhelpers.end_child` kills whatever is left."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "fedreg", "ui", "--tracking-uri", uri, "--port", str(port)]
    with child(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        links: dict[str, str] = {}
        patterns = {
            "runs": r"Latest comparison: (\S+)",
            "charts": r"its charts: (\S+)",
            "groups": r"grouped by fedreg.group\): (\S+)",
        }
        with deadline(proc, UI_READY_S):  # a UI that never prints them would keep this loop reading forever
            for line in proc.stdout:
                for name, pat in patterns.items():
                    if m := re.search(pat, line):
                        links[name] = m.group(1)
                if len(links) == len(patterns):
                    break
            else:
                raise AssertionError(f"fedreg ui printed {sorted(links)} of the links")
        try:
            yield links, time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass  # killed by child() on the way out


def comparison(spec_overrides: list[str], variants: list[str] | None = None) -> str:
    raw = load_raw(REPO / "specs" / "fedkper-bloodmnist.yaml", spec_overrides)
    specs = resolve(raw, _registry(), variants)
    res = run_experiment(
        specs, source="specs/fedkper-bloodmnist.yaml", progress=False, echo=lambda *_: None, original=raw
    )
    assert res.parent_run_id is not None
    return res.parent_run_id


ROWS_JS = """() => {
  const rows = {};
  document.querySelectorAll('.ag-row[row-index]').forEach(r => {
    const i = r.getAttribute('row-index');
    rows[i] = rows[i] || {};
    r.querySelectorAll('[col-id]').forEach(c => { rows[i][c.getAttribute('col-id')] = c.innerText.trim(); });
  });
  return Object.values(rows);
}"""


def table_rows(page) -> list[dict[str, str]]:
    """The runs table's rendered rows, each a dict of column id -> cell text."""
    return page.evaluate(ROWS_JS)


def assert_model_training_mode(page, where: str) -> None:
    body = page.inner_text("body")
    shown = [item for item in GENAI_NAV if item in body]
    assert not shown, f"{where} shows MLflow's GenAI navigation: {shown}"


def test_comparison_in_the_mlflow_ui(data_dir, tracking_uri, shots, tmp_path):
    exe = chromium_path()
    first = comparison(TINY, ["kd-only", "agg-only"])  # an earlier comparison the page must not show
    latest = comparison(GRID, ["fedkper", "fedavg"])
    from fedreg_report.command import report

    out = report([latest], tracking=tracking_uri, out=tmp_path / "report", echo=lambda *_: None)
    check_ui(exe, tracking_uri, first, latest, out, shots)


def run_name(cell: str) -> str:
    return cell.split("\n")[-1].strip()  # the cell holds the run's colour swatch, then its name


def check_ui(exe: str, tracking_uri: str, first: str, latest: str, out: Path, shots: Path) -> None:
    """The browser's checks of the two comparisons in the store; ``out``: fedreg report's folder for the
    latest."""
    from playwright.sync_api import expect, sync_playwright

    client = MlflowClient(tracking_uri)

    def children(parent: str):
        exp = client.get_run(parent).info.experiment_id
        return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")

    latest_runs = children(latest)
    names = {ch.info.run_name for ch in latest_runs}
    assert len(names) == 6
    others = {ch.info.run_name for ch in children(first)}
    by_run = {ch.info.run_id: ch.info.run_name for ch in latest_runs}
    expected: dict[str, dict[str, float]] = {}
    with (out / "runs.csv").open() as f:
        for row in csv.DictReader(f):
            if row["run_id"] in by_run and row["metric"] in HEADLINE.values():
                expected.setdefault(by_run[row["run_id"]], {})[row["metric"]] = float(row["value"])

    with running_ui(tracking_uri, free_port()) as (links, ready_s):
        print(f"fedreg ui printed its links after {ready_s:.1f} s: {links['runs']}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1920, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # two shared cores: the first load takes seconds

            # the printed link: this comparison's runs, headline columns, no click
            page.goto(links["runs"])
            expect(page.locator(".ag-row[row-index]").first).to_be_visible()
            page.wait_for_function(f"document.querySelectorAll('.ag-row[row-index]').length >= {len(names)}")
            page.wait_for_timeout(1500)
            page.screenshot(path=shots / "runs.png")
            assert_model_training_mode(page, "the comparison's runs view")
            rows = table_rows(page)
            shown = {run_name(r.get("attributes.`Run Name`", "")) for r in rows}
            assert shown == names, f"the table shows {sorted(shown)}, not {sorted(names)}"
            assert not shown & others
            for r in rows:
                name = run_name(r["attributes.`Run Name`"])
                for col, metric in HEADLINE.items():
                    text = r.get(f"metrics.`{col}`")
                    assert text is not None, f"column '{col}' is not shown for {name}: {sorted(r)}"
                    want = round(100 * expected[name][metric], 2)
                    assert float(text) == pytest.approx(want, abs=0.006), (name, col, text, want)

            # a run page reached from the table stays in model-training mode
            page.locator("a[href*='/runs/']", has_text=re.compile(r"^fedavg\.seed1$")).first.click()
            expect(page.get_by_text("Model metrics").first).to_be_visible()
            assert_model_training_mode(page, "a run page")

            # the charts: the headline section first, the legends name this comparison's runs
            page.goto(links["charts"])
            page.wait_for_function(
                "document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 6",
                timeout=120_000,
            )
            page.wait_for_timeout(1500)
            page.screenshot(path=shots / "charts.png")
            assert_model_training_mode(page, "the chart view")
            body = page.inner_text("body")
            sections = re.findall(r"^([A-Za-z_ ]+)\n\((\d+)\)$", body, re.M)
            assert sections and sections[0][0] == "headline", sections
            legend = set(re.findall(r"^(\S+) \(accuracy/global\)$", body, re.M))
            assert legend and legend <= names, legend
            assert not legend & others

            # grouped by fedreg.group: one group per variant and grid point, the mean over the seeds
            page.goto(links["groups"])
            page.wait_for_function("document.querySelectorAll('.ag-row[row-index]').length >= 3")
            page.wait_for_timeout(1500)
            page.screenshot(path=shots / "groups.png")
            body = page.inner_text("body")
            groups = set(re.findall(r"Group: (\S+) @ [0-9a-f]{8}", body))
            assert groups == GROUPS, groups

            # report.html is readable at 800 px: nothing wider than the window
            page.set_viewport_size({"width": 800, "height": 900})
            page.goto((out / "report.html").resolve().as_uri())
            width = page.evaluate("document.documentElement.scrollWidth")
            page.screenshot(path=shots / "report-800.png")
            assert width <= 800, f"report.html is {width} px wide at an 800 px window"
            browser.close()


def _registry():
    from fedreg.registry import build_registry

    return build_registry()
