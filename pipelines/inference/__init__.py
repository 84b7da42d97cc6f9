"""Running a model over a split (`ctvis predict`, Ray Data batch inference, and training's validation)
and over one user video (`ctvis infer`, online in bounded memory).

- `videos`: the split's videos from their Parquet shards, decoded and resized as the test mapper does;
- `predictor`: one model (or an output cache) over one video -> official results entries; the one
  implementation of "run a model over a video", shared by `ctvis predict` and `ctvis train`'s validation;
- `cache`: per-video network outputs in Parquet, so that the tracker and post-processing can run
  again without the network (`--cache-outputs` / `--from-cache`);
- `model_source`: what MODEL means on the command line (experiment YAML + weights, a checkpoint
  directory, a registry URI) -> an experiment and pinned weights;
- `job`: the driver of `ctvis predict` (Ray Data actor pool, per-video part files, resume, results
  JSON, CodaLab zip, metrics, MLflow run); `command`: its CLI;
- `user_video`: a user's video file / frame folder (local or ``s3://``) decoded frame by frame (PyAV);
- `online`: one model over one user video, online (`OnlineVideoInference`), results written as frames
  settle (also what the MLflow pyfunc model runs); `overlay`: the overlay frames and the H.264 mp4;
  `infer_command`: the CLI of `ctvis infer`.
"""
