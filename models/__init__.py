"""The CTVIS network, its losses and its online tracker, in pure PyTorch.

This package must stay importable on its own (a notebook, a Ray Data actor, an MLflow pyfunc):
it imports torch, numpy and scipy only -- never ray, mlflow, s3fs, pyarrow, yaml or pipelines.

Tensor shapes are written in fixed letters: B clips, T frames, Q queries, K classes (K+1 logits
with the no-object class last), C channels, H, W spatial size, N ground-truth instances.
"""

# The public entry points, imported on first use so that e.g. ``models.clip_batch`` in a data
# worker does not load the whole network.
_EXPORTS = {
    "CTVISConfig": "models.model",
    "CTVISModel": "models.model",
    "InferenceConfig": "models.model",
    "build_model": "models.model",
    "PRESETS": "models.presets",
    "NETWORK_PRESETS": "models.presets",
    "ClipBatch": "models.clip_batch",
    "FrameOutputs": "models.frame_outputs",
    "NetworkOutputs": "models.frame_outputs",
    "VideoInstances": "models.video_inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
