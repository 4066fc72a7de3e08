"""The structure of a run spec: one pydantic model per section (unknown keys rejected, types and ranges
checked), :class:`ComponentRef` for a component chosen by name, and ``COMPONENT_PATHS``, where a spec names
each kind of component."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedreg.components import KIND_BASES
from fedreg.limits import DEFAULT_MAX_RUNS


class Strict(BaseModel):
    # unknown keys are rejected; so are .inf and .nan in any float field
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: a spec's name: it names folders (checkpoints) and runs
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _not_allowed(value: str) -> str:
    """What breaks :data:`NAME_PATTERN` in ``value``: its first characters outside it, or its first one."""
    bad = list(dict.fromkeys(c for c in value if not re.fullmatch(r"[A-Za-z0-9_.-]", c)))
    if bad:
        ascii_only = all(ord(c) < 128 for c in bad)
        return ", ".join(repr(c) for c in bad[:5]) + ("" if ascii_only else " (not ASCII)")
    return f"{value[:1]!r} first"


class ComponentRef(Strict):
    """A component chosen by name, with its parameters. A plain string is shorthand for ``{name: ...}``."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    provider: str | None = None  # distribution (or plugin) to take it from when several register the name

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _none_params(cls, value: Any) -> Any:
        return {} if value is None else value


class LocalTestSpec(Strict):
    """How each client's local test set is carved from its own data (see :mod:`fedreg.data`).

    ``stratified``: ``round(fraction * n_c)`` of each class c, mirroring the client's label mix.
    ``per_class_equal``: ``int(fraction * n)`` samples split equally over the classes present, as the
    FedKPer authors' code does (close to class-balanced; rare classes go mostly to the test set)."""

    rule: Literal["stratified", "per_class_equal"] = "stratified"
    fraction: float = Field(default=0.2, ge=0.0, lt=1.0)


class DataSpec(Strict):
    dataset: ComponentRef
    root: str | None = None  # default: $FEDREG_DATA_DIR, else medmnist's default folder
    download: bool = False
    size: Literal[28, 64, 128, 224] = 28
    # keep this fraction of the training and the official test split, per class, drawn once with a fixed
    # stream (the same samples for every seed and variant): quick runs on real data, not its results
    subset: float = Field(default=1.0, gt=0, le=1)
    num_clients: int = Field(ge=1, le=100_000)
    partition: ComponentRef  # default: the partition a plugin marks ``default`` (see defaults.py)
    local_test: LocalTestSpec = Field(default_factory=LocalTestSpec)

    @model_validator(mode="before")
    @classmethod
    def _renamed_local_test_fraction(cls, value: Any) -> Any:
        if isinstance(value, dict) and "local_test_fraction" in value:
            raise ValueError(
                "data.local_test_fraction was replaced by data.local_test: write "
                f"'local_test: {{rule: stratified, fraction: {value['local_test_fraction']}}}' for the same "
                "split, or rule: per_class_equal for the FedKPer authors' class-balanced local test sets"
            )
        return value


class OptimizerSpec(Strict):
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-5, ge=0)
    nesterov: bool = False


class LRScheduleSpec(Strict):
    """Step decay applied per round ``r`` (1-based): ``lr_r = lr * gamma ** ((r - 1) // step_rounds)``."""

    gamma: float = Field(default=1.0, gt=0, le=1)
    step_rounds: int = Field(default=1, ge=1)


class TrainingSpec(Strict):
    objective: ComponentRef  # default: the objective a plugin marks ``default``
    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    # bf16: local training and evaluation under bfloat16 autocast (faster on CPUs with bf16 support;
    # changes numerics, so results differ from fp32 beyond rounding)
    precision: Literal["fp32", "bf16"] = "fp32"


class FederationSpec(Strict):
    rounds: int = Field(ge=1, le=1_000_000)
    clients_per_round: int = Field(ge=1)
    selection: ComponentRef  # default: the selection a plugin marks ``default``
    aggregation: ComponentRef  # default: the aggregation a plugin marks ``default``


class EvaluationSpec(Strict):
    every: int = Field(default=1, ge=1)  # evaluate every N rounds (and always the last)
    batch_size: int = Field(default=256, ge=1, le=65536)


