"""The CTVIS network, its losses and its online tracker, in pure PyTorch.

This package must stay importable on its own (a notebook, a Ray Data actor, an MLflow pyfunc):
it imports torch, numpy and scipy only -- never ray, mlflow, s3fs, pyarrow, yaml or pipelines.

Tensor shapes are written in fixed letters: B clips, T frames, Q queries, K classes (K+1 logits
with the no-object class last), C channels, H, W spatial size, N ground-truth instances.
"""
