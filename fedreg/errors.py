"""User-facing errors. Each carries a message that names the problem and the fix; the CLI prints it and
exits with status 2 (no traceback unless ``--debug``)."""

from __future__ import annotations

from dataclasses import dataclass


class FedregError(Exception):
    """An error caused by input (spec, data, environment, plugins), reported without a traceback."""

    exit_code = 2


@dataclass(frozen=True)
class SpecIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<spec>'}: {self.message}"


class SpecError(FedregError):
    """Every problem found in a run spec, each with its path."""

    def __init__(self, issues: list[SpecIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}{where}:"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class PluginError(FedregError):
    """A plugin broke the contract: failed to import, registered something invalid, raised inside a
    component method, or returned something the core cannot use."""


class DataError(FedregError):
    """A dataset file is missing, corrupt, or cannot be partitioned as asked."""


class EnvironmentProblem(FedregError):
    """The machine, not the input, failed: a port in use, a disk full or read-only, a server that does not
    answer. Exit status 1 (the user's input gives 2)."""

    exit_code = 1


def call_component(component, method: str, round: int, client: int | None, *args, **kwargs):
    """Call ``component.method(*args, **kwargs)``; an exception it raises becomes a :class:`ComponentFailure`
    naming the component, the method, the round and the client. The one wrapper of every component call:
    a ``FedregError`` (a problem the component already explained to the user), a ``ComponentFailure`` from a
    nested call and ``KeyboardInterrupt`` pass through unchanged."""
    try:
        return getattr(component, method)(*args, **kwargs)
    except (KeyboardInterrupt, ComponentFailure, FedregError):
        raise
    except Exception as exc:  # noqa: BLE001 - named and re-raised
        raise ComponentFailure(component, method, round, client, exc) from exc


def describe(component) -> str:
    """``aggregation 'krum' (plugin 'baselines', fedreg 0.1.0)``: a component with where it came from."""
    origin = getattr(component, "origin", "")
    return f"{component.kind} '{component.name}'" + (f" ({origin})" if origin else "")


class ComponentFailure(Exception):
    """A component method raised during a run. Names the component, the method, the round and the client;
    the original exception is kept as ``original`` (and as ``__cause__``)."""

    def __init__(self, component, method: str, round: int, client: int | None, exc: BaseException):
        import traceback

        self.component, self.method, self.round, self.client, self.original = (
            component,
            method,
            round,
            client,
            exc,
        )
        who = describe(component)
        where = f"round {round}" + (f", client {client}" if client is not None else "")
        super().__init__(f"{who}: {method} raised {type(exc).__name__}: {exc} ({where})")
        self.detail = "".join(traceback.format_exception(exc))

    def __reduce__(self):
        # Exception's default pickling calls cls(*args), which does not fit this __init__; rebuild from the
        # message and the attributes instead, so that a failure crosses processes (Ray workers) intact.
        state = dict(self.__dict__)
        state["original"] = _picklable(self.original)
        return _rebuild_failure, (type(self), self.args, state)


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError with its type name and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _rebuild_failure(cls, args, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    obj.__cause__ = state.get("original")
    return obj
