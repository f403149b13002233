"""The Pipecat processor in real Pipecat pipelines (pipecat's own test runner) fed with real speech frames."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from conftest import read_mono
from onnx import TensorProto, helper
from serve_support import assert_same_events

from anger_stream.audio import resample
from anger_stream.detector import AngerDetector

pytest.importorskip("pipecat", reason="needs Pipecat (the pipecat extra, part of the test extra)")

from loguru import logger  # noqa: E402  (after the skip: both come with the extra)
from pipecat.frames.frames import CancelFrame, ErrorFrame, InputAudioRawFrame, OutputAudioRawFrame, TextFrame  # noqa: E402
from pipecat.tests.utils import run_test  # noqa: E402

from anger_stream.integrations.pipecat import (  # noqa: E402
    AngerEndFrame,
    AngerFrame,
    AngerProcessor,
    AngerStartFrame,
    AngerWindowFrame,
)

FRAME_S = 0.02


def frames_of(pcm: np.ndarray, rate: int) -> list[InputAudioRawFrame]:
    """int16 (samples,) or (samples, channels) cut into 20 ms input audio frames."""
    pcm = pcm.reshape(len(pcm), -1)
    step = round(FRAME_S * rate)
    return [
        InputAudioRawFrame(audio=pcm[i : i + step].tobytes(), sample_rate=rate, num_channels=pcm.shape[1])
        for i in range(0, len(pcm), step)
    ]


def int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def reference(pcm: np.ndarray, rate: int, model: Path) -> list[dict]:
    """The single-stream detector's events on the same audio, mixed down the same way."""
    detector = AngerDetector(model, 0.6, sample_rate=rate)  # the real angry clip's p stays under the default
    mono = pcm.reshape(len(pcm), -1).astype(np.float32).mean(axis=1) / 32768
    return [e.to_dict() for e in detector.feed(mono) + detector.flush()]


def run(processor: AngerProcessor, frames: list) -> list:
    down, _ = asyncio.run(run_test(processor, frames_to_send=frames))
    return list(down)


@pytest.fixture(scope="module")
def angry_16k(angry_clip: Path) -> np.ndarray:
    x, rate = read_mono(angry_clip)
    return int16(resample(x, rate, 16000))


@pytest.fixture(scope="module")
def stereo_8k(angry_clip: Path, calm_clip: Path) -> np.ndarray:
    """The angry clip on the left channel, the calm one on the right, at 8 kHz."""
    (a, rate_a), (c, rate_c) = read_mono(angry_clip), read_mono(calm_clip)
    a, c = resample(a, rate_a, 8000), resample(c, rate_c, 8000)
    c = np.pad(c, (0, max(0, len(a) - len(c))))[: len(a)]
    return int16(np.stack([a, c], axis=1))


def check_run(pcm: np.ndarray, rate: int, model: Path) -> list[AngerFrame]:
    """Run the frames through a pipeline; they come out untouched, in order, with the detector's events."""
    frames = frames_of(pcm, rate)
    payloads = [f.audio for f in frames]
    processor = AngerProcessor(model=model, threshold=0.6, windows=True, max_queue=len(frames))
    down = run(processor, frames)
    audio_out = [f for f in down if isinstance(f, InputAudioRawFrame)]
    assert len(audio_out) == len(frames) and all(a is b for a, b in zip(audio_out, frames, strict=True))
    assert [f.audio for f in audio_out] == payloads
    events = [f for f in down if isinstance(f, AngerFrame)]
    assert len(down) == len(frames) + len(events)
    assert_same_events([e.to_dict() for e in events], reference(pcm, rate, model))
    assert processor.dropped == 0
    for i, frame in enumerate(down):  # no window is reported before its audio has gone past
        if isinstance(frame, AngerWindowFrame):
            passed = sum(isinstance(f, InputAudioRawFrame) for f in down[:i])
            assert frame.event.t_end <= passed * FRAME_S + 1e-9
    return events


