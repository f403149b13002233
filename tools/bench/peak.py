"""The machine's measured matrix-multiply peak: the ceiling the network's FLOP/s is compared with.

A large square MatMul (float32) and MatMulInteger (uint8 x int8 -> int32, the VNNI kernel of quantized
convolutions) through onnxruntime, and float32 numpy (BLAS, limited with threadpoolctl), on n threads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from threadpoolctl import threadpool_limits

from tools.bench.timing import Stats, measure, session


def _matmul_model(op: str, a_type: int, b_type: int, out_type: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["c"])],
        op,
        [
            helper.make_tensor_value_info("a", a_type, ["m", "k"]),
            helper.make_tensor_value_info("b", b_type, ["k", "n"]),
        ],
        [helper.make_tensor_value_info("c", out_type, ["m", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_matmul(size: int, threads: int, int8: bool, seconds: float) -> float:
    """Median FLOP/s (2 x size^3 per call; integer ops for int8) of a square onnxruntime matmul."""
    rng = np.random.default_rng(0)
    if int8:
        model = _matmul_model("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
        a = rng.integers(0, 255, (size, size), dtype=np.uint8)
        b = rng.integers(-127, 127, (size, size), dtype=np.int8)
    else:
        model = _matmul_model("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
        a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    sess = session(model, threads)  # type: ignore[arg-type]
    stats = Stats.of(measure(lambda: sess.run(None, {"a": a, "b": b}), seconds, warmup=3, min_n=5))
    return 2 * size**3 / stats.median


def numpy_matmul(size: int, threads: int, seconds: float) -> float:
    """Median FLOP/s of a square float32 numpy matmul on `threads` BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    with threadpool_limits(threads):
        stats = Stats.of(measure(lambda: a @ b, seconds, warmup=3, min_n=5))
    return 2 * size**3 / stats.median
