"""Personalised-FL baselines: exact method-level checks and small federations."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import fedreg
from fedreg.clients import ClientJob, ClientRunner, RoundInput, TrainingConfig
from fedreg.components import ClientUpdate, LocalContext, clone_state
from fedreg.registry import build_registry
from fedreg.rounds import FederatedRun
from fedreg.testing import initial_accuracy, synthetic_dataset, tiny_federation
from fedreg_baselines import PERSONALIZED_OBJECTIVES
from fedreg_baselines.apfl import APFL, mix_states, mixed_parameters
from fedreg_baselines.ditto import Ditto
from fedreg_baselines.fedavg import FedAvg
from fedreg_baselines.fedbabu import FedBABU
from fedreg_baselines.fedper import FedPer
from fedreg_baselines.fedrep import FedRep
from fedreg_baselines.local_only import LocalOnly
from fedreg_baselines.losses import proximal_loss
from fedreg_baselines.personal_math import matches_prefix, select_state, split_keys
from fedreg_standard.models import CNN

HEAD = ("fc.weight", "fc.bias")


@fedreg.hookimpl
def _register(register):
    for cls in PERSONALIZED_OBJECTIVES:
        register(cls)


PLUGIN = types.ModuleType("pfl_test_plugin")
PLUGIN.fedreg_register_objectives = _register


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def registry():
    return build_registry(extra_plugins=[("pfl", PLUGIN)])


@pytest.fixture(scope="module")
def start_acc():
    return initial_accuracy()


_RUNS: dict = {}
#: the objectives that keep layers on the client pair with the aggregation that leaves those out
PAIRED = {n: "fedavg_shared" for n in ("fedper", "fedrep", "fedbabu", "local_only")}


def federate(registry, objective, **over):
    """tiny_federation with 3 rounds, local metrics, and the run's final RunState (client states included) and
    initial global weights captured. Cached per arguments."""
    key = (repr(objective), repr(sorted(over.items())))
    if key not in _RUNS:
        seen = {}
        original = FederatedRun.initial_state

        def spy(self):
            st = original(self)
            seen["initial"], seen["state"] = clone_state(st.global_state), st
            return st

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(FederatedRun, "initial_state", spy)
            name = objective if isinstance(objective, str) else objective["name"]
            result = tiny_federation(
                {
                    "training.objective": objective,
                    "federation.aggregation": PAIRED.get(name, "fedavg"),
                    "federation.rounds": 3,
                    "metrics": ["global_accuracy", "local_accuracy"],
                    **over,
                },
                registry=registry,
            )
        _RUNS[key] = (result, seen["state"], seen["initial"])
    return _RUNS[key]


def states_equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def checkpointable(value) -> bool:
    if isinstance(value, torch.Tensor | int | float | str | bool) or value is None:
        return True
    if isinstance(value, list | tuple):
        return all(checkpointable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and checkpointable(v) for k, v in value.items())
    return False


def make_ctx(state=None, epochs=1, lr=0.05, momentum=0.0, seed=0):
    """A LocalContext for one client of 48 synthetic samples and a small CNN."""
    ds = synthetic_dataset(n_train=48, n_test=32, seed=seed)

    def build():
        return CNN(1, 4, 28, hidden=16).to(memory_format=torch.channels_last)

    torch.manual_seed(seed)
    model = build()
    initial = clone_state(model.state_dict())  # the run's initial weights: what this client receives
    return LocalContext(
        round=1,
        client_id=0,
        model=model,
        global_state=clone_state(model.state_dict()),
        train_x=ds.train_x,
        train_y=ds.train_y,
        test_x=ds.test_x,
        test_y=ds.test_y,
        num_classes=4,
        epochs=epochs,
        batch_size=16,
        lr=lr,
        make_optimizer=lambda p, **o: torch.optim.SGD(
            p,
            lr=o.get("lr", lr),
            momentum=o.get("momentum", momentum),
            weight_decay=o.get("weight_decay", 0.0),
        ),
        generator=torch.Generator().manual_seed(seed),
        state={} if state is None else state,
        broadcast={},
        build_model=build,
        load_initial=lambda: initial,
    )


def distance(a, b, keys=None):
    keys = keys if keys is not None else [k for k in a if a[k].is_floating_point()]
    return float(sum((a[k].double() - b[k].double()).pow(2).sum() for k in keys)) ** 0.5


# --- plain functions ---------------------------------------------------------------------------------------


def test_prefix_matching_is_by_module_name():
    keys = ["conv1.0.weight", "fc1.1.weight", "fc1.1.bias", "fc.weight", "fc.bias"]
    assert split_keys(keys, ["fc"]) == (
        ["fc.weight", "fc.bias"],
        ["conv1.0.weight", "fc1.1.weight", "fc1.1.bias"],
    )
    assert split_keys(keys, ["fc1"])[0] == ["fc1.1.weight", "fc1.1.bias"]
    assert matches_prefix("fc.weight", ["fc.weight"]) and not matches_prefix("fc1.1.weight", ["fc"])
    state = {k: torch.ones(1) for k in keys}
    head = select_state(state, ["fc"])
    assert list(head) == ["fc.weight", "fc.bias"] and head["fc.bias"] is not state["fc.bias"]


def test_mixing_hand_computed():
    v = {"a": torch.tensor([4.0]), "n": torch.tensor([9])}
    w = {"a": torch.tensor([0.0]), "n": torch.tensor([1]), "buf": torch.tensor([2.0])}
    assert float(mix_states(v, w, 0.25)["a"]) == pytest.approx(1.0)
    assert int(mix_states(v, w, 0.25)["n"]) == 1 and float(mix_states(v, w, 0.25)["buf"]) == 2.0
    w2 = {"a": torch.randn(5)}
    assert torch.equal(mix_states({"a": torch.randn(5)}, w2, 0.0)["a"], w2["a"])  # alpha 0 is w exactly
    vv = torch.tensor([4.0], requires_grad=True)
    ww = torch.tensor([1.0], requires_grad=True)
    mixed_parameters({"a": vv}, {"a": ww}, 0.25)["a"].sum().backward()
    assert float(vv.grad) == pytest.approx(0.25) and ww.grad is None  # w is held fixed


def test_ditto_loss_hand_computed():
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    ref = {"p": torch.zeros(2)}
    ce = F.cross_entropy(logits, y)
    assert torch.equal(proximal_loss(logits, y, [("p", p)], ref, 0.0), ce)
    assert float(proximal_loss(logits, y, [("p", p)], ref, 0.5).detach()) == pytest.approx(
        float(ce) + 0.25 * 25
    )  # lam/2 * ||p||^2


# --- every method in a federation --------------------------------------------------------------------------

METHODS = ["ditto", "fedper", "fedrep", "fedbabu", "apfl", "local_only"]
FAST = {"fedrep": {"name": "fedrep", "params": {"rep_epochs": 1}}}


@pytest.mark.parametrize("name", METHODS)
def test_method_learns_and_keeps_checkpointable_client_state(registry, start_acc, name):
    result, st, _ = federate(registry, FAST.get(name, name))
    assert result.final["final_local_acc_mean"] > start_acc + 0.1, (name, result.final, start_acc)
    assert bool(st.client_states) == (name != "fedbabu"), "FedBABU alone keeps no client state"
    assert all(checkpointable(s) for s in st.client_states.values())
    assert all(not isinstance(v, torch.nn.Module) for s in st.client_states.values() for v in s.values())
    cls = registry.lookup("objective", name).cls
    assert cls.local_model_role == "personal" and cls.describe()


# --- method-level checks -----------------------------------------------------------------------------------


def test_ditto_global_model_is_fedavg_to_the_bit(registry):
    fedavg, _, _ = federate(registry, "cross_entropy")
    ditto, st, _ = federate(registry, "ditto")
    assert states_equal(
        fedavg.global_state, ditto.global_state
    )  # the personal model never reaches the server
    for s in st.client_states.values():
        assert set(s) == {"personal"} and not states_equal(s["personal"], ditto.global_state)


def test_ditto_large_lambda_keeps_the_personal_model_near_the_received_one():
    dists = {}
    for lam in (0.0, 2.0, 20.0):  # plain SGD, lr * lam = 1 at most: the pull undoes the drift, no overshoot
        ctx = make_ctx(epochs=4)
        Ditto(Ditto.Params(lam=lam)).train(ctx)
        dists[lam] = distance(ctx.state["personal"], ctx.global_state)
    assert dists[0.0] > dists[2.0] > dists[20.0] and dists[20.0] < 0.3 * dists[0.0], dists


def test_ditto_personal_model_persists_and_is_evaluated():
    ctx = make_ctx()
    obj = Ditto()
    obj.train(ctx)
    first = clone_state(ctx.state["personal"])
    assert states_equal(obj.eval_model(ctx).state_dict(), first)
    ctx2 = make_ctx(state=ctx.state)  # next participation: v continues from its stored value, not the global
    obj.train(ctx2)
    assert distance(ctx2.state["personal"], first) < distance(ctx2.state["personal"], ctx2.global_state)


@pytest.mark.parametrize("cls", [FedPer, FedRep])
def test_head_is_restored_over_the_received_body(cls):
    donor = make_ctx(seed=1).model.state_dict()
    stored = {k: donor[k].clone() for k in HEAD}
    ctx = make_ctx(state={"head": stored})
    cls().setup(ctx)
    now = ctx.model.state_dict()
    assert all(torch.equal(now[k], stored[k]) for k in HEAD)
    assert all(torch.equal(now[k], ctx.global_state[k]) for k in now if k not in HEAD)


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_heads_are_personal_and_bodies_shared(registry, name):
    # FedRep trains the head in all but the last rep_epochs (1) of the local epochs: 2 epochs, 1 for the head
    result, st, _ = federate(registry, FAST.get(name, name), **{"training.local_epochs": 2})
    heads = {c: s["head"] for c, s in st.client_states.items()}
    assert len(heads) >= 2 and all(set(h) == set(HEAD) for h in heads.values())  # only the head is kept
    hs = list(heads.values())
    assert all(not states_equal(a, b) for i, a in enumerate(hs) for b in hs[i + 1 :])
    assert all(not torch.equal(h["fc.weight"], result.global_state["fc.weight"]) for h in hs)


def test_fedrep_phases_train_only_their_part():
    from test_baselines_official import phases

    ctx = make_ctx(epochs=2)
    seen = phases(FedRep(FedRep.Params(rep_epochs=1)), ctx)
    body = {k for k in ctx.model.state_dict() if k not in HEAD}
    assert seen == [(1, set(HEAD)), (1, body)]  # the head alone first, then the body alone
    assert all(p.requires_grad for p in ctx.model.parameters())  # the shared model is left unfrozen
    ctx = make_ctx(epochs=1)  # one epoch, the body's: the head must not move
    FedRep(FedRep.Params(rep_epochs=1)).train(ctx)
    now = ctx.model.state_dict()
    assert all(torch.equal(now[k], ctx.global_state[k]) for k in HEAD)
    assert not torch.equal(now["conv1.0.weight"], ctx.global_state["conv1.0.weight"])
    assert set(ctx.state["head"]) == set(HEAD)


def test_fedbabu_global_head_stays_at_its_initialisation(registry):
    result, _, initial = federate(registry, "fedbabu")
    for k in HEAD:
        assert torch.equal(result.global_state[k], initial[k]), k
    assert not torch.equal(result.global_state["conv1.0.weight"], initial["conv1.0.weight"])


def test_fedbabu_finetuned_copy_does_not_leak():
    ds = synthetic_dataset(n_train=48, n_test=32)
    tensors = (ds.train_x, ds.train_y, ds.test_x, ds.test_y)
    outs = []
    for eval_local in (False, True):
        ctx = make_ctx()
        config = TrainingConfig(
            seed=0,
            epochs=1,
            batch_size=16,
            momentum=0.0,
            weight_decay=0.0,
            nesterov=False,
            num_classes=4,
            eval_local=eval_local,
            eval_batch_size=64,
        )
        runner = ClientRunner(config, ctx.build_model, lambda cid: tensors)
        out = runner.run(ClientJob(1, 0, 0.05, {}), RoundInput(1, ctx.global_state, {}, FedBABU(), FedAvg()))
        assert out.failure is None
        outs.append(out)
    assert isinstance(outs[1].update, ClientUpdate) and outs[1].local_eval is not None
    assert states_equal(
        outs[0].update.state, outs[1].update.state
    )  # fine-tuning ran, nothing was sent from it
    ctx = make_ctx()
    obj = FedBABU(FedBABU.Params(finetune_lr=0.1))
    obj.train(ctx)
    before = clone_state(ctx.model.state_dict())
    tuned = obj.eval_model(ctx).state_dict()
    assert states_equal(ctx.model.state_dict(), before)
    assert not torch.equal(tuned["fc.weight"], before["fc.weight"])  # the whole network is fine-tuned


@pytest.mark.parametrize("mixing", ["outputs", "parameters"])
def test_apfl_alpha_zero_evaluates_the_trained_global_copy(mixing):
    ctx = make_ctx()
    obj = APFL(APFL.Params(alpha=0.0, adaptive_alpha=False, mixing=mixing))  # the fixed form
    obj.train(ctx)
    with torch.no_grad():
        assert torch.equal(obj.eval_model(ctx)(ctx.test_x), ctx.model.eval()(ctx.test_x))
    params = [k for k, _ in ctx.model.named_parameters()]
    assert all(torch.equal(ctx.state["personal"][k], ctx.global_state[k]) for k in params)  # no gradient to v


@pytest.mark.parametrize("mixing", ["outputs", "parameters"])
def test_apfl_personal_model_trains_and_mixes(mixing):
    ctx = make_ctx()
    obj = APFL(APFL.Params(alpha=0.5, mixing=mixing))
    obj.train(ctx)
    v = ctx.state["personal"]
    assert distance(v, ctx.global_state, list(v)) > 0
    a = ctx.state["alpha"]
    assert a != 0.5  # adaptive by default: each client's alpha is learned
    with torch.no_grad():
        got = obj.eval_model(ctx)(ctx.test_x)
        if mixing == "parameters":
            expected = mix_states(v, ctx.model.state_dict(), a)
            assert states_equal(obj.eval_model(ctx).state_dict(), expected)
        else:  # the authors' prediction: alpha * v(x) + (1 - alpha) * w(x)
            vm = ctx.build_model()
            vm.load_state_dict(v)
            want = a * vm.eval()(ctx.test_x) + (1 - a) * ctx.model.eval()(ctx.test_x)
            assert torch.allclose(got, want, atol=1e-6)


def test_apfl_global_model_is_fedavg_to_the_bit(registry):
    fedavg, _, _ = federate(registry, "cross_entropy")
    apfl, _, _ = federate(registry, "apfl")
    assert states_equal(fedavg.global_state, apfl.global_state)


def test_local_only_keeps_its_own_weights(registry):
    result, st, _ = federate(registry, "local_only")
    for s in st.client_states.values():
        assert not states_equal(s["weights"], result.global_state)
    ctx = make_ctx(state={"weights": make_ctx(seed=3).model.state_dict()})
    LocalOnly().setup(ctx)
    assert states_equal(ctx.model.state_dict(), ctx.state["weights"])


def test_layer_lists_must_split_the_model():
    ctx = make_ctx()
    with pytest.raises(Exception, match="match no parameter"):
        FedPer(FedPer.Params(personal_layers=["classifier"])).setup(ctx)
    with pytest.raises(Exception, match="nothing is shared"):
        FedRep(FedRep.Params(personal_layers=["conv1", "conv2", "fc1", "fc"])).train(ctx)
    with pytest.raises(ValidationError):
        FedPer.Params(personal_layers=[])
    with pytest.raises(ValidationError):
        APFL.Params(alpha=1.5)