class ExecutionSpec(Strict):
    """Where and how the round's clients train, and where a sweep's child runs run. Changes speed, not
    results (``vectorized``: within float tolerance)."""

    # an installed backend (entry-point group fedreg.backends): local, ray, vectorized, or a plugin's (flower)
    backend: str = Field(default="local", min_length=1)
    threads: int | None = Field(
        default=None, ge=1
    )  # intra-op threads of the main process; None: torch's default
    # ray: the cluster to join ("auto", "ray://host:10001", ...); None: $RAY_ADDRESS, else start Ray locally
    address: str | None = None
    workers: int | None = Field(default=None, ge=1)  # ray: client workers; None: as many as the CPUs allow
    cpus_per_client: float = Field(default=1.0, gt=0)  # ray: CPUs per worker (also its torch threads)
    gpus_per_client: float = Field(default=0.0, ge=0)  # ray: GPU fraction per worker
    # where clients train and the global model is evaluated ("cpu", "cuda", "cuda:1"); Ray workers train on
    # a GPU when gpus_per_client > 0
    device: str = "cpu"
    # where the child runs of a sweep (variants x grid points x seeds) run: "local" on this machine (one at
    # a time in this process, or ``jobs`` worker processes), "ray" as Ray tasks (a local Ray when neither
    # execution.address nor $RAY_ADDRESS names a cluster). Shared by all variants; see docs/execution.md
    sweep: Literal["local", "ray"] = "local"
    # child runs at once; None: 1 with sweep 'local' (in this process), as many as the Ray cluster's CPUs
    # allow with sweep 'ray'. Each worker trains with one intra-op thread unless 'threads' says otherwise
    jobs: int | None = Field(default=None, ge=1, le=1024)
    # the most child runs one invocation starts (variants x grid points x seeds); a bigger sweep is refused
    # before anything runs unless this is raised. Read from the spec as written, not from its variants
    max_runs: int = Field(default=DEFAULT_MAX_RUNS, ge=1)


#: spec keys a grid may not vary (they say what the grid crosses, or name the invocation)
UNGRIDDABLE = ("variants", "grid", "seeds", "seed", "name", "tracking", "checkpoint")


class GridSpec(Strict):
    """A parameter grid: every combination of the ``params`` values (dotted spec paths to lists of
    values), crossed with the variants named (all when none) and the seeds. A mapping without ``params``
    is shorthand for ``{params: <the mapping>}``."""

    params: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(min_length=1)
    variants: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "params" not in value and "variants" not in value:
            return {"params": value}
        return value

    @field_validator("params")
    @classmethod
    def _paths(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        problems = []
        for path, values in value.items():
            parts = path.split(".")
            if not path or any(not p for p in parts):
                problems.append(f"'{path}' is not a dotted spec path like training.objective.params.tau")
            elif parts[0] in UNGRIDDABLE:
                problems.append(
                    f"'{path}': a grid cannot vary '{parts[0]}' (use 'seeds' for seeds, 'variants' for "
                    "named alternatives)"
                )
            elif len({repr(v) for v in values}) != len(values):
                problems.append(f"'{path}' lists a value twice: {values}")
            elif any(isinstance(v, dict | list) for v in values):
                problems.append(
                    f"'{path}': grid values must be single values (numbers, strings, booleans); to vary a "
                    "whole mapping, grid its keys one by one or use variants"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return value


class FaultsSpec(Strict):
    """What happens when a client fails or diverges."""

    client_failure: Literal["stop", "skip"] = (
        "stop"  # a client whose training raises: stop the run, or skip it
    )
    divergence: Literal["reject", "stop"] = "reject"  # NaN/Inf loss or update: reject the update, or stop
    min_clients: int = Field(default=1, ge=1)  # fewest successful clients a round may aggregate


class CheckpointSpec(Strict):
    every: int = Field(default=1, ge=0)  # write a checkpoint every N rounds (and at the end); 0: never
    dir: str = ".fedreg/checkpoints"


class TrackingSpec(Strict):
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else MLflow's default local store
    experiment: str = Field(default="fedreg", min_length=1)
    run_name: str | None = None
    log_model: bool = True

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is None or value.startswith(BUILTIN_STORE_PREFIXES):  # MLflow's own: no need to import it
            return value
        from fedreg.tracking import uri_problem  # imports MLflow (3 s): only for other URIs

        if problem := uri_problem(value):
            raise ValueError(problem)
        return value


#: tracking URIs of stores MLflow always has (a SQLite file, a tracking server)
BUILTIN_STORE_PREFIXES = ("sqlite:///", "http://", "https://")


class RunSpec(Strict):
    name: str = Field(default="run", min_length=1)
    description: str = ""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # a sweep: every variant runs once per seed (each run's 'seed' is set from this list)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(default=None, min_length=1)
    # a method preset: expands into the components of a method (see fedreg.components.Method)
    method: ComponentRef | None = None
    data: DataSpec
    model: ComponentRef  # default: the model a plugin marks ``default``
    training: TrainingSpec
    federation: FederationSpec
    metrics: list[ComponentRef]  # default: the metrics plugins mark ``default``
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    faults: FaultsSpec = Field(default_factory=FaultsSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: GridSpec | None = None  # see GridSpec; expanded into child runs before validation

    @field_validator("name")
    @classmethod
    def _name_syntax(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "the spec's name names its checkpoint folder and runs: use ASCII letters (a-z, A-Z), digits "
                "(0-9), '-', '_' and '.' only (no accented letters, spaces or '/'), not starting with '.' or "
                f"'-', e.g. 'fedavg-blood'; it has {_not_allowed(value)}"
            )
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value):
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value


#: where component references live in a spec: path -> kind (declared on each kind's base class; metrics
#: are the ``metrics`` list)
COMPONENT_PATHS: dict[tuple[str, ...], str] = {
    base.spec_path: kind for kind, base in KIND_BASES.items() if base.spec_path
}
