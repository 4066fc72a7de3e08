"""The baselines' update rules against hand computations from their papers' equations on tiny tensors
(issue 17): the deviations fixed (local-only from the initial weights, FedBABU fine-tuning the received global
model, APFL's adaptive alpha, heads kept out of the server's average, every client scored at the end of the
run), and one multi-round check per stateful method (SCAFFOLD's control variates, FedDyn's linear term, MOON's
previous model, APFL's alpha). The expected values are written out here from the equations, not taken from
fedreg's functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedreg.components import ClientUpdate, LocalContext, clone_state
from fedreg.testing import tiny_federation
from fedreg_baselines._personal import KEPT_KEYS, FedAvgShared
from fedreg_baselines.apfl import APFL, alpha_step
from fedreg_baselines.fedbabu import FedBABU
from fedreg_baselines.feddyn import FedDyn, FedDynAggregator
from fedreg_baselines.fedper import FedPer
from fedreg_baselines.moon import Moon, moon_contrastive
from fedreg_baselines.personal_math import average_shared
from fedreg_baselines.presets import PRESETS
from fedreg_baselines.scaffold import Scaffold, ScaffoldAggregator, momentum_step_count

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """A two-layer linear model: ``body`` (2 -> 2) and the head ``fc`` (2 -> 2)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.body(x))


X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
Y = torch.tensor([0, 1, 1, 0])


def tiny_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def tiny_ctx(state=None, global_state=None, lr=0.1, epochs=1, broadcast=None, round=1) -> LocalContext:
    """One client holding X, Y as one full batch per epoch (the sample order does not matter), plain SGD."""
    model = tiny_model()
    if global_state is not None:
        model.load_state_dict(global_state)
    return LocalContext(
        round=round,
        client_id=0,
        model=model,
        global_state=clone_state(model.state_dict()),
        train_x=X,
        train_y=Y,
        test_x=X,
        test_y=Y,
        num_classes=2,
        epochs=epochs,
        batch_size=len(Y),
        lr=lr,
        make_optimizer=lambda p, **o: torch.optim.SGD(
            p, lr=o.get("lr", lr), momentum=o.get("momentum", 0.0), weight_decay=o.get("weight_decay", 0.0)
        ),
        generator=torch.Generator().manual_seed(0),
        state={} if state is None else state,
        broadcast=broadcast or {},
        build_model=tiny_model,
        load_initial=lambda: clone_state(tiny_model().state_dict()),  # the run's initial weights: seed 0
    )


