"""Catalog (category tables, COCO maps, splits) and the YouTube-VIS / OVIS / COCO readers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from pipelines.data import catalog
from pipelines.data.formats import DataFormatError, parse_split, segmentation_to_rle


def test_category_tables_and_coco_maps():
    assert len(catalog.YTVIS_2019_CATEGORIES) == 40
    assert len(catalog.YTVIS_2021_CATEGORIES) == 40
    assert len(catalog.OVIS_CATEGORIES) == 25
    assert (catalog.YTVIS_2019_CATEGORIES[0].name, catalog.YTVIS_2019_CATEGORIES[-1].name) == ("person", "tennis_racket")
    assert catalog.YTVIS_2021_CATEGORIES[25] == catalog.Category(26, "person")
    assert catalog.OVIS_CATEGORIES[-1] == catalog.Category(25, "Vehical")  # sic, as published
    for cmap, table, count in (
        (catalog.COCO_TO_YTVIS_2019, catalog.YTVIS_2019_CATEGORIES, 21),
        (catalog.COCO_TO_YTVIS_2021, catalog.YTVIS_2021_CATEGORIES, 23),
        (catalog.COCO_TO_OVIS, catalog.OVIS_CATEGORIES, 17),
    ):
        assert len(cmap) == count
        assert set(cmap.values()) <= {c.id for c in table}
    # person -> person, car -> sedan (19) / car (21) / Vehical (OVIS)
    assert catalog.COCO_TO_YTVIS_2019[3] == 6 and catalog.YTVIS_2019_CATEGORIES[5].name == "sedan"
    assert catalog.COCO_TO_OVIS[3] == 25


def test_catalog_splits_resolve_under_the_datasets_root():
    info = catalog.resolve_split("ytvis_2019_train", "s3://bucket/datasets")
    assert info.annotations == "s3://bucket/datasets/ytvis_2019/train.json"
    assert info.frames_root == "s3://bucket/datasets/ytvis_2019/train/JPEGImages"
    assert info.categories == catalog.YTVIS_2019_CATEGORIES
    ovis = catalog.resolve_split("ovis_val", "/data")
    assert ovis.annotations == "/data/ovis/annotations/valid.json" and ovis.has_occlusion
    coco = catalog.resolve_split("coco2ytvis2021_train", "/data")
    assert coco.format == "coco" and coco.category_map == catalog.COCO_TO_YTVIS_2021
    assert coco.frames_root == "/data/coco/train2017"
    assert catalog.resolve_split("ytvis_2022_train").annotations.endswith("ytvis_2021/train.json")
    for name in ("ytvis_2021_val", "ovis_train", "coco2ovis_train", "coco2ytvis2019_train", "ytvis_2022_val"):
        assert name in catalog.split_names()
    with pytest.raises(KeyError, match="did you mean 'ytvis_2019_train'"):
        catalog.resolve_split("ytvis_2019_trian")
    with pytest.raises(KeyError, match="frames_root"):
        catalog.resolve_split("mine", annotations="/x.json")
    assert catalog.contiguous_index((catalog.Category(7, "b"), catalog.Category(3, "a"))) == {3: 0, 7: 1}


def test_parse_reference_ytvis_json_with_every_segmentation_form(reference_dir):
    path = reference_dir / "eval" / "e_official_quirks" / "gt.json"
    data = json.loads(path.read_text())
    info = catalog.resolve_split("quirks", annotations=str(path), frames_root="/frames")
    parsed = parse_split(info, data)
    assert parsed.format == "ytvis"
    assert [c.id for c in parsed.categories] == sorted(c["id"] for c in data["categories"])  # from the JSON
    assert [v.video_id for v in parsed.videos] == sorted(v["id"] for v in data["videos"])
    assert sum(len(v.instances) for v in parsed.videos) == len(data["annotations"])
    forms = set()
    for video in parsed.videos:
        for inst in video.instances:
            for segm in inst.segmentations:
                rle = segmentation_to_rle(segm, video.height, video.width)
                if segm is None:
                    assert rle is None
                    continue
                forms.add("poly" if isinstance(segm, list) else type(segm["counts"]).__name__)
                if isinstance(segm, list):
                    expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(segm, video.height, video.width)))
                elif isinstance(segm["counts"], list):
                    expected = mask_util.decode(mask_util.frPyObjects(segm, video.height, video.width))
                else:
                    expected = mask_util.decode(segm)
                got = mask_util.decode({"size": [video.height, video.width], "counts": rle})
                assert np.array_equal(got, expected)
    assert forms == {"poly", "list", "str"}


def test_parse_ovis_occlusion_labels(reference_dir):
    path = reference_dir / "eval" / "b_ovis_like" / "gt.json"
    data = json.loads(path.read_text())
    info = catalog.resolve_split("ovis_train", "/unused", annotations=str(path), frames_root="/frames")
    parsed = parse_split(info, data)
    assert parsed.categories == catalog.OVIS_CATEGORIES
    by_id = {i.annotation_id: i for v in parsed.videos for i in v.instances}
    for ann in data["annotations"]:
        codes = by_id[ann["id"]].occlusion
        expected = [{"no_occlusion": 0, "slight_occlusion": 1, "severe_occlusion": 2}.get(o, -1) for o in ann["occlusion"]]
        assert codes == expected
    assert {c for i in by_id.values() for c in i.occlusion} >= {0, 1, 2, -1}


def _ytvis_json():
    return {
        "videos": [{"id": 1, "file_names": ["a/0.jpg", "a/1.jpg"], "height": 4, "width": 4, "length": 2}],
        "annotations": [{"id": 5, "video_id": 1, "category_id": 2, "iscrowd": 0, "segmentations": [None, None]}],
        "categories": [{"id": 2, "name": "x"}],
    }


@pytest.mark.parametrize("kind, edit, message", [
    ("unknown_video", lambda d: d["annotations"][0].update(video_id=9), "annotation 5 refers to unknown video id 9"),
    ("unknown_category", lambda d: d["annotations"][0].update(category_id=3), "annotation 5 (video 1) has unknown category id 3"),
    ("segmentation_count_mismatch", lambda d: d["annotations"][0].update(segmentations=[None]),
     "annotation 5 (video 1) has 1 segmentations for a video of 2 frames"),
    ("duplicate_id", lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id 5 appears twice"),
])
def test_structural_problems_fail_or_are_counted(kind, edit, message):
    data = _ytvis_json()
    edit(data)
    info = catalog.resolve_split("custom", annotations="s3://b/custom.json", frames_root="s3://b/frames")
    with pytest.raises(DataFormatError, match=r"s3://b/custom\.json: " + message.replace("(", r"\(").replace(")", r"\)")):
        parse_split(info, data, "fail")
    parsed = parse_split(info, data, "skip")
    assert [p.kind for p in parsed.problems] == [kind]


def test_coco_to_ytvis_filters_and_relabels():
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 8, "width": 8} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4]], "area": 8.0, "bbox": [0, 0, 4, 4]},
            {"id": 11, "image_id": 1, "category_id": 10, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4]]},  # unmapped
            {"id": 12, "image_id": 2, "category_id": 10, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4]]},  # unmapped
            {"id": 13, "image_id": 3, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [8, 8], "counts": [10, 54]}},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 10, "name": "traffic light"}],
    }
    info = catalog.resolve_split("coco2ytvis2019_train", "/data", annotations="/data/coco.json")
    parsed = parse_split(info, data)
    assert parsed.format == "coco" and parsed.categories == catalog.YTVIS_2019_CATEGORIES
    assert [v.video_id for v in parsed.videos] == [1, 3]  # image 2 has no mapped annotation
    assert parsed.notes == {"annotations_of_unmapped_categories": 2, "images_without_annotations": 1}
    first = parsed.videos[0].instances
    assert [(i.annotation_id, i.category_id, i.source_category_id) for i in first] == [(10, 6, 3)]
    assert parsed.videos[1].instances[0].iscrowd and parsed.videos[1].length == 1


def test_invalid_segmentations_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="differs from the frame size"):
        segmentation_to_rle({"size": [5, 5], "counts": "abc"}, 4, 4)
    with pytest.raises(ValueError, match="sum to"):
        segmentation_to_rle({"size": [4, 4], "counts": [3, 2]}, 4, 4)
    with pytest.raises(ValueError, match="unsupported"):
        segmentation_to_rle("rle?", 4, 4)
    assert segmentation_to_rle([[0, 0, 1, 1]], 4, 4) is None  # < 3 points: dropped as detectron2 does
    assert segmentation_to_rle([], 4, 4) is None
