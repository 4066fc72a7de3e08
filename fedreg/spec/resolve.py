"""Validation of a whole spec: every variant (and every seed of a sweep) checked structurally, its component
references resolved, then the cross-field checks, core and per component; all problems raised together as one
:class:`~fedreg.errors.SpecError`. The result is one :class:`ResolvedSpec` per run."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from fedreg.backends import installed_backends
from fedreg.components import Component, Objective
from fedreg.components.metrics import GLOBAL_ON_LOCAL, LOCAL
from fedreg.errors import SpecError, SpecIssue
from fedreg.figures import clashes
from fedreg.limits import collapse_points, name_issues, run_count_issue, shortlist
from fedreg.registry import Registry
from fedreg.spec.defaults import fill_defaults
from fedreg.spec.loading import apply_grid_point, expand_variants, grid_label, grid_points, load_raw
from fedreg.spec.presets import _preset_shadowed, expand_method
from fedreg.spec.references import ResolvedComponent, _pydantic_issues, _raw_get, _resolve_ref
from fedreg.spec.schema import COMPONENT_PATHS, CheckpointSpec, GridSpec, RunSpec


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
        grid: dict[str, Any] | None = None,
    ):
        self.spec = spec
        self.components = components  # key: dataset/partition/model/objective/selection/aggregation
        self.metrics = metrics
        self.variant = variant
        self.raw = raw  # the variant's raw dict (without 'variants')
        self.swept = swept  # one run of a 'seeds' sweep: its seed is part of its name
        self.grid = grid or {}  # the grid point this run is ({dotted path: value}; {} outside a grid)

    @property
    def key(self) -> str | None:
        """The run's name within its invocation: the variant, then the grid point (``tau=2``) and
        ``seed<N>`` in a sweep, joined by dots: ``fedkper.tau=2.seed1``."""
        if not self.swept and not self.grid:
            return self.variant
        parts = [self.variant or self.spec.name]
        if self.grid:
            parts.append(grid_label(self.grid))
        if self.swept:
            parts.append(f"seed{self.spec.seed}")
        return ".".join(parts)

    def __reduce__(self):
        # component classes may be made at run time (one per MedMNIST flavour) and do not pickle by
        # reference: a worker process or Ray task resolves the run's raw spec again with its own registry
        return (_unpickle, (self.raw, self.variant, self.swept, self.grid))

    def with_seed(self, seed: int) -> ResolvedSpec:
        spec = self.spec.model_copy(update={"seed": seed, "seeds": None})
        return ResolvedSpec(
            spec,
            self.components,
            self.metrics,
            self.variant,
            {**self.raw, "seed": seed},
            swept=True,
            grid=self.grid,
        )

    def resolved_dict(self) -> dict[str, Any]:
        """The spec with every default filled in and every component's params validated."""
        d = self.spec.model_dump(mode="json", exclude={"variants", "seeds", "grid"})
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


def _unpickle(raw: dict[str, Any], variant: str | None, swept: bool, grid: dict[str, Any]) -> ResolvedSpec:
    from fedreg.registry import get_registry

    res, issues = validate_one(raw, get_registry(), variant=variant)
    if res is None:
        raise SpecError(issues)
    if swept:
        res.spec = res.spec.model_copy(update={"seeds": None})
    res.swept, res.grid = swept, grid
    return res


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


def _local_test_issues(spec: RunSpec, metrics: list[ResolvedComponent]) -> list[SpecIssue]:
    """Metrics evaluated on the clients' local test sets need those sets: a zero fraction leaves them
    empty (the metric would log NaN every round)."""
    if spec.data.local_test.fraction > 0:
        return []
    needy = [m.name for m in metrics if set(getattr(m.info.cls, "requires", ())) & {LOCAL, GLOBAL_ON_LOCAL}]
    if not needy:
        return []
    return [
        SpecIssue(
            "data.local_test.fraction",
            f"0 leaves every client without a local test set, but metric(s) {', '.join(needy)} evaluate on "
            "the clients' local test sets (they would log NaN); raise data.local_test.fraction (e.g. 0.2) "
            "or remove those metrics",
        )
    ]