@pytest.mark.shared
def test_angry_speech_at_16k(angry_16k: np.ndarray, model: Path) -> None:
    events = check_run(angry_16k, 16000, model)
    kinds = [type(e) for e in events if not isinstance(e, AngerWindowFrame)]
    assert kinds == [AngerStartFrame, AngerEndFrame]  # the segment open at the end is closed by the EndFrame
    assert events[-1].event.t == pytest.approx(len(angry_16k) / 16000, abs=1e-3)


@pytest.mark.shared
def test_stereo_8k(stereo_8k: np.ndarray, model: Path) -> None:
    events = check_run(stereo_8k, 8000, model)
    assert sum(isinstance(e, AngerWindowFrame) for e in events) >= 4


@pytest.mark.shared
def test_calm_speech_only_windows_and_events_without_windows(calm_clip: Path, model: Path) -> None:
    x, rate = read_mono(calm_clip)
    pcm = int16(resample(x, rate, 16000))
    assert all(isinstance(e, AngerWindowFrame) for e in check_run(pcm, 16000, model))
    down = run(AngerProcessor(model=model, max_queue=1000), frames_of(pcm, 16000))
    assert not [f for f in down if isinstance(f, AngerFrame)]


@pytest.mark.shared
def test_other_frames_pass_and_bot_audio_is_not_scored(angry_16k: np.ndarray, model: Path) -> None:
    bot = [OutputAudioRawFrame(audio=f.audio, sample_rate=16000, num_channels=1) for f in frames_of(angry_16k, 16000)]
    text = TextFrame(text="hello")
    down = run(AngerProcessor(model=model, windows=True), [text, *bot])
    assert down == [text, *bot]  # the bot's own voice is no caller's anger


@pytest.mark.shared
def test_a_full_queue_drops_frames_counts_and_logs_them(angry_16k: np.ndarray, model: Path) -> None:
    frames = frames_of(np.tile(angry_16k, 3), 16000)  # 11.6 s sent at once: far more than a 2 s queue holds
    processor = AngerProcessor(model=model, windows=True, max_queue=100)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING", format="{message}")
    try:
        down = run(processor, frames)
    finally:
        logger.remove(sink)
    audio_out = [f for f in down if isinstance(f, InputAudioRawFrame)]
    assert all(a is b for a, b in zip(audio_out, frames, strict=True))  # dropped from scoring, not from the pipeline
    assert 0 < processor.dropped < len(frames)
    scored_s = (len(frames) - processor.dropped) * FRAME_S
    last = [f.event for f in down if isinstance(f, AngerWindowFrame)][-1]
    assert scored_s - 0.6 < last.t_end <= scored_s + 1e-6  # stream time counts the audio scored
    assert any("dropping input audio frames" in w for w in warnings)
    assert any(f"{processor.dropped} input audio frames were not scored" in w for w in warnings)


@pytest.mark.shared
def test_a_change_of_rate_ends_the_stream_and_starts_another(angry_16k: np.ndarray, model: Path) -> None:
    at_8k = int16(resample(angry_16k.astype(np.float32) / 32768, 16000, 8000))
    broken = InputAudioRawFrame(audio=b"\x01\x02\x03", sample_rate=8000, num_channels=1)  # passed on, not scored
    frames = [*frames_of(angry_16k, 16000), broken, *frames_of(at_8k, 8000)]
    down = run(AngerProcessor(model=model, threshold=0.6, windows=True, max_queue=len(frames)), frames)
    assert [f for f in down if isinstance(f, InputAudioRawFrame)] == frames
    got = [f.to_dict() for f in down if isinstance(f, AngerFrame)]
    assert_same_events(got, reference(angry_16k, 16000, model) + reference(at_8k, 8000, model))


@pytest.mark.shared
def test_cancel_stops_scoring_without_a_flush(angry_16k: np.ndarray, model: Path) -> None:
    processor = AngerProcessor(model=model, windows=True, max_queue=1000)
    cancel = CancelFrame()
    down, _ = asyncio.run(
        run_test(processor, frames_to_send=[*frames_of(angry_16k, 16000), cancel], send_end_frame=False)
    )
    assert down[-1] is cancel and processor._worker is None  # nothing is pushed after a CancelFrame


