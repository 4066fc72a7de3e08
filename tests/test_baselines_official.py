"""The baselines as their official code runs them (issue 23): one check per fact the official code gives,
each computed here by hand (autograd on the formula, or arithmetic written out), never from fedreg's own
functions. Sources: lgcollins/FedRep (``models/Update.py``, ``main_fedrep.py``, ``utils/options.py``),
MLOPTPSU/FedTorch (``comms/trainings/federated/apfl.py``, ``comms/utils/eval.py``,
``comms/utils/flow_utils.py``), google-research/federated (``optimization/``, Keras Adam),
alpemreacar/FedDyn (``utils_methods.py``, ``utils_general.py``), litian96/ditto
(``flearn/trainers_MTL/fedbase.py``, ``run.sh``), jhoon-oh/FedBABU (``main_fed.py``, ``analysis.ipynb``),
FL-bench (``src/server/scaffold.py``), QinbinLi/MOON (``main.py``, ``model.py``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_baselines_rules import X, Y, ce_grad, close, tiny_ctx, tiny_model
from torch.func import functional_call

from fedreg.components import ClientInfo, ClientUpdate, RunInfo, clone_state
from fedreg.testing import tiny_federation
from fedreg_baselines.apfl import APFL
from fedreg_baselines.ditto import Ditto
from fedreg_baselines.fedadam import FedAdam
from fedreg_baselines.fedavg import FedAvg
from fedreg_baselines.fedbabu import FedBABU
from fedreg_baselines.feddyn import FedDyn, FedDynAggregator, client_alpha
from fedreg_baselines.fedper import FedPer
from fedreg_baselines.fedrep import FedRep, phase_epochs
from fedreg_baselines.moon import _Representation
from fedreg_baselines.presets import PRESETS
from fedreg_baselines.scaffold import ScaffoldAggregator
from fedreg_standard.models import CNN

pytestmark = pytest.mark.usefixtures("one_thread")


def outputs(params: dict[str, torch.Tensor], x: torch.Tensor = X) -> torch.Tensor:
    return functional_call(tiny_model(), params, (x,))


def leaves(params):
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


# --- server weighting ---------------------------------------------------------------------------------------


def updates(*pairs):
    return [ClientUpdate(i, n, {"w": torch.tensor([v])}) for i, (n, v) in enumerate(pairs)]


def test_weighting_by_samples_or_uniform():
    ups = updates((1, 0.0), (3, 4.0))
    assert FedAvg().aggregate(1, {"w": torch.tensor([9.0])}, ups, [])["w"].item() == 3.0  # (1*0 + 3*4) / 4
    uniform = FedAvg(FedAvg.Params(weighting="uniform"))
    assert uniform.aggregate(1, {"w": torch.tensor([9.0])}, ups, [])["w"].item() == 2.0  # (0 + 4) / 2


def test_scaffold_server_averages_uniformly_by_default():
    """FL-bench's SCAFFOLD server: the mean of the round's clients, whatever their sizes."""
    agg = ScaffoldAggregator()
    agg.num_clients = 4
    agg.broadcast(1, {"w": torch.tensor([9.0])})
    ups = updates((1, 0.0), (3, 4.0))
    for u in ups:
        u.payload["scaffold_delta_c"] = {"w": torch.zeros(1)}
    assert agg.aggregate(1, {"w": torch.tensor([9.0])}, ups, [])["w"].item() == 2.0


def test_each_preset_weights_as_its_official_code():
    weighting = {}
    for p in PRESETS:
        agg = p().parts()["federation.aggregation"]
        params = p.aggregation.Params(**agg["params"])
        weighting[p.name] = getattr(params, "weighting", None)
    # uniform: FedRep's and FedBABU's main files (also FedRep's --alg fedper), FedTorch, FL-bench's SCAFFOLD
    for name in ("scaffold", "fedper", "fedrep", "fedbabu", "apfl"):
        assert weighting[name] == "uniform", name
    # by samples: FedAvg, FedProx (fedbase.aggregate), MOON (fed_avg_freqs), FedNTD, FedKPer's BaseServer,
    # TFF's FedAdam; Ditto samples clients in proportion to n_k and averages uniformly, which under a shared
    # uniform sampling stream is, in expectation, the sample-weighted average
    for name in ("fedavg", "fedprox", "moon", "fedntd", "fedadam", "fedavgm", "ditto"):
        assert weighting[name] == "samples", name


# --- FedRep and FedPer --------------------------------------------------------------------------------------


def phases(obj, ctx):
    """(epochs, changed keys) of each run_epochs call of one round's training."""
    seen = []
    run_epochs = obj.run_epochs

    def spy(ctx, model, params=None, epochs=None, **kw):
        before = clone_state(model.state_dict())
        out = run_epochs(ctx, model, params, epochs, **kw)
        now = model.state_dict()
        seen.append((epochs, {k for k in now if not torch.equal(now[k], before[k])}))
        return out

    obj.run_epochs = spy
    obj.train(ctx)
    return seen


