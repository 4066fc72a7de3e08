"""First-party metrics: accuracy of the global and local models, and forgetting (flip rates,
consistency, backward transfer). Formulas are plain functions in :mod:`fedreg_metrics.formulas`."""

from fedreg import hookimpl
from fedreg_metrics.components import (
    BackwardTransfer,
    Flips,
    GlobalAccuracy,
    GlobalOnLocalAccuracy,
    LocalAccuracy,
)


@hookimpl
def fedreg_register_metrics(register):
    for cls in (GlobalAccuracy, LocalAccuracy, GlobalOnLocalAccuracy, Flips, BackwardTransfer):
        register(cls)
