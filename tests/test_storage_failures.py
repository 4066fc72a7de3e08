"""Storage failures through the real command line, on real disks (issue 25): the tracking store's disk fills
mid-run (treated as an outage: training goes on, the rest is spooled and replayed), a new or an existing
SQLite store on a read-only disk (refused at once), and the checkpoint disk filling mid-run (a clear error,
no ``.tmp`` left, the last good checkpoint kept and resumed). Small disks are tmpfs mounts: the tests need
root (or CAP_SYS_ADMIN) and are skipped, saying so, where mounting is not permitted."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from testhelpers import child, run_child, small_medmnist_spec, wait_for, write_spec

pytestmark = pytest.mark.slow

EXPERIMENT = "storage"


@pytest.fixture
def mount(tmp_path) -> Iterator[Callable[..., Path]]:
    """``mount(folder, *ARGS)`` runs ``mount ARGS folder`` (made first) and returns ``folder``; every folder
    mounted is unmounted when the test ends. Skips the test where mounting is not permitted."""
    done: list[Path] = []

    def do(folder: Path, *args: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            pytest.skip("no 'mount' command: these tests need small and read-only disks (tmpfs mounts)")
        out = run_child(["mount", *args, str(folder)], 60)
        if out.returncode != 0:
            pytest.skip(
                f"mounting a tmpfs is not permitted here ({out.stderr.strip()}): these tests need small and "
                f"read-only disks; run them as root or with CAP_SYS_ADMIN"
            )
        done.append(folder)
        return folder

    yield do
    for folder in reversed(done):
        run_child(["umount", "-l", str(folder)], 60)


def remount(folder: Path, options: str) -> None:
    out = run_child(["mount", "-o", f"remount,{options}", str(folder)], 60)
    assert out.returncode == 0, out.stderr


def fill(folder: Path) -> Path:
    """Fill the disk holding ``folder`` to its last byte; returns the file that does it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def make_spec(tmp_path: Path, uri: str, rounds: int, ck: str) -> Path:
    raw, _ = small_medmnist_spec(tmp_path, n_train=120, n_test=40)
    raw["federation"]["rounds"] = rounds
    raw["training"]["batch_size"] = 16
    raw["tracking"] = {"uri": uri, "experiment": EXPERIMENT}
    raw["checkpoint"] = {"every": 1, "dir": ck}
    return write_spec(tmp_path / "spec.yaml", raw)


