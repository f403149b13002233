"""The README's examples run: every Python block, every JSON block parses, and every shell line but those
listed in SKIPPED (each with its reason) exits 0 in a folder holding the files the examples name."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
SKIPPED = {
    r"^make (demo|test)$": "sets up the environment and runs the suite (CI runs `make test` itself)",
    r"^pip install": "installs the package (the test environment has every extra)",
    r"^anger-stream (--threshold 0\.6|--device .*)$": "needs a microphone",
    r"^arecord ": "needs a microphone",
    r"^anger-stream serve ": "runs a server until stopped (tests/test_serve.py and others start it)",
    r"^export ": "sets a secret for the servers of the next lines",
    r"--scheduler tcp://HOST": "needs a Dask cluster at HOST (tests/test_batch.py starts one)",
    r"pipecat_agent\.py": "a voice agent that plays the call in real time (tests/test_pipecat.py runs it)",
    r"^(docker|podman-compose|kubectl) ": "builds or runs the image and the stack (`make container-test` does)",
}
NEEDS = {r"^ffmpeg ": "ffmpeg"}
"""Lines that need a program `make deps` does not install (the README says so): skipped without it."""


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, text) of the README's fenced blocks in `language`."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M):
        found.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return found


def shell_lines() -> list[tuple[int, str]]:
    """(line number, command) of every line of the shell blocks, comments dropped."""
    lines = []
    for start, block in blocks("sh"):
        for offset, line in enumerate(block.splitlines()):
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                lines.append((start + offset, command))
    return lines


@pytest.fixture(scope="module")
def workspace(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the files the examples name: call.wav (a stereo call), call.flac, call.ulaw, folders of
    recordings, and site.json from the README's settings block."""
    d = tmp_path_factory.mktemp("readme")
    x, rate = sf.read(str(speech_wav), dtype="float32")
    stereo = np.stack([x, 0.5 * x], axis=1)
    sf.write(str(d / "call.wav"), stereo, rate, subtype="PCM_16")
    sf.write(str(d / "call.flac"), stereo, rate)
    subprocess.run(["sox", str(d / "call.wav"), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw",
                    str(d / "call.ulaw")], check=True)  # fmt: skip
    if shutil.which("ffmpeg"):
        subprocess.run(["ffmpeg", "-loglevel", "quiet", "-i", str(d / "call.wav"), str(d / "call.m4a")], check=True)
    for folder, name in (("calls", "call.wav"), ("calls", "other.wav"), ("more/a", "b.wav")):
        (d / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(speech_wav, d / folder / name)
    for folder in ("stereo-calls", "calm-calls"):
        (d / folder).mkdir()
        shutil.copy(d / "call.wav", d / folder / "call.wav")
    settings = [b for _, b in blocks("json") if b.lstrip().startswith('{"threshold"')]
    (d / "site.json").write_text(settings[0], encoding="utf-8")
    return d


@pytest.mark.parametrize(("line", "command"), shell_lines(), ids=[f"line{n}" for n, _ in shell_lines()])
def test_shell_example_runs(line: int, command: str, workspace: Path) -> None:
    for pattern, reason in SKIPPED.items():
        if re.search(pattern, command):
            pytest.skip(reason)
    for pattern, program in NEEDS.items():
        if re.search(pattern, command) and not shutil.which(program):
            pytest.skip(f"needs {program}, which `make deps` does not install (the README says so)")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=workspace, env=env, capture_output=True, timeout=180
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, f"README line {line}: {command}\n{stderr}"
    assert "Traceback" not in stderr and "error:" not in stderr, f"README line {line}: {command}\n{stderr}"


@pytest.mark.parametrize(("line", "code"), blocks("python"), ids=[f"line{n}" for n, _ in blocks("python")])
def test_python_example_runs(line: int, code: str, workspace: Path) -> None:
    if "pipecat" in code and importlib.util.find_spec("pipecat") is None:
        pytest.skip('needs the pipecat extra: pip install "anger-stream[pipecat]"')
    result = subprocess.run([sys.executable, "-c", code], cwd=workspace, capture_output=True, timeout=120)
    assert result.returncode == 0, f"README line {line}:\n{result.stderr.decode()}"


@pytest.mark.parametrize(("line", "text"), blocks("json"), ids=[f"line{n}" for n, _ in blocks("json")])
def test_json_example_parses(line: int, text: str) -> None:
    decoder, rest, values = json.JSONDecoder(), text.strip(), 0
    while rest:
        _, end = decoder.raw_decode(rest)
        rest, values = rest[end:].strip(), values + 1
    assert values >= 1, f"README line {line}"
