"""FedKPer components (thin: the math is in :mod:`fedreg_fedkper.math`)."""

from __future__ import annotations

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Method, Objective, Params
from fedreg_fedkper.math import (
    adaptive_kd_loss,
    normalized_label_entropy,
    reliability_score,
    reliability_weights,
)


class AdaptiveKDParams(Params):
    tau: float = Field(default=1.0, gt=0, description="distillation temperature")
    lambda_max: float = Field(default=10.0, ge=0, description="upper bound of the adaptive weight beta")


class AdaptiveKD(Objective):
    """FedKPer's adaptive distillation toward the frozen global model received this round."""

    name = "adaptive_kd"
    api_version = 3  # its loss is a functional_loss alone (the local loop needs contract 3)
    Params = AdaptiveKDParams

    @classmethod
    def relative_cost(cls, params, spec):
        return 4 / 3  # a forward pass of the received (teacher) model per batch

    def functional_loss(self, forward, params, x, y, weight, fctx):
        loss, _ = adaptive_kd_loss(
            forward(params, x), fctx.teacher(x), y, self.params.tau, self.params.lambda_max, weight
        )
        return loss


class ReliabilityDiversityParams(Params):
    eps: float = Field(default=1e-6, ge=0, description="keeps single-class clients from weight zero")
    eval_batch_size: int = Field(default=256, ge=1)


class ReliabilityDiversity(Aggregator):
    """FedKPer's aggregation: weights s_k = max(a_k, 0) * (eps + H_k), a_k the trained model's accuracy on the
    client's own training data, H_k its normalised label entropy; sample counts if any score is NaN."""

    name = "reliability_diversity"
    Params = ReliabilityDiversityParams

    def client_report(self, ctx, model):
        was = model.training
        model.eval()
        correct = 0
        with torch.inference_mode():
            for s in range(0, ctx.num_samples, self.params.eval_batch_size):
                x = ctx.train_x[s : s + self.params.eval_batch_size]
                correct += int((model(x).argmax(1) == ctx.train_y[s : s + self.params.eval_batch_size]).sum())
        model.train(was)
        acc = correct / max(ctx.num_samples, 1)
        counts = torch.bincount(ctx.train_y, minlength=ctx.num_classes).numpy()
        entropy = normalized_label_entropy(counts, ctx.num_classes)
        return {
            "train_acc": acc,
            "label_entropy": entropy,
            "score": reliability_score(acc, entropy, self.params.eps),
        }

    def aggregate(self, round, global_state, updates, failures):
        weights, _ = reliability_weights(
            [u.report.get("score", float("nan")) for u in updates], [u.num_samples for u in updates]
        )
        return weighted_average([u.state for u in updates], weights)


class FedKPerParams(Params):
    # the parts' own fields (default, bounds, description), so the preset and its parts cannot disagree
    tau: float = AdaptiveKDParams.model_fields["tau"]  # type: ignore[assignment]
    lambda_max: float = AdaptiveKDParams.model_fields["lambda_max"]  # type: ignore[assignment]
    eps: float = ReliabilityDiversityParams.model_fields["eps"]  # type: ignore[assignment]


class FedKPer(Method):
    """FedKPer: objective 'adaptive_kd' (tau, lambda_max) + aggregation 'reliability_diversity' (eps). Its
    ablations swap one part: KD-only sets federation.aggregation: fedavg, Agg-only training.objective:
    cross_entropy."""

    name = "fedkper"
    Params = FedKPerParams

    def parts(self):
        p = self.params
        return {
            "training.objective": {
                "name": AdaptiveKD.name,
                "params": {"tau": p.tau, "lambda_max": p.lambda_max},
            },
            "federation.aggregation": {"name": ReliabilityDiversity.name, "params": {"eps": p.eps}},
        }