def ce_grad(params: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """Cross-entropy of Tiny with ``params`` on (X, Y) and its gradient, by autograd on the formula."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    logits = (X @ p["body.weight"].T + p["body.bias"]) @ p["fc.weight"].T + p["fc.bias"]
    loss = F.cross_entropy(logits, Y)
    grads = torch.autograd.grad(loss, list(p.values()))
    return float(loss.detach()), dict(zip(p, grads, strict=True))


def close(a: dict, b: dict, atol=1e-6) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k].double(), b[k].double(), atol=atol) for k in a)


def preset(name: str):
    return next(p for p in PRESETS if p.name == name)


def method_run(name: str, params=None, **over):
    """tiny_federation of a method preset's objective and aggregation (the tiny spec names both itself)."""
    p = preset(name)
    where = {"objective": "training.objective", "aggregation": "federation.aggregation"}
    parts = {
        "training.objective": {"name": p.objective.name, "params": {}},
        "federation.aggregation": {"name": p.aggregation.name, "params": {}},
    }
    if params:
        parts[where[p.params_of]]["params"] = params
    return tiny_federation({**parts, **over})


# --- local-only: every client from the initial weights ---------------------------------------------------


def test_local_only_clients_start_from_the_initial_weights_in_any_round():
    """4 clients, 1 per round: clients first chosen in rounds 2 and 3 start from the initial weights (before
    the fix they received the average of the earlier clients' models), and the global weights never move."""
    from fedreg_baselines.local_only import LocalOnly

    starts: dict = {}
    setup = LocalOnly.setup

    def spy(self, ctx):
        if not ctx.state:
            starts[(ctx.round, ctx.client_id)] = clone_state(ctx.model.state_dict())
        setup(self, ctx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LocalOnly, "setup", spy)
        result = method_run("local_only", **{"federation.clients_per_round": 1, "federation.rounds": 3})
    assert max(r for r, _ in starts) > 1, starts.keys()  # a client first chosen after round 1
    initial = starts[min(starts)]
    for (r, cid), s in starts.items():
        assert close(s, initial, atol=0), (
            f"client {cid} (first chosen in round {r}) did not start from the initial weights"
        )
    assert close(result.global_state, initial, atol=0)


# --- FedPer, FedRep, FedBABU: the server averages only what is shared -----------------------------------


def test_average_shared_by_hand():
    g = {"body": torch.tensor([1.0]), "fc": torch.tensor([5.0])}
    a = {"body": torch.tensor([2.0]), "fc": torch.tensor([7.0])}
    b = {"body": torch.tensor([4.0]), "fc": torch.tensor([9.0])}
    out = average_shared(g, [a, b], [1, 3], {"fc"})
    assert float(out["body"]) == pytest.approx((1 * 2.0 + 3 * 4.0) / 4)  # sample-weighted, as FedAvg
    assert float(out["fc"]) == 5.0  # the kept head is not aggregated: its global value stays
    assert float(average_shared(g, [a, b], [1, 3], {"body", "fc"})["body"]) == 1.0  # local-only: no change


def test_fedavg_shared_needs_the_clients_to_name_what_they_keep():
    g = tiny_model().state_dict()
    upd = [ClientUpdate(0, 4, clone_state(g), payload={})]
    with pytest.raises(Exception, match="kept_keys"):
        FedAvgShared().aggregate(1, g, upd, [])
    upd = [ClientUpdate(0, 4, clone_state(g), payload={KEPT_KEYS: ["fc.weight", "fc.bias"]})]
    assert close(FedAvgShared().aggregate(1, g, upd, []), g, atol=0)


@pytest.mark.parametrize("name", ["fedper", "fedrep", "fedbabu"])
def test_global_head_is_never_averaged_and_late_clients_get_the_initial_head(name):
    """Before the fix the server averaged the clients' heads (fedavg), and a client first chosen later got
    that average as its head."""
    seen: dict = {}
    cls = preset(name).objective
    train = cls.train

    def spy(self, ctx):
        seen.setdefault("initial", clone_state(ctx.global_state))
        if not ctx.state:
            seen[(ctx.round, ctx.client_id)] = {
                k: ctx.global_state[k].clone() for k in ("fc.weight", "fc.bias")
            }
        return train(self, ctx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "train", spy)
        result = method_run(
            name,
            {"rep_epochs": 1} if name == "fedrep" else None,
            **{"federation.clients_per_round": 1, "federation.rounds": 3},
        )
    init = seen["initial"]
    for k in ("fc.weight", "fc.bias"):
        assert torch.equal(result.global_state[k], init[k]), k
    assert not torch.equal(result.global_state["conv1.0.weight"], init["conv1.0.weight"])  # the body moves
    late = [v for key, v in seen.items() if isinstance(key, tuple) and key[0] > 1]
    assert late and all(torch.equal(h["fc.weight"], init["fc.weight"]) for h in late)


def test_fedper_end_of_run_model_is_the_final_body_with_the_clients_own_head():
    final = tiny_model(1).state_dict()
    own = {k: v + 1.0 for k, v in tiny_model(2).state_dict().items() if k.startswith("fc.")}
    ctx = tiny_ctx(state={"head": own}, global_state=final)
    got = FedPer().eval_model(ctx).state_dict()
    assert close({k: got[k] for k in own}, own, atol=0)
    assert close(
        {k: got[k] for k in got if k.startswith("body.")},
        {k: final[k] for k in got if k.startswith("body.")},
        atol=0,
    )


# --- FedBABU: fine-tune the RECEIVED global model ------------------------------------------------------


def test_fedbabu_defaults_are_the_authors():
    p = FedBABU.Params()
    # jhoon-oh/FedBABU analysis.ipynb: 5 epochs of the whole model, SGD lr 1e-3, momentum 0.9, no weight decay
    got = (p.finetune_epochs, p.finetune_part, p.finetune_lr, p.finetune_momentum, p.finetune_weight_decay)
    assert got == (5, "full", 1e-3, 0.9, 0.0)


def test_fedbabu_evaluates_the_received_global_model_not_the_trained_one():
    """With 0 fine-tuning epochs the evaluated model IS the received global model (before the fix it was a
    copy of the client's trained model)."""
    ctx = tiny_ctx(lr=0.5)
    obj = FedBABU(FedBABU.Params(finetune_epochs=0, head_layers=["fc"]))
    obj.train(ctx)
    trained = ctx.model.state_dict()
    assert not close(trained, ctx.global_state, atol=0)
    assert close(obj.eval_model(ctx).state_dict(), ctx.global_state, atol=0)


def test_fedbabu_one_finetuning_epoch_by_hand():
    """One full-batch SGD step from the received weights w: w - lr * grad CE(w), every layer ('full'); with
    'head' only the head moves."""
    ctx = tiny_ctx(lr=0.3)
    ctx.model.load_state_dict(tiny_model(5).state_dict())  # the trained model differs from the received one
    _, g = ce_grad(ctx.global_state)
    want = {k: ctx.global_state[k] - 0.3 * g[k] for k in g}
    one = {"finetune_epochs": 1, "head_layers": ["fc"], "finetune_lr": 0.3}  # one step: momentum adds nothing
    got = FedBABU(FedBABU.Params(**one)).eval_model(ctx).state_dict()
    assert close(got, want)
    got = FedBABU(FedBABU.Params(**one, finetune_part="head")).eval_model(ctx)
    got = got.state_dict()
    assert close(
        {k: got[k] for k in ("body.weight", "body.bias")},
        {k: ctx.global_state[k] for k in ("body.weight", "body.bias")},
        atol=0,
    )
    assert close(
        {k: got[k] for k in ("fc.weight", "fc.bias")}, {k: want[k] for k in ("fc.weight", "fc.bias")}
    )


# --- APFL: adaptive alpha, two rounds --------------------------------------------------------------------


def apfl_by_hand(w, v, alpha, lr, steps):
    """Deng et al., Algorithm 1 with plain SGD on full batches: w <- w - lr grad f(w);
    v <- v - lr * alpha * grad f(vbar); alpha <- clip(alpha - lr <v - w, grad f(vbar)>, 0, 1), all from the
    step's starting values, vbar = alpha v + (1 - alpha) w."""
    for _ in range(steps):
        _, gw = ce_grad(w)
        vbar = {k: alpha * v[k] + (1 - alpha) * w[k] for k in w}
        _, gbar = ce_grad(vbar)
        galpha = sum(float(((v[k] - w[k]) * gbar[k]).sum()) for k in w)
        w = {k: w[k] - lr * gw[k] for k in w}
        v = {k: v[k] - lr * alpha * gbar[k] for k in v}
        alpha = min(max(alpha - lr * galpha, 0.0), 1.0)
    return w, v, alpha


def test_alpha_step_is_clipped_to_the_unit_interval():
    assert alpha_step(0.5, 2.0, 0.1) == pytest.approx(0.3)
    assert alpha_step(0.05, 2.0, 0.1) == 0.0 and alpha_step(0.95, -2.0, 0.1) == 1.0


def test_apfl_alpha_over_two_rounds_by_hand():
    """The paper's reading (mixing: parameters, alpha at every step, no extra term, v from the received w).
    Round 1: v starts at the received w (so alpha's first gradient is 0); round 2 continues from the client's
    stored v and alpha, with a new received w."""
    lr, a0 = 0.5, 0.25
    paper = {
        "mixing": "parameters",
        "alpha_update": "every_step",
        "alpha_reg": 0.0,
        "personal_init": "received",
    }
    obj = APFL(APFL.Params(alpha=a0, **paper))
    ctx = tiny_ctx(lr=lr, epochs=3)
    w0 = clone_state(ctx.global_state)
    obj.train(ctx)
    w1, v1, a1 = apfl_by_hand(w0, w0, a0, lr, 3)
    assert close(ctx.model.state_dict(), w1, atol=1e-5)
    assert close(ctx.state["personal"], v1, atol=1e-5)
    assert ctx.state["alpha"] == pytest.approx(a1, abs=1e-5) and ctx.state["alpha"] != a0
    # round 2: a new global model arrives; v and alpha come from the client's state
    g2 = tiny_model(7).state_dict()
    ctx2 = tiny_ctx(state=ctx.state, global_state=g2, lr=lr, epochs=2, round=2)
    obj.train(ctx2)
    w2, v2, a2 = apfl_by_hand(clone_state(g2), v1, a1, lr, 2)
    assert close(ctx2.state["personal"], v2, atol=1e-5)
    assert ctx2.state["alpha"] == pytest.approx(a2, abs=1e-5)
    # the evaluated model mixes with the client's own alpha
    mixed = obj.eval_model(ctx2).state_dict()
    assert close(mixed, {k: a2 * v2[k] + (1 - a2) * w2[k] for k in w2}, atol=1e-5)


def test_apfl_fixed_alpha_is_kept_as_an_option():
    obj = APFL(APFL.Params(alpha=0.5, adaptive_alpha=False))
    ctx = tiny_ctx(lr=0.5, epochs=3)
    obj.train(ctx)
    assert ctx.state["alpha"] == 0.5


# --- SCAFFOLD: control variates over two rounds ------------------------------------------------------------


def test_scaffold_two_rounds_by_hand():
    """Karimireddy et al., Algorithm 1 with option II, plain SGD, one client of N = 2, K = 2 steps a round:
    y <- y - lr (g(y) - c_i + c); c_i+ = c_i - c + (x - y) / (K lr); c <- c + (1/N) (c_i+ - c_i);
    x <- x + (y - x) (one client, global step 1)."""
    lr, K, N = 0.2, 2, 2
    agg, obj = ScaffoldAggregator(), Scaffold()
    agg.num_clients = N
    x = clone_state(tiny_model().state_dict())
    c = {k: torch.zeros_like(v) for k, v in x.items()}
    c_i = {k: torch.zeros_like(v) for k, v in x.items()}
    state: dict = {}
    for r in (1, 2):
        # by hand
        y = dict(x)
        for _ in range(K):
            _, g = ce_grad(y)
            y = {k: y[k] - lr * (g[k] - c_i[k] + c[k]) for k in y}
        c_new = {k: c_i[k] - c[k] + (x[k] - y[k]) / (K * lr) for k in x}
        c_srv = {k: c[k] + (c_new[k] - c_i[k]) / N for k in x}
        # fedreg
        ctx = tiny_ctx(state=state, global_state=x, lr=lr, epochs=K, broadcast=agg.broadcast(r, x), round=r)
        out = obj.train(ctx)
        state = ctx.state
        new_x = agg.aggregate(
            r, x, [ClientUpdate(0, 4, clone_state(ctx.model.state_dict()), payload=out.payload)], []
        )
        assert close(ctx.model.state_dict(), y, atol=1e-5), r
        assert close(state["c_i"], c_new, atol=1e-4), r
        assert close(agg.c, c_srv, atol=1e-4), r
        if r == 2:
            assert any(bool(v.abs().gt(1e-6).any()) for v in c.values())  # round 2 ran with a correction
        x, c, c_i = new_x, c_srv, c_new


def test_momentum_step_count_is_the_distance_momentum_sgd_travels():
    """SGD with heavy-ball momentum rho from an empty buffer, on a loss with a constant gradient g, moves the
    weights lr * g * K' in K steps: the K' of ``momentum_step_count`` (K when rho = 0)."""
    g = torch.tensor([0.3, -1.2])
    for rho, steps in ((0.9, 1), (0.9, 5), (0.9, 40), (0.5, 7), (0.0, 6)):
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.01, momentum=rho)
        for _ in range(steps):
            opt.zero_grad()
            (w * g).sum().backward()
            opt.step()
        travelled = -w.detach() / (0.01 * g)
        assert torch.allclose(travelled, torch.full((2,), momentum_step_count(steps, rho)), rtol=1e-5)
    assert momentum_step_count(6, 0.0) == 6
    assert momentum_step_count(5, 0.9) < 5 / (1 - 0.9)  # fewer than the steady state's K / (1 - rho)


