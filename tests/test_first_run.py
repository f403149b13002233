"""The command line as a new user meets it: the console script in a subprocess, a runtime-only install, standard
input with and without a header, no microphone, the demo, and the options every command shares."""

from __future__ import annotations

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
from conftest import CLI, assert_one_line_error, onnx_model, peak_nodes, pulse_daemon, read_mono, run_cli, window_probs
from conftest import json_lines as lines
from onnx import helper

from anger_stream import AngerDetector

REPO = Path(__file__).resolve().parents[1]
EXIT_USAGE, EXIT_INPUT, EXIT_DEVICE, EXIT_MODEL = 2, 3, 4, 5
SHARED_OPTIONS = ["--threshold", "--model", "--min-dbfs", "--patience", "--hysteresis", "--hold", "--config"]


# --- options before a subcommand, usage errors, help -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--threshold", "0.9", "batch", "calls/", "--out", "r.jsonl"], "--threshold"),
        (["--model", "/nonexistent.onnx", "serve", "--audiosocket", "127.0.0.1:0"], "--model"),
        (["--model", "/nonexistent.onnx", "report", "s.wav", "-o", "y.png"], "--model"),
        (["-i", "s.wav", "serve", "--audiosocket", "127.0.0.1:0"], "--input"),
    ],
    ids=["threshold-batch", "model-serve", "model-report", "input-serve"],
)
def test_options_before_a_subcommand_are_refused(args: list[str], option: str, tmp_path: Path) -> None:
    result = subprocess.run([CLI, *args], capture_output=True, timeout=60, cwd=tmp_path)
    assert_one_line_error(result, EXIT_USAGE, option, f"`{args[2]}`")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--hop", "0.00001"], ["--hop", "one sample"]),
        (["--window", "inf"], ["--window", "finite"]),
        (["--window", "1e9"], ["--window", "at most 10"]),
        (["--min-dbfs", "nan"], ["--min-dbfs", "finite"]),
        (["--threshold", "1.5"], ["--threshold"]),
        (["--threshold", "high"], ["--threshold", "number"]),
        (["--patience", "0"], ["--patience"]),
        (["--no-such-option"], ["--no-such-option", "-h"]),
        (["--input", "-", "--rate", "383999"], ["--rate", "383999"]),
        (["--input", "-", "--rate", "7999.5"], ["--rate"]),
        (["--input", "-", "--format", "u8"], ["--format", "mulaw"]),
        (["--rate", "8000"], ["--input -"]),
    ],
    ids=["hop", "window-inf", "window-huge", "min-dbfs-nan", "threshold", "threshold-text", "patience", "unknown",
         "rate-filter", "rate-fraction", "format", "rate-without-stdin"],
)  # fmt: skip
def test_usage_errors_are_one_line_at_start(speech_wav: Path, args: list[str], words: list[str]) -> None:
    input_args = [] if "--input" in args else ["--input", str(speech_wav)]
    result = run_cli(*input_args, *args, stdin=b"")
    assert_one_line_error(result, EXIT_USAGE, *words)


@pytest.mark.parametrize("command", [[], ["serve"], ["batch"], ["report"]], ids=["detect", "serve", "batch", "report"])
def test_help_fits_80_columns_and_shares_the_detector_options(command: list[str]) -> None:
    result = subprocess.run([CLI, *command, "-h"], capture_output=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<bool>" not in text and "╭" not in text
    helps = {}
    for option in SHARED_OPTIONS:
        match = re.search(rf"^\s+{option} \S+\s.+?(?=^\s+--?[a-z])", text, re.M | re.S)
        assert match, f"{option} missing from {command} help"
        helps[option] = re.sub(r"\[envvar:\w+\]", "", "".join(match.group(0).split()))  # serve's environment
    reference = subprocess.run([CLI, "-h"], capture_output=True, env={**os.environ, "COLUMNS": "80"}).stdout.decode()
    for option, help_text in helps.items():
        assert help_text in "".join(reference.split()), option


def test_quiet_and_events_only_where_they_apply() -> None:
    applies = (([], ["--quiet", "--events-only"]), (["serve"], ["--events-only"]), (["batch"], ["--quiet"]))
    for command, flags in applies:
        text = subprocess.run([CLI, *command, "--help"], capture_output=True, timeout=60).stdout.decode()
        for flag in flags:
            assert flag in text, (command, flag)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and re.fullmatch(rb"anger-stream \d+\.\d+\.\d+\n", result.stdout)


# --- settings file -------------------------------------------------------------------------------------------


def test_config_file_is_applied_and_options_win(speech_wav: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"threshold": 0.0, "patience": 2, "hysteresis": 0.05, "model": "int8"}))
    events = lines(run_cli("--input", str(speech_wav), "--config", str(settings), "--events-only"))
    start = next(e for e in events if e["type"] == "anger_start")
    assert start["t"] == pytest.approx(1.8) and start["onset"] == 0.0  # patience 2: confirmed by the second window
    x, rate = read_mono(speech_wav)
    int8 = AngerDetector("int8").score(x, rate)
    windows = window_probs(lines(run_cli("--input", str(speech_wav), "--config", str(settings))))
    np.testing.assert_allclose(windows, int8, atol=1e-3, equal_nan=True)
    high = lines(run_cli("--input", str(speech_wav), "--config", str(settings), "--threshold", "1", "--events-only"))
    assert [e["type"] for e in high] == ["status", "status"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"threshold": 0.7, "treshold": 0.8}', ["unknown setting", "treshold"]),
        ('{"threshold": "high"}', ["threshold", "number"]),
        ('{"patience": 1.5}', ["patience"]),
        ('{"min_dbfs": NaN}', ["min_dbfs", "finite"]),
        ('{"model": 3}', ["model"]),
        ("[0.7]", ["JSON object"]),
        ("threshold = 0.7", ["JSON"]),
    ],
    ids=["unknown-key", "string", "fraction", "nan", "model-number", "list", "not-json"],
)
def test_bad_config_files_are_usage_errors(speech_wav: Path, tmp_path: Path, content: str, words: list[str]) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(content)
    for command in ([], ["serve", "--audiosocket", "127.0.0.1:0"]):
        args = [*command, "--config", str(settings)] + ([] if command else ["--input", str(speech_wav)])
        assert_one_line_error(run_cli(*args), EXIT_USAGE, str(settings), *words)


