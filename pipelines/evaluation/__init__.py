"""Official YouTube-VIS / OVIS / YouTube-VIS 2022 evaluation, exact and fast.

Modules (import them directly; this package imports nothing so that `ctvis eval` starts fast):

- `files`: read input files (plain or .gz, local or object storage), also in a background thread;
  standard library only, so `ctvis eval` starts unzipping before it imports numpy.
- `data`: read ground truth and results files (plain or .gz) into flat arrays.
- `metrics`: `evaluate(gt, preds, benchmark)` -> `Evaluation` (stats, precision, recall, per category).
- `suites`: `run_evaluation(...)` for the metric suites ytvis / ovis / ytvis2022 (short / long split),
  with the input checks.
- `parallel`: spread the mask-intersection work over Ray workers.
- `command`: the `ctvis eval` verb.

The results JSON and the CodaLab zip are written by `ctvis predict` (`pipelines.inference`).
"""
