"""Layout guards from DESIGN.md: `platform/` is no package, `models/` imports no platform code."""
from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

FORBIDDEN_IN_MODELS = {"ray", "mlflow", "s3fs", "pyarrow", "yaml", "pipelines", "boto3", "botocore", "fsspec"}


def test_platform_is_not_a_python_package():
    # A package named `platform` would shadow the standard library for torch, ray and mlflow.
    assert (PROJECT_ROOT / "platform").is_dir()
    assert not (PROJECT_ROOT / "platform" / "__init__.py").exists()


def _imported_roots(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def test_models_imports_no_platform_code():
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {root}"
        for path in sorted((PROJECT_ROOT / "models").rglob("*.py"))
        for root, line in _imported_roots(path)
        if root in FORBIDDEN_IN_MODELS
    ]
    assert offenders == []


def test_ctvis_help_starts_without_heavy_imports():
    code = (
        "import sys; from pipelines import cli; cli.build_parser().format_help();"
        "heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
