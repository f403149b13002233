"""Shared fixtures: the project's data folder (../shared, optional), the CLI, synthetic and real speech."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import TensorProto, helper

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CLI = str(Path(sys.executable).parent / "anger-stream")

# test actors of RAVDESS (21-24): never trained on
ANGRY_CLIP = "ravdess/Actor_22/03-01-05-02-01-01-22.flac"
CALM_CLIP = "ravdess/Actor_22/03-01-02-01-01-01-22.flac"


@pytest.fixture(scope="session")
def model() -> Path:
    """The shipped model (part of the repository and of the package)."""
    return Path(__file__).resolve().parents[1] / "models" / "anger_fcn.onnx"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"needs the project's shared data folder ({SHARED}; set ANGER_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def angry_clip(shared: Path) -> Path:
    return shared / "data" / ANGRY_CLIP


@pytest.fixture(scope="session")
def calm_clip(shared: Path) -> Path:
    return shared / "data" / CALM_CLIP


@pytest.fixture(scope="session")
def two_channel_call(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 kHz stereo WAV of real speech in which only one side is angry: channel 0 (the agent) two calm and
    neutral clips of RAVDESS actor 22, channel 1 (the customer) two angry clips of the same actor."""
    data = shared / "data"
    calm = [data / CALM_CLIP, data / "ravdess/Actor_22/03-01-01-01-02-01-22.flac"]
    angry = [data / ANGRY_CLIP, data / "ravdess/Actor_22/03-01-05-02-02-01-22.flac"]
    sides = [np.concatenate([sf.read(str(c), dtype="float32")[0] for c in clips]) for clips in (calm, angry)]
    n = max(len(side) for side in sides)
    stereo = np.stack([np.pad(side, (0, n - len(side))) for side in sides], axis=1)
    path = tmp_path_factory.mktemp("call") / "call_stereo.wav"
    sf.write(str(path), stereo, 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 s of synthetic speech at 16 kHz (espeak-ng, converted by sox)."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox")
    d = tmp_path_factory.mktemp("speech")
    raw, out = d / "raw.wav", d / "speech16k.wav"
    text = "I have been waiting on the phone for an hour and nobody can tell me where my order is."
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out


def onnx_model(path: Path, nodes: list, output_shape: list, constants: dict[str, float | list[int]]) -> Path:
    """A hand-built ONNX model from input `audio` [batch, samples] to output `p` of `output_shape`; constants
    are float scalars or int64 vectors."""
    tensors = [
        helper.make_tensor(k, TensorProto.INT64, [len(v)], v)
        if isinstance(v, list)
        else helper.make_tensor(k, TensorProto.FLOAT, [], [v])
        for k, v in constants.items()
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, output_shape)],
        tensors,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def peak_nodes() -> list:
    """Nodes computing `peak`, max |x| per window."""
    return [
        helper.make_node("Abs", ["audio"], ["abs"]),
        helper.make_node("ReduceMax", ["abs"], ["peak"], axes=[1], keepdims=0),
    ]


@pytest.fixture(scope="session")
def peak_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built ONNX model, p = sigmoid((max|x| - 60) / 10): prepared noise (crest ~4, peak >100) scores
    high, a sine (peak 36) low."""
    nodes = [
        *peak_nodes(),
        helper.make_node("Sub", ["peak", "sixty"], ["centred"]),
        helper.make_node("Div", ["centred", "ten"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
    ]
    path = tmp_path_factory.mktemp("model") / "peak.onnx"
    return onnx_model(path, nodes, ["batch"], {"sixty": 60.0, "ten": 10.0})


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 5 s of synthetic speech as 8 kHz int16: the telephony tests' caller."""
    from serve_support import make_speech

    return make_speech(tmp_path_factory.mktemp("speech"))


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1), rate


@contextmanager
def pulse_daemon(tmp_path: Path, modules: str = "") -> Iterator[dict[str, str]]:
    """A user-space PulseAudio daemon with only `modules` (config lines) loaded; yields the environment that
    points clients at it (DAEMON_PID: its process id). Skips the test without pulseaudio and its tools."""
    if not (shutil.which("pulseaudio") and shutil.which("paplay")):
        pytest.skip("needs pulseaudio and pulseaudio-utils")
    socket = tmp_path / "native"
    config = tmp_path / "daemon.pa"
    config.write_text(f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n{modules}")
    env = {**os.environ, "PULSE_RUNTIME_PATH": str(tmp_path / "run"), "PULSE_SERVER": f"unix:{socket}"}
    daemon = subprocess.Popen(
        ["pulseaudio", "-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=-1", "--realtime=no",
         "--disallow-exit", "--log-target=stderr"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, "pulseaudio did not start"
            time.sleep(0.1)
        env["DAEMON_PID"] = str(daemon.pid)
        yield env
    finally:
        daemon.kill()
        daemon.wait()


def json_lines(result: subprocess.CompletedProcess) -> list[dict]:
    """The JSON lines a command wrote to stdout."""
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def window_probs(events: list[dict]) -> np.ndarray:
    """p of every window event (NaN where silent)."""
    return np.array([np.nan if e["p"] is None else e["p"] for e in events if e["type"] == "window"])


def assert_one_line_error(
    result: subprocess.CompletedProcess, code: int, *words: str, stdout: bytes | None = b""
) -> None:
    """The command failed with `code` and one `anger-stream: error:` line naming `words`; stdout as given
    (None: not checked)."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("anger-stream: error:"), err
    for word in words:
        assert word in err, err
    if stdout is not None:
        assert result.stdout == stdout


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the installed `anger-stream` console script as a user would."""
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, timeout=timeout)
