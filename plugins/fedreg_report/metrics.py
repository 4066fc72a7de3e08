"""What a report reads and shows: the metric keys, the window of the 'last-10' figures, the columns of the
Results table, the settings compared across runs and the files written. No other module of the report
names a metric key."""

from __future__ import annotations

#: trailing window of the 'last-10' figures and of the smoothed curves (evaluated rounds)
WINDOW = 10
#: per-round metrics read for the curves (besides elapsed_s)
CURVE_KEYS = ("global_acc", "local_acc_mean", "local_acc_worst", "global_nfr", "bwt")
CURVE_TITLES = {
    "global_acc": "global accuracy",
    "local_acc_mean": "local accuracy, mean of the round's participants",
    "local_acc_worst": "local accuracy of the round's worst participant",
    "global_nfr": "global NFR",
    "bwt": "BwT",
}
#: forgetting metrics: (per-round key, title, higher is better); local ones are shown where a run logged them
FORGETTING: list[tuple[str, str, bool]] = [
    ("global_nfr", "global NFR", False),
    ("global_pfr", "global PFR", True),
    ("global_consistency", "global consistency", True),
    ("bwt", "BwT", True),
    ("local_nfr", "local NFR", False),
    ("local_pfr", "local PFR", True),
    ("local_consistency", "local consistency", True),
]
#: every per-round metric history a report reads (curves, window means, the window labels)
HISTORY_KEYS = tuple(dict.fromkeys((*CURVE_KEYS, "local_acc_mean", *(k for k, _, _ in FORGETTING))))
#: per-client metric (in metrics/per_client.csv) for the client-level view; the role follows in brackets
CLIENT_METRIC_PREFIX = "local_acc["
#: a local test set smaller than this is flagged where it decides the worst client (one sample >= 5 points)
SMALL_LOCAL_TEST = 20
#: derived per-run values (not MLflow metrics): the worst client's local accuracy at its last participation,
#: and the balance of global and local accuracy
WORST_KEY = "worst_client_local_acc"
BALANCE_KEY = "balance_global_local_acc"
#: table columns: (header, metric key, scale for display, decimals). 'worst-client' is the minimum over all
#: clients of each client's local accuracy at its last participation; the per-round worst participant
#: (last10_local_acc_worst) is not in the headline table (see the worst-client section)
TABLE: list[tuple[str, str, float, int]] = [
    ("global acc (final)", "final_global_acc", 100.0, 1),
    ("global acc (last-10 mean)", "last10_global_acc", 100.0, 1),
    ("local acc mean (last-10 mean)", "last10_local_acc_mean", 100.0, 1),
    ("worst-client local acc (at last participation)", WORST_KEY, 100.0, 1),
    ("end-of-run acc, all clients, mean", "final_personalized_acc_mean", 100.0, 1),
    ("end-of-run acc, all clients, worst", "final_personalized_acc_worst", 100.0, 1),
    ("global NFR (last-10 mean)", "last10_global_nfr", 100.0, 2),
    ("BwT (last-10 mean)", "last10_bwt", 100.0, 2),
    ("global consistency (last-10 mean)", "last10_global_consistency", 100.0, 2),
    ("wall time s", "wall_time_s", 1.0, 0),
    ("CPU time s", "cpu_time_s", 1.0, 0),
]
#: TABLE columns shown only when some run logged them (runs without the 'personalization' metric; runs
#: logged before fedreg measured CPU time have none)
OPTIONAL_KEYS = frozenset({"final_personalized_acc_mean", "final_personalized_acc_worst", "cpu_time_s"})
#: the metric keys of TABLE, in its order
TABLE_KEYS: tuple[str, ...] = tuple(k for _, k, _, _ in TABLE)
#: run parameters that describe the setting; shown in the header, and flagged when runs differ in them
SETTING_KEYS = (
    "data.dataset.name",
    "data.num_clients",
    "data.partition.name",
    "data.partition.params.alpha",
    "data.local_test_fraction",
    "data.local_test.rule",
    "data.local_test.fraction",
    "data.size",
    "federation.rounds",
    "federation.clients_per_round",
    "federation.selection.name",
    "training.local_epochs",
    "training.batch_size",
    "training.optimizer.lr",
    "training.optimizer.momentum",
    "training.optimizer.weight_decay",
    "training.optimizer.nesterov",
    "training.lr_schedule.gamma",
    "training.lr_schedule.step_rounds",
    "training.precision",
    "model.name",
)

REPORT_FILES = ("report.md", "report.html", "summary.csv", "runs.csv", "clients.csv")
#: written when the comparison holds the paper's methods (see judge_claims)
CLAIMS_FILE = "claims.csv"
#: per-run derived values written to runs.csv and summary.csv besides the TABLE columns
EXTRA_KEYS = (
    f"last{WINDOW}_local_acc_worst",
    BALANCE_KEY,
    *(f"{w}_{k}" for k, _, _ in FORGETTING for w in ("all", f"last{WINDOW}")),
)

#: run tag saying whether the aggregated weights are a model of the method ("global") or not ("none": e.g.
#: FedPer's shared body with the initial head, local-only's initial weights); see Objective.global_model_role
GLOBAL_MODEL_TAG = "fedreg.global_model_role"


def measures_the_global_model(key: str) -> bool:
    """Whether a summary key (``final_``, ``last10_``, ``all_`` prefixed or derived) is a figure of the global
    model: global accuracy, loss, AUC, ECE, Brier, NFR, consistency, the global model on local test sets, BwT,
    and the balance of global and local accuracy."""
    return "global" in key or key.endswith("bwt")
