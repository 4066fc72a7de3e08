"""The execution layer's fast paths keep results: batched evaluation, data as index sets, bf16 opt-in,
device checks."""

from __future__ import annotations

import pytest
import torch

from fedreg.errors import FedregError
from fedreg.evaluation import predict
from fedreg.testing import _tiny_run, tiny_federation

METRICS = ["global_accuracy", "local_accuracy", "global_on_local"]


def test_one_batched_pass_equals_evaluating_each_set_alone(one_thread):
    run = _tiny_run({"metrics": METRICS, "data.num_clients": 5}, (), None, None)
    st = run.start()
    model = run.runner.new_model()
    model.load_state_dict(st.global_state)
    ev = run.evaluate(1, [0, 1], model, {})
    ds = run.fed.dataset
    alone = predict(model, ds.test_x, ds.test_y, 7)  # another batch size, too
    assert torch.equal(ev.global_test.preds, alone.preds)
    torch.testing.assert_close(ev.global_test.loss, alone.loss, rtol=1e-5, atol=1e-6)
    assert sorted(ev.global_on_local) == list(range(5))
    for cid, got in ev.global_on_local.items():
        _, _, tx, ty = run.fed.client_tensors(cid)
        want = predict(model, tx, ty, 7)
        assert torch.equal(got.labels, ty) and torch.equal(got.preds, want.preds), cid
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)


def test_clients_are_index_sets_into_tensors_held_once():
    run = _tiny_run({}, (), None, None)
    assert not any(isinstance(v, list) and v and isinstance(v[0], tuple) for v in vars(run).values())
    x, y, tx, ty = run.fed.client_tensors(2)
    c = run.fed.clients[2]
    assert torch.equal(x, run.fed.dataset.train_x[torch.from_numpy(c.train_idx)])
    assert torch.equal(ty, run.fed.dataset.train_y[torch.from_numpy(c.test_idx)])
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_bf16_is_opt_in_and_changes_numerics_only_slightly(one_thread):
    fp32 = tiny_federation({"federation.rounds": 3})
    again = tiny_federation({"federation.rounds": 3, "training.precision": "fp32"})
    bf16 = tiny_federation({"federation.rounds": 3, "training.precision": "bf16"})
    for k in fp32.global_state:
        assert torch.equal(fp32.global_state[k], again.global_state[k]), k  # fp32 is the default
    assert any(not torch.equal(fp32.global_state[k], bf16.global_state[k]) for k in fp32.global_state)
    assert all(v.dtype == torch.float32 for v in bf16.global_state.values())  # weights stay fp32
    assert abs(fp32.final["final_global_acc"] - bf16.final["final_global_acc"]) <= 0.1
    assert bf16.final["final_global_acc"] > 0.5  # 4 learnable classes: still learns


def test_a_cuda_device_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FedregError, match="no CUDA device is visible.*execution.device: cpu"):
        _tiny_run({"execution.device": "cuda"}, (), None, None)
    with pytest.raises(FedregError, match="'tpu9' is not"):
        _tiny_run({"execution.device": "tpu9"}, (), None, None)


def test_execution_threads_apply_during_the_run_only(monkeypatch):
    seen = []
    from fedreg_baselines.fedavg import CrossEntropy

    original = CrossEntropy.loss

    def spy(self, model, x, y, ctx):
        seen.append(torch.get_num_threads())
        return original(self, model, x, y, ctx)

    monkeypatch.setattr(CrossEntropy, "loss", spy)
    before = torch.get_num_threads()
    tiny_federation({"federation.rounds": 1, "execution.threads": 1})
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