@pytest.mark.parametrize("divisor", ["momentum", "steps"])
def test_scaffold_option_ii_under_momentum_by_hand(divisor):
    """With SGD momentum 0.9, option II divides x - y by K' lr (``divisor: momentum``, the FedKPer codebase's
    reading: Lee-Gihun/FedNTD ``algorithms/scaffold/ClientTrainer.py`` with adaptive_divison) or by K lr
    (``divisor: steps``, NIID-Bench's); by hand over K = 3 full-batch steps of a client's first round."""
    lr, rho, K = 0.2, 0.9, 3
    agg, obj = ScaffoldAggregator(), Scaffold(Scaffold.Params(divisor=divisor))
    agg.num_clients = 2
    x = clone_state(tiny_model().state_dict())
    y, buf = dict(x), {k: torch.zeros_like(v) for k, v in x.items()}
    for _ in range(K):
        _, g = ce_grad(y)
        buf = {k: rho * buf[k] + g[k] for k in y}
        y = {k: y[k] - lr * buf[k] for k in y}
    k_eff = (K - rho * (1 - rho**K) / (1 - rho)) / (1 - rho) if divisor == "momentum" else K
    ctx = tiny_ctx(global_state=x, lr=lr, epochs=K, broadcast=agg.broadcast(1, x))
    ctx.momentum = rho
    ctx.make_optimizer = lambda p, **o: torch.optim.SGD(p, lr=lr, momentum=rho)
    out = obj.train(ctx)
    assert close(ctx.model.state_dict(), y, atol=1e-5)
    assert close(ctx.state["c_i"], {k: (x[k] - y[k]) / (k_eff * lr) for k in x}, atol=1e-4)
    assert close(out.payload["scaffold_delta_c"], ctx.state["c_i"], atol=1e-6)  # c_i was 0


