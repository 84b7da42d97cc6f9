"""The data half of the platform: formats and catalog, synthetic datasets, ingest to Parquet
shards, CTVIS clip sampling and augmentation, and the Ray Data pipeline into Ray Train.

Modules: `catalog` (named splits, category tables, COCO maps), `formats` (YouTube-VIS / OVIS /
COCO readers), `synth` (synthetic generator), `ingest` + `shards` (Parquet shards, manifest),
`sampling` (the epoch's clip index), `augment` (clip-consistent augmentation), `pipeline` (Ray
Data + Train-side batches), `cli` (`ctvis data ...`). Import the submodule you need: this package
imports nothing heavy on its own.
"""
