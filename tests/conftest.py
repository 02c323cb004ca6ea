"""Test-session settings.

Tests work on tiny tensors, where a second torch thread buys nothing, and on a
machine shared with other processes OpenMP threads spin-wait at every op's
barrier for a descheduled sibling: one TV-L1 run on 32x32 frames went from 2 s to
several minutes. One thread keeps the suite fast and its timings stable.

``VPIPE_TEST_THREADS=N`` runs the suite with N torch threads instead, which changes
the summation order of every parallel reduction: the suite must pass both ways, so
that no assertion depends on one machine's rounding (see docs/testing.md).
"""

import os

THREADS = int(os.environ.get("VPIPE_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)


@pytest.fixture
def one_torch_thread():
    """One torch thread whatever ``VPIPE_TEST_THREADS`` says, for tests whose tolerances
    compare two computations that must sum in the same order (a head against its
    reference, a cut batch against a whole one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
