"""Typed run specs.

A spec is YAML (read with ``yaml.safe_load`` only). Validation collects every problem before anything
runs: first the structure (pydantic, unknown keys rejected, types and ranges), then every component
reference (name registered? parameters valid for that component's own model?), then cross-field checks.
All problems are raised together as one :class:`fedreg.errors.SpecError`, each with its path.

``variants`` declares named overrides of the base spec (ablations): each variant is the base spec with
its overrides applied, and is validated as a whole spec.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedreg.components import KIND_BASES, Component, Objective
from fedreg.errors import SpecError, SpecIssue
from fedreg.registry import Registry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    num_clients: int = Field(ge=1, le=100_000)
    partition: ComponentRef = Field(default_factory=lambda: ComponentRef(name="dirichlet"))
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
    """Step decay applied per round: ``lr_r = lr * gamma ** (r // step_rounds)``."""

    gamma: float = Field(default=1.0, gt=0, le=1)
    step_rounds: int = Field(default=1, ge=1)


class TrainingSpec(Strict):
    objective: ComponentRef = Field(default_factory=lambda: ComponentRef(name="cross_entropy"))
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
    selection: ComponentRef = Field(default_factory=lambda: ComponentRef(name="uniform"))
    aggregation: ComponentRef = Field(default_factory=lambda: ComponentRef(name="fedavg"))


class EvaluationSpec(Strict):
    every: int = Field(default=1, ge=1)  # evaluate every N rounds (and always the last)
    batch_size: int = Field(default=256, ge=1, le=65536)


class ExecutionSpec(Strict):
    """Where and how the round's clients train. Changes speed, not results (``vectorized``: within float
    tolerance)."""

    backend: Literal["local", "ray", "vectorized"] = "local"
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
    experiment: str = "fedreg"
    run_name: str | None = None
    log_model: bool = True


class RunSpec(Strict):
    name: str = Field(default="run", min_length=1)
    description: str = ""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # a sweep: every variant runs once per seed (each run's 'seed' is set from this list)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(default=None, min_length=1)
    # a method preset: expands into the components of a method (see fedreg.components.Method)
    method: ComponentRef | None = None
    data: DataSpec
    model: ComponentRef = Field(default_factory=lambda: ComponentRef(name="cnn"))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    federation: FederationSpec
    metrics: list[ComponentRef] = Field(default_factory=lambda: [ComponentRef(name="global_accuracy")])
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    faults: FaultsSpec = Field(default_factory=FaultsSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)

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


# ---------------------------------------------------------------------------------------------------------
# Resolved specs
# ---------------------------------------------------------------------------------------------------------


class ResolvedComponent:
    """A component reference resolved against the registry, with validated parameters."""

    def __init__(self, info, params):
        self.info = info
        self.params = params

    @property
    def name(self) -> str:
        return self.info.name

    def instantiate(self):
        obj = self.info.cls(self.params)
        obj.origin = f"plugin '{self.info.plugin}', {self.info.provider}".rstrip(", ")
        return obj


class ResolvedSpec:
    """A validated spec (one variant) with its components resolved."""

    def __init__(
        self,
        spec: RunSpec,
        components: dict[str, ResolvedComponent],
        metrics: list[ResolvedComponent],
        variant: str | None,
        raw: dict[str, Any],
        swept: bool = False,
    ):
        self.spec = spec
        self.components = components  # key: dataset/partition/model/objective/selection/aggregation
        self.metrics = metrics
        self.variant = variant
        self.raw = raw  # the variant's raw dict (without 'variants')
        self.swept = swept  # one run of a 'seeds' sweep: its seed is part of its name

    @property
    def key(self) -> str | None:
        """The run's name within its invocation: the variant, with ``.seed<N>`` in a seed sweep."""
        if not self.swept:
            return self.variant
        return f"{self.variant or self.spec.name}.seed{self.spec.seed}"

    def with_seed(self, seed: int) -> ResolvedSpec:
        spec = self.spec.model_copy(update={"seed": seed, "seeds": None})
        return ResolvedSpec(
            spec, self.components, self.metrics, self.variant, {**self.raw, "seed": seed}, swept=True
        )

    def resolved_dict(self) -> dict[str, Any]:
        """The spec with every default filled in and every component's params validated."""
        d = self.spec.model_dump(mode="json", exclude={"variants", "seeds"})
        for path, kind in COMPONENT_PATHS.items():
            if kind not in self.components:  # an optional reference the spec left out (method)
                continue
            ref = self.components[kind]
            target = d
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = {"name": ref.name, "params": ref.params.model_dump(mode="json")}
        d["metrics"] = [{"name": m.name, "params": m.params.model_dump(mode="json")} for m in self.metrics]
        if self.variant:
            d["variant"] = self.variant
        return d


# ---------------------------------------------------------------------------------------------------------
# Loading, overrides, variants
# ---------------------------------------------------------------------------------------------------------


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise SpecError([SpecIssue("", f"spec file '{p}' does not exist")])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [SpecIssue("", f"malformed YAML{where}: {problem}. Fix the YAML syntax")], source=str(p)
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            [SpecIssue("", f"a spec must be a mapping of keys to values, got {type(data).__name__}")],
            source=str(p),
        )
    return data