# --- models --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_output_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_model(
        tmp_path_factory.mktemp("model") / "two.onnx",
        [helper.make_node("Slice", ["audio", "starts", "ends", "axes"], ["p"])],
        ["batch", 2],
        {"starts": [0], "ends": [2], "axes": [1]},
    )


def test_a_model_with_the_wrong_output_exits_5_before_any_start_line(speech_wav: Path, two_output_model: Path) -> None:
    result = run_cli("--input", str(speech_wav), "--model", str(two_output_model))
    assert_one_line_error(result, EXIT_MODEL, "not an anger model", "outputs")
    served = run_cli("serve", "--audiosocket", "127.0.0.1:0", "--model", str(two_output_model), timeout=30)
    assert_one_line_error(served, EXIT_MODEL, "not an anger model")


def test_nan_from_the_model_while_running_exits_5(tmp_path: Path) -> None:
    model = onnx_model(
        tmp_path / "nan.onnx",
        [
            *peak_nodes(),
            helper.make_node("Div", ["peak", "sixty"], ["r"]),
            helper.make_node("Sub", ["one", "r"], ["q"]),
            helper.make_node("Sqrt", ["q"], ["p"]),
        ],
        ["batch"],
        {"sixty": 60.0, "one": 1.0},
    )
    noise = tmp_path / "noise.wav"
    sf.write(str(noise), 0.1 * np.random.default_rng(0).standard_normal(48000), 16000)
    result = run_cli("--input", str(noise), "--model", str(model))
    assert_one_line_error(result, EXIT_MODEL, "not a probability", stdout=None)
    assert [e["type"] for e in lines(result)] == ["status"]  # the start line, then no window with a made-up p


# --- standard input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["wav", "flac", "ogg"])
def test_a_wav_flac_or_ogg_stream_on_stdin_is_decoded(speech_wav: Path, container: str) -> None:
    piped = subprocess.run(
        f"sox '{speech_wav}' -t {container} - | '{CLI}' -i -", shell=True, capture_output=True, timeout=60
    )
    assert piped.returncode == 0, piped.stderr.decode()
    assert piped.stderr == b""
    events = lines(piped)
    assert events[0]["format"] == container and events[0]["sample_rate"] == 16000
    from_file = window_probs(lines(run_cli("--input", str(speech_wav))))
    atol = 0.05 if container == "ogg" else 1e-4  # Vorbis is lossy
    np.testing.assert_allclose(window_probs(events), from_file, atol=atol, equal_nan=True)


def test_a_stream_with_a_header_takes_no_raw_format(speech_wav: Path) -> None:
    result = run_cli("-i", "-", "--format", "mulaw", "--rate", "8000", stdin=speech_wav.read_bytes())
    assert_one_line_error(result, EXIT_USAGE, "WAV", "headerless")


def test_headerless_stdin_without_format_is_read_as_documented_with_a_warning(speech_wav: Path) -> None:
    x, _ = read_mono(speech_wav)
    result = run_cli("--input", "-", stdin=np.round(x * 32767).astype("<i2").tobytes())
    assert result.returncode == 0
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "warning" in err and "--format" in err and "--rate" in err, err
    np.testing.assert_allclose(window_probs(lines(result)), AngerDetector().score(x), atol=1e-3, equal_nan=True)


