"""Named dataset splits and their category tables, as CTVIS registers them.

A split is a published annotation JSON plus a frames root under a datasets root (the layout of
detectron2's ``DETECTRON2_DATASETS``: ``ytvis_2019/train.json``, ``ytvis_2019/train/JPEGImages``,
...). COCO splits become pseudo-videos of a target video dataset: their annotations are filtered
to the COCO classes that have a counterpart in the target (21 for YouTube-VIS 2019, 23 for 2021,
17 for OVIS) and relabelled with the target's category ids.

Custom splits in YouTube-VIS (or COCO) format need no catalog entry: a `DatasetSpec` with
`annotations` and `frames_root` names them, and their categories come from the JSON.

Names, ids and maps are data from the public CTVIS release (ctvis/data/vis/ytvis.py, builtin.py).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Literal, Mapping, Optional

from pipelines import storage


@dataclasses.dataclass(frozen=True)
class Category:
    id: int
    name: str


def _table(names: tuple[str, ...]) -> tuple[Category, ...]:
    return tuple(Category(i + 1, n) for i, n in enumerate(names))


YTVIS_2019_CATEGORIES = _table((
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake", "monkey",
    "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck", "zebra",
    "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle", "earless_seal", "tennis_racket",
))

YTVIS_2021_CATEGORIES = _table((
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe", "horse", "leopard",
    "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit", "shark", "skateboard", "snake",
    "snowboard", "squirrel", "surfboard", "tennis_racket", "tiger", "train", "truck", "turtle", "whale", "zebra",
))

# YouTube-VIS 2022 reuses the 2021 categories.
YTVIS_2022_CATEGORIES = YTVIS_2021_CATEGORIES

OVIS_CATEGORIES = _table((
    "Person", "Bird", "Cat", "Dog", "Horse", "Sheep", "Cow", "Elephant", "Bear", "Zebra",
    "Giraffe", "Poultry", "Giant_panda", "Lizard", "Parrot", "Monkey", "Rabbit", "Tiger", "Fish", "Turtle",
    "Bicycle", "Motorcycle", "Airplane", "Boat", "Vehical",
))

# COCO category id -> target category id (several COCO classes may share a target class).
COCO_TO_YTVIS_2019: Mapping[int, int] = {
    1: 1, 2: 21, 3: 6, 4: 21, 5: 28, 7: 17, 8: 29, 9: 34, 17: 14, 18: 8, 19: 18, 21: 15, 22: 32, 23: 20,
    24: 30, 25: 22, 35: 33, 36: 33, 41: 5, 42: 27, 43: 40,
}
COCO_TO_YTVIS_2021: Mapping[int, int] = {
    1: 26, 2: 23, 3: 5, 4: 23, 5: 1, 7: 36, 8: 37, 9: 4, 16: 3, 17: 6, 18: 9, 19: 19, 21: 7, 22: 12,
    23: 2, 24: 40, 25: 18, 34: 14, 35: 31, 36: 31, 41: 29, 42: 33, 43: 34,
}
COCO_TO_OVIS: Mapping[int, int] = {
    1: 1, 2: 21, 3: 25, 4: 22, 5: 23, 6: 25, 8: 25, 9: 24, 17: 3, 18: 4, 19: 5, 20: 6, 21: 7, 22: 8,
    23: 9, 24: 10, 25: 11,
}

Format = Literal["ytvis", "coco"]


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """Where a split lives and how to read it.

    `categories` is the table its labels are expressed in (None: read from the JSON);
    `category_map` (COCO splits only) relabels source category ids into that table and drops
    annotations of unmapped classes.
    """

    name: str
    format: Format
    annotations: str
    frames_root: str
    categories: Optional[tuple[Category, ...]]
    category_map: Optional[Mapping[int, int]] = None
    has_occlusion: bool = False


# name -> (format, frames root, annotations, categories, category map, occlusion labels)
_SPLITS: dict[str, tuple] = {}


def _add(name, fmt, frames, ann, cats, cmap=None, occlusion=False):
    _SPLITS[name] = (fmt, frames, ann, cats, cmap, occlusion)


for _split, _dir in (("train", "train"), ("val", "valid"), ("test", "test")):
    _add(f"ytvis_2019_{_split}", "ytvis", f"ytvis_2019/{_dir if _split != 'test' else 'train'}/JPEGImages",
         f"ytvis_2019/{_dir}.json" if _split != "test" else "ytvis_2019/train_sub_3_video.json", YTVIS_2019_CATEGORIES)
    _add(f"ytvis_2021_{_split}", "ytvis", f"ytvis_2021/{_dir}/JPEGImages", f"ytvis_2021/{_dir}.json", YTVIS_2021_CATEGORIES)
    _add(f"ovis_{_split}", "ytvis", f"ovis/{_dir}", f"ovis/annotations/{_dir}.json", OVIS_CATEGORIES, None, True)
# YouTube-VIS 2022 trains on the 2021 training set and has its own val/test.
_add("ytvis_2022_train", "ytvis", "ytvis_2021/train/JPEGImages", "ytvis_2021/train.json", YTVIS_2022_CATEGORIES)
_add("ytvis_2022_val", "ytvis", "ytvis_2022/valid/JPEGImages", "ytvis_2022/valid.json", YTVIS_2022_CATEGORIES)
_add("ytvis_2022_test", "ytvis", "ytvis_2022/test/JPEGImages", "ytvis_2022/test.json", YTVIS_2022_CATEGORIES)
for _target, _cats, _map in (
    ("ytvis2019", YTVIS_2019_CATEGORIES, COCO_TO_YTVIS_2019),
    ("ytvis2021", YTVIS_2021_CATEGORIES, COCO_TO_YTVIS_2021),
    ("ovis", OVIS_CATEGORIES, COCO_TO_OVIS),
):
    for _split in ("train", "val"):
        # The published instances JSON; CTVIS's pre-filtered coco2<target>_<split>.json works too
        # (filtering is idempotent), pass it as `annotations`.
        _add(f"coco2{_target}_{_split}", "coco", f"coco/{_split}2017", f"coco/annotations/instances_{_split}2017.json",
             _cats, _map)


def split_names() -> list[str]:
    return sorted(_SPLITS)


def resolve_split(
    name: str,
    datasets_root: str = "datasets",
    annotations: Optional[str] = None,
    frames_root: Optional[str] = None,
) -> SplitInfo:
    """The `SplitInfo` of a catalog name, or of a custom split when `annotations` is given.

    For a catalog name, `annotations` / `frames_root` override the default locations under
    `datasets_root`. A custom split's format is read from its JSON later (`videos` -> ytvis,
    `images` -> coco); here it is recorded as "ytvis" until the reader looks.
    """
    if name in _SPLITS:
        fmt, frames, ann, cats, cmap, occlusion = _SPLITS[name]
        return SplitInfo(
            name=name,
            format=fmt,
            annotations=annotations or storage.join(datasets_root, ann),
            frames_root=frames_root or storage.join(datasets_root, frames),
            categories=cats,
            category_map=cmap,
            has_occlusion=occlusion,
        )
    if annotations is None:
        close = difflib.get_close_matches(name, list(_SPLITS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise KeyError(
            f"dataset '{name}': not a catalog split{hint}; a custom split needs `annotations` (a YouTube-VIS or "
            "COCO JSON) and `frames_root`"
        )
    if frames_root is None:
        raise KeyError(f"dataset '{name}': a custom split needs `frames_root` next to `annotations`")
    return SplitInfo(name=name, format="ytvis", annotations=annotations, frames_root=frames_root, categories=None)


def split_categories(name: str) -> Optional[tuple[Category, ...]]:
    """The category table of catalog split `name` (None for a name the catalog does not know)."""
    entry = _SPLITS.get(name)
    return entry[3] if entry is not None else None


def contiguous_index(categories: tuple[Category, ...]) -> dict[int, int]:
    """Dataset category id -> contiguous class index (ids sorted ascending), as detectron2 does."""
    return {cid: i for i, cid in enumerate(sorted(c.id for c in categories))}
