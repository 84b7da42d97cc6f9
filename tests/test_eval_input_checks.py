"""What `ctvis eval` does with broken or odd input: every RLE is validated before pycocotools sees
it (a fuzz test against a plain decoder written from pycocotools' rleFrString), and masks of the wrong
size or duplicate entries are reported (errors under --strict) instead of silently changing AP."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.evaluation.rle import decode_compressed_rles
from tests.conftest import PROJECT_ROOT


def decode_counts(text: bytes) -> list[int] | None:
    """Run lengths of a compressed RLE as pycocotools' rleFrString reads it, or None where it would
    misread (a character outside '0'..'o', a number cut off at the end, more than 6 characters)."""
    counts, position = [], 0
    while position < len(text):
        value, k, more = 0, 0, True
        while more:
            if position >= len(text):
                return None  # cut off: pycocotools would read past the string
            c = text[position] - 48
            if not 0 <= c <= 63 or k >= 6:
                return None
            value |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            position += 1
            k += 1
            if not more and c & 0x10:
                value -= 1 << (5 * k)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def oracle_valid(text: bytes, height: int, width: int) -> bool:
    counts = decode_counts(text)
    return counts is not None and len(counts) > 0 and min(counts) >= 0 and sum(counts) == height * width


def _valid_rle(rng: np.random.Generator, height: int, width: int) -> bytes:
    kind = rng.integers(3)
    if kind == 0:
        mask = rng.random((height, width)) < rng.random()
    else:
        mask = np.zeros((height, width), dtype=bool)
        y, x = rng.integers(0, height), rng.integers(0, width)
        mask[y:y + rng.integers(1, height + 1), x:x + rng.integers(1, width + 1)] = True
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


def _mutations(rng: np.random.Generator, text: bytes) -> list[bytes]:
    chars = bytes(range(48, 112))
    out = [text[:-1], text[:-2], text + b"1", text + b"P", b"zzzz", b"", text.replace(b"0", b"z", 1),
           bytes([text[0] ^ 0x10]) + text[1:], b"o" * 7 + b"0", text + bytes([rng.integers(0, 256)])]
    for _ in range(6):
        position = int(rng.integers(0, len(text)))
        out.append(text[:position] + bytes([chars[rng.integers(len(chars))]]) + text[position + 1:])
    out.append(bytes(chars[i] for i in rng.integers(0, len(chars), int(rng.integers(1, 12)))))
    return out


def test_fuzz_rle_checker_agrees_with_a_plain_decoder_and_pycocotools():
    rng = np.random.default_rng(1234)
    texts, heights, widths = [], [], []
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        valid = _valid_rle(rng, height, width)
        for text in [valid, *_mutations(rng, valid)]:
            texts.append(text)
            sizes = (height, width) if rng.random() < 0.9 else (height + 1, width)
            heights.append(sizes[0])
            widths.append(sizes[1])
    verdicts = [oracle_valid(t, h, w) for t, h, w in zip(texts, heights, widths)]
    assert 300 <= sum(verdicts) < len(texts) - 1000  # both kinds, many of each
    for text, height, width, valid in zip(texts, heights, widths, verdicts):
        problem, areas = decode_compressed_rles([text], [height], [width])
        assert (problem is None) == valid, (text, height, width)
        if valid:  # pycocotools agrees on what it holds, and our areas are its areas
            rle = {"size": [height, width], "counts": text}
            counts = decode_counts(text)
            assert int(mask_utils.area(rle)) == sum(counts[1::2]) == areas[0]
            assert int(mask_utils.decode(rle).sum()) == sum(counts[1::2])
    # all at once: the first invalid one is found, whatever surrounds it (bad characters and cut-off
    # numbers garble what follows them, never what comes before)
    for trial in range(30):
        order = rng.permutation(len(texts)) if trial else np.arange(len(texts))
        problem, _ = decode_compressed_rles([texts[i] for i in order], [heights[i] for i in order],
                                            [widths[i] for i in order])
        assert problem is not None and problem[0] == [verdicts[i] for i in order].index(False)
    good = [i for i, v in enumerate(verdicts) if v]
    problem, areas = decode_compressed_rles([texts[i] for i in good], [heights[i] for i in good],
                                            [widths[i] for i in good])
    assert problem is None
    for i, area in zip(good, areas.tolist()):  # one call each: pycocotools' area() overflows past 255 masks
        assert area == int(mask_utils.area({"size": [heights[i], widths[i]], "counts": texts[i]}))


def _case(tmp_path, result_segmentations, duplicate: bool = False):
    """One 64x64 video of 3 frames with one ground-truth track; results with the given frames."""
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 10:30] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    frame = {"size": [64, 64], "counts": rle["counts"].decode()}
    gt = {"videos": [{"id": 1, "height": 64, "width": 64, "length": 3, "file_names": ["a", "b", "c"]}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [frame] * 3,
                           "areas": [400.0] * 3, "bboxes": [[10, 10, 20, 20]] * 3}]}
    results = [{"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [frame, frame, frame]},
               {"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": result_segmentations}]
    if duplicate:
        results.append(dict(results[0]))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    return frame


def _eval(tmp_path, *extra, timeout=120):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", "--gt", str(tmp_path / "gt.json"),
                           "--results", str(tmp_path / "results.json"), *extra],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("counts,reason", [
    ("zzzz", "character 'z' cannot occur"),                   # kept pycocotools busy for over 10 minutes
    (mask_utils.encode(np.asfortranarray(np.ones((64, 65), np.uint8)))["counts"].decode(), "sum to 4160 pixels"),
    ("0P", "ends in the middle of a number"),
])
def test_eval_rejects_an_invalid_rle_naming_entry_and_frame_quickly(tmp_path, counts, reason):
    frame = _case(tmp_path, [None, None, None])
    results = json.loads((tmp_path / "results.json").read_text())
    results[1]["segmentations"] = [frame, {"size": [64, 64], "counts": counts}, frame]
    (tmp_path / "results.json").write_text(json.dumps(results))
    done = _eval(tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "entry 1 (video 1) frame 1: invalid RLE" in done.stderr and reason in done.stderr
    assert "Traceback" not in done.stderr


def test_eval_reports_masks_of_the_wrong_size_and_strict_rejects_them(tmp_path):
    small = mask_utils.encode(np.asfortranarray(np.ones((7, 7), np.uint8)))
    large = mask_utils.encode(np.asfortranarray(np.ones((128, 128), np.uint8)))
    frame = _case(tmp_path, [None, None, None])
    results = json.loads((tmp_path / "results.json").read_text())
    results[1]["segmentations"] = [{"size": [7, 7], "counts": small["counts"].decode()},
                                   {"size": [128, 128], "counts": large["counts"].decode()}, frame]
    (tmp_path / "results.json").write_text(json.dumps(results))
    done = _eval(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 masks in 1 entries are not the size of their video" in done.stderr
    assert "entry 1 (video 1) frame 0: [7, 7], video [64, 64]" in done.stderr
    strict = _eval(tmp_path, "--strict")
    assert strict.returncode == 2 and "not the size of their video" in strict.stderr


def test_eval_reports_duplicate_entries_and_strict_rejects_them(tmp_path):
    frame = _case(tmp_path, [None, None, None], duplicate=True)
    assert frame
    done = _eval(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 duplicate entries (same video, category and masks): entry 2 repeats entry 0" in done.stderr
    strict = _eval(tmp_path, "--strict")
    assert strict.returncode == 2 and "duplicate entries" in strict.stderr


def test_ground_truth_with_an_invalid_rle_names_the_annotation(tmp_path):
    _case(tmp_path, [None, None, None])
    gt = json.loads((tmp_path / "gt.json").read_text())
    gt["annotations"][0]["segmentations"][2] = {"size": [64, 64], "counts": "0" * 3}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    done = _eval(tmp_path)
    assert done.returncode == 2
    assert "annotation id 1 (video 1) frame 2: invalid RLE" in done.stderr


def test_random_result_files_never_hang_the_evaluator(tmp_path):
    """A few hundred random malformed frames in one file: a clear error, in seconds."""
    rng = random.Random(7)
    frame = _case(tmp_path, [None, None, None])
    results = json.loads((tmp_path / "results.json").read_text())
    alphabet = "".join(chr(c) for c in range(40, 123) if chr(c) not in '"\\')
    for i in range(300):
        counts = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        results.append({"video_id": 1, "category_id": 1, "score": rng.random(),
                        "segmentations": [frame, {"size": [64, 64], "counts": counts}, None]})
    (tmp_path / "results.json").write_text(json.dumps(results))
    done = _eval(tmp_path, timeout=60)
    assert done.returncode == 2 and "invalid RLE" in done.stderr