def test_fedrep_trains_local_epochs_in_all_of_which_the_last_for_the_body():
    """LocalUpdate.train: of local_ep (5) epochs, local_ep - local_rep_ep (4) train the head, then 1 the body:
    5 epochs a round, as every other method, not 10 head epochs plus 5 body epochs."""
    assert phase_epochs(5, 1) == (4, 1) and phase_epochs(11, 1) == (10, 1) and phase_epochs(15, 5) == (10, 5)
    ctx = tiny_ctx(lr=0.1, epochs=5)
    seen = phases(FedRep(FedRep.Params(personal_layers=["fc"])), ctx)
    assert seen == [(4, {"fc.weight", "fc.bias"}), (1, {"body.weight", "body.bias"})]
    assert FedRep.Params().rep_epochs == 1  # utils/options.py --local_rep_ep


def test_fedrep_refuses_more_body_epochs_than_local_epochs():
    with pytest.raises(Exception, match="rep_epochs=6 is more than training.local_epochs=5"):
        tiny_federation(
            {
                "training.local_epochs": 5,
                "training.objective": {"name": "fedrep", "params": {"rep_epochs": 6}},
                "federation.aggregation": "fedavg_shared",
            }
        )


@pytest.mark.parametrize("cls", [FedPer, FedRep])
def test_end_of_run_retrains_each_head_on_the_final_body(cls):
    """main_fedrep.py's last round: every client trains its head alone (body frozen) on the final
    representation for max(10, local_ep - local_rep_ep) epochs, then is scored; during the run the stored
    head is scored as it is."""
    final = clone_state(tiny_model(1).state_dict())
    own = {k: v.clone() for k, v in tiny_model(2).state_dict().items() if k.startswith("fc.")}
    obj = cls(cls.Params(personal_layers=["fc"], final_head_epochs=3))
    assert cls.Params().final_head_epochs == 10
    during = tiny_ctx(state={"head": own}, global_state=final, lr=0.2)
    got = obj.eval_model(during).state_dict()
    assert close({k: got[k] for k in own}, own, atol=0)  # during the run: the stored head, not retrained
    # at the end: 3 full-batch head steps by hand, from the client's head on the final body
    head = dict(own)
    for _ in range(3):
        _, g = ce_grad({**final, **head})
        head = {k: head[k] - 0.2 * g[k] for k in head}
    end = tiny_ctx(state={"head": own}, global_state=final, lr=0.2)
    end.final = True
    sd = obj.eval_model(end).state_dict()
    assert close({k: sd[k] for k in head}, head, atol=1e-6)
    assert close(
        {k: sd[k] for k in ("body.weight", "body.bias")},
        {k: final[k] for k in ("body.weight", "body.bias")},
        atol=0,
    )
    # a client that never trained retrains the initial head (the global one) the same way
    never = tiny_ctx(state={}, global_state=final, lr=0.2)
    never.final = True
    assert not close(obj.eval_model(never).state_dict(), final, atol=1e-9)


# --- APFL: output mixing, alpha once per round --------------------------------------------------------------


def apfl_fedtorch_by_hand(w, v, alpha, lr, steps, reg=0.02):
    """FedTorch's APFL step on full batches with plain SGD: w <- w - lr grad CE(w); then, with the updated
    w, v <- v - lr grad_v CE(alpha v(x) + (1 - alpha) w(x)); on the round's first step, once v has stepped,
    alpha <- clip(alpha - lr * (<v - w, alpha grad_v + (1 - alpha) grad_w> + reg * alpha), 0, 1), the
    gradients those of the mixture."""
    for s in range(steps):
        _, gw = ce_grad(w)
        w = {k: w[k] - lr * gw[k] for k in w}
        pv, pw = leaves(v), leaves(w)
        loss = F.cross_entropy(alpha * outputs(pv) + (1 - alpha) * outputs(pw), Y)
        grads = torch.autograd.grad(loss, [*pv.values(), *pw.values()])
        g_v, g_w = dict(zip(pv, grads[: len(pv)], strict=True)), dict(zip(pw, grads[len(pv) :], strict=True))
        v = {k: v[k] - lr * g_v[k] for k in v}
        if s == 0:
            ga = sum(float(((v[k] - w[k]) * (alpha * g_v[k] + (1 - alpha) * g_w[k])).sum()) for k in v)
            alpha = min(max(alpha - lr * (ga + reg * alpha), 0.0), 1.0)
    return w, v, alpha


