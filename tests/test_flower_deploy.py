"""fedreg at real sites: a real SuperLink and three real SuperNodes on 127.0.0.1 (tests/flower_sites.py),
each site with its own data file, run the FedKPer spec through ``flwr run`` of the Flower App fedreg writes;
results land in the server's MLflow store. A killed SuperNode is a client failure under the spec's fault
policy; TLS and SuperNode authentication are Flower's; nothing per-sample leaves a site (the sites' audit
logs say what each reply carried)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml

from flower_sites import Deployment, make_node_key, make_tls
from testhelpers import make_medmnist_npz

flwr = pytest.importorskip("flwr")  # the flower extra; without it these tests are skipped

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: each site's samples: sizes that are no dimension of the model, so a per-sample array would show
SITE_SAMPLES = (113, 97, 89)


def site_file(path: Path, n: int, seed: int) -> Path:
    """A site's own samples in the MedMNIST layout (train_images, train_labels), its label mix skewed."""
    rng = np.random.default_rng(seed)
    favourite = rng.choice(11, size=3, replace=False)
    y = np.where(rng.random(n) < 0.7, rng.choice(favourite, size=n), rng.integers(0, 11, size=n))
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 4)
        x[i, r * 7 : (r + 1) * 7, col * 7 : (col + 1) * 7] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train_images=x, train_labels=y.reshape(-1, 1).astype(np.uint8))
    return path


def write_spec(tmp: Path, rounds: int, per_round: int, **more: Any) -> Path:
    """The FedKPer spec of specs/fedkper-bloodmnist.yaml at test scale: 3 sites of OrganCMNIST-shaped data
    (the server's copy for the global test split is a small synthetic file), the store in ``tmp``."""
    spec = yaml.safe_load((ROOT / "specs" / "fedkper-bloodmnist.yaml").read_text())
    spec.pop("variants")
    (tmp / "server-data").mkdir()
    md5 = make_medmnist_npz(tmp / "server-data", "organcmnist", n_train=40, n_test=60, seed=9)
    spec["name"] = "fedkper-sites"
    spec["data"].update(dataset={"name": "organcmnist", "params": {"md5": md5}}, num_clients=3)
    spec["model"] = {"name": "cnn", "params": {"hidden": 8}}
    spec["training"].update(local_epochs=2, batch_size=16)
    spec["training"]["optimizer"]["lr"] = 0.05  # so that 2 rounds learn: the comparison means something
    spec["federation"].update(rounds=rounds, clients_per_round=per_round)
    spec["execution"] = {"backend": "flower", "threads": 1, "cpus_per_client": 1}
    spec["tracking"] = {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "sites"}
    spec["checkpoint"] = {"dir": str(tmp / "checkpoints"), "every": 1}
    for key, value in more.items():
        spec.setdefault(key, {}).update(value)
    path = tmp / "fedkper-sites.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def flower_app(tmp: Path, spec: Path) -> Path:
    from fedreg_flower.app import write_app

    write_app(spec, tmp / "app")
    return tmp / "app"


def start_sites(d: Deployment, tmp: Path, keys: list[Path] | None = None) -> list:
    nodes = []
    for i, n in enumerate(SITE_SAMPLES):
        data = site_file(tmp / f"site{i}" / "organcmnist-site.npz", n, seed=i)
        audit = tmp / f"site{i}" / "audit.jsonl"
        config = f'client-id={i} data-file="{data}" audit-log="{audit}"'
        nodes.append(d.start_node(config, private_key=keys[i] if keys else None, name=f"site{i}"))
    return nodes


def env(tmp: Path) -> dict[str, str]:
    return {
        "FEDREG_DATA_DIR": str(tmp / "server-data"),
        "OMP_NUM_THREADS": "1",
        "FEDREG_FLOWER_OBJECT_TIMEOUT": "60",
    }


