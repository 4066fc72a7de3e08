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
    # The authors' personalisation (jhoon-oh/FedBABU analysis.ipynb; --ft_ep 5 in utils/options.py)
    # fine-tunes the whole model, body and head at one rate, for 5 epochs with SGD at lr 1e-3 (constant),
    # momentum 0.9 and no weight decay.
    finetune_epochs: int = Field(
        default=5, ge=0, description="epochs of fine-tuning of the received global model before evaluation"
    )
    finetune_part: Literal["full", "head", "body"] = Field(
        default="full", description="which part is fine-tuned: the whole model, the head or the body"
    )
    finetune_lr: float | None = Field(
        default=1e-3, gt=0, description="fine-tuning learning rate; None: the round's learning rate"
    )
    finetune_momentum: float | None = Field(
        default=0.9, ge=0, lt=1, description="fine-tuning SGD momentum; None: training.optimizer's"
    )
    finetune_weight_decay: float | None = Field(
        default=0.0, ge=0, description="fine-tuning weight decay; None: training.optimizer's"
    )


class FedBABU(KeptLayers):
    """FedBABU: the body is trained and shared with the head frozen at its initialisation; evaluation
    fine-tunes the received global model (Oh et al., ICLR 2022).

    Oh, Kim and Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification", ICLR 2022.
    During local training the head receives no gradient and no step (not even weight decay). Pairs with
    ``fedavg_shared``: the head is kept out of the average, so the global head stays at its random
    initialisation, and the global model (trained body, fixed head) is the paper's global model.
    ``eval_model`` fine-tunes a copy of the received global model (``finetune_part`` of it, for
    ``finetune_epochs``, by SGD at ``finetune_lr`` with ``finetune_momentum`` and ``finetune_weight_decay``,
    the authors' 1e-3, 0.9 and 0) on the client's training data and returns it; at the end of the run that
    is the final global model. The copy never reaches the server.
    """

    name = "fedbabu"
    Params = FedBABUParams

    @classmethod
    def relative_cost(cls, params, spec):
        # each evaluated round, a participant fine-tunes a copy for finetune_epochs before its local score
        return 1.0 + params.finetune_epochs / max(1, spec.training.local_epochs) / spec.evaluation.every

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
        p = self.params
        lr = p.finetune_lr if p.finetune_lr is not None else ctx.lr
        settings = {"momentum": p.finetune_momentum, "weight_decay": p.finetune_weight_decay}
        optimizer = {k: v for k, v in settings.items() if v is not None}
        with frozen(q for q in m.parameters() if all(q is not r for r in part)):
            self.run_epochs(ctx, m, part, p.finetune_epochs, lr=lr, optimizer=optimizer)
        m.eval()
        return m
