"""The model zoo: `ctvis zoo list` shows the eight published rows with their figures (from
experiments/zoo/published.yaml); `ctvis zoo import` registers official-format weights (generated from the
reference manifest: no weights can be downloaded here) as a pyfunc model with alias `published`,
loads back bit for bit, is a no-op for the same file; the pyfunc model equals `ctvis infer`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cli import main as ctvis
from tests.test_infer import decode_mp4, synthetic_frames, write_mp4
from tests.weightgen import generate_official_state_dict

# The published AP of every row (the mission's figures): R50 / Swin-L.
PUBLISHED_AP = {"ctvis_r50_ytvis19": 55.1, "ctvis_swinl_ytvis19": 65.6, "ctvis_r50_ytvis21": 50.1,
                "ctvis_swinl_ytvis21": 61.2, "ctvis_r50_ytvis22": 44.9, "ctvis_swinl_ytvis22": 53.8,
                "ctvis_r50_ovis": 35.5, "ctvis_swinl_ovis": 46.9}


def test_zoo_list_shows_every_published_row(tmp_path, capsys):
    from pipelines.zoo.rows import load_zoo

    assert ctvis(["zoo", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "list"]) == 0
    out = capsys.readouterr().out
    zoo = load_zoo()
    assert {row.name: row.metrics["AP"] for row in zoo.rows} == PUBLISHED_AP
    for row in zoo.rows:
        line = next(line for line in out.splitlines() if line.startswith(row.name + " "))
        for value in row.metrics.values():
            assert f"{value:.1f}" in line
        assert line.endswith("not imported") and row.experiment_path.is_file()
    assert sum(len(row.metrics) for row in zoo.rows) == 6 * 5 + 2 * 3  # AP..AR10, and AP/AP_S/AP_L for 2022


@pytest.fixture(scope="module")
def official_r50(tmp_path_factory, reference_dir) -> Path:
    manifest = json.loads((reference_dir / "model" / "manifest_r50_ytvis19.json").read_text())
    path = tmp_path_factory.mktemp("zoo") / "CTVIS_YTVIS19_R50.pth"
    torch.save({"model": generate_official_state_dict(manifest), "iteration": 0}, path)
    return path


@pytest.mark.integration
@pytest.mark.slow
def test_import_registers_a_pyfunc_that_loads_back_and_runs_like_ctvis_infer(mlflow_server, official_r50, tmp_path,
                                                                           capsys):
    import mlflow.pyfunc
    import pandas as pd

    from models.model import build_model
    from pipelines.config import load_experiment
    from pipelines.mlflow_runs import get_model_version
    from pipelines.weights import fetch, read_weights, resolve_weights

    uri = mlflow_server.tracking_uri
    row = "ctvis_r50_ytvis19"
    assert ctvis(["zoo", "--tracking-uri", uri, "import", row, "--weights", str(official_r50)]) == 0
    version = get_model_version(row, alias="published", tracking_uri=uri)
    assert version.version == "1" and version.tags["backbone"] == "R50" and version.tags["AP"] == "55.1"
    assert version.tags["queries"] == "100" and "55.1" in version.description
    # The same file again: nothing new.
    assert ctvis(["zoo", "--tracking-uri", uri, "import", row, "--weights", str(official_r50)]) == 0
    assert "already registered as models:/ctvis_r50_ytvis19/1" in capsys.readouterr().out

    # What the registry gives back is what the converter made of the official file, bit for bit.
    experiment = load_experiment(Path("experiments") / "ctvis_r50_ytvis19.yaml")
    reference = build_model(experiment.model)
    assert reference.load_official_checkpoint(read_weights(official_r50, "official").tensors).complete
    with_alias = resolve_weights(f"models:/{row}@published", uri)
    stored = read_weights(fetch(with_alias, tmp_path), "registered")
    assert stored.kind == "ours" and stored.tensors.keys() == reference.state_dict().keys()
    assert all(torch.equal(stored.tensors[k], v) for k, v in reference.state_dict().items())
    assert (fetch(with_alias, tmp_path / "again").parent / "classes.json").is_file()

    # An incomplete file is refused unless --allow-partial; a different file becomes version 2.
    partial = tmp_path / "partial.pth"
    tensors = read_weights(official_r50, "official").tensors
    del tensors["sem_seg_head.predictor.class_embed.weight"]
    torch.save({"model": tensors}, partial)
    assert ctvis(["zoo", "--tracking-uri", uri, "import", row, "--weights", str(partial)]) == 2
    refused = capsys.readouterr().err
    assert "does not fill the R50 model" in refused and "missing 1," in refused and "--allow-partial" in refused
    assert ctvis(["zoo", "--tracking-uri", uri, "import", row, "--weights", str(partial), "--allow-partial"]) == 0
    assert get_model_version(row, alias="published", tracking_uri=uri).version == "2"
    assert ctvis(["zoo", "--tracking-uri", uri, "show", row]) == 0
    shown = capsys.readouterr().out
    assert "version 2 @published" in shown and "complete_load=false" in shown

    # The pyfunc model on a short video equals `ctvis infer` on it (path input and in-memory frames).
    video = tmp_path / "short.mp4"
    write_mp4(video, synthetic_frames(6, 64, 96, seed=1))
    output = tmp_path / "infer"
    assert ctvis(["infer", f"models:/{row}@published", str(video), "--output", str(output), "--tracking-uri", uri,
                  "--score-thr", "0", "--max-size", "96", "--no-progress"]) == 0
    expected = json.loads((output / "tracks.json").read_text())
    assert len(expected) == 40 and all(len(t["segmentations"]) == 6 for t in expected)
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{row}@published")
    params = {"score_thr": 0.0, "max_size": 96}
    predicted = model.predict(pd.DataFrame({"video": [str(video)]}), params=params)
    assert [{k: v for k, v in t.items() if k != "video"} for t in predicted] == expected
    frames = np.stack(decode_mp4(video)[0])
    in_memory = model.unwrap_python_model().predict_frames(frames, params)
    assert [{k: v for k, v in t.items() if k != "video"} for t in in_memory] == expected


@pytest.mark.integration
@pytest.mark.slow
def test_zoo_import_and_infer_keep_secrets_out_of_outputs_runs_and_artifacts(mlflow_server, s3_bucket, official_r50,
                                                                            tmp_path):
    """A sentinel AWS secret and MLflow token in the environment, weights and video on S3, outputs on
    S3: neither value appears in what the commands print, in the MLflow run (params, tags,
    artifacts), in the registry entry, or in the files written."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from pipelines import storage

    secret, token = "SENTINEL-aws-7c6b5a", "SENTINEL-token-3e2d1c"
    uri = mlflow_server.tracking_uri
    storage.copy(str(official_r50), f"s3://{s3_bucket}/weights/CTVIS_R50_YTVIS21.pth")
    video = tmp_path / "short.mp4"
    write_mp4(video, synthetic_frames(4, 48, 64, seed=2))
    storage.copy(str(video), f"s3://{s3_bucket}/videos/short.mp4")
    # moto accepts any secret: the sentinel is the one every S3 request of the commands signs with.
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "MLFLOW_TRACKING_TOKEN": token}
    printed = ""
    for arguments in (["zoo", "--tracking-uri", uri, "import", "ctvis_r50_ytvis21", "--weights",
                       f"s3://{s3_bucket}/weights/CTVIS_R50_YTVIS21.pth"],
                      ["infer", "models:/ctvis_r50_ytvis21@published", f"s3://{s3_bucket}/videos/short.mp4",
                       "--output", f"s3://{s3_bucket}/out", "--tracking-uri", uri, "--max-size", "64",
                       "--no-progress"]):
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *arguments], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        printed += done.stdout + done.stderr
    written = [storage.read_text(storage.join(f"s3://{s3_bucket}/out", name)) for name in ("tracks.json",
                                                                                          "summary.json")]
    client = MlflowClient(uri, uri)
    version = client.get_model_version_by_alias("ctvis_r50_ytvis21", "published")
    registered = client.get_registered_model("ctvis_r50_ytvis21")
    run = client.get_run(version.run_id)
    recorded = [str(run.data.params), str(run.data.tags), version.description, str(version.tags),
                registered.description, str(registered.tags)]
    local = tmp_path / "artifacts"
    client.download_artifacts(version.run_id, "", str(local))
    for path in local.rglob("*"):
        if path.is_file() and path.suffix in (".txt", ".yaml", ".json", ".py", "") and path.stat().st_size < 10**6:
            recorded.append(path.read_text(errors="replace"))
    assert any("MLmodel" == p.name for p in local.rglob("*"))
    for text in [printed, *written, *recorded]:
        assert secret not in text and token not in text
