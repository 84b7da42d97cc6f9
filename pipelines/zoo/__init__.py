"""The model zoo in the MLflow registry.

- `rows`: the published CTVIS rows (``experiments/zoo/published.yaml``: figures, experiment YAML, weight URL);
- `pyfunc`: CTVIS as an MLflow pyfunc model (weights + resolved config + class names as artifacts);
- `registry`: import a row's official ``.pth`` as a registered pyfunc model (alias ``published``),
  look rows up in the registry; `command`: ``ctvis zoo list|import|show``.
"""
