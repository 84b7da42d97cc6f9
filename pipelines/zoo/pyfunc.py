"""CTVIS as an MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/ctvis_r50_ytvis19@published")``
then ``.predict(...)`` runs the online inference of `ctvis infer` (pipelines.inference.online) on a
video and returns its tracks; ``mlflow models serve`` serves it.

Input: video paths or URIs (a DataFrame or dict with a ``video`` column, as the signature says);
frames already in memory, uint8 (T, H, W, 3) RGB, go to ``unwrap_python_model().predict_frames``.
Params (all optional): ``score_thr`` (0.3), ``max_size`` (0: the model's test size), ``every`` (1),
``fps`` (frame folders, 0: 6), ``device`` ("": CUDA when present), ``on_error`` ("fail" or "skip").
Output: one dict per track, as in ``tracks.json`` (``track_id``, ``category_id``, ``category_name``,
``score``, ``segmentations``: one RLE per processed frame at the original size), plus ``video``.

Artifacts (what `pipelines.weights` and `ctvis predict`/`ctvis infer` also read from a registered
version): ``model.pt`` (our weights format), ``config.yaml`` (the resolved experiment) and
``classes.json`` (the class table in label order).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import mlflow.models
import mlflow.pyfunc

PARAM_DEFAULTS = {"score_thr": 0.3, "max_size": 0, "every": 1, "fps": 0.0, "device": "", "on_error": "fail"}


class CTVISPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self._context = context
        self._loaded = {}  # device -> LoadedModel, built on first use

    def _model(self, device: Optional[str]):
        from pipelines.inference.online import load_model_files, pick_device

        target = str(pick_device(device or None))
        if target not in self._loaded:
            artifacts = self._context.artifacts
            self._loaded[target] = load_model_files(artifacts["weights"], artifacts["config"],
                                                    artifacts.get("classes"), device=target)
        return self._loaded[target]

    # No type hints on predict: MLflow would read them as a schema of their own (the signature is given).
    def predict(self, context, model_input, params=None):  # noqa: ARG002
        """Tracks of the videos named in `model_input` (paths or URIs, see the module notes)."""
        return self._run(_videos(model_input), params)

    def predict_frames(self, frames, params: Optional[dict] = None) -> list[dict]:
        """Tracks of one video given as uint8 (T, H, W, 3) RGB frames (MLflow's schema check admits
        only the ``video`` column, so in-memory frames come here:
        ``mlflow.pyfunc.load_model(uri).unwrap_python_model().predict_frames(frames)``)."""
        return self._run([frames], params)

    def _run(self, videos: list, params: Optional[dict]) -> list[dict]:
        import numpy as np

        from pipelines.inference.online import ArrayVideo, InferOptions, run_online
        from pipelines.inference.user_video import open_video

        settings = {**PARAM_DEFAULTS, **(params or {})}
        options = InferOptions(score_thr=float(settings["score_thr"]), max_size=int(settings["max_size"]) or None,
                               every=int(settings["every"]), on_error=str(settings["on_error"]), progress=False)
        loaded = self._model(str(settings["device"]))
        tracks: list[dict] = []
        for video in videos:
            source = (ArrayVideo(video) if isinstance(video, np.ndarray)
                      else open_video(str(video), fps=float(settings["fps"]) or None))
            with source, tempfile.TemporaryDirectory() as work:
                result = run_online(loaded, source, options, Path(work))
            tracks += [{"video": source.name, **track} for track in result.tracks]
        return tracks


def _videos(model_input: Any) -> list:
    """The videos of a predict() input (see the module notes)."""
    import numpy as np

    if isinstance(model_input, dict):
        model_input = model_input.get("video")
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "UO":
        model_input = model_input.reshape(-1).tolist()
    if isinstance(model_input, (list, tuple)) and len(model_input) == 1 and isinstance(model_input[0], (list, tuple)):
        model_input = list(model_input[0])  # MLflow's schema check wraps a dict's list in another list
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        if "video" not in model_input.columns:
            raise ValueError(f"expected a 'video' column of paths, got columns {list(model_input.columns)}")
        return [str(v) for v in model_input["video"].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, (list, tuple)) and all(isinstance(v, str) for v in model_input):
        return list(model_input)
    raise ValueError("expected a video path or URI, a list of them or a DataFrame with a 'video' column (frames: "
                     f"predict_frames); got {type(model_input).__name__}")


def signature():
    """Input: a ``video`` column of paths/URIs; params with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([
        ParamSpec("score_thr", "double", PARAM_DEFAULTS["score_thr"]),
        ParamSpec("max_size", "long", PARAM_DEFAULTS["max_size"]),
        ParamSpec("every", "long", PARAM_DEFAULTS["every"]),
        ParamSpec("fps", "double", PARAM_DEFAULTS["fps"]),
        ParamSpec("device", "string", PARAM_DEFAULTS["device"]),
        ParamSpec("on_error", "string", PARAM_DEFAULTS["on_error"]),
    ])
    return ModelSignature(inputs=Schema([ColSpec("string", "video")]), params=params)


def save_pyfunc_model(path: Path, weights: Path, config: Path, classes: Path) -> None:
    """Write the pyfunc model directory `path` around the three artifact files."""
    import pandas as pd

    # Models from code: the model is this file, run at load time (nothing is unpickled, as no weights
    # file here is: a registry entry cannot carry code beyond this project's).
    mlflow.pyfunc.save_model(
        path=str(path), python_model=__file__,
        artifacts={"weights": str(weights), "config": str(config), "classes": str(classes)},
        signature=signature(), input_example=(pd.DataFrame({"video": ["s3://bucket/videos/example.mp4"]}),
                                              {"score_thr": 0.3}),
        pip_requirements=["torch", "numpy", "pillow", "av", "pycocotools", "mlflow", "pyyaml", "pydantic"],
    )


mlflow.models.set_model(CTVISPyfunc())  # what MLflow loads from this file (models from code)