def validate_one(
    raw: dict[str, Any], registry: Registry, variant: str | None = None, prefix: str = ""
) -> tuple[ResolvedSpec | None, list[SpecIssue]]:
    """Validate one (variant of a) spec; returns the resolved spec or the issues found."""
    issues: list[SpecIssue] = []
    spec = None
    raw = expand_method(raw, registry, issues)
    before = len(issues)
    raw = fill_defaults(raw, registry, issues)
    undefaulted = {i.path for i in issues[before:]}
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        # a path fill_defaults could not fill is already reported with its reason
        issues.extend(i for i in _pydantic_issues(exc) if i.path not in undefaulted)

    components: dict[str, ResolvedComponent] = {}
    for path, kind in COMPONENT_PATHS.items():
        value = _raw_get(raw, path)
        if value is None:  # required and missing, or a default that could not be filled: reported
            continue
        res = _resolve_ref(registry, kind, value, ".".join(path), issues)
        if res is not None:
            components[kind] = res
    metrics: list[ResolvedComponent] = []
    positions: list[int] = []  # each resolved metric's place in the spec's list
    raw_metrics = raw.get("metrics", []) if isinstance(raw, dict) else []
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
                positions.append(i)
        for j, msg in clashes([(m.name, m.info.cls) for m in metrics]):  # two metrics, one scalar
            issues.append(SpecIssue(f"metrics.{positions[j]}", msg))

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
        issues.extend(_local_test_issues(spec, metrics))
        # each component's own cross-field checks
        located = [(".".join(path), components.get(kind)) for path, kind in COMPONENT_PATHS.items()]
        located += [(f"metrics.{i}", m) for i, m in enumerate(metrics)]
        for where, comp in located:
            if comp is not None:
                for msg in comp.info.cls.check_spec(comp.params, spec):
                    issues.append(SpecIssue(where, msg))
        if (backends := installed_backends()) and spec.execution.backend not in backends:
            issues.append(
                SpecIssue(
                    "execution.backend",
                    f"'{spec.execution.backend}' is not an installed backend; installed: "
                    f"{', '.join(sorted(backends))} (a plugin's backend comes with its distribution)",
                )
            )
        if spec.execution.backend == "vectorized" and "objective" in components:
            issues.extend(_vectorizable_issues(components["objective"], registry))
    if prefix:
        issues = [SpecIssue(f"{prefix}.{i.path}" if i.path else prefix, i.message) for i in issues]
    if issues or spec is None:
        return None, issues
    return ResolvedSpec(spec, components, metrics, variant, raw), issues


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
                    f"unknown variant '{v}'; the spec declares: {shortlist(names) or '(no variants)'}",
                )
            )
        expanded = [e for e in expanded if e[0] in only]
    grid, gridded = _grid(raw, names, issues)
    sizes = [len(v) for v in grid.params.values()] if grid is not None else []
    if (too_many := run_count_issue(raw, expanded, sizes, gridded)) is not None:
        issues.append(too_many)
        grid = None  # its points are neither validated nor run
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
        if res is None:
            continue
        if grid is None or (gridded is not None and name not in gridded):
            resolved.append(res)
            continue
        # every grid point validated; a problem the point shares with its variant is reported once, above
        known = {str(i) for i in found} | (base_keys or set())
        for point in grid_points(grid.params):
            where = f"{prefix}[{grid_label(point)}]" if prefix else f"grid[{grid_label(point)}]"
            try:
                point_data = apply_grid_point(data, point)
            except (ValueError, IndexError, TypeError, AttributeError) as exc:
                issues.append(SpecIssue(where, f"cannot set the grid's paths here: {exc}"))
                continue
            res_point, found_point = validate_one(point_data, registry, variant=name)
            issues.extend(
                SpecIssue(f"{where}.{i.path}" if i.path else where, i.message)
                for i in found_point
                if str(i) not in known
            )
            if res_point is not None:
                res_point.grid = point
                resolved.append(res_point)
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
    ck = raw.get("checkpoint")
    folder = ck["dir"] if isinstance(ck, dict) and isinstance(ck.get("dir"), str) else CheckpointSpec().dir
    issues.extend(name_issues(resolved, [n for n in names if isinstance(n, str)], folder))
    if issues:
        # de-duplicate while keeping order
        seen, unique = set(), []
        for i in issues:
            if str(i) not in seen:
                seen.add(str(i))
                unique.append(i)
        raise SpecError(collapse_points(unique), source=source)
    return resolved


def _grid(
    raw: dict[str, Any], variant_names: list[str], issues: list[SpecIssue]
) -> tuple[GridSpec | None, set[str | None] | None]:
    """The spec's grid (None: none, or invalid and reported) and the variants it crosses (None: all)."""
    if raw.get("grid") is None:
        return None, None
    try:
        grid = GridSpec.model_validate(raw["grid"])
    except ValidationError as exc:
        issues.extend(
            SpecIssue(f"grid.{i.path}" if i.path else "grid", i.message) for i in _pydantic_issues(exc)
        )
        return None, None
    if grid.variants is None:
        return grid, None
    for i, v in enumerate(grid.variants):
        if v not in variant_names:
            issues.append(
                SpecIssue(
                    f"grid.variants.{i}",
                    f"unknown variant '{v}'; the spec declares: "
                    f"{shortlist(variant_names) or '(no variants)'}",
                )
            )
    return grid, set(grid.variants)


def load_spec(
    path: str | os.PathLike,
    registry: Registry,
    overrides: list[str] | None = None,
    variants: list[str] | None = None,
) -> list[ResolvedSpec]:
    return resolve(load_raw(path, overrides), registry, only=variants, source=str(path))
