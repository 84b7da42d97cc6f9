"""Training CTVIS on Ray Train: the driver job, the per-worker loop and their parts.

Modules (import the one you need; this package imports nothing heavy on its own):
- `optim`: the CTVIS recipe's AdamW parameter groups, warmup + step-decay schedule, gradient clipping;
- `state`: what a checkpoint holds (model, optimizer, scheduler, AMP scaler, step, RNG, data position,
  MLflow run id) and the small run-info JSON kept beside the run in storage;
- `data`: each worker's deterministic share of the clip stream (a Ray Data dataset per rank);
- `validation`: inference on a validation split, official YTVIS/OVIS metrics, results JSON;
- `visualize`: overlay strips of tracked instances and the loss-curve plot (Pillow only);
- `loop`: `train_worker`, the function every Ray Train worker runs;
- `job`: `run_training`, the driver (TorchTrainer, MLflow run, registration);
- `command`: the `ctvis train` verb.
"""
