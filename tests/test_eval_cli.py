"""`ctvis eval` as a user runs it: help, outputs, clear errors, and no torch / ray import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _case(reference_dir, name):
    return reference_dir / "eval" / name


def test_help_documents_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--gt", "--results", "--benchmark", "--gt-short", "--gt-long", "--output", "--strict",
                 "--workers", "ytvis2022", "occlusion", "-1 = no ground truth"):
        assert word in text, word


def test_eval_prints_table_and_writes_json(reference_dir, tmp_path, capsys):
    folder = _case(reference_dir, "c_edge_cases")
    expected = json.loads((folder / "expected.json").read_text())
    output = tmp_path / "metrics.json"
    assert main(["eval", "--gt", str(folder / "gt.json"), "--results", str(folder / "results.json"),
                 "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert "44.30" in captured.out and "category 99" in captured.err
    metrics = json.loads(output.read_text())
    for name, value in expected["stats_by_name"].items():
        assert abs(metrics["stats"][name] - value) <= 1e-9
    assert len(metrics["per_category"]) == len(expected["per_category"])


def test_ytvis2022_and_ovis_from_the_command_line(reference_dir, tmp_path):
    folder = _case(reference_dir, "f_ytvis2022_short_long")
    expected = json.loads((folder / "expected.json").read_text())
    output = tmp_path / "m.json"
    assert main(["eval", "--benchmark", "ytvis2022", "--gt", str(folder / "gt.json"),
                 "--gt-short", str(folder / "gt_short.json"), "--gt-long", str(folder / "gt_long.json"),
                 "--results", str(folder / "results.json"), "--output", str(output)]) == 0
    assert abs(json.loads(output.read_text())["ytvis2022_scores"]["mAP"] - expected["ytvis2022_scores"]["mAP"]) <= 1e-9
    folder = _case(reference_dir, "b_ovis_like")
    expected = json.loads((folder / "expected.json").read_text())
    assert main(["eval", "--benchmark", "ovis", "--gt", str(folder / "gt.json"),
                 "--results", str(folder / "results.json"), "--output", str(output)]) == 0
    stats = json.loads(output.read_text())["stats"]
    assert abs(stats["AP_occ_heavy"] - expected["ovis_stats_by_name"]["AP_occ_heavy"]) <= 1e-9


def test_bad_inputs_get_clear_errors(reference_dir, tmp_path, capsys):
    folder = _case(reference_dir, "e_official_quirks")
    gt, results = str(folder / "gt.json"), str(folder / "results.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes((folder / "results.json").read_bytes()[:2000])
    unknown = tmp_path / "unknown.json"
    entries = json.loads((folder / "results.json").read_text())
    entries[3]["video_id"] = 999
    unknown.write_text(json.dumps(entries))
    cases = [(["--gt", str(tmp_path / "missing.json"), "--results", results], "missing.json: no such file"),
             (["--gt", gt, "--results", str(truncated)], "truncated.json: not valid JSON"),
             (["--gt", gt, "--results", str(unknown)], "entry 3 names video_id 999"),
             (["--gt", gt, "--results", results, "--strict"], "entry 0 (video 1: 4 segmentations, 6 frames)"),
             (["--benchmark", "ytvis2022", "--gt", gt, "--results", results], "needs --gt-short and --gt-long")]
    for arguments, message in cases:
        assert main(["eval", *arguments]) == 2, arguments
        assert message in capsys.readouterr().err, message
    # Without --strict the same file is evaluated (official truncation) with a warning.
    assert main(["eval", "--gt", gt, "--results", results]) == 0
    assert "do not match their video length" in capsys.readouterr().err


def test_empty_results_are_zero_with_a_warning(reference_dir, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    output = tmp_path / "m.json"
    assert main(["eval", "--gt", str(_case(reference_dir, "c_edge_cases") / "gt.json"),
                 "--results", str(empty), "--output", str(output)]) == 0
    assert "no predictions" in capsys.readouterr().err
    assert json.loads(output.read_text())["stats"]["AP"] == 0


def test_eval_imports_neither_torch_nor_ray(reference_dir, tmp_path):
    folder = _case(reference_dir, "e_official_quirks")
    script = (
        "import sys\n"
        "from pipelines.cli import main\n"
        f"code = main(['eval', '--gt', {str(folder / 'gt.json')!r}, '--results', {str(folder / 'results.json')!r}])\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules)\n"
        "print('HEAVY', heavy, code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert "HEAVY [] 0" in done.stdout, done.stdout + done.stderr


@pytest.mark.integration
def test_eval_reads_ground_truth_and_results_from_s3(reference_dir, s3_bucket):
    from pipelines import storage
    from pipelines.evaluation.data import load_ground_truth, load_predictions
    from pipelines.evaluation.metrics import evaluate

    folder = reference_dir / "eval" / "a_ytvis_small"
    for name in ("gt.json", "results.json"):
        storage.copy(str(folder / name), f"s3://{s3_bucket}/eval/{name}")
    gt = load_ground_truth(f"s3://{s3_bucket}/eval/gt.json")
    preds = load_predictions(f"s3://{s3_bucket}/eval/results.json")
    local = evaluate(load_ground_truth(folder / "gt.json"), load_predictions(folder / "results.json"))
    assert list(evaluate(gt, preds).stats) == list(local.stats)
    with pytest.raises(Exception, match="no-such.json"):
        load_ground_truth(f"s3://{s3_bucket}/eval/no-such.json")
