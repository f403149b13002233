"""AudioSocket frames (sans-I/O parser and encoders) and the streaming resampler calls go through."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from scipy.signal import resample_poly

from anger_stream import codec
from anger_stream.buffers import Rows
from anger_stream.resampler import Resampler, _branches
from anger_stream.serve import audiosocket as a

CALL = "40325ec2-5efd-4bd3-805f-53576e581d13"


def _resample_streams(rate: int, signals: list[np.ndarray], chunks: list[int]) -> list[np.ndarray]:
    """Each signal fed to one Resampler in its own chunk size, one chunk each per round, all rows resampled
    together after every round."""
    r, rows = Resampler(rate, 16_000), Rows(rate // 10)
    which = np.array([rows.open() for _ in signals])
    done, ended = np.zeros(len(signals), np.int64), np.zeros(len(signals), bool)
    out: list[list[np.ndarray]] = [[] for _ in signals]
    for i in range(max(-(-len(x) // c) for x, c in zip(signals, chunks, strict=True))):
        for j, (x, chunk) in enumerate(zip(signals, chunks, strict=True)):
            if i * chunk < len(x):
                piece = x[i * chunk : (i + 1) * chunk].astype(np.float32)
                rows.write(int(which[j]), piece, int(r.first_input(int(done[j]))))
            ended[j] = rows.end[which[j]] == len(x)
        stop = r.ready(rows.end[which], ended)
        new = np.flatnonzero(stop > done)
        for j, y in zip(new, r.produce(rows, which[new], done[new], stop[new]), strict=True):
            out[j].append(y)
        done[new] = stop[new]
    return [np.concatenate(o) for o in out]


@pytest.mark.parametrize(
    ("rate", "up", "down"), [(8000, 2, 1), (4000, 4, 1), (12000, 4, 3), (44100, 160, 441), (48000, 1, 3)]
)
def test_streams_resampled_together_equal_resample_poly(rate: int, up: int, down: int) -> None:
    """Whole-factor upsampling (branch by branch, without the half-band filter's zero taps) and the other ratios
    (upfirdn) alike."""
    rng = np.random.default_rng(0)
    chunks = [1, 160, 320, 4096, 333]
    signals = [(rng.standard_normal(rate // 8 if c == 1 else rate * 2) * 0.3).astype(np.float32) for c in chunks]
    for x, y in zip(signals, _resample_streams(rate, signals, chunks), strict=True):
        want = resample_poly(x.astype(np.float64), up, down)
        assert y.shape == want.shape
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)


def test_telephone_upsampling_skips_the_half_band_filters_zero_taps() -> None:
    """8 kHz to 16 kHz: one polyphase branch is a single tap, the other keeps the 20 that are not zero."""
    assert [len(taps) for _, taps in _branches(2)] == [20, 1]


@pytest.mark.parametrize("rate", [8000, 12000, 44100, 48000])
def test_resampler_says_exactly_how_much_input_an_output_needs(rate: int) -> None:
    r = Resampler(rate, 16_000)
    for n_in in range(1, rate // 4):
        produced = int(r.ready(np.array([n_in]), np.array([False]))[0])
        assert r.inputs_for(produced) <= n_in < r.inputs_for(produced + 1)


def _events(data: bytes, step: int | None = None) -> list:
    p = a.Parser()
    out = []
    for i in range(0, len(data), step or max(len(data), 1)):
        p.receive_data(data[i : i + (step or len(data))])
        while (e := p.next_event()) is not a.NEED_DATA:
            out.append(e)
            if isinstance(e, a.Hangup | a.AsteriskError):
                return out
    p.receive_data(b"")
    while (e := p.next_event()) is not a.NEED_DATA:
        out.append(e)
    return out


def _call(*frames: bytes) -> bytes:
    return a.uuid_frame(CALL) + b"".join(frames)


def test_a_call_parses_the_same_in_any_split() -> None:
    pcm = np.arange(-160, 160, dtype=np.int16)
    data = _call(a.audio_frame(pcm[:160]), a.dtmf_frame("5"), a.audio_frame(pcm[160:]), a.hangup_frame())
    whole, bytewise = _events(data), _events(data, step=1)
    assert [type(e) for e in whole] == [a.CallId, a.Audio, a.AudioSocketDtmf, a.Audio, a.Hangup]
    assert whole[0].call_id == CALL and whole[2].digit == "5"
    np.testing.assert_array_equal(codec.decode(whole[1].pcm + whole[3].pcm, "s16le") * 32768, pcm)
    assert whole[1].sample_rate == 8000
    assert [type(e) for e in bytewise] == [type(e) for e in whole]


def test_audio_frames_read_together_are_one_event() -> None:
    pcm = np.arange(-800, 800, dtype=np.int16)
    frames = [a.audio_frame(pcm[i : i + 160]) for i in range(0, len(pcm), 160)]
    whole = _events(_call(*frames[:2], *frames[2:], a.hangup_frame()))
    assert [type(e) for e in whole] == [a.CallId, a.Audio, a.Audio, a.Hangup]
    assert [e.frames for e in whole[1:3]] == [1, 9]  # the first frame opens the call; the rest come as one
    np.testing.assert_array_equal(codec.decode(whole[1].pcm + whole[2].pcm, "s16le") * 32768, pcm)
    many = _events(_call(*frames * 10))
    assert [e.frames for e in many[1:-1]] == [1, a.MERGE_FRAMES, 99 - a.MERGE_FRAMES]
    assert isinstance(many[-1], a.Hangup)


def test_short_audio_frames_are_never_merged() -> None:
    p = a.Parser(merge_min_s=0.005)  # 40 samples at 8 kHz
    frames = [a.audio_frame(np.zeros(n, np.int16)) for n in (160, 160, 39, 40, 40, 1, 1)]
    p.receive_data(_call(*frames))
    events = [p.next_event() for _ in range(6)]
    assert [e.frames for e in events[1:]] == [1, 1, 1, 2, 1] and p.next_event().frames == 1


def test_an_odd_audio_frame_fails_after_the_frames_before_it() -> None:
    p = a.Parser()
    p.receive_data(_call(a.audio_frame(np.zeros(160, np.int16)), a.audio_frame(np.ones(160, np.int16))))
    p.receive_data(a.frame(a.AUDIO, bytes(3)))
    assert [type(p.next_event()) for _ in range(3)] == [a.CallId, a.Audio, a.Audio]
    with pytest.raises(a.AudioSocketError, match="audio payload of 3 bytes"):
        p.next_event()


def test_frame_layout_matches_the_protocol() -> None:
    assert a.hangup_frame() == b"\x00\x00\x00"
    assert a.uuid_frame(CALL) == b"\x01\x00\x10" + uuid.UUID(CALL).bytes
    assert a.audio_frame(np.array([1, -2], dtype=np.int16)) == b"\x10\x00\x04\x01\x00\xfe\xff"
    assert a.audio_frame(np.zeros(2, dtype=np.int16), 16000)[0] == 0x12
    with pytest.raises(ValueError):
        a.audio_frame(np.zeros(2, dtype=np.int16), 11025)
    with pytest.raises(ValueError):
        a.frame(a.AUDIO, bytes(70000))


@pytest.mark.parametrize(("kind", "rate"), list(a.AUDIO_RATES.items()))
def test_higher_rate_audio_kinds(kind: int, rate: int) -> None:
    (_, audio_event) = _events(_call(a.frame(kind, bytes(4))))[:2]
    assert audio_event.sample_rate == rate and audio_event.pcm == bytes(4)


def test_socket_closed_between_frames_is_a_hangup() -> None:
    assert isinstance(_events(_call(a.audio_frame(np.zeros(4))))[-1], a.Hangup)


def test_asterisk_error_ends_the_call() -> None:
    events = _events(_call(a.frame(a.ERROR, b"\x02"), a.audio_frame(np.zeros(4))))
    assert events[-1] == a.AsteriskError(2)


def test_incomplete_frame_waits_for_data_then_fails_at_eof() -> None:
    p = a.Parser()
    p.receive_data(_call() + b"\x10\x01\x40" + bytes(100))  # 320 bytes announced, 100 sent
    assert isinstance(p.next_event(), a.CallId)
    assert p.next_event() is a.NEED_DATA
    p.receive_data(b"")
    with pytest.raises(a.AudioSocketError, match="inside a frame"):
        p.next_event()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (a.audio_frame(np.zeros(4)), "UUID frame first"),
        (a.frame(a.UUID, bytes(15)), "UUID payload"),
        (_call(a.uuid_frame(CALL)), "second UUID"),
        (_call(a.frame(0x42, b"xy")), "unknown frame kind 0x42"),
        (_call(a.frame(a.AUDIO, bytes(3))), "even"),
        (_call(a.audio_frame(np.zeros(4)), a.audio_frame(np.zeros(4), 16000)), "sample rate changed"),
        (_call(a.frame(a.DTMF, b"12")), "DTMF"),
    ],
)
def test_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(a.AudioSocketError, match=message):
        _events(data)