def _split_path(path: str) -> list[str]:
    parts = [p for p in path.split(".")]
    if not path or any(not p for p in parts):
        raise ValueError(f"'{path}' is not a dotted path like training.batch_size")
    return parts


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` (list items by index: ``metrics.0.name``) in a nested dict, creating mappings."""
    parts = _split_path(path)
    target: Any = data
    for part in parts[:-1]:
        if isinstance(target, list):
            target = target[int(part)]
            continue
        nxt = target.get(part)
        if nxt is None or not isinstance(nxt, dict | list):
            nxt = {}
            if isinstance(target.get(part), str):  # component shorthand: keep its name
                nxt = {"name": target[part]}
            target[part] = nxt
        target = nxt
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    issues = []
    for item in items:
        if "=" not in item:
            issues.append(SpecIssue(f"--set {item}", "expected path.to.key=value"))
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
            _split_path(key.strip())
        except (yaml.YAMLError, ValueError) as exc:
            issues.append(SpecIssue(f"--set {item}", str(exc).splitlines()[0]))
            continue
        out.append((key.strip(), value))
    if issues:
        raise SpecError(issues)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    issues = []
    for key, value in overrides:
        try:
            set_path(data, key, value)
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            issues.append(SpecIssue(key, f"cannot set this path: {exc}"))
    if issues:
        raise SpecError(issues)
    return data


def merge_variant(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Apply a variant's overrides. Keys may be dotted paths. Mappings merge recursively, except a mapping
    that names a component (has ``name``), which replaces the reference whole; anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if "." in key:
            parts = key.split(".")
            nested: Any = value
            for p in reversed(parts[1:]):
                nested = {p: nested}
            key, value = parts[0], nested
        if isinstance(value, dict) and "name" not in value and isinstance(out.get(key), dict):
            out[key] = merge_variant(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_issues(exc: ValidationError, prefix: str = "") -> list[SpecIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        path = _loc(err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check its spelling)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg} (got {err['input']!r})"
        issues.append(SpecIssue(path, msg))
    return issues


def _raw_get(data: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(data, dict) or p not in data:
            return None
        data = data[p]
    return data


def _resolve_ref(
    registry: Registry, kind: str, raw: Any, path: str, issues: list[SpecIssue]
) -> ResolvedComponent | None:
    try:
        ref = ComponentRef.model_validate(raw)
    except ValidationError:
        return None  # already reported by the structural pass
    try:
        info = registry.lookup(kind, ref.name, ref.provider)
    except LookupError as exc:
        issues.append(SpecIssue(f"{path}.name" if isinstance(raw, dict) else path, str(exc)))
        return None
    try:
        params = info.cls.Params.model_validate(ref.params)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, f"{path}.params"))
        return None
    return ResolvedComponent(info, params)


def _field_default(path: tuple[str, ...]) -> Any:
    """The spec models' own default at ``path`` as raw data (None where the field is required)."""
    model: Any = RunSpec
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    field = model.model_fields[path[-1]]
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    return value.model_dump() if isinstance(value, BaseModel) else value


def _vectorizable(cls: type[Component]) -> bool:
    """Whether the vectorized backend can train an objective class (see ``Objective.vectorizable``; the
    registry holds only Objective subclasses under the kind 'objective')."""
    return issubclass(cls, Objective) and cls.vectorizable()


def _vectorizable_issues(objective: ResolvedComponent, registry: Registry) -> list[SpecIssue]:
    """The vectorized backend trains only objectives whose loss is a ``functional_loss`` alone."""
    if _vectorizable(objective.info.cls):
        return []
    able = sorted({i.name for i in registry.all() if i.kind == "objective" and _vectorizable(i.cls)})
    return [
        SpecIssue(
            "execution.backend",
            (
                f"objective '{objective.name}' cannot run on the vectorized backend: its loss is not a "
                "functional_loss alone (a pure function that torch.func batches over clients, with no "
                "imperative hook such as setup, before_step or finish). "
                f"Objectives that can: {', '.join(able) or '(none installed)'}; "
                "execution.backend: local or ray runs any objective"
            ),
        )
    ]


def validate_one(
    raw: dict[str, Any], registry: Registry, variant: str | None = None, prefix: str = ""
) -> tuple[ResolvedSpec | None, list[SpecIssue]]:
    """Validate one (variant of a) spec; returns the resolved spec or the issues found."""
    issues: list[SpecIssue] = []
    spec = None
    raw = expand_method(raw, registry, issues)
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc))

    components: dict[str, ResolvedComponent] = {}
    for path, kind in COMPONENT_PATHS.items():
        value = _raw_get(raw, path)
        if value is None:
            value = _field_default(path)
            if value is None:
                continue
        res = _resolve_ref(registry, kind, value, ".".join(path), issues)
        if res is not None:
            components[kind] = res
    metrics: list[ResolvedComponent] = []
    raw_metrics = raw.get("metrics", _field_default(("metrics",))) if isinstance(raw, dict) else []
    if isinstance(raw_metrics, list):
        seen: dict[str, int] = {}
        for i, m in enumerate(raw_metrics):
            res = _resolve_ref(registry, "metric", m, f"metrics.{i}", issues)
            if res is not None:
                if res.name in seen:
                    issues.append(
                        SpecIssue(
                            f"metrics.{i}",
                            f"metric '{res.name}' is listed twice (also metrics.{seen[res.name]})",
                        )
                    )
                seen[res.name] = i
                metrics.append(res)

    if spec is not None:
        fed = spec.federation
        if fed.clients_per_round > spec.data.num_clients:
            issues.append(
                SpecIssue(
                    "federation.clients_per_round",
                    f"{fed.clients_per_round} clients per round but only {spec.data.num_clients} clients "
                    f"(data.num_clients); lower clients_per_round or raise num_clients",
                )
            )
        if spec.faults.min_clients > fed.clients_per_round:
            issues.append(
                SpecIssue(
                    "faults.min_clients",
                    f"{spec.faults.min_clients} exceeds "
                    f"federation.clients_per_round ({fed.clients_per_round}); lower it",
                )
            )
        # each component's own cross-field checks
        located = [(".".join(path), components.get(kind)) for path, kind in COMPONENT_PATHS.items()]
        located += [(f"metrics.{i}", m) for i, m in enumerate(metrics)]
        for where, comp in located:
            if comp is not None:
                for msg in comp.info.cls.check_spec(comp.params, spec):
                    issues.append(SpecIssue(where, msg))
        if spec.execution.backend == "vectorized" and "objective" in components:
            issues.extend(_vectorizable_issues(components["objective"], registry))
    if prefix:
        issues = [SpecIssue(f"{prefix}.{i.path}" if i.path else prefix, i.message) for i in issues]
    if issues or spec is None:
        return None, issues
    return ResolvedSpec(spec, components, metrics, variant, raw), issues


def _preset_parts(ref: Any, registry: Registry, issues: list[SpecIssue]) -> tuple[str, dict[str, Any]] | None:
    """(preset name, its parts) for a ``method`` reference, or None when it does not resolve (the reference
    itself is reported when ``method`` is resolved as a component)."""
    resolved = _resolve_ref(registry, "method", ref, "method", [])
    if resolved is None:
        return None
    try:
        return resolved.name, dict(resolved.instantiate().parts())
    except Exception as exc:  # noqa: BLE001 - a plugin bug, reported at the spec path
        issues.append(SpecIssue("method", f"method preset '{resolved.name}' failed to expand: {exc!r}"))
        return None


def expand_method(raw: Any, registry: Registry, issues: list[SpecIssue]) -> Any:
    """The spec with its method preset's parts written in, at every path the spec does not set itself."""
    if not isinstance(raw, dict) or raw.get("method") is None:
        return raw
    found = _preset_parts(raw["method"], registry, issues)
    if found is None:
        return raw
    name, parts = found
    out = copy.deepcopy(raw)
    for path, value in parts.items():
        current = _raw_get(out, tuple(path.split(".")))
        try:
            if current is None:
                set_path(out, path, copy.deepcopy(value))
            elif isinstance(current, dict) and "name" not in current and isinstance(value, dict):
                # the spec sets some params of the preset's component: keep the preset's name and the rest
                set_path(out, path, merge_variant(value, current))
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            issues.append(SpecIssue(path, f"method preset '{name}' cannot set this path: {exc}"))
    return out


def _preset_shadowed(
    base: dict[str, Any], override: dict[str, Any], registry: Registry, prefix: str
) -> list[SpecIssue]:
    """A variant that names a method preset while the base spec sets one of the preset's parts would
    silently run the base's part: report it (a part the variant sets itself is an intended swap)."""
    if "method" not in override:
        return []
    found = _preset_parts(override["method"], registry, [])
    if found is None:
        return []
    name, parts = found
    own = merge_variant({}, {k: v for k, v in override.items() if k != "method"})
    out = []
    for path in parts:
        keys = tuple(path.split("."))
        if _raw_get(base, keys) is not None and _raw_get(own, keys) is None:
            out.append(
                SpecIssue(
                    f"{prefix}.method",
                    f"the base spec sets {path}, which would replace this variant's preset '{name}' part; "
                    f"remove {path} from the base spec (name a method preset there instead) or set it in "
                    f"this variant",
                )
            )
    return out


def expand_variants(raw: dict[str, Any]) -> list[tuple[str | None, dict[str, Any] | None, str]]:
    """(variant name, raw dict, path prefix for errors) for every variant, or the base spec alone; the raw
    dict is None for a variant that is not a mapping."""
    base = {k: v for k, v in raw.items() if k != "variants"}
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not variants:
        return [(None, base, "")]
    out: list[tuple[str | None, dict[str, Any] | None, str]] = []
    for name, override in variants.items():
        if override is None:
            override = {}
        if not isinstance(override, dict):
            out.append((str(name), None, f"variants.{name}"))
            continue
        out.append((str(name), merge_variant(base, override), f"variants.{name}"))
    return out


def resolve(
    raw: dict[str, Any], registry: Registry, only: list[str] | None = None, source: str | None = None
) -> list[ResolvedSpec]:
    """Validate a raw spec and all its variants; raise one SpecError with every problem."""
    issues: list[SpecIssue] = []
    resolved: list[ResolvedSpec] = []
    expanded = expand_variants(raw)
    names = [n for n, _, _ in expanded if n is not None]
    if only:
        unknown = [v for v in only if v not in names]
        for v in unknown:
            issues.append(
                SpecIssue(
                    "--variant",
                    f"unknown variant '{v}'; the spec declares: {', '.join(names) or '(no variants)'}",
                )
            )
        expanded = [e for e in expanded if e[0] in only]
    base_keys: set[str] | None = None
    for name, data, prefix in expanded:
        if data is None:
            issues.append(SpecIssue(prefix, "a variant must be a mapping of overrides"))
            continue
        if name is not None:
            override = (raw.get("variants") or {}).get(name) or {}
            base = {k: v for k, v in raw.items() if k != "variants"}
            issues.extend(_preset_shadowed(base, override, registry, prefix))
        res, found = validate_one(data, registry, variant=name)
        if name is not None and found and base_keys is None:
            _, base_issues = validate_one({k: v for k, v in raw.items() if k != "variants"}, registry)
            base_keys = {str(i) for i in base_issues}
        for i in found:
            # a problem the variant shares with the base spec is reported once, at its own path
            if name is None or str(i) in (base_keys or set()):
                issues.append(i)
            else:
                issues.append(SpecIssue(f"{prefix}.{i.path}" if i.path else prefix, i.message))
        if res is not None:
            resolved.append(res)
    # a seed sweep runs seed-major (every variant with the first seed, then the next seed), so a sweep cut
    # short still holds complete comparisons
    swept = [
        (i, j, res.with_seed(sd))
        for j, res in enumerate(resolved)
        for i, sd in enumerate(res.spec.seeds or [])
    ]
    if swept:
        resolved = [r for *_, r in sorted(swept, key=lambda t: t[:2])] + [
            r for r in resolved if not r.spec.seeds
        ]
    if issues:
        # de-duplicate while keeping order
        seen, unique = set(), []
        for i in issues:
            if str(i) not in seen:
                seen.add(str(i))
                unique.append(i)
        raise SpecError(unique, source=source)
    return resolved


def load_raw(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """The spec file as data, with ``--set`` overrides applied (not yet validated)."""
    raw = load_yaml(path)
    if overrides:
        raw = apply_overrides(raw, parse_overrides(overrides))
    return raw


def load_spec(
    path: str | os.PathLike,
    registry: Registry,
    overrides: list[str] | None = None,
    variants: list[str] | None = None,
) -> list[ResolvedSpec]:
    return resolve(load_raw(path, overrides), registry, only=variants, source=str(path))