def test_apfl_defaults_are_the_authors():
    p = APFL.Params()
    assert (p.mixing, p.alpha_update, p.alpha_reg, p.alpha, p.personal_init) == (
        "outputs",
        "per_round",
        0.02,
        0.5,
        "initial",
    )


def test_apfl_mixes_outputs_steps_w_first_and_alpha_once_a_round():
    lr, a0 = 0.5, 0.5
    ctx = tiny_ctx(lr=lr, epochs=3, global_state=tiny_model(3).state_dict())
    init = ctx.initial_state()  # tiny_model(0): v starts there, not at the received weights
    obj = APFL()
    obj.train(ctx)
    w1, v1, a1 = apfl_fedtorch_by_hand(clone_state(ctx.global_state), clone_state(init), a0, lr, 3)
    assert close(ctx.model.state_dict(), w1, atol=1e-5)
    assert close(ctx.state["personal"], v1, atol=1e-5)
    assert ctx.state["alpha"] == pytest.approx(a1, abs=1e-6) and a1 != a0
    # the evaluated model mixes the two models' outputs, not their weights
    with torch.no_grad():
        got = obj.eval_model(ctx)(X)
        want = a1 * outputs(v1) + (1 - a1) * outputs(w1)
        param_mix = outputs({k: a1 * v1[k] + (1 - a1) * w1[k] for k in w1})
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, param_mix, atol=1e-3)
    # a second round on stored v and alpha: alpha steps once more, on that round's first batch
    ctx2 = tiny_ctx(state=ctx.state, global_state=tiny_model(4).state_dict(), lr=lr, epochs=2, round=2)
    obj.train(ctx2)
    _, v2, a2 = apfl_fedtorch_by_hand(clone_state(ctx2.global_state), v1, a1, lr, 2)
    assert close(ctx2.state["personal"], v2, atol=1e-5)
    assert ctx2.state["alpha"] == pytest.approx(a2, abs=1e-6)


# --- FedAdam: Keras Adam with bias correction ---------------------------------------------------------------


