"""Smoke tests of the benchmark's building blocks (tools.bench; no timed assertions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from anger_stream import audio
from anger_stream.detector import DetectorConfig
from anger_stream.model import AngerModel
from anger_stream.streams import StreamSet
from tools.bench import onnxgraph, runtime
from tools.bench.__main__ import main as bench_main
from tools.bench.timing import Stats
from tools.train.fcn import paper_blocks

WINDOW = 19_200


def fcn_onnx(widths: tuple[int, int, int] = (32, 64, 128), seed: int = 0) -> onnx.ModelProto:
    """The paper's network as a hand-built ONNX graph (BN folded) with random weights, like tools.train.export's."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Unsqueeze", ["audio", "axis"], ["x0"])]
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")]
    x = "x0"
    blocks = paper_blocks(*widths)
    for i, b in enumerate(blocks):
        w = (rng.standard_normal((b.cout, b.cin, b.kernel)) / np.sqrt(b.cin * b.kernel)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(b.cout, np.float32), f"b{i}")]
        attrs = {"kernel_shape": [b.kernel], "strides": [b.stride], "pads": [b.padding, b.padding]}
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], **attrs))
        x = f"c{i}"
        if b.bn:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
        if b.pool > 1:
            nodes.append(helper.make_node("MaxPool", [x], [f"m{i}"], kernel_shape=[b.pool], strides=[b.pool]))
            x = f"m{i}"
    inits.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "one"))
    nodes += [
        helper.make_node("Softmax", [x], ["sm"], axis=1),
        helper.make_node("Gather", ["sm", "one"], ["g"], axis=1),
        helper.make_node("ReduceMean", ["g"], ["p"], keepdims=0, axes=[-1]),
    ]
    graph = helper.make_graph(
        nodes,
        "fcn",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "fcn.onnx"
    onnx.save(fcn_onnx(), str(path))
    return path


def test_flops_match_a_hand_count() -> None:
    # conv1: (19200 + 64 - 64) / 2 + 1 = 9601 steps, 32 x 1 x 64 MACs each; pool 8 -> 1200
    # conv2: 601 x 64 x 32 x 32; pool -> 75; conv3: 38 x 128 x 64 x 16; pool -> 4
    # conv4: 3 x 16 x 128 x 8; conv5 (k2, no padding): 2 x 2 x 16 x 2
    macs = 9601 * 32 * 64 + 601 * 64 * 32 * 32 + 38 * 128 * 64 * 16 + 3 * 16 * 128 * 8 + 2 * 2 * 16 * 2
    assert onnxgraph.flops_per_window(fcn_onnx(), WINDOW) == 2 * macs
    assert [c.steps_out for c in onnxgraph.conv_shapes(fcn_onnx(), WINDOW)] == [9601, 601, 38, 3, 2]


def test_soundnet8_widths_cost_less() -> None:
    macs = 9601 * 16 * 64 + 601 * 32 * 16 * 32 + 38 * 64 * 32 * 16 + 3 * 16 * 64 * 8 + 2 * 2 * 16 * 2
    assert onnxgraph.flops_per_window(fcn_onnx((16, 32, 64)), WINDOW) == 2 * macs


def test_blocks_read_back_from_the_graph() -> None:
    blocks, params = onnxgraph.blocks(fcn_onnx())
    assert blocks == paper_blocks(32, 64, 128)
    assert [p.shape for p in params[:2]] == [(32, 1, 64), (32,)]


def test_torch_network_agrees_with_onnxruntime(model_path: Path) -> None:
    import torch

    x = (np.random.default_rng(1).standard_normal((3, WINDOW)) * 25).astype(np.float32)
    with torch.inference_mode():
        p_torch = onnxgraph.torch_network(model_path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(AngerModel(model_path).predict(x), p_torch, atol=1e-5)


def test_stats_of_known_samples() -> None:
    s = Stats.of(np.arange(1, 101, dtype=float), per=2)
    assert s.n == 100 and s.median == pytest.approx(25.25) and s.p99 == pytest.approx(49.505)
    assert s.iqr_rel == pytest.approx((75.25 - 25.75) / 2 / 25.25)


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_non_finite_samples_count_as_silence(model_path: Path, rate: int) -> None:
    x = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    dirty = x.copy()
    dirty[[100, 2_000, 90_000]] = [np.nan, np.inf, -np.inf]
    clean = x.copy()
    clean[[100, 2_000, 90_000]] = 0.0
    streams = StreamSet(AngerModel(model_path), DetectorConfig(), workers=1)
    for name in ("dirty", "clean"):
        streams.add(name, rate)
    for d, c in zip(np.array_split(dirty, 7), np.array_split(clean, 7), strict=True):
        streams.push("dirty", d)
        streams.push("clean", c)
    events = streams.tick()
    assert events["dirty"] == events["clean"] and len(events["dirty"]) == (2 if rate == 44_100 else 9)


def test_stream_set_workers_and_batches_give_the_same_events(model_path: Path) -> None:
    """The benchmark's setting (1-thread session, 2 workers, small batches) against one big batch, no workers."""
    config = DetectorConfig(threshold=0.0)  # every scored window is angry: segments are open at the end
    sets = [
        StreamSet(AngerModel(model_path, threads=2), config, max_batch=256, workers=1),
        StreamSet(AngerModel(model_path, threads=1), config, max_batch=3, workers=2),
    ]
    rng = np.random.default_rng(4)
    audio_by_stream = {i: (0.1 * i * rng.standard_normal(60_000)).astype(np.float32) for i in range(5)}
    results = []
    for streams in sets:
        out: dict = {i: [] for i in audio_by_stream}
        for i in audio_by_stream:
            streams.add(i)
        for chunk in range(0, 60_000, 7_000):
            for i, x in audio_by_stream.items():
                streams.push(i, x[chunk : chunk + 7_000])
            for i, events in streams.tick().items():
                out[i] += events
        for i in audio_by_stream:
            streams.end(i)
        for i, events in streams.tick().items():
            out[i] += events
        results.append(out)
    assert results[0] == results[1]
    assert sum(len(v) for v in results[0].values()) > 20
    assert any(type(e).__name__ == "AngerEnd" for v in results[0].values() for e in v)


def test_speech_comes_from_the_given_manifests(shared: Path) -> None:
    manifest = shared / "data" / "emodb" / "manifest.csv"
    x = runtime.speech([manifest], 5.0)
    assert x.dtype == np.float32 and len(x) == 5 * audio.SAMPLE_RATE
    windows = runtime.prepared(x, 12)
    assert windows.shape == (12, audio.WINDOW) and np.isfinite(windows).all()


def test_runtime_report_refuses_a_missing_speech_manifest(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="speech manifest not found"):
        bench_main(["runtime", "--speech", str(tmp_path / "none.csv"), "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b.json").exists()


def test_the_many_stream_benchmark_measures_both_inputs(tmp_path: Path) -> None:
    from tools.bench import streams as bench_streams

    talk = tmp_path / "speech.npy"
    np.save(talk, (0.1 * np.random.default_rng(0).standard_normal(16_000 * 20)).astype(np.float32))
    rows = {e: bench_streams.measure(str(talk), None, 6, 2, e, 4, 2) for e in ("s16le", "mulaw")}
    for row in rows.values():
        assert row["streams"] == 6 and row["us_per_stream"] > 0 and row["model_share"] == 0.0
    at = {**rows["s16le"], "bare_streams": 100.0, "bare_best": "2x1 batch 4"}
    result = {
        "command": "python -m tools.bench streams",
        "loadavg_start": [1.0],
        "loadavg_end": [1.0],
        "overhead": {f"new {e}": [row] for e, row in rows.items()},
        "bare": {"fp32": {"streams": 100.0, "best": "2x1 batch 4"}},
        "capacity": {"new fp32": {"sustained_streams": 50, "share_of_bare": 0.5, "at": at, "trials": []}},
    }
    md = bench_streams.markdown(result)
    assert "| new | mulaw | 6 |" in md and "| new | fp32 | 50 | 100 (2x1 batch 4) | 50% | 100 (2x1 batch 4) |" in md
    assert all(row["cpu_us_per_stream"] > 0 for row in rows.values())
