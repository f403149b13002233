"""A Pipecat frame processor: anger events from a pipeline's input audio.

    from anger_stream.integrations.pipecat import AngerProcessor, AngerStartFrame

    pipeline = Pipeline([transport.input(), AngerProcessor(), ..., llm, tts, transport.output()])

`AngerProcessor` passes every frame on unchanged and in order. It copies the caller's audio
(`InputAudioRawFrame`: int16 PCM at any rate, mono or interleaved channels, mixed down) into a bounded
queue that a worker task scores with `AngerDetector` in a thread, off the event loop, and pushes
`AngerStartFrame`, `AngerEndFrame` and (with `windows=True`) `AngerWindowFrame` downstream. Pipecat has no
frame type for a speaker's state, so these are the integration's own; they are system frames, so an
interruption does not discard them. At `EndFrame` it scores what is queued, flushes the detector (closing
an open anger segment) and only then passes the `EndFrame` on; `CancelFrame` stops it at once.

When scoring falls behind and the queue is full, audio frames are still passed on but not scored:
`dropped` counts them and the start of each run of drops is logged. Event times are seconds of scored
audio, as in the JSON schema (`to_dict()`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from .. import audio
from ..detector import AngerDetector, DetectorConfig
from ..events import AngerEnd, AngerStart, Event, Window
from ..model import AngerModel

DEFAULTS = DetectorConfig()

try:
    from loguru import logger
    from pipecat.frames.frames import CancelFrame, EndFrame, Frame, InputAudioRawFrame, StartFrame, SystemFrame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ModuleNotFoundError as exc:  # only a missing Pipecat; any other import error is a bug to see
    if (exc.name or "").partition(".")[0] not in ("pipecat", "loguru"):
        raise
    raise ImportError('anger_stream.integrations.pipecat needs Pipecat: pip install "anger-stream[pipecat]"') from exc


@dataclass
class AngerFrame(SystemFrame):
    """A detector event; `to_dict()` gives its fields in the JSON schema."""

    event: Event

    def to_dict(self) -> dict:
        return self.event.to_dict()


@dataclass
class AngerStartFrame(AngerFrame):
    """Anger confirmed: `event` is an `AngerStart` (t, p, onset)."""


@dataclass
class AngerEndFrame(AngerFrame):
    """An anger segment ended: `event` is an `AngerEnd` (t, duration, p_max, ended_by, last_angry, raised_max)."""


@dataclass
class AngerWindowFrame(AngerFrame):
    """One scored window: `event` is a `Window` (t_start, t_end, p, angry, dbfs)."""


FRAMES: dict[type, type[AngerFrame]] = {AngerStart: AngerStartFrame, AngerEnd: AngerEndFrame, Window: AngerWindowFrame}


def pcm_to_mono(frame: InputAudioRawFrame) -> np.ndarray:
    """A frame's int16 PCM (interleaved channels) as mono float32 in [-1, 1]."""
    pcm = np.frombuffer(frame.audio, dtype="<i2").reshape(-1, frame.num_channels)
    return audio.mixdown(audio.to_float(pcm))


class AngerProcessor(FrameProcessor):
    """Scores the input audio of a pipeline and pushes anger frames; every frame passes through unchanged."""

    def __init__(
        self,
        *,
        model: AngerModel | str | Path | None = None,
        threshold: float = DEFAULTS.threshold,
        patience: int = DEFAULTS.patience,
        hysteresis: float = DEFAULTS.hysteresis,
        hold_s: float = DEFAULTS.hold_s,
        min_dbfs: float = DEFAULTS.min_dbfs,
        config: DetectorConfig | None = None,
        windows: bool = False,
        max_queue: int = 100,
        **kwargs,
    ) -> None:
        """`model`: an ONNX path, a packaged model's name or an `AngerModel` (default: "full"); the detector
        options as in the CLI (`hold_s` is --hold), or all of them as `config` (a `DetectorConfig`, which then wins);
        `windows`: also push a frame per window; `max_queue`: audio frames waiting to be scored
        before new ones are dropped. Other keyword arguments go to `FrameProcessor`."""
        super().__init__(**kwargs)
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        config = config or DetectorConfig(
            threshold=threshold, patience=patience, hysteresis=hysteresis, hold_s=hold_s, min_dbfs=min_dbfs
        )
        self.detector = AngerDetector(model, config=config)
        self.windows = windows
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[np.ndarray, int]] = asyncio.Queue(max_queue)
        self._dropping = False
        self._rate: int | None = None
        self._worker: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._worker = self._worker or self.create_task(self._score_queued())
        elif isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._enqueue(frame)
        elif isinstance(frame, EndFrame):
            await self._finish()
        elif isinstance(frame, CancelFrame):
            await self._stop()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()

    def _enqueue(self, frame: InputAudioRawFrame) -> None:
        if frame.num_channels < 1 or len(frame.audio) % (2 * frame.num_channels):
            logger.warning(f"{self}: not scoring {frame}: not whole int16 samples for each channel")
            return
        try:
            self._queue.put_nowait((pcm_to_mono(frame), frame.sample_rate))
            self._dropping = False
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._dropping:
                logger.warning(f"{self}: anger scoring is behind, dropping input audio frames until it catches up")
            self._dropping = True

    async def _score_queued(self) -> None:
        """The worker: score whatever audio is queued and push the resulting frames."""
        while True:
            chunks = [await self._queue.get()]
            while not self._queue.empty():
                chunks.append(self._queue.get_nowait())
            try:
                await self._push_events(await self._off_loop(self._feed, chunks))
            finally:
                for _ in chunks:
                    self._queue.task_done()

    async def _off_loop(self, score: Callable[..., list[Event]], *args: object) -> list[Event]:
        """Run a detector call in a thread; a failure becomes an ErrorFrame and no events, and scoring goes on."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, score, *args)
        except Exception as exc:
            await self.push_error(f"anger detection failed: {exc}", exception=exc)
            return []

    def _feed(self, chunks: list[tuple[np.ndarray, int]]) -> list[Event]:
        """Feed queued audio to the detector (runs in a thread). A change of rate ends the stream there."""
        events: list[Event] = []
        for rate, group in groupby(chunks, key=lambda chunk: chunk[1]):
            if self._rate is not None and rate != self._rate:
                events += self.detector.flush()
            self._rate = rate
            events += self.detector.feed(np.concatenate([samples for samples, _ in group]), rate)
        return events

    async def _push_events(self, events: list[Event]) -> None:
        for event in events:
            if self.windows or not isinstance(event, Window):
                await self.push_frame(FRAMES[type(event)](event))

    async def _finish(self) -> None:
        """End of the pipeline: score the queued audio, flush the detector, stop the worker."""
        await self._queue.join()
        await self._stop()
        if self.dropped:
            logger.warning(f"{self}: {self.dropped} input audio frames were not scored (scoring was behind)")
        self._rate = None
        await self._push_events(await self._off_loop(self.detector.flush))

    async def _stop(self) -> None:
        if self._worker is not None:
            await self.cancel_task(self._worker)
            self._worker = None