def finished_run(tmp: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "sites"]
    (run,) = client.search_runs([exp.experiment_id])
    return run


def shapes(described: Any) -> list[list[int]]:
    """Every tensor or array shape in an audit description."""
    if isinstance(described, dict):
        found = [described["tensor"]] if "tensor" in described else []
        found += [described["shape"]] if "shape" in described and isinstance(described["shape"], list) else []
        return found + [s for v in described.values() for s in shapes(v)]
    if isinstance(described, list):
        return [s for v in described for s in shapes(v)]
    return []


def check_audit(tmp: Path, sites: int) -> dict[str, int]:
    """No reply of any site carried a per-sample array: no array or tensor with a dimension of the site's
    sample counts (all its samples, its training set, its local test set, computed here as its node does),
    none of which is a dimension of the model; and no record named like predictions, labels or images.
    Returns how many replies of each message type were audited."""
    from fedreg.registry import get_registry
    from fedreg.spec import load_spec
    from fedreg_flower.sites import site_data

    (rs,) = load_spec(str(tmp / "fedkper-sites.yaml"), get_registry())
    net = rs.components["model"].instantiate().build(1, 11, 28)
    dims = {d for t in net.state_dict().values() for d in t.shape}
    seen: dict[str, int] = {}
    for i in range(sites):
        data = site_data(rs, {"data-file": str(tmp / f"site{i}" / "organcmnist-site.npz")}, i)
        c = data.clients[0]
        counts = {SITE_SAMPLES[i], len(c.train_idx), len(c.test_idx)}
        assert not counts & dims, f"site {i}'s sample counts {counts} include a model dimension: pick others"
        for line in map(json.loads, (tmp / f"site{i}" / "audit.jsonl").read_text().splitlines()):
            kind = line["message_type"]
            seen[kind] = seen.get(kind, 0) + 1
            text = json.dumps(line["records"])
            for word in ('"labels', '"preds', '"probs', '"images', '"correct', '"prev'):
                assert word not in text, (i, kind, word, text[:300])
            for shape in shapes(line["records"]):
                assert not counts & set(shape), (i, kind, shape)
    return seen


def local_reference(tmp: Path) -> list[float]:
    """The global accuracy per round of the same spec on fedreg's local backend, its clients the three
    sites' data as their nodes read and carve it, evaluated on the server's copy of the test split."""
    import torch

    from fedreg.data import ClientSplit, FederatedData
    from fedreg.registry import get_registry
    from fedreg.rounds import FederatedRun
    from fedreg.spec import load_spec
    from fedreg.testing import NullTracker
    from fedreg_flower.sites import site_data

    (rs,) = load_spec(str(tmp / "fedkper-sites.yaml"), get_registry(), ["execution.backend=local"])
    server = rs.components["dataset"].instantiate().load(str(tmp / "server-data"), False, 28)
    parts = [
        site_data(rs, {"data-file": str(tmp / f"site{i}" / "organcmnist-site.npz")}, i) for i in range(3)
    ]
    clients, offset = [], 0
    for i, part in enumerate(parts):
        c = part.clients[0]
        clients.append(ClientSplit(i, c.train_idx + offset, c.test_idx + offset))
        offset += len(part.dataset.train_y)
    ds = replace(
        server,
        train_x=torch.cat([p.dataset.train_x for p in parts]).contiguous(memory_format=torch.channels_last),
        train_y=torch.cat([p.dataset.train_y for p in parts]),
    )
    threads = torch.get_num_threads()
    try:
        result = FederatedRun(
            rs, FederatedData(ds, clients), NullTracker(), "reference", progress=False
        ).run()
    finally:
        torch.set_num_threads(threads)
    return [h["global_acc"] for h in result.history]


