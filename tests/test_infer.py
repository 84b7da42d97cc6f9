"""`ctvis infer` on a user's video: mp4 (written here with PyAV) and the same frames as a folder give
identical tracks.json, equal to the whole-video inference of the same frames; the overlay is a
browser-playable H.264 mp4 of every processed frame; bad inputs are clear errors that leave no
output behind."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cli import main as ctvis

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
NUM_FRAMES, HEIGHT, WIDTH = 17, 91, 125  # odd sizes: the mp4 keeps 90x124; 17 frames = 3 clips of 5 + 2


def synthetic_frame(t: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) frame t: two textured shapes moving over a gradient."""
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 90)], axis=-1).astype(np.uint8)
    cy, cx = height // 3 + t % 20, width // 4 + 2 * (t % 30)
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 < (height // 6) ** 2
    frame[disc] = (220, 40, 40)
    box = (abs(ys - 2 * height // 3) < height // 8) & (abs(xs - (3 * width // 4 - t % 25)) < width // 8)
    frame[box] = rng.integers(0, 80, size=(int(box.sum()), 3), dtype=np.uint8) + np.array([40, 160, 40], np.uint8)
    return frame


def synthetic_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3), see synthetic_frame."""
    rng = np.random.default_rng(seed)
    return np.stack([synthetic_frame(t, height, width, rng) for t in range(num_frames)])


def write_mp4(path: Path, frames: np.ndarray, fps: int = 6) -> None:
    """A plain H.264 mp4 (what a phone or a screen recorder gives), written with PyAV."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2] - frames.shape[2] % 2, frames.shape[1] - frames.shape[1] % 2
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def decode_mp4(path: Path) -> tuple[list[np.ndarray], dict]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "size": (stream.codec_context.height, stream.codec_context.width)}
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], info


@pytest.fixture(scope="module")
def user_video(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("video")
    mp4 = root / "clip.mp4"
    write_mp4(mp4, synthetic_frames(NUM_FRAMES, HEIGHT, WIDTH))
    decoded, _ = decode_mp4(mp4)
    folder = root / "frames"
    folder.mkdir()
    from PIL import Image

    for index, image in enumerate(decoded):  # lossless copies of what the mp4 decodes to
        Image.fromarray(image).save(folder / f"frame_{index}.png")
    return {"mp4": mp4, "folder": folder, "frames": np.stack(decoded)}


def _infer(tmp_path, weights, video, *options) -> tuple[int, Path]:
    output = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    code = ctvis(["infer", str(EXPERIMENT), str(video), f"model.weights={weights}", "--output", str(output),
                  "--no-progress", *options])
    return code, output


def test_mp4_and_frame_folder_give_identical_tracks_equal_to_whole_video_inference(tmp_path, tiny_weights, user_video,
                                                                                   capsys):
    code, from_mp4 = _infer(tmp_path, tiny_weights, user_video["mp4"], "--score-thr", "0")
    assert code == 0
    code, from_folder = _infer(tmp_path, tiny_weights, user_video["folder"], "--score-thr", "0")
    assert code == 0
    tracks = json.loads((from_mp4 / "tracks.json").read_text())
    assert tracks == json.loads((from_folder / "tracks.json").read_text())
    assert tracks and all(len(t["segmentations"]) == NUM_FRAMES for t in tracks)
    assert {tuple(s["size"]) for t in tracks for s in t["segmentations"]} == {(HEIGHT - 1, WIDTH - 1)}  # even mp4
    assert "tracks:" in capsys.readouterr().out

    # The same frames through the whole-video path (CTVISModel.infer_video, as ctvis predict runs it).
    from models.model import build_model
    from pipelines.config import load_experiment
    from pipelines.data.augment import shortest_edge_size
    from pipelines.inference.videos import resize_test_frame
    from pipelines.inference.predictor import instances_results
    from pipelines.weights import WeightsSource, load_weights

    experiment = load_experiment(EXPERIMENT)
    model = build_model(experiment.model)
    load_weights(model, WeightsSource(str(tiny_weights), str(tiny_weights)))
    frames = user_video["frames"]
    size = shortest_edge_size(*frames.shape[1:3], experiment.data.min_size_test, experiment.data.max_size_test)
    resized = torch.from_numpy(np.stack([resize_test_frame(f, size) for f in frames]))
    instances = model.eval().infer_video(resized, output_size=frames.shape[1:3])
    expected = instances_results(1, instances, NUM_FRAMES, list(range(1, experiment.model.network.num_classes + 1)))
    assert [(t["category_id"], t["segmentations"]) for t in tracks] == \
        [(e["category_id"], e["segmentations"]) for e in expected]
    np.testing.assert_allclose([t["score"] for t in tracks], [e["score"] for e in expected], rtol=1e-6)

    # The overlay: H.264 yuv420p, every processed frame, the (even) original size.
    overlay, info = decode_mp4(from_mp4 / "overlay.mp4")
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "size": (HEIGHT - 1, WIDTH - 1)}
    assert len(overlay) == NUM_FRAMES
    summary = json.loads((from_mp4 / "summary.json").read_text())
    assert summary["frames_processed"] == NUM_FRAMES and len(summary["tracks"]) == len(tracks)


