"""FedBABU (Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification",
ICLR 2022): the body trained and shared with the head frozen; evaluation fine-tunes a copy."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import Params
from fedreg_baselines._personal import PersonalObjective, frozen, layers_field, split_parameters


class FedBABUParams(Params):
    head_layers: list[str] = layers_field(
        "module-name prefixes of the head, never trained during federation (matched as in fedper)"
    )
    # The paper evaluates personalisation after a few fine-tuning epochs; 1 keeps per-round evaluation cheap.
    finetune_epochs: int = Field(
        default=1, ge=0, description="epochs of whole-model fine-tuning for evaluation"
    )
    finetune_lr: float | None = Field(
        default=None, gt=0, description="fine-tuning learning rate; None: the round's learning rate"
    )


class FedBABU(PersonalObjective):
    """FedBABU: the body is trained and shared with the head frozen at its initialisation; evaluation
    fine-tunes a copy (Oh et al., ICLR 2022).

    Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification", ICLR 2022.
    During local training the head receives no gradient and no step (not even weight decay), so every client
    returns it unchanged and the averaged global head stays at its random initialisation. ``eval_model``
    fine-tunes a copy of the trained model (whole network) on the client's training data for
    ``finetune_epochs``; the copy is discarded and never reaches the server.
    """

    name = "fedbabu"
    Params = FedBABUParams

    def train(self, ctx):
        head, _ = split_parameters(ctx.model, self.params.head_layers, "head_layers")
        with frozen(head):
            return super().train(ctx)

    def eval_model(self, ctx):
        m = ctx.build_model()
        m.load_state_dict(ctx.model.state_dict())
        lr = self.params.finetune_lr if self.params.finetune_lr is not None else ctx.lr
        self.run_epochs(ctx, m, m.parameters(), self.params.finetune_epochs, lr=lr)
        m.eval()
        return m
