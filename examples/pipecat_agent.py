"""A Pipecat voice agent that de-escalates an angry caller and offers a human.

    pip install "anger-stream[pipecat]"
    python examples/pipecat_agent.py caller.wav --threshold 0.6

The caller is a WAV file (any rate, mono or stereo), played into the pipeline in real time as 20 ms
`InputAudioRawFrame`s, as a telephone or WebRTC transport would deliver them. `AngerProcessor` scores it
with the real detector. On anger, `CalmDown` appends a system instruction to the conversation (de-escalate,
offer a human agent) through Pipecat's own context aggregator and asks the language model to answer now.

The language model here is a stand-in (`StandInLLM`): it prints every instruction it receives as a JSON
line, so the example runs without an API key. In a real agent, put your LLM service in its place (e.g.
`OpenAILLMService`), with speech-to-text before the aggregator and text-to-speech and the transport's output
after the model. stdout: the anger events and the instructions, one JSON object a line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import soundfile as sf

from anger_stream.events import to_json
from anger_stream.model import ModelError
from anger_stream.stdio import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE

try:
    from loguru import logger
    from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, LLMContextFrame, LLMMessagesAppendFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from anger_stream.integrations.pipecat import AngerFrame, AngerProcessor, AngerStartFrame
except ImportError as exc:
    print(f'pipecat_agent: error: {exc}; this example needs pip install "anger-stream[pipecat]"', file=sys.stderr)
    sys.exit(EXIT_USAGE)

FRAME_S = 0.02
SYSTEM_PROMPT = "You are the customer service agent of an online shop. Answer briefly and politely."
DE_ESCALATE = (
    "The caller sounds angry. De-escalate: stay calm, acknowledge their frustration in one short sentence, "
    "apologise for the trouble, do not argue, and offer to transfer them to a human agent right now."
)


class CalmDown(FrameProcessor):
    """On anger, tell the language model to de-escalate and offer a human; print the anger events."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, AngerFrame):
            print(to_json(frame.event), flush=True)
        await self.push_frame(frame, direction)
        if isinstance(frame, AngerStartFrame):
            await self.push_frame(
                LLMMessagesAppendFrame(messages=[{"role": "system", "content": DE_ESCALATE}], run_llm=True)
            )


class StandInLLM(FrameProcessor):
    """Stands in for an LLM service: prints the system instructions of each context it is asked to answer."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            messages = frame.context.get_messages()
            for message in messages[self._seen :]:
                if message.get("role") == "system":
                    print(
                        json.dumps({"type": "llm_instruction", "content": message["content"]}, separators=(",", ":")),
                        flush=True,
                    )
            self._seen = len(messages)
        await self.push_frame(frame, direction)


def caller_frames(path: Path) -> list[InputAudioRawFrame]:
    """The WAV file as 20 ms frames of int16 PCM (interleaved channels)."""
    pcm, rate = sf.read(str(path), dtype="int16", always_2d=True)
    step = round(FRAME_S * rate)
    return [
        InputAudioRawFrame(
            audio=np.ascontiguousarray(pcm[i : i + step]).tobytes(), sample_rate=rate, num_channels=pcm.shape[1]
        )
        for i in range(0, len(pcm), step)
    ]


async def run_agent(frames: list[InputAudioRawFrame], anger: AngerProcessor) -> None:
    context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
    aggregators = LLMContextAggregatorPair(context)
    pipeline = Pipeline([anger, CalmDown(), aggregators.user(), StandInLLM(), aggregators.assistant()])
    worker = PipelineWorker(pipeline, cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    caller = asyncio.create_task(speak(worker, frames, started))
    try:
        await runner.run()
    finally:
        caller.cancel()  # Ctrl-C cancels the pipeline before the caller has finished


async def speak(worker: PipelineWorker, frames: list[InputAudioRawFrame], started: asyncio.Event) -> None:
    """Once the pipeline runs, queue the caller's frames in real time, then end the call."""
    await started.wait()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, start + i * FRAME_S - loop.time()))
        await worker.queue_frame(frame)
    await worker.queue_frame(EndFrame())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wav", type=Path, help="the caller: a WAV (or FLAC) file, any rate, mono or stereo")
    parser.add_argument("--threshold", type=float, default=0.6, help="p(anger) at or above this is angry")
    parser.add_argument("--patience", type=int, default=1, help="angry windows in a row to start anger")
    parser.add_argument("--model", help="ONNX model (default: the packaged one)")
    parser.add_argument("--verbose", action="store_true", help="Pipecat's debug log on stderr")
    args = parser.parse_args()
    logger.remove()  # Pipecat logs through loguru: warnings only, unless --verbose
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "WARNING")
    try:
        frames = caller_frames(args.wav)
        anger = AngerProcessor(model=args.model, threshold=args.threshold, patience=args.patience)
    except (OSError, sf.LibsndfileError) as exc:
        fail(f"cannot read {args.wav}: {exc}", EXIT_INPUT)
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    asyncio.run(run_agent(frames, anger))


def fail(message: str, code: int) -> NoReturn:
    print(f"pipecat_agent: error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