# --- FedDyn: the linear term over two rounds ---------------------------------------------------------------


def test_feddyn_two_rounds_by_hand():
    """Acar et al., Algorithm 1, one client of N = 2, plain SGD: the client minimises
    L(w) - <g_k, w> + alpha/2 ||w - theta||^2, then g_k <- g_k - alpha (w_k - theta); the server
    h <- h - (alpha/N) (w_k - theta), theta <- w_k - h / alpha."""
    lr, a, N, steps = 0.1, 0.5, 2, 2
    agg, obj = FedDynAggregator(FedDynAggregator.Params(alpha=a, clip_norm=None)), FedDyn()
    agg.num_clients = N
    theta = clone_state(tiny_model().state_dict())
    g_k = {k: torch.zeros_like(v) for k, v in theta.items()}
    h = {k: torch.zeros_like(v) for k, v in theta.items()}
    state: dict = {}
    for r in (1, 2):
        w = dict(theta)
        for _ in range(steps):
            _, g = ce_grad(w)
            w = {k: w[k] - lr * (g[k] - g_k[k] + a * (w[k] - theta[k])) for k in w}
        g_new = {k: g_k[k] - a * (w[k] - theta[k]) for k in w}
        h_new = {k: h[k] - (a / N) * (w[k] - theta[k]) for k in w}
        theta_new = {k: w[k] - h_new[k] / a for k in w}
        ctx = tiny_ctx(
            state=state, global_state=theta, lr=lr, epochs=steps, broadcast=agg.broadcast(r, theta), round=r
        )
        obj.train(ctx)
        state = ctx.state
        got = agg.aggregate(r, theta, [ClientUpdate(0, 4, clone_state(ctx.model.state_dict()))], [])
        assert close(ctx.model.state_dict(), w, atol=1e-5), r
        assert close(state["grad"], g_new, atol=1e-5), r
        assert close(agg.drift, {k: -h_new[k] / a for k in h_new}, atol=1e-5), r  # drift = -h / alpha
        assert close(got, theta_new, atol=1e-4), r
        theta, g_k, h = theta_new, g_new, h_new


