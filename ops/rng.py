"""Seeds and random-number-generator states: every random choice of a run is reproducible.

Each (seed, epoch, rank) gets its own seed (:func:`epoch_seed`), so a resumed run that re-seeds at
the start of an epoch continues exactly as an uninterrupted one. The global RNG states travel in
checkpoints as plain data (:func:`rng_state` / :func:`set_rng_state`), loadable with
``weights_only=True``.
"""
from __future__ import annotations

import random
from typing import Dict

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one process in one epoch."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + 17) % (2 ** 62)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> Dict:
    """The global RNG states as plain data (numpy's array becomes a tensor)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
