"""Seed streams. Every random stream of a run is derived from (seed, purpose, ...) and nothing else, so
the partition, the client-sampling stream and each client's shuffling are the same for every variant of a
comparison and after a resume. The global RNGs of numpy, random and torch are never reseeded in the loop."""

from __future__ import annotations

import numpy as np
import torch

PARTITION = 1
SAMPLING = 2
LOCAL_TEST = 3
CLIENT_SHUFFLE = 4
MODEL_INIT = 5
#: the end-of-run evaluation of every client's model (``final_local``), by client: (FINAL_EVAL, cid)
FINAL_EVAL = 6


def rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def torch_generator(seed: int, *stream: int) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(value)
