"""What the personalised-FL objectives (Ditto, FedPer, FedRep, FedBABU, APFL, local-only) share: their base
class, the base of the methods that keep layers on the client (``KeptLayers``), the ``fedavg_shared``
aggregation those pair with (Ditto and APFL pair with ``fedavg``), and the helpers that freeze, split and
restore layers of ``ctx.model``.

Each client's own weights live in ``ctx.state`` as plain state dicts (cloned tensors), never as modules:
``ctx.model`` is one module reused by every client. Extra models are built with ``ctx.build_model()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from pydantic import Field
from torch import nn

from fedreg.components import Aggregator, Objective
from fedreg.errors import FedregError
from fedreg.losses import cross_entropy
from fedreg_baselines._pairing import pairing_problems
from fedreg_baselines.fedavg import UniformWeightingParams, averaging_weights
from fedreg_baselines.personal_math import average_shared, split_keys

#: the payload key under which a client names the state-dict entries it keeps (never aggregated)
KEPT_KEYS = "kept_keys"


@contextmanager
def frozen(params: Iterable[nn.Parameter]):
    """Turn off ``requires_grad`` for ``params`` inside the block and restore each flag afterwards
    (``ctx.model`` is shared by every client, so a frozen flag must never outlive the client)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def split_parameters(model: nn.Module, prefixes: Sequence[str], what: str) -> tuple[list, list]:
    """(parameters under ``prefixes``, the others); raises if either side is empty (nothing personal, or
    nothing shared)."""
    named = dict(model.named_parameters())
    head, body = split_keys(named, prefixes)
    if not head:
        raise FedregError(
            f"{what} {list(prefixes)} match no parameter of the model; its parameters are {sorted(named)}"
        )
    if not body:
        raise FedregError(
            f"{what} {list(prefixes)} match every parameter of the model, so nothing is shared "
            f"(use the 'local_only' objective for that)"
        )
    return [named[k] for k in head], [named[k] for k in body]


def restore_layers(model: nn.Module, stored: dict[str, torch.Tensor]) -> None:
    """Load a client's stored layers over the received global weights (the other keys keep their values)."""
    result = model.load_state_dict(stored, strict=False)
    if result.unexpected_keys:
        raise FedregError(f"stored personal layers {result.unexpected_keys} are not in the model")


class PersonalObjective(Objective):
    """Cross-entropy objective whose local metrics use the personal model (a base, not registered)."""

    local_model_role = "personal"

    def loss(self, model, x, y, ctx):
        return cross_entropy(model(x), y)

    def model_from(self, ctx, state: dict[str, torch.Tensor]) -> nn.Module:
        m = ctx.build_model()
        m.load_state_dict(state)
        m.eval()
        return m


def layers_field(description: str):
    return Field(default_factory=lambda: ["fc"], min_length=1, description=description)


class FedAvgShared(Aggregator):
    """FedAvg over the shared entries only: the entries the clients keep (FedPer's and FedRep's heads,
    FedBABU's fixed head, all of local-only's weights) are not aggregated and keep their global values.

    Each client names the entries it keeps in its payload (``kept_keys``). The plain mean over the round's
    clients by default (``weighting: uniform``), as the official code of FedRep (lgcollins/FedRep
    ``main_fedrep.py``, also its ``--alg fedper``) and FedBABU (jhoon-oh/FedBABU ``main_fed.py``) averages;
    ``weighting: samples`` weights by sample counts, as ``fedavg``. The global model is therefore the
    averaged shared part with the kept part as it was initialised, which is also what a client receives at
    its first participation."""

    name = "fedavg_shared"
    Params = UniformWeightingParams

    def aggregate(self, round, global_state, updates, failures):
        missing = [u.client_id for u in updates if KEPT_KEYS not in u.payload]
        if missing:
            raise FedregError(
                f"the fedavg_shared aggregation needs each client to name the entries it keeps "
                f"(payload '{KEPT_KEYS}'); clients {missing} sent none: use it with fedper, fedrep, fedbabu "
                f"or local_only"
            )
        kept = {k for u in updates for k in u.payload[KEPT_KEYS]}
        return average_shared(
            global_state, [u.state for u in updates], averaging_weights(self.params, updates), kept
        )


class KeptLayers(PersonalObjective):
    """A personalised objective that keeps some layers on the client (a base, not registered): it pairs with
    the ``fedavg_shared`` aggregation and names the kept entries in its payload (``kept_keys``)."""

    @classmethod
    def check_spec(cls, params, spec):
        return pairing_problems(
            spec, cls.name, FedAvgShared.name, "only it keeps the layers each client keeps out of the average"
        )

    def kept_keys(self, ctx) -> list[str]:
        """The state-dict entries of ``ctx.model`` this client keeps (never aggregated)."""
        raise NotImplementedError

    def finish(self, ctx):
        return {KEPT_KEYS: self.kept_keys(ctx)}
