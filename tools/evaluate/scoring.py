"""The windows of corpus clips as the runtime cuts and gates them, scored by ONNX models (batched).

Each file is decoded with soundfile (resampled to 16 kHz if needed), optionally passed through an 8 kHz
mu-law telephone channel (`tools.channels.telephone`), cut into the runtime's windows
(`anger_stream.detector.windows`: 1.2 s every 0.6 s, the last may be shorter, >= 1 s, zero-padded),
silence-gated at `audio.MIN_DBFS` and normalised exactly as at run time. Torch-free: onnxruntime via
`anger_stream.model.AngerModel`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from anger_stream import audio
from anger_stream.detector import windows as runtime_windows
from anger_stream.model import AngerModel
from tools.channels import telephone as telephone_channel
from tools.manifest import Clip, load_manifest

BATCH = 64


def load_audio(path: Path) -> np.ndarray:
    """A file as mono float32 at 16 kHz."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read audio {path}: {exc}") from None
    return audio.resample(audio.mixdown(samples), rate)


def clip_segments(clip: Clip, telephone: bool = False) -> tuple[list[np.ndarray], int]:
    """The raw (unnormalised) segments of a clip that pass the silence gate, and how many were gated."""
    x = load_audio(clip.path)
    return gated_segments(telephone_channel(x) if telephone else x)


def gated_segments(x: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The run-time windows of a 16 kHz signal that pass the silence gate (raw), and how many were gated."""
    segments = [w.audio for w in runtime_windows(x)]
    kept = [seg for seg in segments if audio.dbfs(seg) >= audio.MIN_DBFS]
    return kept, len(segments) - len(kept)


@dataclass
class WindowSet:
    """Windows of a clip list: per-window clip index, label and corpus; how many were gated."""

    clips: list[Clip]
    clip_index: list[int] = field(default_factory=list)
    n_gated: int = 0

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.clips[i].anger for i in self.clip_index], dtype=int)

    @property
    def corpus(self) -> np.ndarray:
        return np.array([self.clips[i].corpus for i in self.clip_index])


def join(parts: Sequence[WindowSet]) -> WindowSet:
    """Several window sets as one (their clip lists concatenated)."""
    joined = WindowSet([])
    for windows in parts:
        joined.clip_index += [i + len(joined.clips) for i in windows.clip_index]
        joined.clips += windows.clips
        joined.n_gated += windows.n_gated
    return joined


def iter_windows(windows: WindowSet, telephone: bool = False) -> Iterator[np.ndarray]:
    """Yield the raw segments of every clip in `windows.clips`, recording their clips and the gated count."""
    signals = (load_audio(clip.path) for clip in windows.clips)
    yield from iter_segments(windows, (telephone_channel(x) for x in signals) if telephone else signals)


def iter_segments(windows: WindowSet, signals: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the gated run-time segments of each 16 kHz signal (one per clip of `windows.clips`, in order),
    recording their clips and the gated count."""
    for i, x in enumerate(signals):
        segments, gated = gated_segments(x)
        windows.n_gated += gated
        for segment in segments:
            windows.clip_index.append(i)
            yield segment


def score_models(
    models: Sequence[AngerModel], clips: list[Clip], telephone: bool = False
) -> tuple[WindowSet, list[np.ndarray]]:
    """Score every non-silent window of the clips with each model (batched); returns windows and scores."""
    windows = WindowSet(clips)
    return windows, score_segments(models, iter_windows(windows, telephone))


def score_segments(models: Sequence[AngerModel], segments: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Each model's p for every raw segment, prepared as at run time (batched)."""
    scores: list[list[np.ndarray]] = [[] for _ in models]
    batch: list[np.ndarray] = []

    def flush() -> None:
        prepared = np.stack(batch)
        for model, out in zip(models, scores, strict=True):
            out.append(model.predict(prepared))
        batch.clear()

    for segment in segments:
        batch.append(audio.prepare_window(segment, audio.WINDOW))
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return [np.concatenate(s) if s else np.zeros(0, np.float32) for s in scores]


def load_clips(manifests: Sequence[Path], split: str) -> list[Clip]:
    """Clips of the manifests in one split ('all' for every clip); a clear error if there are none."""
    clips: list[Clip] = []
    for manifest in manifests:
        if not manifest.is_file():
            raise ValueError(f"manifest not found: {manifest}")
        try:
            clips += load_manifest(manifest, None if split == "all" else split)
        except KeyError as exc:
            raise ValueError(f"manifest {manifest} has no column {exc}") from None
        except ValueError as exc:
            raise ValueError(f"bad value in manifest {manifest}: {exc}") from None
    if not clips:
        raise ValueError(f"no clips in split {split!r} of {', '.join(map(str, manifests))}")
    return clips
