"""numpy views of CPU tensors: the faster path for large elementwise passes on the CPU.

On the CPU, numpy's comparisons, boolean gathers, ``flatnonzero`` and ``packbits`` run several
times faster than the torch equivalents for the 10^8-element passes of pruning and encoding
(single-threaded, so no waiting on a busy second core, and large arrays on huge pages). Callers
use ``host_array`` and fall back to torch operations -- what runs on a GPU -- when it returns None.
"""

from __future__ import annotations

import numpy as np
import torch

NUMPY_DTYPES = (torch.bool, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32)
NUMPY_DTYPES += (torch.float64,)


def host_array(t: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor whose dtype numpy has (memory shared); None for any other tensor."""
    return t.detach().numpy() if t.device.type == "cpu" and t.dtype in NUMPY_DTYPES else None
