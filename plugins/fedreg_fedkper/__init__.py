"""FedKPer (Fowler and AlRegib, "FedKPer: Tackling Generalization and Personalization in Medical Federated
Learning via Knowledge Personalization", ICIP 2026, arXiv 2605.00698) as two components:

- ``adaptive_kd`` (local objective): cross-entropy plus distillation toward the frozen global model, with a
  per-batch weight that grows as the global model does better on the batch ("selective alignment");
- ``reliability_diversity`` (aggregation): clients weighted by the accuracy of their trained model on their
  own data times the normalised entropy of their labels.

FedKPer = ``adaptive_kd`` + ``reliability_diversity``, registered as the method preset ``fedkper``; KD-only
and Agg-only are spec variants that swap one of them for ``cross_entropy`` / ``fedavg``.
"""

from fedreg import hookimpl
from fedreg_fedkper.components import AdaptiveKD, FedKPer, ReliabilityDiversity


@hookimpl
def fedreg_register_objectives(register):
    register(AdaptiveKD)


@hookimpl
def fedreg_register_aggregators(register):
    register(ReliabilityDiversity)


@hookimpl
def fedreg_register_methods(register):
    register(FedKPer)
