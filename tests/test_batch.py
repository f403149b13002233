"""`anger-stream batch`: a real LocalCluster and a real `dask scheduler` + `dask worker`, error lines, --resume,
equality with the single-file AngerDetector.score() path, and the live detector's event logic."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anger_stream.batch import CHUNK_BYTES, CHUNK_FILES, chunks, find_recordings, summarise
from anger_stream.detector import AngerDetector
from anger_stream.events import AngerEnd, AngerStart
from anger_stream.sources import InputError
from anger_stream.sources.file import read_file

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BIN = Path(sys.executable).parent
GOOD = {"speech16k.wav", "call_mulaw8k.wav", "stereo44k.flac", "speech.ogg", "speech.mp3", "nested.flac"}
BAD = {"empty.wav", "no_frames.wav", "corrupt.wav"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "anger-stream"), *args], capture_output=True, text=True, timeout=timeout)


def read_lines(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in lines}
    assert len(by_name) == len(lines), "one line per recording"
    return by_name


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "distributed." not in stderr, stderr  # no Dask logging noise


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic speech in several formats, rates and channel counts, a nested folder and three bad files."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox")
    d = tmp_path_factory.mktemp("archive")
    raw = d / "raw.voice"  # not an audio extension: the folder walk skips it
    text = "I have been waiting on the phone for an hour and nobody can tell me where my order is."
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    sox = ["sox", "-t", "wav", str(raw)]
    subprocess.run([*sox, "-r", "16000", "-c", "1", "-b", "16", str(d / "speech16k.wav")], check=True)
    subprocess.run([*sox, "-r", "8000", "-c", "1", "-e", "mu-law", str(d / "call_mulaw8k.wav")], check=True)
    subprocess.run([*sox, "-r", "44100", "-c", "2", str(d / "stereo44k.flac")], check=True)
    subprocess.run([*sox, str(d / "speech.ogg")], check=True)
    samples, rate = sf.read(str(d / "speech16k.wav"), dtype="float32")
    sf.write(str(d / "speech.mp3"), samples, rate, format="MP3")
    (d / "sub").mkdir()
    subprocess.run([*sox, "-r", "22050", str(d / "sub" / "nested.flac")], check=True)
    (d / "empty.wav").write_bytes(b"")
    sf.write(str(d / "no_frames.wav"), np.zeros(0, dtype=np.float32), 16000)
    (d / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (d / "notes.txt").write_text("not audio")
    return d


@pytest.fixture(scope="module")
def local_run(
    clips: Path, model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    """The archive scored on the default engine: a LocalCluster of 2 worker processes."""
    out = tmp_path_factory.mktemp("out") / "results.jsonl"
    proc = run_cli("batch", str(clips), "--out", str(out), "--workers", "2", "--model", str(model))
    return proc, out


def test_local_cluster_writes_one_line_per_recording(local_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, out = local_run
    assert proc.returncode == 3, proc.stderr  # some recordings failed: the input-error code
    assert_clean_stderr(proc.stderr)
    assert "3 of 9 recordings could not be scored" in proc.stderr
    lines = read_lines(out)
    assert set(lines) == GOOD | BAD
    for name in GOOD:
        r = lines[name]
        assert r["error"] is None
        assert r["duration"] == pytest.approx(lines["speech16k.wav"]["duration"], abs=0.01)
        assert len(r["windows"]) >= 5
        scored = [p for p in r["windows"] if p is not None]
        assert r["p_max"] == max(scored)
        assert r["angry_share"] == pytest.approx(np.mean([p >= 0.6 for p in scored]), abs=1e-4)
        assert all(0 <= a < b <= r["duration"] + 0.01 for a, b in r["segments"])
    assert lines["call_mulaw8k.wav"]["sample_rate"] == 8000
    assert lines["stereo44k.flac"]["sample_rate"] == 44100
    for name in BAD:
        r = lines[name]
        assert r["error"] and "\n" not in r["error"] and name in r["error"]
        assert r["windows"] is None and r["duration"] is None
    assert "zero frames" in lines["no_frames.wav"]["error"]


def test_windows_equal_single_file_score(local_run: tuple[subprocess.CompletedProcess, Path], model: Path) -> None:
    lines = read_lines(local_run[1])
    detector = AngerDetector(model)
    for name in GOOD:
        expected = detector.score(*read_file(lines[name]["path"]))
        got = np.array([np.nan if p is None else p for p in lines[name]["windows"]])
        np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True, err_msg=name)


def test_resume_after_a_crash_appends_only_the_missing(
    local_run: tuple[subprocess.CompletedProcess, Path], clips: Path, model: Path, tmp_path: Path
) -> None:
    full = local_run[1].read_text().splitlines(keepends=True)
    bad = [line for line in full if json.loads(line)["error"] is not None]
    good = [line for line in full if json.loads(line)["error"] is None]
    out = tmp_path / "results.jsonl"
    out.write_text("".join(bad + good[:1]) + good[1][:25])  # the failures, one line, a crash in the next
    proc = run_cli("batch", str(clips), "--out", str(out), "--resume", "--workers", "1", "--model", str(model))
    assert proc.returncode == 0, proc.stderr  # every recording of this run scored
    assert "4 of 9 recordings already in" in proc.stderr
    lines = out.read_text().splitlines(keepends=True)
    assert lines[:4] == bad + good[:1]
    assert len(lines) == 9 and set(read_lines(out)) == GOOD | BAD


def test_ctrl_c_keeps_the_finished_lines(clips: Path, model: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group (as a terminal sends it): exit 130, whole lines, no tracebacks."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(160):  # hard links: distinct paths (symlinks to one file would be scored once)
        os.link(clips / "speech16k.wav", archive / f"call{i:03d}.wav")
    out = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [str(BIN / "anger-stream"), "batch", str(archive), "--out", str(out), "--model", str(model)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a foreground job has it
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert_clean_stderr(stderr)
    assert "rerun with --resume" in stderr
    lines = read_lines(out)
    assert 2 <= len(lines) < 160 and all(r["error"] is None for r in lines.values())


@pytest.fixture
def dask_cluster(tmp_path: Path) -> str:
    """A `dask scheduler` and a `dask worker` as separate processes on loopback; yields the address."""
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(
            subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        yield address
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_existing_scheduler_gives_the_same_lines(
    dask_cluster: str, local_run: tuple[subprocess.CompletedProcess, Path], clips: Path, model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "remote.jsonl"
    args = ["--scheduler", dask_cluster, "--model", str(model)]
    proc = run_cli("batch", str(clips / "*.wav"), str(clips / "sub"), "--out", str(out), *args)
    assert proc.returncode == 3, proc.stderr
    assert_clean_stderr(proc.stderr)
    remote, local = read_lines(out), read_lines(local_run[1])
    assert set(remote) == {"speech16k.wav", "call_mulaw8k.wav", "nested.flac"} | BAD
    for name, r in remote.items():
        assert r == local[name]


def test_no_files_is_an_input_error(tmp_path: Path) -> None:
    proc = run_cli("batch", str(tmp_path), str(tmp_path / "*.flac"), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("anger-stream: error: no audio files found in")
    assert not (tmp_path / "r.jsonl").exists()


def test_existing_output_needs_resume_or_overwrite(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("")
    proc = run_cli("batch", str(clips), "--out", str(out))
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_model_is_a_model_error(clips: Path, tmp_path: Path) -> None:
    proc = run_cli("batch", str(clips), "--out", str(tmp_path / "r.jsonl"), "--model", str(tmp_path / "none.onnx"))
    assert proc.returncode == 5 and "model file not found" in proc.stderr


def test_find_recordings_walks_folders_and_expands_globs(clips: Path) -> None:
    warnings: list[str] = []
    found = find_recordings([str(clips), str(clips / "*.wav"), "/nowhere/*.wav"], warnings.append)
    names = [Path(p).name for p in found]
    assert len(names) == len(set(names)) == len(GOOD | BAD)  # duplicates dropped, notes.txt skipped
    assert all(Path(p).is_absolute() for p in found)
    assert warnings == ["no audio files match /nowhere/*.wav"]
    with pytest.raises(InputError, match="no such file: .*missing.wav"):
        find_recordings([str(clips), str(clips / "missing.wav")], warnings.append)


def test_chunks_group_short_files_and_keep_long_ones_alone(tmp_path: Path) -> None:
    sizes = [10] * (CHUNK_FILES + 3) + [CHUNK_BYTES + 1, 10]
    paths = []
    for i, size in enumerate(sizes):
        (tmp_path / f"{i:02d}.wav").write_bytes(b"x" * size)
        paths.append(str(tmp_path / f"{i:02d}.wav"))
    got = list(chunks([*paths, str(tmp_path / "missing.wav")]))
    assert [len(c) for c in got] == [CHUNK_FILES, 3, 1, 2]
    assert [p for c in got for p in c] == [*paths, str(tmp_path / "missing.wav")]


def test_a_task_that_fails_is_retried_file_by_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk whose task raises (e.g. a worker that died on one file) costs only that file its line."""
    from distributed import Client

    from anger_stream import batch

    def fake_score_file(path: str, job: batch.Job) -> dict:
        if path == "bad.wav":
            raise RuntimeError("worker died\ntraceback...")
        return {"path": path, "error": None}

    monkeypatch.setattr(batch, "score_file", fake_score_file)
    lines: list[dict] = []
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as client:
        batch.run(client, ["a.wav", "bad.wav", "c.wav"], batch.Job(), lines.append)
    by_path = {line["path"]: line for line in lines}
    assert sorted(by_path) == ["a.wav", "bad.wav", "c.wav"] and len(lines) == 3
    assert by_path["bad.wav"]["error"] == "RuntimeError: worker died" and by_path["a.wav"]["error"] is None


