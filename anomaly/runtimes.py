"""The runtimes an exported model's graphs run in: ONNX Runtime (`onnx`) and OpenVINO (`openvino`).

Torch-free. Each runtime is imported only when a graph is first run, so listing or checking an
exported folder needs neither, and a folder for one runtime does not need the other installed.
Both run on the CPU with a fixed number of threads (the scoring loop leaves a core to decoding) and
in float32: OpenVINO's CPU plugin would otherwise pick bf16 or f16 where the CPU has them, which
moved `spatial` by up to 0.02 when first tried, far outside the tolerance exports are held to.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Runtime = Literal["onnx", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("onnx", "openvino")
RUNTIME_NAMES: dict[Runtime, str] = {"onnx": "onnxruntime", "openvino": "openvino"}
GRAPH_SUFFIX: dict[Runtime, str] = {"onnx": ".onnx", "openvino": ".xml"}  # OpenVINO IR: the .xml and its .bin


class GraphLoadError(ValueError):
    """A graph file its runtime cannot load, or a runtime that is not installed."""


class CompiledGraph(Protocol):
    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def _first_line(exc: Exception) -> str:
    return next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)[:200]


class OnnxRuntimeGraph:
    """One graph in an ONNX Runtime session (CPU execution provider)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise GraphLoadError(f"{path} cannot be loaded by ONNX Runtime: {_first_line(exc)}") from None

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(outputs, feeds)


class OpenVinoGraph:
    """One graph compiled by OpenVINO for its CPU plugin, in float32, on `threads` threads."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise GraphLoadError(
                f"{path} is an OpenVINO model but OpenVINO is not installed: pip install 'anomaly[openvino]'"
            ) from None
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with its own multi-line text
            raise GraphLoadError(f"{path} cannot be loaded by OpenVINO: {_first_line(exc)}") from None
        self.names = [o.get_any_name() for o in self.compiled.outputs]
        self._local = threading.local()  # an infer request serves one call at a time: one per thread

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        by_name = {name: np.array(results[i]) for i, name in enumerate(self.names)}
        return [by_name[name] for name in outputs]


def load_graph(runtime: Runtime, path: Path, threads: int) -> CompiledGraph:
    """A graph of an exported folder, ready to run in its runtime."""
    return OnnxRuntimeGraph(path, threads) if runtime == "onnx" else OpenVinoGraph(path, threads)


def runtime_version(runtime: Runtime) -> str:
    """The installed version of a runtime, for the manifest ("" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(RUNTIME_NAMES[runtime])
    except PackageNotFoundError:
        return ""
