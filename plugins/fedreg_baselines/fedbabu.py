"""FedBABU (Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification",
ICLR 2022): the body trained and shared with the head frozen; evaluation fine-tunes the received global
model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedreg.components import Params
from fedreg_baselines._personal import KeptLayers, frozen, layers_field, split_parameters
from fedreg_baselines.personal_math import select_state


class FedBABUParams(Params):
    head_layers: list[str] = layers_field(
        "module-name prefixes of the head, never trained during federation (matched as in fedper)"
    )
    # The authors' code (jhoon-oh/FedBABU, utils/options.py) fine-tunes for --ft_ep 5 epochs before
    # evaluation, the whole model (body and head at the same rate), as in the paper's personalisation.
    finetune_epochs: int = Field(
        default=5, ge=0, description="epochs of fine-tuning of the received global model before evaluation"
    )
    finetune_part: Literal["full", "head", "body"] = Field(
        default="full", description="which part is fine-tuned: the whole model, the head or the body"
    )
    finetune_lr: float | None = Field(
        default=None, gt=0, description="fine-tuning learning rate; None: the round's learning rate"
    )


class FedBABU(KeptLayers):
    """FedBABU: the body is trained and shared with the head frozen at its initialisation; evaluation
    fine-tunes the received global model (Oh et al., ICLR 2022).

    Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification", ICLR 2022.
    During local training the head receives no gradient and no step (not even weight decay). Pairs with
    ``fedavg_shared``: the head is kept out of the average, so the global head stays at its random
    initialisation, and the global model (trained body, fixed head) is the paper's global model.
    ``eval_model`` fine-tunes a copy of the received global model (``finetune_part`` of it, for
    ``finetune_epochs``) on the client's training data and returns it; at the end of the run that is the
    final global model. The copy never reaches the server.
    """

    name = "fedbabu"
    Params = FedBABUParams

    def train(self, ctx):
        head, _ = split_parameters(ctx.model, self.params.head_layers, "head_layers")
        with frozen(head):
            return super().train(ctx)

    def kept_keys(self, ctx):
        return list(select_state(ctx.model.state_dict(), self.params.head_layers))

    def eval_model(self, ctx):
        m = ctx.build_model()
        m.load_state_dict(ctx.global_state)
        head, body = split_parameters(m, self.params.head_layers, "head_layers")
        part = {"full": [*head, *body], "head": head, "body": body}[self.params.finetune_part]
        lr = self.params.finetune_lr if self.params.finetune_lr is not None else ctx.lr
        with frozen(p for p in m.parameters() if all(p is not q for q in part)):
            self.run_epochs(ctx, m, part, self.params.finetune_epochs, lr=lr)
        m.eval()
        return m