def test_every_and_score_threshold(tmp_path, tiny_weights, user_video):
    code, output = _infer(tmp_path, tiny_weights, user_video["folder"], "--every", "3", "--score-thr", "0.5",
                          "--no-overlay")
    assert code == 0
    tracks = json.loads((output / "tracks.json").read_text())
    assert all(t["score"] >= 0.5 and len(t["segmentations"]) == 6 for t in tracks)  # frames 0, 3, ..., 15
    assert not (output / "overlay.mp4").exists()


def test_bad_inputs_are_clear_errors_that_leave_no_outputs(tmp_path, tiny_weights, user_video, capsys):
    # A corrupt frame mid-stream: stop, naming it; no output files.
    folder = tmp_path / "broken"
    folder.mkdir()
    for index, path in enumerate(sorted(user_video["folder"].iterdir(), key=lambda p: int(p.stem.split("_")[1]))):
        data = path.read_bytes()
        (folder / path.name).write_bytes(data[: len(data) // 3] if index == 7 else data)
    code, output = _infer(tmp_path, tiny_weights, folder)
    assert code == 2
    assert "frame 7: frame_7.png: cannot decode" in capsys.readouterr().err
    assert not any(output.iterdir())
    # The same with --on-error skip: the rest is processed and the frame listed.
    code, output = _infer(tmp_path, tiny_weights, folder, "--on-error", "skip", "--score-thr", "0")
    assert code == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["frames_processed"] == NUM_FRAMES - 1 and [s["index"] for s in summary["frames_skipped"]] == [7]
    assert all(len(t["segmentations"]) == NUM_FRAMES - 1 for t in json.loads((output / "tracks.json").read_text()))

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        ([str(EXPERIMENT), str(garbage), f"model.weights={tiny_weights}"], "cannot be opened as a video"),
        ([str(EXPERIMENT), str(empty), f"model.weights={tiny_weights}"], "a folder without frames"),
        ([str(EXPERIMENT), str(tmp_path / "missing.mp4"), f"model.weights={tiny_weights}"], "no such video file"),
        (["models:/no_such_model@published", str(user_video["mp4"])], "no_such_model"),
    ]
    for arguments, message in cases:
        assert ctvis(["infer", *arguments, "--output", str(tmp_path / "unused"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err, message
    assert ctvis(["infer", str(EXPERIMENT), str(user_video["mp4"]), f"model.weights={tiny_weights}",
                  "--output", str(blocker / "out")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert not (tmp_path / "unused").exists() or not any((tmp_path / "unused").iterdir())


def test_mp4_writer_and_reader_round_trip(tmp_path):
    from pipelines.inference.overlay import Mp4Writer
    from pipelines.inference.user_video import open_video

    frames = synthetic_frames(9, 41, 57)
    writer = Mp4Writer(tmp_path / "v.mp4", Fraction(5), 41, 57)
    for image in frames:
        writer.write(image)
    writer.close()
    with open_video(str(tmp_path / "v.mp4")) as video:
        decoded = list(video.frames())
        assert video.fps == 5 and video.num_frames == 9
    assert [d.index for d in decoded] == list(range(9)) and all(d.problem is None for d in decoded)
    assert decoded[0].image.shape == (40, 56, 3)
    # A file cut in half: the frames it still holds, then a problem naming where it ends.
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    with open_video(str(tmp_path / "cut.mp4")) as video:
        decoded = list(video.frames())
    assert decoded[-1].problem is not None and "truncated" in decoded[-1].problem.reason


@pytest.mark.integration
def test_video_and_frames_on_s3_with_outputs_on_s3(s3_bucket, tmp_path, tiny_weights, user_video):
    from pipelines import storage

    storage.copy(str(user_video["mp4"]), f"s3://{s3_bucket}/videos/clip.mp4")
    for path in user_video["folder"].iterdir():
        storage.copy(str(path), f"s3://{s3_bucket}/frames/{path.name}")
    code, local = _infer(tmp_path, tiny_weights, user_video["mp4"], "--score-thr", "0", "--no-overlay")
    assert code == 0
    expected = json.loads((local / "tracks.json").read_text())
    for video in ("videos/clip.mp4", "frames"):
        output = f"s3://{s3_bucket}/out/{video.split('/')[0]}"
        assert ctvis(["infer", str(EXPERIMENT), f"s3://{s3_bucket}/{video}", f"model.weights={tiny_weights}",
                      "--output", output, "--no-progress", "--score-thr", "0"]) == 0
        assert storage.read_json(storage.join(output, "tracks.json")) == expected
        assert storage.exists(storage.join(output, "overlay.mp4"))