def test_fedadam_first_steps_are_bias_corrected_adam():
    """Keras Adam on the pseudo-gradient -(avg - w): m, v from 0, eta_t = lr sqrt(1 - b2^t) / (1 - b1^t),
    w <- w + eta_t m / (sqrt(v) + eps); TFF's zero step when the optimizer is built makes round 1 Adam's
    step t = 2."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    agg = FedAdam(FedAdam.Params(server_lr=lr, tau=eps))
    w = {"w": torch.tensor([1.0, -2.0])}
    averages = [[1.5, -2.0], [1.0, -1.0], [0.5, -1.5]]
    m, v, x = [0.0, 0.0], [0.0, 0.0], [1.0, -2.0]
    for r, avg in enumerate(averages, start=1):
        t = r + 1
        d = [a - xi for a, xi in zip(avg, x, strict=True)]
        m = [b1 * mi + (1 - b1) * di for mi, di in zip(m, d, strict=True)]
        v = [b2 * vi + (1 - b2) * di * di for vi, di in zip(v, d, strict=True)]
        eta = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        x = [xi + eta * mi / (math.sqrt(vi) + eps) for xi, mi, vi in zip(x, m, v, strict=True)]
        w = agg.aggregate(r, w, [ClientUpdate(0, 5, {"w": torch.tensor(avg)})], [])
        assert w["w"].tolist() == pytest.approx(x, rel=1e-6), r

    # with a negligible eps the first step is lr * m_hat / sqrt(v_hat) at t = 2 (0.744 lr), and exactly lr at
    # textbook Adam's t = 1 (step_offset 0): the bias correction at work, not the paper's Algorithm 2
    def first(**kw):
        agg = FedAdam(FedAdam.Params(server_lr=lr, tau=1e-12, **kw))
        one = [ClientUpdate(0, 1, {"w": torch.tensor([1.0], dtype=torch.float64)})]
        return agg.aggregate(1, {"w": torch.tensor([0.0], dtype=torch.float64)}, one, [])["w"].item()

    m_hat, v_hat = (1 - b1) / (1 - b1**2), (1 - b2) / (1 - b2**2)
    assert first() == pytest.approx(lr * m_hat / math.sqrt(v_hat), rel=1e-6)
    assert first(step_offset=0) == pytest.approx(lr, rel=1e-6)


# --- FedDyn: alpha per client, clipping, the reported model -------------------------------------------------


def test_feddyn_alpha_per_client_is_scaled_by_data_size():
    """train_FedDyn: alpha_coef / weight_list[k], weight_list = n_k / mean n."""
    assert client_alpha(0.01, 50, 100.0) == pytest.approx(0.02)
    assert client_alpha(0.01, 400, 100.0) == pytest.approx(0.0025)
    assert client_alpha(0.01, 50, None) == 0.01
    agg = FedDynAggregator()
    sizes = [4, 12]
    agg.start_run(RunInfo(tuple(ClientInfo(i, n, 1, (n,)) for i, n in enumerate(sizes)), 2, 1, 3, 0))
    assert agg.broadcast(1, tiny_model().state_dict())["feddyn"]["mean_samples"] == 8.0


def test_feddyn_client_step_by_hand_with_its_alpha_and_clipping():
    """One client of 4 samples among clients of mean size 8, so alpha_k = 2 alpha; plain SGD, 2 full-batch
    steps: grad = clip(grad CE - g_k - alpha_k theta, 10) + alpha_k w; then g_k <- g_k - alpha_k (w - theta).
    A tiny clip norm makes the clip bind."""
    for clip in (10.0, 1e-3):
        a, lr = 0.5, 0.1
        theta = clone_state(tiny_model().state_dict())
        g_k = {k: 0.1 * torch.ones_like(v) for k, v in theta.items()}
        broadcast = {"feddyn": {"alpha": a, "mean_samples": 8.0, "clip_norm": clip}}
        ak = a * 8.0 / 4
        w = dict(theta)
        for _ in range(2):
            _, g = ce_grad(w)
            part = {k: g[k] - g_k[k] - ak * theta[k] for k in w}
            norm = math.sqrt(sum(float(t.pow(2).sum()) for t in part.values()))
            scale = min(1.0, clip / (norm + 1e-6))
            w = {k: w[k] - lr * (part[k] * scale + ak * w[k]) for k in w}
        ctx = tiny_ctx(state={"grad": g_k}, global_state=theta, lr=lr, epochs=2, broadcast=broadcast)
        FedDyn().train(ctx)
        assert close(ctx.model.state_dict(), w, atol=1e-5), clip
        assert close(ctx.state["grad"], {k: g_k[k] - ak * (w[k] - theta[k]) for k in w}, atol=1e-5), clip


def test_feddyn_reports_the_all_clients_model_by_default():
    """example_cifar_10.py plots all_model: the mean over all clients of each one's latest weights (the
    initial weights for a client not yet trained); avg_model is the mean of the round's participants; the
    server model (mean + drift) is what clients receive."""
    init = {"w": torch.tensor([1.0])}
    agg = FedDynAggregator()
    agg.num_clients = 4
    agg.broadcast(1, init)
    new = agg.aggregate(
        1,
        init,
        [ClientUpdate(0, 3, {"w": torch.tensor([3.0])}), ClientUpdate(2, 5, {"w": torch.tensor([5.0])})],
        [],
    )
    # server: mean 4 + drift (2 + 4) / 4
    assert new["w"].item() == pytest.approx(4.0 + 6.0 / 4)
    assert agg.evaluated_state(1, new)["w"].item() == pytest.approx((3.0 + 1.0 + 5.0 + 1.0) / 4)
    participants = FedDynAggregator(FedDynAggregator.Params(evaluated_model="participants"))
    participants.num_clients = 4
    new = participants.aggregate(
        1,
        init,
        [ClientUpdate(0, 3, {"w": torch.tensor([3.0])}), ClientUpdate(2, 5, {"w": torch.tensor([5.0])})],
        [],
    )
    assert participants.evaluated_state(1, new)["w"].item() == pytest.approx(4.0)
    assert FedDynAggregator(FedDynAggregator.Params(evaluated_model="server")).evaluated_state(1, new) is None


def test_the_reported_model_is_what_the_round_loop_evaluates_not_what_it_sends():
    """The same training (the server model the clients receive is the same), other global figures."""
    runs = {}
    for mode in ("server", "participants"):
        agg = {"name": "feddyn", "params": {"evaluated_model": mode}}
        runs[mode] = tiny_federation(
            {"federation.rounds": 2, "training.objective": "feddyn", "federation.aggregation": agg}
        )
    assert close(runs["server"].global_state, runs["participants"].global_state, atol=0)
    acc = {m: [h["global_acc"] for h in r.history] for m, r in runs.items()}
    assert acc["server"] != acc["participants"]


# --- Ditto --------------------------------------------------------------------------------------------------


def test_ditto_personal_model_starts_from_the_initial_weights():
    """fedbase.py: every client's personal model is a copy of the initial model, kept across rounds; the
    authors' scripts run lambda 1."""
    assert Ditto.Params().lam == 1.0
    received = clone_state(tiny_model(5).state_dict())
    ctx = tiny_ctx(global_state=received, epochs=0)
    obj = Ditto()
    obj.train(ctx)  # 0 epochs: v is stored where it started
    assert close(ctx.state["personal"], tiny_model(0).state_dict(), atol=0)
    ctx = tiny_ctx(global_state=received, epochs=0)
    Ditto(Ditto.Params(personal_init="received")).train(ctx)
    assert close(ctx.state["personal"], received, atol=0)


