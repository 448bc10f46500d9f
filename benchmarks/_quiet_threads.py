"""Imported before torch by the training benchmarks: idle OpenMP threads sleep instead of spinning,
as ``selfattention train`` and ``generate`` set it. On a machine whose cores are busy with other
work, spinning threads made the timings 5-10× slower and far noisier. An explicit
OMP_WAIT_POLICY in the environment wins."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
