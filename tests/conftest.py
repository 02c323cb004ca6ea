"""Test-session settings.

Tests work on tiny tensors, where a second torch thread buys nothing, and on a
machine shared with other processes OpenMP threads spin-wait at every op's
barrier for a descheduled sibling: one TV-L1 run on 32x32 frames went from 2 s to
several minutes. One thread keeps the suite fast and its timings stable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