# --- MOON: the previous model ------------------------------------------------------------------------------


def test_moon_contrastive_by_hand():
    z, zg, zp = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    tau = 0.5
    pos, neg = 1 / math.sqrt(2), 0.0  # cosine similarities
    want = -math.log(math.exp(pos / tau) / (math.exp(pos / tau) + math.exp(neg / tau)))
    assert float(moon_contrastive(z, zg, zp, tau)) == pytest.approx(want, rel=1e-6)


def test_moon_second_round_pushes_away_from_the_clients_previous_model():
    """Li et al., Eq. (3): l = CE + mu * l_con(z, z_glob, z_prev), z_prev from the client's model at the end
    of its previous round (round 1: the received model). The representation is the head's input, body(x)."""
    mu, tau, lr = 1.0, 0.5, 0.1
    obj = Moon(Moon.Params(mu=mu, tau=tau))
    ctx = tiny_ctx(lr=lr)
    obj.train(ctx)
    prev = clone_state(ctx.model.state_dict())
    assert close(ctx.state["prev"], prev, atol=0)
    g2 = tiny_model(3).state_dict()
    ctx2 = tiny_ctx(state=ctx.state, global_state=g2, lr=lr, round=2)

    def loss_of(p):
        rep = X @ p["body.weight"].T + p["body.bias"]
        logits = rep @ p["fc.weight"].T + p["fc.bias"]
        zg = X @ g2["body.weight"].T + g2["body.bias"]
        zp = X @ prev["body.weight"].T + prev["body.bias"]
        pos = F.cosine_similarity(rep, zg, dim=1) / tau
        neg = F.cosine_similarity(rep, zp, dim=1) / tau
        return F.cross_entropy(logits, Y) + mu * (-(pos - torch.logsumexp(torch.stack([pos, neg]), 0))).mean()

    p = {k: v.clone().requires_grad_(True) for k, v in g2.items()}
    grads = torch.autograd.grad(loss_of(p), list(p.values()))
    want = {k: g2[k] - lr * gk for k, gk in zip(p, grads, strict=True)}
    obj.train(ctx2)
    assert close(ctx2.model.state_dict(), want, atol=1e-5)


