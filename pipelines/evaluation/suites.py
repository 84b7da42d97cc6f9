"""One entry point for the three metric suites (each benchmark's official metric set), with the input
checks the official code does not make.

- ytvis: YouTube-VIS 2019 / 2021 (12 stats).
- ovis: OVIS, 18 stats with the occlusion buckets (needs per-frame `occlusion` labels).
- ytvis2022: results are checked against the full ground truth, then evaluated against the short-video
  and the long-video ground truth separately (the DVIS / videomt `yt2022_evaluate.py` procedure);
  mAP = (AP_short + AP_long) / 2. With the full ground truth given, also one evaluation over all videos.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .data import GroundTruth, InputError, Predictions
from .metrics import Evaluation, IntersectionMap, evaluate

BenchmarkName = Literal["ytvis", "ovis", "ytvis2022"]
_LISTED = 5  # entries named in a warning before "and N more"


def check_predictions(gt_video_ids: np.ndarray, gt_video_lengths: np.ndarray, category_ids: np.ndarray,
                      preds: Predictions, strict: bool = False, gt_video_heights: np.ndarray | None = None,
                      gt_video_widths: np.ndarray | None = None) -> list[str]:
    """Raises InputError for results naming unknown videos (the official code asserts); returns
    warnings (errors under `strict`) for
    - segmentation lists whose length is not the video's (official: zip() truncates the IoU, extra
      entries still count in the mean area);
    - masks whose size is not the video's (official: pycocotools merges masks of different sizes to
      nothing, so that frame adds neither intersection nor union);
    - duplicate entries (same video, category and masks: each is a detection of its own, as in the
      official code, so all but one can only be false positives);
    and warnings for unknown categories (dropped, as the official code does)."""
    warnings: list[str] = []
    if len(preds) == 0:
        return []  # evaluate() warns that every statistic with ground truth is 0
    order = np.argsort(gt_video_ids)
    sorted_ids = gt_video_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, preds.video_ids), max(len(sorted_ids) - 1, 0))
    known = (sorted_ids[position] == preds.video_ids) if len(sorted_ids) else np.zeros(len(preds), bool)
    if not known.all():
        bad = np.flatnonzero(~known)
        raise InputError(f"{preds.source}: entry {bad[0]} names video_id {preds.video_ids[bad[0]]}, which is not "
                         f"in the ground truth ({len(bad)} entries name unknown videos: "
                         f"{sorted(set(preds.video_ids[bad].tolist()))[:_LISTED]})")
    expected = gt_video_lengths[order][position]
    wrong = np.flatnonzero(preds.lengths != expected)
    if len(wrong):
        listed = ", ".join(f"entry {i} (video {preds.video_ids[i]}: {preds.lengths[i]} segmentations, "
                           f"{expected[i]} frames)" for i in wrong[:_LISTED])
        more = f" and {len(wrong) - _LISTED} more" if len(wrong) > _LISTED else ""
        message = (f"{preds.source}: {len(wrong)} segmentation lists do not match their video length: "
                   f"{listed}{more}")
        if strict:
            raise InputError(message)
        warnings.append(message + " (evaluated as the official code does: the IoU uses the frames both "
                                  "lists have, the mean area uses every entry)")
    if gt_video_heights is not None and gt_video_widths is not None:
        warnings += _check_mask_sizes(preds, gt_video_heights[order][position], gt_video_widths[order][position],
                                      strict)
    warnings += _check_duplicates(preds, strict)
    unknown = np.flatnonzero(~np.isin(preds.category_ids, category_ids))
    if len(unknown):
        warnings.append(f"{preds.source}: {len(unknown)} entries have a category_id not in the ground truth "
                        f"(first: entry {unknown[0]}, category {preds.category_ids[unknown[0]]}); they are "
                        f"ignored, as by the official code")
    return warnings


def _check_mask_sizes(preds: Predictions, heights: np.ndarray, widths: np.ndarray, strict: bool) -> list[str]:
    """Masks whose [height, width] is not their video's (heights/widths (R,): each entry's video)."""
    frames = preds.frame_ids
    owner = np.repeat(np.arange(len(preds)), preds.lengths)
    present = frames >= 0
    table = preds.table
    wrong = present.copy()
    wrong[present] = (table.heights[frames[present]] != heights[owner[present]]) | \
                     (table.widths[frames[present]] != widths[owner[present]])
    positions = np.flatnonzero(wrong)
    if not len(positions):
        return []
    entries = np.unique(owner[positions])
    offsets = preds.frame_offsets
    listed = []
    for i in entries[:_LISTED].tolist():
        at = positions[owner[positions] == i][0]
        listed.append(f"entry {i} (video {preds.video_ids[i]}) frame {at - offsets[i]}: "
                      f"[{table.heights[frames[at]]}, {table.widths[frames[at]]}], video [{heights[i]}, {widths[i]}]")
    more = f" and {len(entries) - _LISTED} more entries" if len(entries) > _LISTED else ""
    message = (f"{preds.source}: {len(positions)} masks in {len(entries)} entries are not the size of their video: "
               f"{'; '.join(listed)}{more}")
    if strict:
        raise InputError(message)
    return [message + " (evaluated as the official code does: such a frame adds neither intersection nor union)"]


def _check_duplicates(preds: Predictions, strict: bool) -> list[str]:
    """Entries repeating an earlier one's video, category and masks."""
    if len(preds) < 2:
        return []
    keys = np.stack([preds.video_ids, preds.category_ids, preds.entry_track], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse.reshape(-1)] != np.arange(len(preds)))
    if not len(repeats):
        return []
    listed = ", ".join(f"entry {i} repeats entry {first[inverse.reshape(-1)[i]]}" for i in repeats[:_LISTED].tolist())
    more = f" and {len(repeats) - _LISTED} more" if len(repeats) > _LISTED else ""
    message = (f"{preds.source}: {len(repeats)} duplicate entries (same video, category and masks): {listed}{more}")
    if strict:
        raise InputError(message)
    return [message + " (evaluated as the official code does: each is a detection of its own)"]


