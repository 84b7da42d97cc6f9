"""Jobs and services of the CTVIS platform: config, storage, tracking, data, train, evaluate, CLI.

`pipelines` owns Ray, storage and MLflow; the network itself lives in `models`.
Heavy dependencies (torch, ray, mlflow) are imported by the verbs that need them, when they need them,
so that `ctvis --help` and `ctvis eval` start fast.
"""
