"""The selection kind: :class:`Selector`, which picks the clients of a round."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedreg.components.base import ClientInfo, Component


class Selector(Component):
    """Picks the clients of a round. A selector that keeps state across rounds (a cycle, a history of
    participation) exposes it through ``state_dict``/``load_state_dict``: it is checkpointed with the run."""

    kind = "selection"
    hook = "fedreg_register_selectors"
    spec_path = ("federation", "selection")
    contract = ("check_spec", "start_run", "select", "state_dict", "load_state_dict")

    def select(
        self, round: int, clients: Sequence[ClientInfo], k: int, rng: np.random.Generator
    ) -> list[int]:
        """Return ``k`` distinct client ids. ``rng`` is the run's sampling stream for this round: it
        depends only on the seed and the round, never on the method being run."""
        raise NotImplementedError
