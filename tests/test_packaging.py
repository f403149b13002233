"""The package builds without warnings: its metadata is in the form current setuptools expects."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "anger_stream", source / "anger_stream", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--disable-pip-version-check", "-w", str(tmp_path),
         str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    if build.returncode != 0 and "setuptools" in build.stderr and "No matching distribution" in build.stderr:
        pytest.skip("no package index with setuptools>=77 reachable for the build")
    assert build.returncode == 0, build.stderr[-2000:]
    output = build.stdout + build.stderr
    assert "deprecated" not in output.lower(), [line for line in output.splitlines() if "eprecat" in line]
    assert len(list(tmp_path.glob("anger_stream-*.whl"))) == 1