def fedreg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedreg", *args]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def steps_in_db(db: Path) -> int:
    """Rounds of global accuracy in a SQLite store, read without MLflow (which would create the store)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "SELECT COUNT(DISTINCT step) FROM metrics WHERE key = 'accuracy/global'"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


def the_run(uri: str):
    c = MlflowClient(uri)
    (run,) = c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id])
    return c, run


def steps_of(c: MlflowClient, run_id: str) -> list[int]:
    return sorted({m.step for m in c.get_metric_history(run_id, "accuracy/global")})


def tmp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*.tmp")]


def test_tracking_disk_full_mid_run_is_an_outage(tmp_path, mount):
    store = mount(tmp_path / "store", "-t", "tmpfs", "-o", "size=64m", "tmpfs")
    db = store / "mlflow.db"
    uri = f"sqlite:///{db}"
    rounds = 8
    spec = make_spec(tmp_path, uri, rounds, ".fedreg/checkpoints")  # the spool goes to .fedreg/spool
    cmd = fedreg_cmd("run", str(spec), "--no-progress")
    with child(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_for(lambda: steps_in_db(db) >= 2 or proc.poll() is not None, 300, "round 2 in the store")
        assert proc.poll() is None, "the run ended before the disk could fill"
        filler = fill(store)
        out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err  # as a tracking outage: the run itself went on and finished
    assert "Traceback" not in out + err, err
    warnings = [line for line in (out + err).splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert f"could not be delivered to {uri} (its disk is full)" in warning
    assert "free space on its disk" in warning

    spool = Path(warning.split("fedreg replay ")[1].split()[0])
    assert spool.parent == tmp_path / ".fedreg" / "spool"  # in the working directory, another disk
    assert os.stat(spool).st_dev != os.stat(store).st_dev
    assert (spool / "calls.jsonl").read_text().strip()
    assert tmp_files(tmp_path, store) == []
    (ck,) = (tmp_path / ".fedreg" / "checkpoints").rglob("*.pt")
    assert torch.load(ck, weights_only=True)["round"] == rounds  # training went on to the end

    filler.unlink()  # space again
    c, run = the_run(uri)
    if "as RUNNING" in warning:  # its end could not be recorded either, and the warning says so
        assert "as RUNNING until they are sent (its end could not be recorded either)" in warning
        assert run.info.status == "RUNNING"
    else:
        assert "was ended in MLflow anyway" in warning and run.info.status == "FINISHED"
    rep = run_child(fedreg_cmd("replay", str(spool)), 300, cwd=tmp_path, env=ENV)
    assert rep.returncode == 0, rep.stderr
    assert "Traceback" not in rep.stderr
    c, run = the_run(uri)
    assert run.info.status == "FINISHED"
    assert steps_of(c, run.info.run_id) == list(range(1, rounds + 1))  # nothing logged was lost
    assert any("wall" in k for k in run.data.metrics), run.data.metrics  # the summary, logged at the end
    logged = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"model", "metrics", "spec.yaml"} <= logged, logged
    names = [a.path for a in c.list_artifacts(run.info.run_id, "metrics")]
    assert names and all(not Path(n).name[0].isdigit() for n in names), names  # their own names


def test_new_store_in_read_only_folder_is_refused_at_once(tmp_path, mount):
    ro = mount(tmp_path / "ro", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs")
    spec = make_spec(tmp_path, f"sqlite:///{ro / 'mlflow.db'}", 3, "ck")
    t0 = time.monotonic()
    out = run_child(fedreg_cmd("run", str(spec), "--no-progress"), 300, cwd=tmp_path, env=ENV)
    wall = time.monotonic() - t0
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert (
        f"cannot create the MLflow tracking store 'sqlite:///{ro / 'mlflow.db'}': its folder '{ro}' is "
        f"read-only" in out.stderr
    )
    assert "point tracking.uri / MLFLOW_TRACKING_URI at a store in a writable folder" in out.stderr
    assert wall < 60, f"took {wall:.0f} s (MLflow alone retries for minutes)"
    assert list(ro.iterdir()) == []
    assert list(tmp_path.rglob("experiment.json")) == [] and not (tmp_path / ".fedreg").exists()


def test_existing_store_on_read_only_disk_is_refused_in_plain_words(tmp_path, mount):
    disk = mount(tmp_path / "disk", "-t", "tmpfs", "-o", "size=16m", "tmpfs")
    db = disk / "mlflow.db"
    uri = f"sqlite:///{db}"
    make = f"from mlflow import MlflowClient; MlflowClient({uri!r}).create_experiment('x')"
    made = run_child([sys.executable, "-c", make], 300)
    assert made.returncode == 0, made.stderr
    before = db.read_bytes()
    remount(disk, "ro")
    spec = make_spec(tmp_path, uri, 3, "ck")
    out = run_child(fedreg_cmd("run", str(spec), "--no-progress"), 300, cwd=tmp_path, env=ENV)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "autoflush" not in out.stderr
    assert (
        f"error: the MLflow tracking store '{uri}' is a read-only database: '{db}' cannot be written "
        f"(Read-only file system)" in out.stderr
    )
    assert "Make it writable (remount its disk read-write" in out.stderr
    assert db.read_bytes() == before
    assert list(tmp_path.rglob("experiment.json")) == []


def checkpoint_round(folder: Path) -> int:
    files = [p for p in folder.rglob("run.pt")]
    try:
        return int(torch.load(files[0], weights_only=True)["round"]) if files else 0
    except Exception:  # noqa: BLE001 - being replaced right now
        return 0


def test_checkpoint_disk_full_stops_cleanly_and_resumes(tmp_path, mount):
    disk = mount(tmp_path / "ckdisk", "-t", "tmpfs", "-o", "size=32m", "tmpfs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rounds = 6
    spec = make_spec(tmp_path, uri, rounds, str(disk / "ck"))
    cmd = fedreg_cmd("run", str(spec), "--no-progress")
    with child(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_for(lambda: checkpoint_round(disk) >= 1 or proc.poll() is not None, 300, "a first checkpoint")
        assert proc.poll() is None, "the run ended before the disk could fill"
        fill(disk)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "unexpected pos" not in err
    (ck,) = disk.rglob("run.pt")
    assert f"error: cannot write '{ck}': no space left on its disk (" in err
    assert "MB free in" in err and "a checkpoint of this run takes about" in err
    assert "The last good checkpoint run.pt is kept. Free space on that disk, or move the folder" in err
    assert "--checkpoint-dir NEW_DIR" in err
    assert tmp_files(tmp_path) == []
    good = torch.load(ck, weights_only=True)  # intact
    assert 1 <= good["round"] < rounds and not good["finished"]
    c, run = the_run(uri)
    assert run.info.status == "FAILED"
    assert "no space left on its disk" in run.data.tags["fedreg.failure"]

    remount(disk, "size=128m")  # a bigger disk: room again
    resume = err.split("then continue with: ")[1].split()
    assert resume[:3] == ["fedreg", "resume", ck.parent.name], resume
    done = run_child(fedreg_cmd(*resume[1:], "--no-progress"), 400, cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stderr
    assert f"resuming run {run.info.run_id} after round {good['round']}" in done.stdout
    c, run = the_run(uri)
    assert run.info.status == "FINISHED"
    assert steps_of(c, run.info.run_id) == list(range(1, rounds + 1))
    assert torch.load(ck, weights_only=True)["finished"]
    assert tmp_files(tmp_path) == []
