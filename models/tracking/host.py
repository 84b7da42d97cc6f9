"""CPU kernels of the tracker: numpy views of CPU tensors for the exact elementwise and gather
work, and the binarisation of mask logits on the host. The torch code path (any device) is taken
wherever `_numpy_view` returns None: for non-CPU tensors, bfloat16, or with `_HOST_FAST_PATHS` off
(the tests run the torch path on CPU against the loop oracle that way)."""
from __future__ import annotations


import numpy as np
import torch
from torch import Tensor


# Below this logit the float32 ``sigmoid(x) > 0.5`` test can disagree with ``x > 0`` (sigmoid rounds
# to exactly 0.5 for 0 < x < ~6e-8); above it both agree. Only such pixels pay for a sigmoid. Lower
# precisions round sigmoid(x) = 0.5 + x/4 to 0.5 up to x ~ eps: see _ambiguous_logit.
_SIGMOID_AMBIGUOUS_LOGIT = 1e-4


def _ambiguous_logit(dtype: torch.dtype) -> float:
    return max(_SIGMOID_AMBIGUOUS_LOGIT, 8 * torch.finfo(dtype).eps)


# Tests switch this off to run the accelerator code paths (torch calls throughout) on CPU.
_HOST_FAST_PATHS = True


def _numpy_view(tensor: Tensor) -> np.ndarray | None:
    """Zero-copy numpy view of a CPU tensor (dtype numpy knows), else None.

    The tracker's full-mask passes (gather, thresholds, pixel counts) are simple elementwise work on
    a few MB per frame. On CPU, numpy does them single-threaded in 0.04-0.13 ms each where torch
    takes 0.3 ms on one thread and 4-12 ms on two threads of a loaded machine (each op opens an
    OpenMP parallel region whose barrier waits for a descheduled thread; measured). The results
    are the same booleans and integer counts; accelerators keep the torch path.
    """
    if not _HOST_FAST_PATHS or tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return None
    return tensor.detach().numpy()


def _exact_math_view(tensor: Tensor) -> np.ndarray | None:
    """Numpy view of a CPU float32/float64 tensor, else None.

    Elementwise float arithmetic (+, -, *, /, comparisons, where) is correctly rounded IEEE in both
    numpy and torch, so running it on these views gives torch's values bit for bit without paying
    a torch dispatch per op. Reductions, exp/softmax and matrix products round differently in
    numpy (measured: most elements differ by an ulp), so those stay torch calls. Half precisions
    stay on the torch path (their elementwise arithmetic need not round alike)."""
    if tensor.dtype not in (torch.float32, torch.float64):
        return None
    return _numpy_view(tensor)


def _gather_rows(tensor: Tensor, index: np.ndarray) -> Tensor:
    """tensor[index] along dim 0 (a copy), index a host int64 array."""
    array = _numpy_view(tensor)
    if array is not None:
        return torch.from_numpy(np.take(array, index, axis=0))
    return tensor.index_select(0, torch.from_numpy(index).to(tensor.device))


def _host(tensor: Tensor) -> np.ndarray:
    """A numpy view (CPU) or copy (accelerator) of a small tensor."""
    return tensor.detach().cpu().numpy()


def _host_threshold(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``: comparing a host copy (float32/float64) with it gives what
    torch's ``tensor > value`` gives on the tensor itself (the scalar is cast to the tensor dtype)."""
    return float(torch.tensor(value, dtype=dtype))


def _float32_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """The released ``(inter + 1e-6) / (union + 1e-6)`` in float32 (what torch computes for integer
    counts plus a Python float), from exact integer counts."""
    eps = np.float32(1e-6)
    return (intersection.astype(np.float32) + eps) / (union.astype(np.float32) + eps)
