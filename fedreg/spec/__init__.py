"""Typed run specs.

A spec is YAML (read with ``yaml.safe_load`` only). Validation collects every problem before anything
runs: first the structure (pydantic, unknown keys rejected, types and ranges), then every component
reference (name registered? parameters valid for that component's own model?), then cross-field checks.
All problems are raised together as one :class:`fedreg.errors.SpecError`, each with its path.

``variants`` declares named overrides of the base spec (ablations): each variant is the base spec with
its overrides applied, and is validated as a whole spec.

The package, one module per step: :mod:`~fedreg.spec.schema` (the pydantic models, ``COMPONENT_PATHS``),
:mod:`~fedreg.spec.loading` (YAML, ``--set`` overrides, variants as raw data),
:mod:`~fedreg.spec.presets` (method presets expanded), :mod:`~fedreg.spec.references` (component references
resolved against the registry) and :mod:`~fedreg.spec.resolve` (validation of a whole spec, ``load_spec``).
Every name is importable from ``fedreg.spec``.
"""

from __future__ import annotations

from fedreg.spec.loading import (
    apply_overrides,
    expand_variants,
    load_raw,
    load_yaml,
    merge_variant,
    parse_overrides,
    set_path,
)
from fedreg.spec.presets import expand_method
from fedreg.spec.references import ResolvedComponent
from fedreg.spec.resolve import ResolvedSpec, load_spec, resolve, validate_one
from fedreg.spec.schema import (
    COMPONENT_PATHS,
    CheckpointSpec,
    ComponentRef,
    DataSpec,
    EvaluationSpec,
    ExecutionSpec,
    FaultsSpec,
    FederationSpec,
    LocalTestSpec,
    LRScheduleSpec,
    OptimizerSpec,
    RunSpec,
    Strict,
    TrackingSpec,
    TrainingSpec,
)

__all__ = [
    "COMPONENT_PATHS",
    "CheckpointSpec",
    "ComponentRef",
    "DataSpec",
    "EvaluationSpec",
    "ExecutionSpec",
    "FaultsSpec",
    "FederationSpec",
    "LRScheduleSpec",
    "LocalTestSpec",
    "OptimizerSpec",
    "ResolvedComponent",
    "ResolvedSpec",
    "RunSpec",
    "Strict",
    "TrackingSpec",
    "TrainingSpec",
    "apply_overrides",
    "expand_method",
    "expand_variants",
    "load_raw",
    "load_spec",
    "load_yaml",
    "merge_variant",
    "parse_overrides",
    "resolve",
    "set_path",
    "validate_one",
]
