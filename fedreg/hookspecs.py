"""Hook specifications of fedreg.

Every hook here is a *registration* hook in the style of ``register_*(register)``: fedreg calls it once
per plugin while building the component registry, before any spec is validated or any run starts. A
plugin answers by calling ``register(ComponentClass)`` for each component it provides. Nothing is chosen
by which implementation answers first: the run spec picks components by name, so load order never
decides which algorithm runs.

What a component does during a round is its contract: the methods of the base classes in
:mod:`fedreg.components` (``Objective.train``/``loss``/``before_step``/``finish``,
``Selector.select``, ``Aggregator.broadcast``/``client_report``/``aggregate``, ``Metric.update``, ...).
``docs/architecture.md`` shows where in the round each of them runs.

Hooks are grouped by stage of the round they serve.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("fedreg")


# ---------------------------------------------------------------------------------------------------------
# Set-up: what a federation is made of
# ---------------------------------------------------------------------------------------------------------


@hookspec
def fedreg_register_datasets(register):
    """Register dataset components (subclasses of :class:`fedreg.components.Dataset`).

    Called once per plugin while the registry is built, before specs are validated.

    :param register: ``register(cls)`` adds one component class; its ``name`` must be unique among
        datasets. Raises :class:`fedreg.errors.PluginError` if ``cls`` is not a ``Dataset``.
    :return: ignored; a plugin that provides no dataset simply does not implement this hook (returning
        None is the same as registering nothing).
    """


@hookspec
def fedreg_register_partitions(register):
    """Register partition components (subclasses of :class:`fedreg.components.Partition`), which split
    a dataset's training labels into client index sets (Dirichlet label skew, IID, shards, ...).

    Called once per plugin while the registry is built.

    :param register: ``register(cls)`` adds one ``Partition`` class.
    :return: ignored; None means the plugin registered nothing more.
    """


@hookspec
def fedreg_register_models(register):
    """Register model components (subclasses of :class:`fedreg.components.Model`), factories of
    ``torch.nn.Module`` given input channels, number of classes and image size.

    Called once per plugin while the registry is built.

    :param register: ``register(cls)`` adds one ``Model`` class.
    :return: ignored; None means the plugin registered nothing more.
    """


# ---------------------------------------------------------------------------------------------------------
# Round stage 1: client selection
# ---------------------------------------------------------------------------------------------------------


@hookspec
def fedreg_register_selectors(register):
    """Register client-selection components (subclasses of :class:`fedreg.components.Selector`).

    Called once per plugin while the registry is built. During a run, the selected component's
    ``select(round, clients, k, rng)`` runs at the start of every round with the run's seeded sampling
    stream, so every variant of a comparison draws from the same stream.

    :param register: ``register(cls)`` adds one ``Selector`` class.
    :return: ignored; None means the plugin registered nothing more.
    """


# ---------------------------------------------------------------------------------------------------------
# Round stage 2: local training on each selected client
# ---------------------------------------------------------------------------------------------------------


@hookspec
def fedreg_register_objectives(register):
    """Register local-objective components (subclasses of :class:`fedreg.components.Objective`).

    Called once per plugin while the registry is built. During a run, the selected objective's
    ``train(ctx)`` runs once per selected client per round; the default ``train`` calls ``setup``,
    then ``loss`` and ``before_step`` for every batch, then ``finish``. Client state (control variates,
    personal models, previous local models) lives in ``ctx.state`` and is kept by the runtime.

    :param register: ``register(cls)`` adds one ``Objective`` class.
    :return: ignored; None means the plugin registered nothing more.
    """


# ---------------------------------------------------------------------------------------------------------
# Round stages 3 and 4: client report and aggregation
# ---------------------------------------------------------------------------------------------------------


@hookspec
def fedreg_register_aggregators(register):
    """Register aggregation components (subclasses of :class:`fedreg.components.Aggregator`).

    Called once per plugin while the registry is built. During a run, the aggregator's ``broadcast``
    runs before local training (server-to-client extras such as SCAFFOLD's control variate),
    ``client_report`` runs on each client after its training (what the client tells the server, such
    as a reliability score), and ``aggregate`` runs once per round on the successful updates, with the
    round's client failures passed as data.

    :param register: ``register(cls)`` adds one ``Aggregator`` class.
    :return: ignored; None means the plugin registered nothing more.
    """


# ---------------------------------------------------------------------------------------------------------
# Round stage 5: evaluation and metrics
# ---------------------------------------------------------------------------------------------------------


@hookspec
def fedreg_register_metrics(register):
    """Register metric components (subclasses of :class:`fedreg.components.Metric`).

    Called once per plugin while the registry is built. During a run, every metric named in the spec
    gets ``update(evaluation)`` after each evaluated round; ``evaluation`` holds the predictions the
    metric declared in ``requires`` (global model on the global test set, each participant's model on
    its local test set, the global model on every client's local test set).

    :param register: ``register(cls)`` adds one ``Metric`` class.
    :return: ignored; None means the plugin registered nothing more.
    """


# ---------------------------------------------------------------------------------------------------------
# Before the run: method presets
# ---------------------------------------------------------------------------------------------------------


@hookspec
def fedreg_register_methods(register):
    """Register method presets (subclasses of :class:`fedreg.components.Method`).

    Called once per plugin while the registry is built. When a spec names a preset (``method: NAME``), the
    preset's ``parts()`` are written into the spec before it is validated, except at paths the spec sets
    itself; the components it names then run as if the spec had named them.

    :param register: ``register(cls)`` adds one ``Method`` class.
    :return: ignored; None means the plugin registered nothing more.
    """
