"""Ray Tune sweeps (`ctvis tune SWEEP.yaml`).

- `config`: the sweep YAML (base experiment, search space over dotted config keys, metric, scheduler,
  trials, resources), validated as strictly as an experiment;
- `tracker`: tracker sweeps on an output cache of `ctvis predict --cache-outputs` (tracker +
  post-processing + official metrics per trial, no network);
- `training`: training-time sweeps, one Ray Train run of `ctvis train`'s job per trial, ASHA;
- `report`: the sweep's MLflow parent run: the trials table, plots, the best settings;
- `command`: the CLI verb.
"""
