"""Every command reads an input and writes an output the same way: the same bad file gives the same message
and exit code in the detector, `batch`, `report` and `calibrate`; a second writer of an output is refused;
streams, closed descriptors and names that are not UTF-8 are handled, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CLI, assert_one_line_error, run_cli

from anger_stream.files import open_output

EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 2, 3, 6
PREFIX = "anger-stream: error: "


@pytest.fixture(scope="module")
def bad(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files every command must treat alike: unusable ones and ones cut short."""
    d = tmp_path_factory.mktemp("bad")
    x, rate = sf.read(str(speech_wav), dtype="float32")
    sf.write(str(d / "whole.flac"), x, rate)
    files = {
        "empty": d / "empty.wav",
        "corrupt": d / "corrupt.wav",
        "truncated_wav": d / "truncated.wav",
        "truncated_flac": d / "truncated.flac",
        "nan": d / "nan.wav",
    }
    sf.write(str(files["nan"]), np.where(np.arange(len(x)) == 8000, np.nan, x).astype(np.float32), rate, "FLOAT")
    files["empty"].write_bytes(b"")
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["truncated_wav"].write_bytes(speech_wav.read_bytes()[: len(speech_wav.read_bytes()) // 2])
    whole = (d / "whole.flac").read_bytes()
    files["truncated_flac"].write_bytes(whole[: len(whole) // 2])
    return files


def error(result: subprocess.CompletedProcess) -> str:
    """The message of a one-line error (without the prefix)."""
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(PREFIX), err
    return err.removeprefix(PREFIX).strip()


@pytest.mark.parametrize("kind", ["empty", "corrupt", "nan", "missing", "folder"])
def test_an_unusable_input_says_the_same_in_every_command(kind: str, bad: dict[str, Path], tmp_path: Path) -> None:
    path = {"missing": tmp_path / "missing.wav", "folder": tmp_path}.get(kind) or bad[kind]
    detect = run_cli("-q", "-i", str(path))
    assert detect.returncode == EXIT_INPUT and (kind == "nan" or detect.stdout == b"")  # NaN: found mid-stream
    message = error(detect)
    assert str(path) in message
    report = run_cli("report", str(path), "-o", str(tmp_path / "c.png"))
    assert report.returncode == EXIT_INPUT and error(report) == message
    assert not (tmp_path / "c.png").exists()
    if kind == "folder":  # batch and calibrate search folders for recordings
        return
    calibrate = run_cli("calibrate", "-q", str(path))
    assert calibrate.returncode == EXIT_INPUT
    assert message in calibrate.stderr.decode().splitlines()[0]
    if kind == "missing":  # refused before anything is written: a rerun needs no --overwrite
        out = tmp_path / "r.jsonl"
        batch = run_cli("batch", str(path), "--out", str(out))
        assert batch.returncode == EXIT_INPUT and error(batch) == message == "no such file: " + str(path)
        assert not out.exists()


def test_batch_records_carry_the_detectors_messages_and_warnings(bad: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    batch = run_cli("batch", "-q", "--workers", "1", *map(str, bad.values()), "--out", str(out), timeout=120)
    assert batch.returncode == EXIT_INPUT, batch.stderr.decode()
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    for kind, path in bad.items():
        detect = run_cli("-q", "-i", str(path))
        report = run_cli("report", str(path), "-o", str(tmp_path / f"{kind}.png"))
        record = records[path.name]
        if kind.startswith("truncated"):  # scored with the audio present, and a warning saying what is missing
            warning = f"anger-stream: warning: {path}: {record['warning']}"
            assert record["warning"].startswith("truncated: ") and record["error"] is None
            assert detect.returncode == 0 and detect.stderr.decode().splitlines() == [warning]
            assert report.returncode == 0 and report.stderr.decode().splitlines()[0] == warning
            windows = [e for e in map(json.loads, detect.stdout.splitlines()) if e["type"] == "window"]
            assert [e["p"] for e in windows] == pytest.approx(record["windows"], abs=1e-3)
        else:
            assert detect.returncode == report.returncode == EXIT_INPUT
            assert error(detect) == error(report) == record["error"]


def test_an_unwritable_output_says_the_same_in_every_command(speech_wav: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results.png"
    folder.mkdir()
    nowhere = tmp_path / "no" / "such"
    for out, reason in ((nowhere / "r.png", f"there is no folder {nowhere}"), (folder, "it is a folder")):
        runs = {
            "batch": run_cli("batch", str(speech_wav), "--out", str(out)),
            "batch --resume": run_cli("batch", str(speech_wav), "--out", str(out), "--resume"),
            "report": run_cli("report", str(speech_wav), "-o", str(out)),
            "calibrate": run_cli("calibrate", "-q", str(speech_wav), "--out", str(out)),
        }
        for command, result in runs.items():
            assert result.returncode == EXIT_OUTPUT, command
            assert error(result) == f"cannot write {out}: {reason}", command


def test_report_says_what_it_wrote_and_refuses_another_extension(speech_wav: Path, tmp_path: Path) -> None:
    wrong = run_cli("report", str(speech_wav), "-o", str(tmp_path / "call.jpg"))
    assert_one_line_error(wrong, EXIT_USAGE, "call.jpg", ".png")
    assert not (tmp_path / "call.jpg").exists()
    out = tmp_path / "call.png"
    done = run_cli("report", str(speech_wav), "-o", str(out))
    assert done.returncode == 0 and out.read_bytes().startswith(b"\x89PNG")
    assert done.stderr.decode().startswith(f"anger-stream: wrote {out} (1400x600 px): speech16k.wav: ")


@pytest.mark.parametrize(
    ("content", "words"),
    [(b'{"p_max": 0.5}\n', ["line 1", 'without a "path"']), (b"\n{oops\n", ["line 2", "not JSON"])],
    ids=["no-path", "not-json"],
)
def test_a_file_that_is_not_batch_results_is_refused_by_report_and_resume(
    content: bytes, words: list[str], speech_wav: Path, tmp_path: Path
) -> None:
    results = tmp_path / "r.jsonl"
    results.write_bytes(content)
    report = run_cli("report", str(results), "--path", "x.wav", "-o", str(tmp_path / "c.png"))
    assert_one_line_error(report, EXIT_INPUT, str(results), *words)
    resume = run_cli("batch", str(speech_wav), "--out", str(results), "--resume")
    assert_one_line_error(resume, EXIT_INPUT, "--resume", str(results), *words)
    assert results.read_bytes() == content


@pytest.mark.parametrize("mode", ["new", "resume", "overwrite"])
def test_a_second_writer_of_an_output_is_refused(mode: str, speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with open_output(out, "new"):  # another process's batch, mid-run
        flags = {"new": [], "resume": ["--resume"], "overwrite": ["--overwrite"]}[mode]
        result = run_cli("batch", str(speech_wav), "--out", str(out), *flags)
        assert_one_line_error(result, EXIT_OUTPUT, str(out), "another anger-stream process")
        report = run_cli("report", str(speech_wav), "-o", str(tmp_path / "r.png"))
        assert report.returncode == 0  # other outputs are free
    assert out.read_bytes() == b""


@pytest.mark.parametrize("flags", [[], ["--resume"]], ids=["new", "resume"])
def test_two_batches_on_one_output_race_and_one_is_refused(flags: list[str], speech_wav: Path, tmp_path: Path) -> None:
    """Two real `batch` runs started together on one --out: one scores everything once, the other exits with
    one line; no record is lost or written twice."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(24):
        os.link(speech_wav, archive / f"call{i:02d}.wav")
    out = tmp_path / "r.jsonl"
    command = [CLI, "batch", "-q", "--workers", "1", str(archive), "--out", str(out), *flags]
    results: list[subprocess.CompletedProcess] = []
    barrier = threading.Barrier(2)

    def start() -> None:
        barrier.wait()
        results.append(subprocess.run(command, capture_output=True, timeout=180))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 and codes[1] in (EXIT_USAGE, EXIT_OUTPUT), [r.stderr for r in results]
    refused = next(r for r in results if r.returncode)
    assert error(refused).startswith(str(out))
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert sorted(paths) == sorted(str(p) for p in archive.iterdir())


def test_streams_that_cannot_seek_are_read(speech_wav: Path, tmp_path: Path) -> None:
    reference = run_cli("-q", "-i", str(speech_wav))
    windows = [line for line in reference.stdout.splitlines() if b'"window"' in line]
    wav = speech_wav.read_bytes()
    fifo = tmp_path / "call.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(wav,))
    writer.start()
    runs = {
        "fifo": run_cli("-q", "-i", str(fifo)),
        "/dev/stdin": run_cli("-q", "-i", "/dev/stdin", stdin=wav),
        "<(cat)": subprocess.run(
            ["bash", "-c", f'"{CLI}" -q -i <(cat "{speech_wav}")'], capture_output=True, timeout=60
        ),
    }
    writer.join()
    for name, result in runs.items():
        assert result.returncode == 0 and result.stderr == b"", (name, result.stderr)
        assert [line for line in result.stdout.splitlines() if b'"window"' in line] == windows, name


def test_a_name_that_is_not_utf8_works_in_every_command(speech_wav: Path, tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.wav")
    path = tmp_path / name
    path.write_bytes(speech_wav.read_bytes())
    detect = run_cli("-q", "-i", str(path))
    assert detect.returncode == 0 and detect.stderr == b""
    report = run_cli("report", str(path), "-o", str(tmp_path / "c.png"))
    assert report.returncode == 0 and b"caf\\xe9.wav" in report.stderr
    out = tmp_path / "r.jsonl"
    batch = run_cli("batch", "-q", "--workers", "1", str(path), "--out", str(out), timeout=120)
    assert batch.returncode == 0 and batch.stderr == b"", batch.stderr
    assert json.loads(out.read_text())["path"] == str(path)
    missing = run_cli("-q", "-i", str(tmp_path / os.fsdecode(b"\xff.wav")))
    assert_one_line_error(missing, EXIT_INPUT, "\\xff.wav")


def test_closed_and_full_descriptors(speech_wav: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.wav")
    no_stdin = subprocess.run([CLI, "-i", "-"], stdin=subprocess.DEVNULL, capture_output=True)
    assert_one_line_error(no_stdin, EXIT_INPUT, "no audio on standard input")
    closed = subprocess.run(["bash", "-c", f'"{CLI}" -i - <&-'], capture_output=True)
    assert_one_line_error(closed, EXIT_INPUT, "standard input is closed")
    no_stderr = subprocess.run(["bash", "-c", f'"{CLI}" -i "{missing}" 2>&-'], capture_output=True)
    assert no_stderr.returncode == EXIT_INPUT and no_stderr.stdout == b"" and no_stderr.stderr == b""
    full = subprocess.run(["bash", "-c", f'"{CLI}" -i "{missing}" 2>/dev/full'], capture_output=True)
    assert full.returncode == EXIT_INPUT and full.stdout == b""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--device", "USB Audio"], ["--device", "--input"]),
        (["--json"], ["--json", "--list-devices"]),
        (["--format", "mulaw"], ["--format", "standard input"]),
    ],
    ids=["device", "json", "format"],
)
def test_options_that_would_be_ignored_are_refused(args: list[str], words: list[str], speech_wav: Path) -> None:
    assert_one_line_error(run_cli("-i", str(speech_wav), *args), EXIT_USAGE, *words)


def test_json_without_list_devices_does_not_open_the_microphone() -> None:
    assert_one_line_error(run_cli("--json"), EXIT_USAGE, "--json", "--list-devices")


def test_raw_stdin_warns_for_whichever_of_format_and_rate_is_missing(speech_wav: Path) -> None:
    raw = bytes(1600)
    only_format = run_cli("-q", "-i", "-", "--format", "mulaw", stdin=raw)
    assert only_format.returncode == 0
    assert "raw mulaw at 16000 Hz (give --rate" in only_format.stderr.decode()
    split = run_cli("-i", "-", "--channels", "split", stdin=raw)
    assert_one_line_error(split, EXIT_USAGE, "--channels", "not of standard input")


def test_serve_errors_never_reach_stdout_with_stderr_closed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            ["bash", "-c", f'"{CLI}" serve --audiosocket 127.0.0.1:{port} 2>&-'], capture_output=True, timeout=60
        )
    assert result.returncode == EXIT_INPUT and result.stdout == b"" and result.stderr == b""


def test_an_empty_folder_is_one_line(tmp_path: Path) -> None:
    for command in (["batch", str(tmp_path), "--out", str(tmp_path / "r.jsonl")], ["calibrate", str(tmp_path)]):
        assert_one_line_error(run_cli(*command), EXIT_INPUT, f"no audio files found in {tmp_path}")
    assert not (tmp_path / "r.jsonl").exists()


def test_usage_mistakes_of_batch_and_model_are_one_line(speech_wav: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "r.jsonl")
    many = run_cli("batch", str(speech_wav), "--out", out, "--workers", str(64 * (os.cpu_count() or 1)))
    assert_one_line_error(many, EXIT_USAGE, "--workers", "cores")
    bad = run_cli("batch", str(speech_wav), "--out", out, "--scheduler", "ht!tp:::")
    assert_one_line_error(bad, EXIT_USAGE, "--scheduler ht!tp:::")
    folder = run_cli("-i", str(speech_wav), "--model", str(tmp_path))
    assert_one_line_error(folder, 5, f"model is a folder, not an ONNX file: {tmp_path}")
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as nobody")
def test_an_unreadable_file_says_permission_denied(speech_wav: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "secret.wav"
    path.write_bytes(speech_wav.read_bytes())
    path.chmod(0o600)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", CLI]
    for args in (["-q", "-i", str(path)], ["report", str(path), "-o", "/tmp/never.png"]):
        env = {**os.environ, "HOME": "/tmp"}  # onnxruntime warns on import where HOME is not writable
        result = subprocess.run([*as_nobody, *args], capture_output=True, timeout=60, cwd="/", env=env)
        assert_one_line_error(result, EXIT_INPUT, f"cannot read {path}: permission denied")


def test_option_files_say_what_is_wrong_in_the_same_words(speech_wav: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    config = run_cli("-i", str(speech_wav), "--config", str(missing))
    assert_one_line_error(config, EXIT_USAGE, f"--config: no such file: {missing}")
    labels = run_cli("calibrate", str(speech_wav), "--labels", str(tmp_path))
    assert_one_line_error(labels, EXIT_USAGE, f"--labels: is a folder, not a file: {tmp_path}")


def test_a_recording_is_decoded_into_one_array(tmp_path: Path) -> None:
    """A minute of 48 kHz stereo decodes with about its own size in memory, not twice it (blocks then joined)."""
    import tracemalloc

    import soundfile as sf

    from anger_stream.sources.file import read_recording

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros((48_000 * 60, 2), dtype=np.int16), 48_000)
    tracemalloc.start()
    try:
        recording = read_recording(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert recording.samples.shape == (48_000 * 60, 2)
    assert peak < 1.3 * recording.samples.nbytes, peak / recording.samples.nbytes