def test_a_broken_stream_on_stdin_is_an_input_error() -> None:
    result = run_cli("--input", "-", stdin=b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    assert_one_line_error(result, EXIT_INPUT, "standard input")


# --- C libraries, microphones ----------------------------------------------------------------------------


def test_decoder_chatter_is_muted_for_files(speech_wav: Path, tmp_path: Path) -> None:
    x, rate = read_mono(speech_wav)
    mp3 = tmp_path / "speech.mp3"
    sf.write(str(mp3), x, rate)
    damaged = bytearray(mp3.read_bytes())
    for i in np.random.default_rng(0).integers(2000, len(damaged) - 100, 60):
        damaged[i] ^= 0xFF  # libmpg123 prints a line per broken frame to fd 2
    mp3.write_bytes(bytes(damaged))
    result = run_cli("--input", str(mp3))
    assert result.returncode == 0
    assert result.stderr == b"", result.stderr.decode()


def test_no_audio_system_no_microphone(tmp_path: Path) -> None:
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/no-server", "PULSE_RUNTIME_PATH": str(tmp_path)}
    listed = subprocess.run([CLI, "--list-devices"], env=env, capture_output=True, timeout=30)
    assert listed.returncode == 0 and listed.stdout == b""
    assert "no audio input devices" in listed.stderr.decode() and "--input" in listed.stderr.decode()
    as_json = subprocess.run([CLI, "--list-devices", "--json"], env=env, capture_output=True, timeout=30)
    assert as_json.returncode == 0 and as_json.stdout == b""
    listen = subprocess.run([CLI, "--threshold", "0.6"], env=env, capture_output=True, timeout=30)
    assert_one_line_error(listen, EXIT_DEVICE, "no microphone", "--list-devices", "--input")


def test_an_empty_pulseaudio_no_microphone(tmp_path: Path) -> None:
    with pulse_daemon(tmp_path) as env:  # a sound server without any source
        listen = subprocess.run([CLI], env=env, capture_output=True, timeout=30)
    assert_one_line_error(listen, EXIT_DEVICE, "--list-devices", "--input")


# --- the demo ------------------------------------------------------------------------------------------------


def test_demo_file_shows_calm_then_anger() -> None:
    if not (shutil.which("make") and shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs make, espeak-ng and sox")
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        ["make", "-s", "-o", "deps", "demo-file", f"BIN={bin_dir}"], cwd=REPO, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    events = lines(result)
    windows = [e for e in events if e["type"] == "window"]
    starts = [e for e in events if e["type"] == "anger_start"]
    assert len(starts) == 1, "the calm line must not start anger, the angry one must"  # --patience 2
    calm = [w for w in windows if w["t_end"] <= starts[0]["onset"]]
    assert len(calm) >= 4
    assert any(e["type"] == "anger_end" for e in events)


# --- a runtime-only install ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runtime_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install` of the project without extras into a fresh venv (no system site packages); its bin/."""
    root = tmp_path_factory.mktemp("runtime")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "anger_stream", source / "anger_stream", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(source)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot build a runtime-only venv here: {exc}; {detail.decode(errors='replace')[-300:]}")
    return venv / "bin"


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["batch", "{wav}", "--out", "{tmp}/r.jsonl"], "batch"),
        (["report", "{wav}", "-o", "{tmp}/r.png"], "batch"),
        (["serve", "--mediastream", "127.0.0.1:0"], "serve"),
        (["serve", "--audiosocket", "127.0.0.1:0", "--metrics", "0"], "metrics"),
    ],
    ids=["batch", "report", "serve-mediastream", "serve-metrics"],
)
def test_a_missing_extra_names_the_pip_command(
    runtime_install: Path, speech_wav: Path, tmp_path: Path, args: list[str], extra: str
) -> None:
    argv = [a.format(wav=speech_wav, tmp=tmp_path) for a in args]
    result = subprocess.run([runtime_install / "anger-stream", *argv], capture_output=True, timeout=60)
    assert_one_line_error(result, EXIT_USAGE, f'pip install "anger-stream[{extra}]"')


def test_the_packaged_int8_model_from_an_installed_package(runtime_install: Path, speech_wav: Path) -> None:
    result = subprocess.run(
        [runtime_install / "anger-stream", "--input", str(speech_wav), "--model", "int8"],
        capture_output=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr.decode()
    x, rate = read_mono(speech_wav)
    np.testing.assert_allclose(
        window_probs(lines(result)), AngerDetector("int8").score(x, rate), atol=1e-3, equal_nan=True
    )
