"""Client selection that reproduces code drawing from NumPy's legacy global generator."""

from __future__ import annotations

import numpy as np

from fedreg.components import Selector


def numpy_round_seeded_choice(round_index: int, num_clients: int, k: int) -> list[int]:
    """The clients that ``np.random.seed(round_index)`` followed by
    ``np.random.choice(num_clients, k, replace=False)`` draws, in the order drawn; NumPy's global generator
    is left untouched."""
    return [int(c) for c in np.random.RandomState(round_index).choice(num_clients, k, replace=False)]


class NumpySeededByRound(Selector):
    """k clients drawn as the FedKPer authors' server draws them: NumPy's legacy generator seeded with the
    0-based round index, so every seed and every method sees the same sequence of clients. The run's own
    sampling stream is not used."""

    name = "numpy_seeded_by_round"

    def select(self, round, clients, k, rng):
        return [clients[i].client_id for i in numpy_round_seeded_choice(round - 1, len(clients), k)]