def metric_history(tmp: Path, run_id: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def store_has_a_run(db: Path) -> bool:
    """Whether the server's SQLite store exists with a run in it (so its schema is complete), read-only."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return bool(con.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.Error:  # no runs table yet, or locked by the server's set-up
        return False


def wait_for_round(tmp: Path, round: int, timeout: float = 300) -> None:
    """Until the server's store holds round ``round`` of the run (between rounds: no reply is on its way)."""
    deadline = time.monotonic() + timeout
    while not store_has_a_run(tmp / "mlflow.db") and time.monotonic() < deadline:
        time.sleep(1)  # the server creates the store: no MLflow client here may race its schema set-up
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    while time.monotonic() < deadline:
        exps = [e for e in client.search_experiments() if e.name == "sites"]
        runs = client.search_runs([exps[0].experiment_id]) if exps else []
        if runs and any(
            m.step == round for m in client.get_metric_history(runs[0].info.run_id, "training/clients_ok")
        ):
            return
        time.sleep(1)
    raise TimeoutError(f"round {round} was not logged within {timeout} s")


@dataclass
class Deployed:
    """What a deployment scenario left for its test: its folder, `flwr ls` status, `flwr log` and timings."""

    tmp: Path
    status: dict[str, Any]
    log: str
    wall: float
    facts: dict[str, Any] = field(default_factory=dict)


def killed_site_scenario(tmp: Path) -> Deployed:
    """Three sites, all three clients each round, 2 rounds; the third site's SuperNode SIGKILLed after
    round 1, under faults.client_failure: skip."""
    spec = write_spec(tmp, rounds=2, per_round=3, faults={"client_failure": "skip"}, checkpoint={"every": 2})
    app = flower_app(tmp, spec)
    with Deployment(tmp / "flwr", env=env(tmp)) as d:
        d.start_superlink()
        nodes = start_sites(d, tmp)
        d.wait_nodes(3)
        t0 = time.monotonic()
        run_id = d.submit(app)
        wait_for_round(tmp, 1)
        d.kill_node(nodes[2])
        status = d.wait_run(run_id, timeout=900)
        return Deployed(tmp, status, d.run_log(run_id), time.monotonic() - t0)


def tls_auth_scenario(tmp: Path) -> Deployed:
    """TLS with certificates made here, SuperNode authentication with three registered keys and a fourth,
    unregistered SuperNode; the three sites run 2 rounds, 2 clients a round."""
    spec = write_spec(tmp, rounds=2, per_round=2, checkpoint={"every": 0})
    app = flower_app(tmp, spec)
    tls = make_tls(tmp / "tls")
    keys = [make_node_key(tmp / "keys", f"site{i}") for i in range(4)]
    with Deployment(tmp / "flwr", tls=tls, auth=True, env=env(tmp)) as d:
        d.start_superlink()
        for _, public in keys[:3]:
            d.register_node(public)
        start_sites(d, tmp, [private for private, _ in keys[:3]])
        stranger = d.start_node(
            f'client-id=0 data-file="{tmp / "site0" / "organcmnist-site.npz"}"',
            private_key=keys[3][0],
            name="stranger",
        )
        evidence = d.wait_refused(stranger)
        d.wait_nodes(3)
        t0 = time.monotonic()
        run_id = d.submit(app)
        status = d.wait_run(run_id, timeout=900)
        wall = time.monotonic() - t0
        online = [x for x in d.nodes() if x["status"] == "online"]
        facts = {"refused": evidence, "online": online}
        return Deployed(tmp, status, d.run_log(run_id), wall, facts)


#: each test's deployment; the selected ones run at once (see the `deployed` fixture)
SCENARIOS = {
    "test_fedkper_at_three_sites_with_one_killed_mid_run": killed_site_scenario,
    "test_tls_and_supernode_authentication": tls_auth_scenario,
}


@pytest.fixture(scope="module")
def deployed(request, tmp_path_factory, _store_template):
    """The deployments of this file's selected tests, started together in threads: each spends most of its
    time waiting on Flower's 3 s polls and on `flwr-clientapp` processes starting, so two at once take
    little more than one. Each thread's Deployment stops and reaps its processes however its scenario
    ends; a test gets its scenario's outcome (or its exception) from ``deployed[test name].result()``.
    The server's store is there before the run, empty (a copy of the session's migrated template)."""
    names = [i.name for i in request.session.items if i.module is request.module and i.name in SCENARIOS]
    folders = {n: tmp_path_factory.mktemp(n[5:30]) for n in names}
    for folder in folders.values():
        shutil.copyfile(_store_template, folder / "mlflow.db")
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        yield {n: pool.submit(SCENARIOS[n], folders[n]) for n in names}


def test_fedkper_at_three_sites_with_one_killed_mid_run(deployed, request):
    """Three sites run the FedKPer spec (all three clients each round); the third site's SuperNode is
    killed (SIGKILL) after round 1. Under faults.client_failure: skip its round 2 is a client failure (and
    it is left out of later evaluations and of the final checkpoint): the run finishes, round 2 trained by
    the two other sites, every figure (per-client ones from the sites' numbers) in the server's store."""
    out = deployed[request.node.name].result()
    tmp_path, log = out.tmp, out.log
    print(f"deployment with a killed node: {out.wall:.0f} s from flwr run to the end")
    assert out.status["status"] == "finished:completed", log
    run = finished_run(tmp_path)
    assert run.info.status == "FINISHED", log
    rid = run.info.run_id
    assert metric_history(tmp_path, rid, "training/clients_ok") == [3.0, 2.0]
    assert metric_history(tmp_path, rid, "training/clients_failed") == [0.0, 1.0]
    for key in ("accuracy/global", "accuracy/local_mean", "global_on_local/acc_mean"):
        assert len(metric_history(tmp_path, rid, key)) == 2, key
    # round 2 only; local flips need each site's previous local evaluation, kept at the site
    for key in ("forgetting/nfr", "forgetting/local_nfr", "forgetting/bwt"):
        assert len(metric_history(tmp_path, rid, key)) == 1, key
    assert len(metric_history(tmp_path, rid, "personalization/acc_mean")) == 1  # the last round
    failures = Path(
        mlflow.artifacts.download_artifacts(
            run_id=rid,
            artifact_path="metrics/failures.csv",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )
    )
    rows = failures.read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["2", "2", "node"]], rows
    seen = check_audit(tmp_path, 3)
    assert seen["train"] == 3 + 2 and seen["evaluate"] == 2 and seen["query"] == 3, seen
    from fedreg import checkpoint

    (ck_file,) = (tmp_path / "checkpoints").rglob("*.pt")
    ck = checkpoint.load(ck_file)
    assert ck["finished"] and sorted(ck["client_states"]) == [0, 1]  # the lost site's state is not there


def test_tls_and_supernode_authentication(deployed, request):
    """With TLS (certificates made here) and SuperNode authentication, the three registered sites run the
    FedKPer spec for 2 rounds to a FINISHED run; a SuperNode whose key was not registered is refused and
    never comes online."""
    out = deployed[request.node.name].result()
    tmp_path, log = out.tmp, out.log
    print(f"deployment with TLS and authentication: {out.wall:.0f} s from flwr run to the end")
    assert "2004" in out.facts["refused"]
    assert len(out.facts["online"]) == 3
    assert out.status["status"] == "finished:completed", log
    assert "fedreg: finished run(s)" in log  # the ServerApp's own lines reach `flwr log`
    run = finished_run(tmp_path)
    assert run.info.status == "FINISHED"
    # the sites' run is the local backend's run on the same data, round for round
    deployed_acc = metric_history(tmp_path, run.info.run_id, "accuracy/global")
    assert deployed_acc == pytest.approx(local_reference(tmp_path), abs=1e-7)
    assert deployed_acc[-1] > 0.3  # it learns (11 classes)
    check_audit(tmp_path, 3)
