"""Associating detections with tracklets: frame-weighted greedy matching (the released
algorithm) and Hungarian matching."""
from __future__ import annotations


import numpy as np
from scipy.optimize import linear_sum_assignment

def greedy_match(match_scores: np.ndarray, exist_frames: np.ndarray, score_thr: float,
                 frame_weight: bool) -> np.ndarray:
    """Greedy association in score order, as the released tracker does it.

    match_scores: (n, M) float32 (rows = detections in descending score order, columns = memory
    tracklets); exist_frames: (M,) frames each tracklet has been seen. Returns (n,) the matched
    column per row or -1. When a row has more than one score above the threshold and
    ``frame_weight`` is set, those scores are multiplied by the tracklets' exist_frames and the
    other ones by the mean of those weights; the *weighted* maximum is compared with the
    threshold. A matched column is zeroed for every other row.
    """
    # Read-only in the fast pass; the row-by-row fallbacks zero columns in a copy.
    scores = np.asarray(match_scores, dtype=np.float32)
    weights = exist_frames.astype(np.float32)
    matched = np.full(scores.shape[0], -1, dtype=np.int64)
    threshold = np.float32(score_thr)
    if scores.shape[1] == 0:
        return matched
    # Scores only ever decrease (columns get zeroed), so a row whose initial maximum is not above
    # the threshold can never match: only the other rows need the sequential pass.
    rows = np.flatnonzero(scores.max(axis=1) > threshold)
    if rows.size == 0:
        return matched
    # The weighted scores of all candidate rows at once, as each row would compute them now. They
    # stay valid for a later row while no column of its above-threshold set is taken: a taken
    # column elsewhere in the row scores 0 (both weighted and not, given threshold >= 0), which is
    # patched in by zeroing that column. A row whose set lost a column is recomputed alone.
    # The mean weight is a sum of integer frame counts: exact in float32 (below 2^24) in any order.
    exact_sums = int(exist_frames.sum()) < 2 ** 24
    if threshold < 0 or not exact_sums:
        scores = scores.copy()
        for row in rows:
            _greedy_row(scores, weights, threshold, frame_weight, row, matched)
        return matched
    candidates = scores[rows]                                                   # (k, M)
    above = candidates > threshold
    if frame_weight:
        num_above = above.sum(axis=1)
        weighted_rows = num_above > 1
        # Sums of integer frame counts below 2^24: exact in float32 whatever the order (a matmul).
        mean_weight = (above.astype(np.float32) @ weights) / np.maximum(num_above, 1).astype(np.float32)
        row_weights = np.where(above, weights, mean_weight[:, None])
        weighted = np.where(weighted_rows[:, None], candidates * row_weights, candidates)
    else:
        weighted_rows = np.zeros(rows.size, dtype=bool)
        weighted = candidates
    if np.isnan(weighted).any():
        # NaN scores: keep numpy's argmax semantics (the first NaN wins) by the row-by-row pass.
        scores = scores.copy()
        for row in rows:
            _greedy_row(scores, weights, threshold, frame_weight, row, matched)
        return matched
    # The sequential pass runs in Python over the k candidate rows (a few dozen: per-row numpy calls
    # would cost more than the work). A row whose first choice (its argmax before any column was
    # taken) is still free and whose weights are not stale takes it: zeroing other columns cannot
    # change a maximum (threshold >= 0). Only the other rows look again. float32 values convert to
    # Python floats exactly, so the comparisons are numpy's. Sets of columns are int bitmasks.
    first_choice = np.argmax(weighted, axis=1).tolist()
    first_best = weighted.max(axis=1).tolist()
    threshold_value = float(threshold)
    # Per weighted row, the columns above the threshold: the row goes stale once one is taken.
    stale_if_taken = [0] * rows.size
    if frame_weight and weighted_rows.any():
        packed = np.packbits(weighted_rows[:, None] & above, axis=1, bitorder="little")
        if packed.shape[1] <= 8:
            words = np.zeros((packed.shape[0], 8), dtype=np.uint8)
            words[:, :packed.shape[1]] = packed
            stale_if_taken = words.view("<u8")[:, 0].tolist()
        else:
            stale_if_taken = [int.from_bytes(row_bytes, "little") for row_bytes in map(bytes, packed)]
    taken = 0
    taken_columns: list[int] = []
    for position, row in enumerate(rows.tolist()):
        column = first_choice[position]
        if stale_if_taken[position] & taken:
            # Recompute this row alone on the current scores (taken columns score 0).
            row_scores = scores[row].copy()
            row_scores[taken_columns] = 0
            column = _greedy_row_column(row_scores, weights, threshold, frame_weight)
            if column < 0:
                continue
        elif not taken >> column & 1:
            if not first_best[position] > threshold_value:
                continue
        else:
            values = weighted[position].tolist()
            for taken_column in taken_columns:
                values[taken_column] = 0.0
            best = max(values)
            if not best > threshold_value:
                continue
            column = values.index(best)        # the first maximum, as np.argmax
        matched[row] = column
        taken |= 1 << column
        taken_columns.append(column)
    return matched


def _greedy_row_column(row_scores: np.ndarray, weights: np.ndarray, threshold: np.float32,
                       frame_weight: bool) -> int:
    """The column one step of the released greedy matching picks for a row, or -1."""
    above = row_scores > threshold
    if frame_weight and np.count_nonzero(above) > 1:
        valid_weights = weights[above]
        weighted = row_scores.copy()
        weighted[above] = row_scores[above] * valid_weights
        mean_weight = np.float32(valid_weights.sum(dtype=np.float32) / np.float32(valid_weights.size))
        weighted[~above] = row_scores[~above] * mean_weight
        column = int(np.argmax(weighted))
        best = weighted[column]
    else:
        column = int(np.argmax(row_scores))
        best = row_scores[column]
    return column if best > threshold else -1


def _greedy_row(scores: np.ndarray, weights: np.ndarray, threshold: np.float32, frame_weight: bool, row: int,
                matched: np.ndarray) -> None:
    """One step of the released greedy matching on the current scores (in place)."""
    column = _greedy_row_column(scores[row], weights, threshold, frame_weight)
    if column >= 0:
        matched[row] = column
        saved = scores[row, column]
        scores[:, column] = 0
        scores[row, column] = saved


def hungarian_match(match_scores: np.ndarray, score_thr: float) -> np.ndarray:
    """Optimal assignment maximising the total score; pairs scoring below the threshold are
    dropped (``score < thr``, so a score equal to the threshold is kept, as released)."""
    matched = np.full(match_scores.shape[0], -1, dtype=np.int64)
    rows, cols = linear_sum_assignment(-match_scores)
    accepted = ~(match_scores[rows, cols] < np.float32(score_thr))
    matched[rows[accepted]] = cols[accepted]
    return matched
