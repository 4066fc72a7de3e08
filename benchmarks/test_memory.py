"""Peak resident memory of `fedreg run` with 100 and 500 clients on BloodMNIST, each in a fresh process,
against a plain process that holds the same data as tensors and trains the same model (the floor any
simulation pays). Goal (issue 7): <= 2 GiB with 500 clients.

    FEDREG_DATA_DIR=../shared/data/medmnist python -m pytest benchmarks/test_memory.py -s
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from common import REPO

PLAIN = """
import numpy as np, torch, torch.nn.functional as F, os
from fedreg_standard.models import CNN
d = np.load(os.path.join(os.environ["FEDREG_DATA_DIR"], "bloodmnist.npz"))
xs = {k: torch.from_numpy(d[k + "_images"]).permute(0, 3, 1, 2).float().div(255)
         .contiguous(memory_format=torch.channels_last) for k in ("train", "test")}
y = torch.from_numpy(d["train_labels"].ravel()).long()
m = CNN(3, 8).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
for s in range(0, 2000, 12):
    opt.zero_grad(); F.cross_entropy(m(xs["train"][s:s + 12]), y[s:s + 12]).backward(); opt.step()
with torch.inference_mode():
    for s in range(0, len(xs["test"]), 256):
        m(xs["test"][s:s + 256])
"""


def peak_rss_mib(cmd: list[str], cwd) -> float:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read()
    return usage.ru_maxrss / 1024  # KiB on Linux


@pytest.mark.parametrize("clients", [100, 500])
def test_peak_memory(clients, data_dir, tmp_path, benchmark):
    spec = yaml.safe_load((REPO / "specs/fedavg-bloodmnist.yaml").read_text())
    spec["data"].update(
        {
            "num_clients": clients,
            # Dirichlet 0.1 cannot give 500 clients of BloodMNIST data each; alpha 0.5 can
            "partition": {"name": "dirichlet", "params": {"alpha": 0.5, "min_samples": 2}},
        }
    )
    spec["federation"].update({"rounds": 3, "clients_per_round": 10})
    spec["metrics"] = ["global_accuracy", "local_accuracy", "global_on_local", "flips", "bwt"]
    spec["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "memory"}
    spec["checkpoint"] = {"dir": str(tmp_path / "ck")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    fedreg = peak_rss_mib([sys.executable, "-m", "fedreg", "run", "spec.yaml", "--no-progress"], tmp_path)
    plain = peak_rss_mib([sys.executable, "-c", PLAIN], tmp_path)
    ratio = fedreg / plain
    benchmark.extra_info.update({"fedreg_peak_rss_mib": fedreg, "plain_peak_rss_mib": plain, "ratio": ratio})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(
        f"\n{clients} clients: fedreg run peak RSS {fedreg:.0f} MiB, plain process {plain:.0f} MiB, "
        f"ratio {ratio:.2f}"
    )
    assert fedreg <= 2048
