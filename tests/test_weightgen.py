"""The test weight generator reproduces the original's generated weights bit for bit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.weightgen import floating_entries, generate_tensor, key_seed, load_manifest

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("model", ["r50", "swinl"])
def test_weightgen_matches_reference_checks(reference_dir, model):
    manifest = load_manifest(reference_dir / "model" / f"manifest_{model}_ytvis19.json")
    with open(reference_dir / "model" / f"weightgen_check_{model}_ytvis19.json") as handle:
        checks = json.load(handle)
    entries = list(floating_entries(manifest))
    assert {key for key, _ in entries} == set(checks)
    for key, shape in entries:
        check = checks[key]
        assert key_seed(key) == check["seed"], key
        values = generate_tensor(key, shape).numpy().reshape(-1)
        # first4/last are float32 values stored as Python floats: exact equality
        assert values[:4].tolist() == check["first4"], key
        assert float(values[-1]) == check["last"], key
        as64 = values.astype(np.float64)
        assert as64.sum() == pytest.approx(check["sum"], rel=1e-9, abs=1e-9), key
        assert np.square(as64).sum() == pytest.approx(check["sumsq"], rel=1e-9), key