# --- FedBABU ------------------------------------------------------------------------------------------------


def test_fedbabu_finetunes_with_the_authors_optimizer():
    """analysis.ipynb: SGD over body and head at lr 1e-3, momentum 0.9, no weight decay, whatever the spec's
    optimizer or the round's rate; two full-batch steps with momentum by hand."""
    asked = []
    ctx = tiny_ctx(lr=0.3)
    make = ctx.make_optimizer

    def spy(params, **o):
        asked.append(o)
        return make(params, **o)

    ctx.make_optimizer = spy
    w = clone_state(ctx.global_state)
    buf = None
    for _ in range(2):
        _, g = ce_grad(w)
        buf = g if buf is None else {k: 0.9 * buf[k] + g[k] for k in g}
        w = {k: w[k] - 1e-3 * buf[k] for k in w}
    got = FedBABU(FedBABU.Params(finetune_epochs=2, head_layers=["fc"])).eval_model(ctx).state_dict()
    assert asked == [{"momentum": 0.9, "weight_decay": 0.0}]
    assert close(got, w, atol=1e-7)


# --- MOON ---------------------------------------------------------------------------------------------------


def test_moon_projection_head_as_the_authors_model():
    """ModelFedCon: features -> l1 (d -> d) -> ReLU -> l2 (d -> 256) -> l3 (256 -> classes); the classifier
    and the contrastive loss both read l2's output."""
    torch.manual_seed(0)
    m = CNN(3, 8, 28, hidden=512, padding=2, projection_dim=256)
    assert tuple(m.proj[0].weight.shape) == (512, 512) and tuple(m.proj[2].weight.shape) == (256, 512)
    assert tuple(m.fc.weight.shape) == (8, 256)
    rep = _Representation(m)
    x = torch.randn(2, 3, 28, 28)
    logits = m(x)
    assert rep.value.shape == (2, 256)
    assert torch.allclose(logits, m.fc(rep.value))
    rep.remove()
    # without a projection head the model (its weights and their initialisation) is unchanged
    torch.manual_seed(0)
    plain = CNN(3, 8, 28, hidden=512, padding=2)
    torch.manual_seed(0)
    zero = CNN(3, 8, 28, hidden=512, padding=2, projection_dim=0)
    assert close(plain.state_dict(), zero.state_dict(), atol=0)


def test_size_proportional_selection_favours_large_clients():
    """Ditto's authors sample clients with p proportional to n_k, without replacement."""
    import numpy as np

    from fedreg_standard.selection import SizeProportional

    clients = [ClientInfo(i, n, 1, (n,)) for i, n in enumerate([10, 10, 10, 970])]
    rng = np.random.default_rng(0)
    picks = [SizeProportional().select(r, clients, 2, rng) for r in range(1, 401)]
    assert all(len(set(p)) == 2 for p in picks)
    share = sum(3 in p for p in picks) / len(picks)
    assert share > 0.95  # the large client is nearly always drawn; uniform sampling would give 0.5
