"""A CT-CL chooser for tests: replays negatives recorded from the released implementation (the
reference fixtures), so our loss can be compared number for number. Test-only; the product draws its
choices with `models.ctcl.RandomChooser`."""
from __future__ import annotations

import torch

from models.ctcl import CTCLChooser, RandomChooser


class RecordedNegativesChooser:
    """Replays recorded negatives, looked up by (b, t, n); other choices go to ``fallback``.

    Args:
        calls: (R, 4) rows ``(b, t, n, anchor_query)`` as recorded.
        negatives: (R, K) the sorted negatives used for each recorded call.
    """

    def __init__(self, calls: torch.Tensor, negatives: torch.Tensor, fallback: CTCLChooser | None = None) -> None:
        if calls.dim() != 2 or calls.shape[1] != 4 or negatives.dim() != 2 or negatives.shape[0] != calls.shape[0]:
            raise ValueError(
                f"RecordedNegativesChooser: calls must be (R,4) and negatives (R,K), got "
                f"{tuple(calls.shape)} and {tuple(negatives.shape)}"
            )
        self.calls = calls.long().cpu()
        self.recorded = negatives.long().cpu()
        self.fallback = fallback if fallback is not None else RandomChooser()

    def negatives(self, calls: torch.Tensor, num_negatives: int) -> torch.Tensor:
        if self.recorded.shape[1] != num_negatives:
            raise ValueError(f"recorded negatives have {self.recorded.shape[1]} columns, num_negatives is {num_negatives}")
        wanted = calls.long().cpu()
        # (M, R) equality of (b, t, n): one match per wanted call.
        same = (wanted[:, None, :3] == self.calls[None, :, :3]).all(-1)
        found = same.any(1)
        if not bool(found.all()):
            missing = wanted[~found][0].tolist()
            raise KeyError(f"no recorded negatives for (b, t, n) = {tuple(missing[:3])}")
        row = same.long().argmax(1)
        anchors_differ = self.calls[row, 3] != wanted[:, 3]
        if bool(anchors_differ.any()):
            bad = wanted[anchors_differ][0].tolist()
            raise ValueError(f"recorded call (b, t, n) = {tuple(bad[:3])} had a different anchor query than {bad[3]}")
        return self.recorded[row].to(calls.device)

    def fused_positive(self, items: torch.Tensor) -> torch.Tensor:
        return self.fallback.fused_positive(items)

    def noise_queries(self, calls: torch.Tensor, num_queries: int) -> torch.Tensor:
        return self.fallback.noise_queries(calls, num_queries)