def test_segments_are_the_live_detectors(peak_model: Path) -> None:
    """Tone, noise bursts, silence: the batch segments equal the anger_start/anger_end of feed() + flush()."""
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 3) / 16000
    tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noise = (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)
    x = np.concatenate([tone, noise, tone, np.zeros(32000, np.float32), noise[:20000]])
    detector = AngerDetector(peak_model, 0.6, hold_s=0.0)
    events = [e for i in range(0, len(x), 1600) for e in detector.feed(x[i : i + 1600])] + detector.flush()
    starts = [e.onset for e in events if isinstance(e, AngerStart)]
    ends = [e.last_angry for e in events if isinstance(e, AngerEnd)]
    result = summarise(detector.analyse(x), detector.config.threshold)
    assert len(starts) == 2
    assert result["segments"] == [[round(a, 3), round(b, 3)] for a, b in zip(starts, ends, strict=True)]
    assert None in result["windows"] and result["p_max"] > 0.7


@pytest.mark.shared
def test_real_clips_equal_single_file_score(model: Path) -> None:
    from anger_stream.batch import Job, score_file

    folder = SHARED / "data" / "ased"
    if not folder.is_dir():
        pytest.skip(f"needs the project's shared data ({folder}; set ANGER_SHARED)")
    detector = AngerDetector(model)
    for path in sorted(folder.glob("angry/*.flac"))[:3]:
        line = score_file(str(path), Job(str(model)))
        expected = detector.score(*read_file(path))
        got = np.array([np.nan if p is None else p for p in line["windows"]])
        np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)