# --- every client scored at the end of the run --------------------------------------------------------------


@pytest.mark.parametrize("method", ["fedavg", "local_only", "ditto", "apfl", "fedper", "fedbabu"])
def test_end_of_run_figures_cover_every_client(method):
    """4 clients, 1 per round for 2 rounds: at most 2 ever train, yet every client is scored at the end,
    once, on its own local test set; the figures are the mean and the minimum of those accuracies."""
    from fedreg_baselines.personalization import EndOfRunPersonalization

    seen = []
    update = EndOfRunPersonalization.update

    def spy(self, ev):
        seen.append((ev.round, sorted(ev.final_local), {c: p.accuracy() for c, p in ev.final_local.items()}))
        return update(self, ev)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EndOfRunPersonalization, "update", spy)
        res = method_run(
            method,
            **{
                "federation.clients_per_round": 1,
                "federation.rounds": 2,
                "metrics": ["global_accuracy", "local_accuracy", "personalization"],
            },
        )
    assert [(r, c) for r, c, _ in seen] == [(1, []), (2, [0, 1, 2, 3])]
    assert len(res.client_states) < 4 or method in ("fedavg", "fedbabu")  # not every client trained
    acc = seen[-1][2]
    last = res.history[-1]
    assert last["personalized_acc_mean"] == pytest.approx(sum(acc.values()) / 4)
    assert last["personalized_acc_worst"] == pytest.approx(min(acc.values()))
    assert all("personalized_acc_mean" not in h for h in res.history[:-1])  # logged at the end only


def test_every_first_party_method_is_in_the_baselines_table(registry):
    """docs/baselines.md has a row for every method preset the first-party plugins register."""
    from testhelpers import REPO

    doc = (REPO / "docs" / "baselines.md").read_text()
    first_party = [i.name for i in registry.all() if i.kind == "method" and i.provider.startswith("fedreg ")]
    assert "fedavg" in first_party and "fedkper" in first_party
    for name in first_party:
        assert f"\n| `{name}` |" in doc, f"docs/baselines.md has no row for the method preset '{name}'"
