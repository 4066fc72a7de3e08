"""The vectorized backend (``execution.backend: vectorized``): the same training as the local backend.

In float64 the two backends agree to rounding (1e-10), which checks the algorithm: batch order, padding,
masking of finished clients, the SGD rule. In float32 they agree within a stated tolerance: rounding
differences (conv kernels differ under vmap) grow during training, and grow fast when training is
unstable, so the float32 runs use a moderate learning rate.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedreg.backends.vectorized import VectorizedBackend, batch_plan, mean_loss, sgd_step_
from fedreg.clients import ClientJob, ClientRunner, LocalBackend, ModelBuilder, RoundInput, TrainingConfig
from fedreg.components import FunctionalContext, LocalContext, NonFiniteLoss, Objective
from fedreg.errors import ComponentFailure, FedregError, SpecError
from fedreg.losses import cross_entropy, sample_mean
from fedreg.spec import resolve
from fedreg.testing import TINY_SPEC, synthetic_dataset, tiny_federation
from fedreg_baselines.fedavg import CrossEntropy, FedAvg
from fedreg_baselines.fedprox import FedProx, FedProxParams
from fedreg_fedkper.components import AdaptiveKD
from fedreg_standard.models import CNNParams, SmallCNN

# ---------------------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "momentum,weight_decay,nesterov",
    [(0.0, 0.0, False), (0.9, 1e-3, False), (0.9, 1e-3, True), (0.5, 0.0, True), (0.0, 1e-2, False)],
)
def test_sgd_step_is_torch_sgd_bit_for_bit(momentum, weight_decay, nesterov):
    gen = torch.Generator().manual_seed(0)
    start = {
        "w": torch.randn(2, 3, 4, generator=gen),
        "b": torch.randn(2, 5, generator=gen),
    }  # 2 clients stacked
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in range(4)]
    stacked = {k: v.clone() for k, v in start.items()}
    bufs = {k: torch.zeros_like(v) for k, v in start.items()} if momentum else None
    for g in grads:
        sgd_step_(stacked, g, bufs, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for client in range(2):
        ref = {k: v[client].clone().requires_grad_(True) for k, v in start.items()}
        opt = torch.optim.SGD(
            ref.values(), lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
        for g in grads:
            for k, p in ref.items():
                p.grad = g[k][client].clone()
            opt.step()
        for k in start:
            assert torch.equal(stacked[k][client], ref[k].detach()), k


def _ctx(n: int, batch_size: int, seed: int, **kw) -> LocalContext:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    base = dict(
        round=1,
        client_id=0,
        model=None,
        global_state={},
        train_x=x,
        train_y=torch.arange(n),
        test_x=x[:0],
        test_y=torch.arange(0),
        num_classes=4,
        epochs=2,
        batch_size=batch_size,
        lr=0.1,
        make_optimizer=None,
        generator=torch.Generator().manual_seed(seed),
        state={},
        broadcast={},
        build_model=None,
    )
    return LocalContext(**{**base, **kw})


@pytest.mark.parametrize("n,batch_size", [(23, 5), (20, 5), (3, 8), (0, 4)])
def test_batch_plan_is_the_local_loops_batches(n, batch_size):
    local = _ctx(n, batch_size, seed=7)
    expected = [y for _ in range(2) for _, y in local.batches()]
    ctx = _ctx(n, batch_size, seed=7)
    plan = batch_plan([ctx.epoch_order(), ctx.epoch_order()], n, batch_size, offset=100, pad=-1)
    assert plan.shape == (2 * math.ceil(n / batch_size), batch_size)
    got = [row[row >= 0] - 100 for row in plan]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
    assert int((plan < 0).sum()) == 2 * (len(plan) // 2 * batch_size - n)  # padding only at each epoch's end


def test_mean_loss_is_the_local_accounting():
    assert mean_loss([1.0, 2.0, 4.5]) == (2.5, None)
    assert mean_loss([]) == (0.0, None)
    value, bad = mean_loss([1.0, 2.0, float("nan"), float("inf")])
    assert math.isnan(value) and isinstance(bad, NonFiniteLoss) and str(bad) == "loss is nan at step 2"


def test_weighted_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 5, generator=gen), torch.randint(0, 5, (6,), generator=gen)
    assert float(cross_entropy(z, y, torch.ones(6))) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-6)
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    z_pad = torch.cat([z[:3], torch.full((3, 5), 1e4)])  # padding rows: extreme values, weight 0
    assert float(cross_entropy(z_pad, y, w)) == pytest.approx(float(F.cross_entropy(z[:3], y[:3])), rel=1e-6)
    assert float(sample_mean(torch.tensor([3.0, 5.0]), torch.zeros(2))) == 0.0  # a batch of padding only


# ---------------------------------------------------------------------------------------------------------
# The objectives' functional_loss equals their loss
# ---------------------------------------------------------------------------------------------------------


OBJECTIVES = {
    "cross_entropy": lambda: CrossEntropy(),
    "fedprox": lambda: FedProx(FedProxParams(mu=0.5)),
    "adaptive_kd": lambda: AdaptiveKD(),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_functional_loss_is_the_loss_and_ignores_padding(name):
    torch.manual_seed(0)
    build = ModelBuilder(SmallCNN(CNNParams(hidden=16)), 1, 4, 28)
    received, model = build(), build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a client some steps away from the weights it received
    ds = synthetic_dataset(n_train=10, n_test=2, num_classes=4)
    x, y = ds.train_x[:6], ds.train_y[:6]
    ctx = _ctx(
        6, 8, 0, model=model, global_state=received.state_dict(), build_model=build, train_x=x, train_y=y
    )
    obj = OBJECTIVES[name]()
    assert type(obj).vectorizable()
    obj.setup(ctx)
    expected = obj.loss(model, x, y, ctx)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    obj.finish(ctx)

    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    fctx = FunctionalContext(
        round=1,
        num_classes=4,
        lr=0.1,
        broadcast={},
        global_params={n: p.detach() for n, p in received.named_parameters()},
        teacher=lambda inp: received(inp).detach(),
    )
    x_pad = torch.cat([x, ds.train_x[6:8] * 5])
    y_pad = torch.cat([y, ds.train_y[6:8]])
    weight = torch.tensor([1.0] * 6 + [0.0] * 2)
    for xs, ys, ws in ((x, y, torch.ones(6)), (x_pad, y_pad, weight)):
        got = obj.functional_loss(lambda p, inp: functional_call(model, p, (inp,)), params, xs, ys, ws, fctx)
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
        grads = torch.autograd.grad(got, list(params.values()))
        for g, e in zip(grads, expected_grads, strict=True):
            assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


class OnlyFunctional(Objective):
    name = "test_only_functional"

    def functional_loss(self, forward, params, x, y, weight, fctx):
        return cross_entropy(forward(params, x), y, weight)


class FunctionalWithHook(OnlyFunctional):
    def before_step(self, ctx):
        pass


class Neither(Objective):
    name = "test_neither"


def test_one_functional_loss_serves_the_local_loop():
    """An objective that writes only functional_loss trains in the local loop (weight None, the module's
    own parameters) with exactly the loss a plain cross-entropy gives."""
    torch.manual_seed(0)
    build = ModelBuilder(SmallCNN(CNNParams(hidden=16)), 1, 4, 28)
    model = build()
    ds = synthetic_dataset(n_train=10, n_test=2, num_classes=4)
    x, y = ds.train_x[:6], ds.train_y[:6]
    ctx = _ctx(6, 8, 0, model=model, global_state=model.state_dict(), build_model=build, train_x=x, train_y=y)
    assert torch.equal(OnlyFunctional().loss(model, x, y, ctx), F.cross_entropy(model(x), y))
    assert OnlyFunctional.vectorizable()
    assert not FunctionalWithHook.vectorizable()  # an imperative hook: the vectorized backend would skip it
    with pytest.raises(NotImplementedError, match="neither loss nor functional_loss"):
        Neither().loss(model, x, y, ctx)


def test_local_forward_refuses_other_parameters():
    class Foreign(OnlyFunctional):
        def functional_loss(self, forward, params, x, y, weight, fctx):
            return cross_entropy(forward(fctx.global_params, x), y, weight)

    build = ModelBuilder(SmallCNN(CNNParams(hidden=16)), 1, 4, 28)
    model = build()
    ds = synthetic_dataset(n_train=10, n_test=2, num_classes=4)
    x, y = ds.train_x[:6], ds.train_y[:6]
    ctx = _ctx(6, 8, 0, model=model, global_state=model.state_dict(), build_model=build, train_x=x, train_y=y)
    with pytest.raises(FedregError, match=r"fctx\.teacher"):
        Foreign().loss(model, x, y, ctx)


def test_the_local_teacher_is_the_received_model_without_gradient():
    torch.manual_seed(0)
    build = ModelBuilder(SmallCNN(CNNParams(hidden=16)), 1, 4, 28)
    received, model = build(), build()
    ds = synthetic_dataset(n_train=10, n_test=2, num_classes=4)
    x, y = ds.train_x[:6], ds.train_y[:6]
    ctx = _ctx(
        6, 8, 0, model=model, global_state=received.state_dict(), build_model=build, train_x=x, train_y=y
    )
    fctx = ctx.functional()
    out = fctx.teacher(x)
    assert torch.equal(out, received(x).detach()) and not out.requires_grad
    assert fctx is ctx.functional()  # built once per client
    assert set(fctx.global_params) == {n for n, _ in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------------
# Federations: vectorized against local
# ---------------------------------------------------------------------------------------------------------

# unequal client sizes (Dirichlet 0.5: 113, 66, 71, 9, 34, 91 training samples), a batch size that leaves
# short last batches (one of a single sample), momentum, weight decay
FEDERATION = {
    "data.num_clients": 6,
    "data.partition": {"name": "dirichlet", "params": {"alpha": 0.5, "min_samples": 5}},
    "training.batch_size": 16,
    "federation.clients_per_round": 4,
    "metrics": ["global_accuracy", "local_accuracy"],
}
METHODS = {
    "cross_entropy+fedavg": {},
    "fedprox+nesterov": {
        "training.objective": {"name": "fedprox", "params": {"mu": 0.1}},
        "training.optimizer.nesterov": True,
    },
    "adaptive_kd+reliability_diversity": {
        "training.objective": "adaptive_kd",
        "federation.aggregation": "reliability_diversity",
    },
}
TIMING = ("round_time_s", "elapsed_s", "cpu_s")


def both(overrides):
    return [tiny_federation({**overrides, "execution.backend": b}) for b in ("local", "vectorized")]


def weights_rel_diff(a, b) -> float:
    """max over tensors of max |a - b| / max |a|."""
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the synthetic data and the model are built in float64
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("method", list(METHODS))
def test_same_training_as_local_in_float64(method, float64, one_thread):
    # a learning rate at which float32 rounding differences blow up (see the float32 test): float64 shows
    # the algorithm is the same
    local, vec = both(
        {
            **FEDERATION,
            **METHODS[method],
            "training.local_epochs": 1,
            "federation.rounds": 3,
            "training.optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        }
    )
    assert vec.global_state["fc.weight"].dtype == torch.float64
    assert weights_rel_diff(local.global_state, vec.global_state) < 1e-10
    assert len(local.history) == len(vec.history) == 3
    for a, b in zip(local.history, vec.history, strict=True):
        assert set(a) == set(b)
        for k in set(a) - set(TIMING):
            assert b[k] == pytest.approx(a[k], rel=1e-10, abs=1e-12), (a["round"], k)


@pytest.mark.parametrize("method", list(METHODS))
def test_same_training_as_local_in_float32(method, one_thread):
    local, vec = both(
        {
            **FEDERATION,
            **METHODS[method],
            "training.local_epochs": 1,
            "federation.rounds": 4,
            "training.optimizer": {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3},
        }
    )
    # found: weights up to 3e-5 (cross_entropy, adaptive_kd), 2e-7 (fedprox); losses up to 2e-7; accuracies
    # identical
    assert weights_rel_diff(local.global_state, vec.global_state) < 2e-4
    one_sample = 1 / 160  # one sample of the global test set; less than one sample of any local test set
    for a, b in zip(local.history, vec.history, strict=True):
        assert set(a) == set(b)
        for k in set(a) - set(TIMING):
            if "acc" in k:
                assert abs(b[k] - a[k]) <= one_sample + 1e-9, (a["round"], k)
            else:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["round"], k)


def test_bf16_trains_close_to_local_bf16(one_thread):
    local, vec = both(
        {
            **FEDERATION,
            "training.precision": "bf16",
            "federation.rounds": 2,
            "training.optimizer": {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3},
        }
    )
    assert weights_rel_diff(local.global_state, vec.global_state) < 0.05  # found: 1e-2
    assert vec.history[-1]["train_loss"] == pytest.approx(local.history[-1]["train_loss"], rel=0.05)


# ---------------------------------------------------------------------------------------------------------
# One round through ClientRunner: failures, learning rates
# ---------------------------------------------------------------------------------------------------------


def _runner(tensors, **config):
    cfg = dict(
        seed=3,
        epochs=2,
        batch_size=16,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=False,
        num_classes=4,
        eval_local=True,
        eval_batch_size=64,
    )
    return ClientRunner(
        TrainingConfig(**{**cfg, **config}), ModelBuilder(SmallCNN(CNNParams(hidden=16)), 1, 4, 28), tensors
    )


SIZES = (70, 45, 33, 9)


def _tensors(poisoned: int | None = None):
    ds = synthetic_dataset(n_train=sum(SIZES), n_test=40, num_classes=4)
    starts = [sum(SIZES[:i]) for i in range(len(SIZES))]

    def tensors(cid):
        x = ds.train_x[starts[cid] : starts[cid] + SIZES[cid]]
        if cid == poisoned:
            x = torch.full_like(x, float("nan"))
        return (
            x,
            ds.train_y[starts[cid] : starts[cid] + SIZES[cid]],
            ds.test_x[cid * 10 : (cid + 1) * 10],
            ds.test_y[cid * 10 : (cid + 1) * 10],
        )

    return tensors


def _round(backend_cls, runner, jobs, r: int = 2):
    torch.manual_seed(0)
    global_state = {k: v.detach().clone() for k, v in runner.new_model().state_dict().items()}
    backend = backend_cls(None, runner, len(jobs))
    backend.start()
    return backend.train(jobs, RoundInput(r, global_state, {}, CrossEntropy(), FedAvg()))


def test_a_diverging_client_fails_alone(one_thread):
    jobs = [ClientJob(2, cid, 0.05, {"kept": cid}) for cid in (3, 1, 2, 0)]
    local = _round(LocalBackend, _runner(_tensors(poisoned=1)), jobs)
    vec = _round(VectorizedBackend, _runner(_tensors(poisoned=1)), jobs)
    assert [r.cid for r in vec] == [3, 1, 2, 0]  # job order, not the backend's size order
    bad = vec[1]
    assert bad.update is None and isinstance(bad.failure, ComponentFailure)
    assert isinstance(bad.failure.original, NonFiniteLoss) and bad.failure.method == "loss"
    assert bad.failure.client == 1 and "loss is nan at step 0" in str(bad.failure)
    assert str(bad.failure) == str(local[1].failure)
    for a, b in zip(local, vec, strict=True):
        if a.cid == 1:
            continue
        assert b.failure is None and b.state == {"kept": a.cid}
        assert b.update.num_samples == a.update.num_samples
        assert b.update.train_loss == pytest.approx(a.update.train_loss, rel=1e-5)
        assert weights_rel_diff(a.update.state, b.update.state) < 1e-4
        assert torch.equal(b.local_eval.labels, a.local_eval.labels)


def test_clients_with_different_learning_rates(float64, one_thread):
    jobs = [ClientJob(2, cid, lr, {}) for cid, lr in ((0, 0.05), (1, 0.01), (2, 0.05), (3, 0.2))]
    local = _round(LocalBackend, _runner(_tensors(), nesterov=True), jobs)
    vec = _round(VectorizedBackend, _runner(_tensors(), nesterov=True), jobs)
    for a, b in zip(local, vec, strict=True):
        assert b.update.train_loss == pytest.approx(a.update.train_loss, rel=1e-12)
        assert weights_rel_diff(a.update.state, b.update.state) < 1e-10


@pytest.mark.parametrize("backend_cls", [LocalBackend, VectorizedBackend])
def test_clients_evaluate_locally_only_in_evaluated_rounds(backend_cls, one_thread):
    """evaluation.every 2 of 5 rounds: rounds 2, 4 and the last (5) are evaluated; in rounds 1 and 3 no
    client spends time on predictions nobody reads. Training is the same either way."""
    runner = _runner(_tensors(), eval_every=2, rounds=5)
    every_round = _runner(_tensors())
    for r in range(1, 6):
        jobs = [ClientJob(r, cid, 0.05, {}) for cid in (0, 2)]
        got = _round(backend_cls, runner, jobs, r)
        assert all((res.local_eval is not None) == (r in (2, 4, 5)) for res in got), r
        same = _round(backend_cls, every_round, jobs, r)
        assert all(res.local_eval is not None for res in same)
        assert [x.update.train_loss for x in got] == [x.update.train_loss for x in same]


class _BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.fc = nn.Linear(28 * 28, 4)

    def forward(self, x):
        return self.fc(self.bn(x).flatten(1))


def test_a_model_with_buffers_is_refused():
    class Factory:
        def build(self, *_):
            return _BatchNormNet()

    runner = ClientRunner(_runner(_tensors()).config, ModelBuilder(Factory(), 1, 4, 28), _tensors())
    with pytest.raises(
        FedregError, match=r"without buffers.*bn.running_mean.*execution.backend: local or ray"
    ):
        VectorizedBackend(None, runner, 2).start()


# ---------------------------------------------------------------------------------------------------------
# The spec check
# ---------------------------------------------------------------------------------------------------------


def test_an_objective_without_functional_loss_is_a_spec_error(registry):
    raw = {**TINY_SPEC, "execution": {"backend": "vectorized"}}
    raw["training"] = {**TINY_SPEC["training"], "objective": "fedntd"}
    raw["federation"] = {**TINY_SPEC["federation"], "clients_per_round": 9}  # a second problem, reported too
    with pytest.raises(SpecError) as err:
        resolve(raw, registry)
    issues = {i.path: i.message for i in err.value.issues}
    assert set(issues) == {"execution.backend", "federation.clients_per_round"}
    msg = issues["execution.backend"]
    assert "objective 'fedntd' cannot run on the vectorized backend" in msg and "functional_loss" in msg
    assert "Objectives that can: adaptive_kd, cross_entropy, fedprox;" in msg
    assert "local or ray runs any objective" in msg
    # the same objective on the local backend, and a vectorizable one on the vectorized backend, are fine
    resolve({**raw, "federation": TINY_SPEC["federation"], "execution": {"backend": "local"}}, registry)
    resolve(
        {
            **TINY_SPEC,
            "execution": {"backend": "vectorized"},
            "training": {**TINY_SPEC["training"], "precision": "bf16", "objective": "adaptive_kd"},
        },
        registry,
    )
