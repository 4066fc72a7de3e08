"""FedRep (Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021): a shared representation and a personal head, trained one after the other."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import TrainOutput
from fedreg_baselines._personal import frozen, split_parameters
from fedreg_baselines.fedper import FedPer, FedPerParams


class FedRepParams(FedPerParams):
    # lgcollins/FedRep models/Update.py LocalUpdate.train: of local_ep epochs per round, the first
    # local_ep - local_rep_ep train the head alone and the last local_rep_ep the representation alone;
    # utils/options.py: --local_rep_ep 1 (and --local_ep 5, here training.local_epochs).
    rep_epochs: int = Field(
        default=1,
        ge=1,
        description="of training.local_epochs per round, how many (the last ones) train the body alone; the "
        "others train the head alone",
    )


def phase_epochs(local_epochs: int, rep_epochs: int) -> tuple[int, int]:
    """FedRep's (head epochs, body epochs) of a round: ``local_epochs`` in all, the last ``rep_epochs`` of
    them for the body."""
    body = min(rep_epochs, local_epochs)
    return local_epochs - body, body


class FedRep(FedPer):
    """FedRep: shared representation, personal head; per round the head is trained first (body frozen),
    then the body (Collins et al., ICML 2021).

    Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations for Personalized Federated
    Learning", ICML 2021, as lgcollins/FedRep runs it. The client restores its stored head (the initial
    head at its first participation) and trains for ``training.local_epochs`` in all: the head alone for
    the first ``local_epochs - rep_epochs``, then the body alone for the last ``rep_epochs``; it stores the
    head. Pairs with ``fedavg_shared``: the server averages the body only (``global_model_role = "none"``).
    Local metrics evaluate the body with the client's own head; at the end of the run every client trains
    its head alone on the final body for ``final_head_epochs`` before its score. The reported train loss is
    the mean over both phases.
    """

    name = "fedrep"
    Params = FedRepParams

    @classmethod
    def relative_cost(cls, params, spec):
        # a head epoch is a forward pass and the head's backward (about 0.4 of a training step)
        head, body = phase_epochs(spec.training.local_epochs, params.rep_epochs)
        return (0.4 * head + body) / max(1, head + body)

    @classmethod
    def check_spec(cls, params, spec):
        problems = super().check_spec(params, spec)
        epochs = spec.training.local_epochs
        if params.rep_epochs > epochs:
            problems.append(
                f"rep_epochs={params.rep_epochs} is more than training.local_epochs={epochs}, the epochs of "
                f"a round in all: set rep_epochs to at most {epochs} (the FedRep code's default is 1)"
            )
        return problems

    def train(self, ctx):
        model = ctx.model
        model.train()
        head, body = split_parameters(model, self.layers(), "personal_layers")
        self.call("setup", ctx, ctx)
        head_epochs, body_epochs = phase_epochs(ctx.epochs, self.params.rep_epochs)
        total, steps = 0.0, 0
        for trained, fixed, epochs in ((head, body, head_epochs), (body, head, body_epochs)):
            with frozen(fixed):
                t, s = self.run_epochs(ctx, model, trained, epochs)
            total, steps = total + t, steps + s
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)