def test_fifo_device_symlink_and_truncated_file(clips: Path, model: Path, tmp_path: Path) -> None:
    """A FIFO and a device get error lines (no hang), a symlink to a listed file is scored once, a WAV cut
    short is scored with a warning saying what is missing, and the good file's line is written."""
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(clips / "speech16k.wav", archive / "good.wav")
    (archive / "link.wav").symlink_to(archive / "good.wav")
    os.mkfifo(archive / "fifo.wav")
    data = (clips / "speech16k.wav").read_bytes()
    (archive / "cut.wav").write_bytes(data[: len(data) // 2])
    out = tmp_path / "r.jsonl"
    proc = run_cli("batch", str(archive), "/dev/null", "--out", str(out), "--workers", "1", "--model", str(model))
    assert proc.returncode == 3, proc.stderr
    assert_clean_stderr(proc.stderr)
    assert "2 of 4 recordings could not be scored" in proc.stderr
    assert "1 of 4 recordings were scored with a warning" in proc.stderr
    lines = read_lines(out)
    assert set(lines) == {"good.wav", "fifo.wav", "cut.wav", "null"}
    assert lines["good.wav"]["error"] is None and lines["good.wav"]["warning"] is None
    assert lines["fifo.wav"]["error"].startswith("not a regular file (a FIFO): ")
    assert lines["null"]["error"] == "not a regular file (a character device): /dev/null"
    cut, good = lines["cut.wav"], lines["good.wav"]
    assert cut["error"] is None and cut["duration"] == pytest.approx(good["duration"] / 2, abs=0.01)
    assert cut["warning"] == f"truncated: {cut['duration']:.3f} s of the {good['duration']:.3f} s its header declares"
    n = len(cut["windows"]) - 2  # the windows wholly inside what is left are the good file's
    assert n > 0 and cut["windows"][:n] == good["windows"][:n]


def test_a_file_past_the_timeout_gets_an_error_line_and_the_job_goes_on(
    clips: Path, model: Path, tmp_path: Path
) -> None:
    """An hour of 8 kHz mu-law audio cannot be read and scored in 2 s; the short file after it still is."""
    archive = tmp_path / "archive"
    archive.mkdir()
    second = (0.1 * np.random.default_rng(2).standard_normal(8000)).astype(np.float32)
    with sf.SoundFile(str(archive / "a_long.wav"), "w", 8000, 1, subtype="ULAW") as f:
        for _ in range(3600):
            f.write(second)
    shutil.copy(clips / "speech16k.wav", archive / "b_short.wav")
    out = tmp_path / "r.jsonl"
    args = ["--out", str(out), "--workers", "1", "--model", str(model), "--timeout", "2"]
    proc = run_cli("batch", str(archive), *args)
    assert proc.returncode == 3, proc.stderr
    lines = read_lines(out)
    assert lines["a_long.wav"]["error"] == f"timed out after 2 s (see --timeout): {archive / 'a_long.wav'}"
    assert lines["b_short.wav"]["error"] is None and len(lines["b_short.wav"]["windows"]) >= 5


def test_split_channels_score_each_side_of_a_call(two_channel_call: Path, model: Path, tmp_path: Path) -> None:
    """Real speech, angry on one channel only: --channels split finds the anger on that channel alone, each
    channel's windows equal the detector's on that channel by itself; the default mix gives one stream."""
    out = tmp_path / "split.jsonl"
    args = ["--workers", "1", "--model", str(model)]
    proc = run_cli("batch", str(two_channel_call), "--out", str(out), "--channels", "split", *args)
    assert proc.returncode == 0, proc.stderr
    line = read_lines(out)["call_stereo.wav"]
    assert line["windows"] is None and line["segments"] is None and line["angry_share"] is None
    agent, customer = line["channels"]
    assert (agent["channel"], customer["channel"]) == (0, 1)
    assert agent["segments"] == [] and agent["p_max"] < 0.6
    assert customer["segments"] and customer["p_max"] > 0.7 and line["p_max"] == customer["p_max"]
    stereo, rate = sf.read(str(two_channel_call), dtype="float32")
    detector = AngerDetector(model)
    for side in (agent, customer):
        expected = detector.score(stereo[:, side["channel"]], rate)
        got = np.array([np.nan if p is None else p for p in side["windows"]])
        np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)
    mixed = tmp_path / "mix.jsonl"
    proc = run_cli("batch", str(two_channel_call), "--out", str(mixed), *args)
    assert proc.returncode == 0, proc.stderr
    line = read_lines(mixed)["call_stereo.wav"]
    assert line["channels"] is None
    np.testing.assert_allclose(
        np.array([np.nan if p is None else p for p in line["windows"]]),
        detector.score(stereo.mean(axis=1), rate),
        atol=1e-6,
        equal_nan=True,
    )
    proc = run_cli("batch", str(two_channel_call), "--out", str(tmp_path / "x.jsonl"), "--channels", "left")
    assert proc.returncode == 2 and "--channels must be one of mix, split" in proc.stderr


def test_segments_reproduce_a_live_patience_2(two_channel_call: Path, model: Path, tmp_path: Path) -> None:
    """The detector options reach the workers: batch segments with --threshold 0.85 --patience 2 are the
    anger_start onsets and the anger_end's last angry windows of the live detector run with the same options
    (here one segment, where patience 1 finds two)."""
    options = ["--model", str(model), "--threshold", "0.85", "--patience", "2", "--hysteresis", "0.2", "--hold", "0.6"]
    out = tmp_path / "r.jsonl"
    args = ["--out", str(out), "--channels", "split", "--workers", "1", "--quiet", *options]
    proc = run_cli("batch", str(two_channel_call), *args)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    line = read_lines(out)["call_stereo.wav"]
    for side in line["channels"]:
        live = run_cli("-i", str(two_channel_call), "--channel", str(side["channel"]), "-q", *options)
        events = [json.loads(e) for e in live.stdout.splitlines()]
        starts = [e["onset"] for e in events if e["type"] == "anger_start"]
        ends = [e["last_angry"] for e in events if e["type"] == "anger_end"]
        assert side["segments"] == [list(s) for s in zip(starts, ends, strict=True)]
    assert len(line["channels"][1]["segments"]) == 1
    settings = (line["threshold"], line["patience"], line["hysteresis"], line["hold_s"], line["min_dbfs"])
    assert settings == (0.85, 2, 0.2, 0.6, -50.0)