@dataclass
class EvaluationReport:
    benchmark: str
    main: Evaluation | None               # ytvis / ovis; ytvis2022: all videos (needs the full GT)
    short: Evaluation | None = None       # ytvis2022 only
    long: Evaluation | None = None        # ytvis2022 only
    warnings: list[str] = field(default_factory=list)

    def ytvis2022_scores(self) -> dict[str, float]:
        """mAP = (AP_short + AP_long) / 2, and AP50/AP75/AR1/AR10 of each split (-1 = no GT)."""
        if self.short is None or self.long is None:
            return {}
        scores = {"mAP": float((self.short.stats[0] + self.long.stats[0]) / 2)}
        for suffix, ev in (("S", self.short), ("L", self.long)):
            by_name = ev.stats_by_name
            scores[f"mAP_{suffix}"] = by_name["AP"]
            for name in ("AP50", "AP75", "AR1", "AR10"):
                scores[f"{name}_{suffix}"] = by_name[name]
        return scores


def run_evaluation(benchmark: BenchmarkName, preds: Predictions, gt: GroundTruth | None = None,
                   gt_short: GroundTruth | None = None, gt_long: GroundTruth | None = None,
                   strict: bool = False, parallel_map: IntersectionMap | None = None) -> EvaluationReport:
    """Checks the predictions and evaluates them on `benchmark`."""
    if benchmark == "ytvis2022":
        if gt_short is None or gt_long is None:
            raise InputError("ytvis2022 needs the short-video and the long-video ground truth")
        references = [g for g in (gt, gt_short, gt_long) if g is not None]
    elif benchmark in ("ytvis", "ovis"):
        if gt is None:
            raise InputError(f"{benchmark} needs a ground-truth file")
        references = [gt]
    else:
        raise InputError(f"unknown benchmark {benchmark!r}: expected ytvis, ovis or ytvis2022")
    # Results are checked against the full ground truth when given, else the union of the splits.
    video_ids = np.concatenate([references[0].video_ids] if gt is not None else
                               [g.video_ids for g in references])
    lengths = np.concatenate([references[0].video_lengths] if gt is not None else
                             [g.video_lengths for g in references])
    heights = np.concatenate([references[0].video_heights] if gt is not None else
                             [g.video_heights for g in references])
    widths = np.concatenate([references[0].video_widths] if gt is not None else
                            [g.video_widths for g in references])
    categories = np.unique(np.concatenate([g.category_ids for g in references]))
    warnings = [w for g in references for w in g.warnings]
    warnings += check_predictions(video_ids, lengths, categories, preds, strict, heights, widths)
    if benchmark == "ytvis2022":
        short = evaluate(gt_short, preds, "ytvis", parallel_map)
        long = evaluate(gt_long, preds, "ytvis", parallel_map)
        main = evaluate(gt, preds, "ytvis", parallel_map) if gt is not None else None
        return EvaluationReport(benchmark, main, short, long, warnings)
    return EvaluationReport(benchmark, evaluate(gt, preds, benchmark, parallel_map), warnings=warnings)
