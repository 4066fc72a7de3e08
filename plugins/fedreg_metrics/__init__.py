"""First-party metrics: accuracy of the global and local models, forgetting (flip rates,
consistency, backward transfer) and the global model's probabilities (AUC, ECE, Brier score).
Formulas are plain functions in :mod:`fedreg_metrics.formulas`."""

from fedreg import hookimpl
from fedreg_metrics.components import (
    BackwardTransfer,
    Flips,
    GlobalAccuracy,
    GlobalOnLocalAccuracy,
    LocalAccuracy,
)
from fedreg_metrics.probabilities import GlobalAUC, GlobalBrier, GlobalECE


@hookimpl
def fedreg_register_metrics(register):
    for cls in (
        GlobalAccuracy,
        LocalAccuracy,
        GlobalOnLocalAccuracy,
        Flips,
        BackwardTransfer,
        GlobalAUC,
        GlobalECE,
        GlobalBrier,
    ):
        register(cls)
