"""The base of every component (:class:`Component`, its :class:`Params`), the facts about a federation given
to ``start_run`` (:class:`RunInfo`, :class:`ClientInfo`) and the state-dict helpers."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

StateDict = dict[str, torch.Tensor]


class Params(BaseModel):
    """Base of every component's parameter model: unknown keys are rejected, and so are .inf and .nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: :class:`Params` under a name that the ``Component.Params`` class attribute does not hide: inside a
#: component's class body, ``Params`` in an annotation means that attribute, which is not a type.
_BaseParams = Params


class Component:
    """Base of every component. Subclasses set ``name`` and may override ``Params``."""

    #: The kind of component, its registration hook and where a spec names it: declared once, on the kind's
    #: base class (one per module of this package); the registry, the spec paths and ``KIND_BASES`` derive
    #: from these.
    kind: ClassVar[str] = ""
    hook: ClassVar[str] = ""
    spec_path: ClassVar[tuple[str, ...]] = ()  # () for metrics, which a spec lists under ``metrics``
    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    #: Highest fedreg plugin-contract version this component was written against (see HOOK_API_VERSION).
    api_version: ClassVar[int] = 1
    #: Methods of the kind's contract; ``fedreg plugins`` lists those a component overrides.
    contract: ClassVar[tuple[str, ...]] = ()
    #: True: used where a spec names no component of this kind (for metrics: one of the default list).
    #: Read from the class itself (``vars``): a subclass of a default component is not a default.
    default: ClassVar[bool] = False
    #: Set by the registry on instances: "plugin 'p', distribution version" (for error messages).
    origin: str = ""
    #: The component's parameters: an instance of its own ``Params`` class. Typed ``Any`` here, since each
    #: class has its own; a component may annotate ``params: MyParams`` for a type checker.
    params: Any

    def __init__(self, params: _BaseParams | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split()) if doc else ""

    @classmethod
    def implemented_hooks(cls) -> list[str]:
        """The contract methods this class (or a plugin base class of it) defines itself."""
        base = next(k for k in cls.__mro__ if Component in k.__bases__)  # the kind's base class
        found = []
        for method in cls.contract:
            for klass in cls.__mro__:
                if klass is base or klass is Component:
                    break
                if method in vars(klass):
                    found.append(method)
                    break
        return found

    @classmethod
    def is_default(cls) -> bool:
        """Whether this class itself is marked ``default = True`` (not inherited)."""
        return bool(vars(cls).get("default", False))

    @classmethod
    def check_spec(cls, params: _BaseParams, spec: Any) -> list[str]:
        """Cross-field checks against the whole run spec (a :class:`fedreg.spec.RunSpec`), run when the spec
        is validated, before any data is loaded: return one message per problem (name the fix), or ``[]``.
        Example: an aggregator that needs a minimum number of clients per round."""
        return []

    def start_run(self, run: RunInfo) -> None:
        """Called once before the first round with facts about the federation (number of clients, their
        sizes and label counts, clients per round, rounds). Default: nothing."""

    # Checkpointable state (server side and metric state). Default: stateless.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.kind} '{self.name}' is stateless but was given state {sorted(state)}")


@dataclass(frozen=True)
class ClientInfo:
    client_id: int
    num_train: int
    num_test: int
    label_counts: tuple[int, ...]


@dataclass(frozen=True)
class RunInfo:
    """Facts about the federation, given to every component's ``start_run``."""

    clients: tuple[ClientInfo, ...]
    num_classes: int
    clients_per_round: int
    rounds: int
    seed: int

    @property
    def num_clients(self) -> int:
        return len(self.clients)


def clone_state(state: StateDict) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}


def deepcopy_state(obj: Any) -> Any:
    return copy.deepcopy(obj)
