"""Engine-test fixtures: a configurable fake ``tensorrt`` module (feature-detection tests need no
bindings), a tiny ONNX file, and a terminal-summary section listing what TensorRT-RTX fused.

The fake proves what our code asks a builder for (network flags, precision flags, targets,
profiles, timing cache) and the refusals around it; its layer log is one canned line, so no test
asserts fusion from it — what a builder fuses comes only from the real TensorRT-RTX builds."""

from __future__ import annotations

import enum
import types
import warnings

import pytest

#: (test id, layer-report verdict, build seconds) collected by the real TensorRT-RTX builds
RTX_REPORTS: list[tuple[str, str, float]] = []


def pytest_terminal_summary(terminalreporter):
    if not RTX_REPORTS:
        return
    terminalreporter.section("TensorRT-RTX AOT builds: what the attention became")
    for name, verdict, seconds in RTX_REPORTS:
        terminalreporter.write_line(f"{name:<42} {seconds:6.1f} s  {verdict}")


# ----------------------------------------------------------------------------- fake bindings
#: one line of TensorRT-RTX 1.7's verbose "Layers:" table (shortened), a fused MHA without mask
MHA_LINE = (
    "Name: _gemm_mha_v2_myl0_22, LayerType: kgen, Inputs: [ { Name: q, Dimensions: [-1,-1,24], Strides: [24,-1,1], "
    "StrideOrder: [1,2,0], Datatype: Half, Format: (Arbitrary) x }, { Name: k, Dimensions: [-1,24,-1], "
    "Strides: [24,1,-1], StrideOrder: [1,0,2], Datatype: Half, Format: (Arbitrary) x }, { Name: v, "
    "Dimensions: [-1,-1,24], Strides: [24,-1,1], StrideOrder: [1,2,0], Datatype: Half, Format: (Arbitrary) x }], "
    "Constants: [], Outputs: [ { Name: o, Dimensions: [-1,-1,24], Strides: [24,-1,1], StrideOrder: [1,2,0], "
    "Datatype: Half, Format: (Arbitrary) x }], TacticName: _gemm_mha_v2_0xb16, StreamId: 0, "
    "Metadata: [ONNX Layer: node_scaled_dot_product_attention][ONNX Layer: node_Softmax_602]"
)


def make_fake_trt(kind: str = "rtx", version: str | None = None):
    """A fake bindings module. ``kind``: ``rtx`` (TensorRT-RTX 1.7 surface), ``trt103`` (the JetPack 6
    TensorRT 10.3 subset), ``trt86`` (TensorRT 8.6: no strongly typed networks, EXPLICIT_BATCH)."""
    m = types.ModuleType(f"fake_tensorrt_{kind}")
    m.__version__ = version or {"rtx": "1.7.1.116", "trt103": "10.3.0.30", "trt86": "8.6.1.6"}[kind]
    flags = ["REFIT", "TF32", "STRIP_PLAN"]
    if kind != "rtx":
        flags += ["FP16", "BF16", "INT8"] + (["FP8", "WEIGHT_STREAMING"] if kind == "trt103" else [])
    else:
        flags += ["WEIGHT_STREAMING"]
    m.BuilderFlag = enum.Enum("BuilderFlag", flags)
    ndcf = (
        ["STRONGLY_TYPED"]
        if kind == "rtx"
        else ["EXPLICIT_BATCH"] + (["STRONGLY_TYPED"] if kind == "trt103" else [])
    )
    m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ndcf, start=0)
    m.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    m.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED"])
    m.LayerInformationFormat = enum.Enum("LayerInformationFormat", ["ONELINE", "JSON"])
    if kind == "rtx":
        m.ComputeCapability = enum.Enum(
            "ComputeCapability", ["NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89", "SM120", "SM121"]
        )
    else:
        m.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS"])

    class ILogger:
        Severity = enum.IntEnum(
            "Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"], start=0
        )

        def __init__(self):
            pass

    m.ILogger = ILogger

    class Tensor:
        def __init__(self, name, shape, dtype="FLOAT"):
            self.name, self.shape, self.dtype = name, tuple(shape), f"DataType.{dtype}"

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = [Tensor("hidden_states", (-1, -1, 8)), Tensor("group_bias", (2, 2))]
            self.outputs = [Tensor("noise_pred", (-1, -1, 8))]
            self.num_inputs, self.num_outputs = len(self.inputs), len(self.outputs)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + self.data

    class Config:
        def __init__(self):
            self.flags_set, self.profiles, self.ccs = [], [], {}
            self.pool = {}
            self.num_compute_capabilities = 0
            self.profiling_verbosity = None
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = None

        def set_flag(self, f):
            self.flags_set.append(f.name)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if kind == "rtx":
                warnings.warn(
                    "Use Deprecated in TensorRT-RTX 1.2. Timing cache operations are no-ops in TensorRT-RTX. instead.",
                    DeprecationWarning,
                    stacklevel=2,
                )
            return True

        def set_memory_pool_limit(self, pool, n):
            self.pool[pool.name] = n

        if kind == "rtx":

            def set_compute_capability(self, cc, i):
                self.ccs[i] = cc.name
                return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class Builder:
        last = None

        def __init__(self, log):
            self.log = log
            Builder.last = self

        def create_network(self, flags):
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            self.log.log(ILogger.Severity.VERBOSE, "Layers:\n" + MHA_LINE)
            return memoryview(b"fake-plan:" + m.__version__.encode())

    class OnnxParser:
        def __init__(self, network, log):
            self.num_errors = 0

        def parse_from_file(self, path):
            return True

    m.Builder, m.OnnxParser = Builder, OnnxParser
    return m


@pytest.fixture(scope="session")
def rtx_reports():
    """Append ``(name, verdict, seconds)``: printed in the terminal summary."""
    return RTX_REPORTS


@pytest.fixture
def mha_line():
    return MHA_LINE


@pytest.fixture
def fake_trt():
    return make_fake_trt


@pytest.fixture
def tiny_onnx(tmp_path):
    """A one-node fp16 ONNX (``Add`` of an input and an fp16 weight) — enough for the fake builder."""
    onnx = pytest.importorskip(
        "onnx", reason="the builder hashes / type-checks ONNX files with the onnx package"
    )
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8,), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["hidden_states", "w"], ["noise_pred"])],
        "tiny",
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT16, ["b", "n", 8])],
        [helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT16, ["b", "n", 8])],
        [w],
    )
    path = tmp_path / "onnx" / "transformer.fold.fp16.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path