@pytest.fixture(scope="module")
def failing_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model that loads (its probe of silence gives 0) but fails on speech: p = max|x|, which is far
    above 1 for a prepared window of speech, so the detector refuses it as no probability."""
    nodes = [
        helper.make_node("Abs", ["audio"], ["abs"]),
        helper.make_node("ReduceMax", ["abs"], ["p"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "failing",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch"])],
    )
    path = tmp_path_factory.mktemp("model") / "failing.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.shared
@pytest.mark.parametrize("seconds", [1.1, None], ids=["only-the-flush-scores", "whole-clip"])
def test_a_scoring_failure_is_reported_and_the_pipeline_goes_on(
    angry_16k: np.ndarray, failing_model: Path, seconds: float | None
) -> None:
    frames = frames_of(angry_16k[: round(seconds * 16000) if seconds else None], 16000)
    processor = AngerProcessor(model=failing_model, max_queue=len(frames))
    down, up = asyncio.run(run_test(processor, frames_to_send=frames))
    assert list(down) == frames  # every frame passed, and the EndFrame was not held up
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and all("anger detection failed" in e.error and "not a probability" in e.error for e in errors)
    if seconds:  # shorter than a window: the one failure is the flush at the EndFrame
        assert len(errors) == 1


def test_missing_extra_names_the_install_command() -> None:
    code = "import sys; sys.modules['pipecat'] = None; import anger_stream.integrations.pipecat"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert 'ImportError: anger_stream.integrations.pipecat needs Pipecat: pip install "anger-stream[pipecat]"' in (
        proc.stderr
    )


AGENT = Path(__file__).resolve().parents[1] / "examples" / "pipecat_agent.py"


@pytest.mark.shared
def test_the_example_agent_tells_the_model_to_de_escalate_an_angry_caller(
    angry_16k: np.ndarray, calm_clip: Path, tmp_path: Path
) -> None:
    angry_wav, calm_wav = tmp_path / "angry.wav", tmp_path / "calm.wav"
    sf.write(angry_wav, angry_16k, 16000)
    x, rate = read_mono(calm_clip)
    sf.write(calm_wav, int16(resample(x, rate, 8000)), 8000)
    procs = [
        subprocess.Popen(
            [sys.executable, str(AGENT), str(wav)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for wav in (angry_wav, calm_wav)
    ]  # both calls at once: each plays its caller in real time
    (angry_out, angry_err), (calm_out, calm_err) = (p.communicate(timeout=120) for p in procs)
    assert [p.returncode for p in procs] == [0, 0], angry_err + calm_err
    angry = [json.loads(line) for line in angry_out.splitlines()]
    assert [o["type"] for o in angry] == ["anger_start", "llm_instruction", "llm_instruction", "anger_end"]
    start = {"type": "anger_start", "t": 1.8, "p": angry[0]["p"], "onset": 0.6, "raised_max": angry[0]["raised_max"]}
    assert angry[0] == start
    assert 0 <= angry[0]["raised_max"] <= 1  # the default model's raised-voice score
    assert "You are the customer service agent" in angry[1]["content"]  # the system prompt, then the order
    assert "De-escalate" in angry[2]["content"] and "human agent" in angry[2]["content"]
    assert angry[3]["t"] == pytest.approx(len(angry_16k) / 16000, abs=1e-3)  # closed at the end of the call
    assert calm_out == ""  # a calm caller: the model is never asked anything


def test_the_example_agent_reports_a_bad_file_and_a_missing_extra(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    proc = subprocess.run([sys.executable, str(AGENT), str(bad)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (3, "")
    assert proc.stderr.splitlines()[-1].startswith(f"pipecat_agent: error: cannot read {bad}")
    code = (
        "import runpy, sys; sys.modules['pipecat'] = None; "
        f"sys.argv = ['agent', {str(bad)!r}]; runpy.run_path({str(AGENT)!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert 'pip install "anger-stream[pipecat]"' in proc.stderr
