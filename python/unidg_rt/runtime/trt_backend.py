"""TensorRT / TensorRT-RTX execution backend (``UniDGPipeline.from_engines``).

**UNVERIFIED — never executed.** Nothing in this project's reach can run a TensorRT engine:
full TensorRT cannot be installed on the CI/dev machines, TensorRT-RTX installs but needs an
RTX-class GPU (sm 8.0/8.6/8.9/12.x) and the lent GPU machine is an H100 (sm 9.0, which TensorRT-RTX
does not support, and where full TensorRT cannot be downloaded). What *is* tested: the plan
selection and refusal logic (:mod:`unidg_rt.artifacts.plan`, :mod:`unidg_rt.artifacts.plan_folder`), that this module imports without
TensorRT, and that a missing TensorRT raises :class:`~unidg_rt.errors.BackendUnavailableError`.
Written against the TensorRT 10 name-based I/O API (``set_input_shape`` / ``set_tensor_address``
/ ``execute_async_v3``, present in 10.3 on JetPack 6, 10.x, 11.x and TensorRT-RTX 1.x).

Runners follow the Backend protocol (:mod:`unidg_rt.runtime.backend`): ``input_names`` and
``infer(feed) -> dict``. Feeds are numpy arrays or torch tensors (CPU or CUDA); outputs come back
as torch CUDA tensors (numpy if every input was numpy). Device buffers for outputs are allocated
once at the profile's max shapes (the IOSpec profile the plan was built with) and viewed at the
actual shape; outputs are cloned so a later ``infer`` never overwrites a result still in use
(two-pass CFG keeps ``v`` while computing ``v_neg``). torch provides the CUDA memory and streams
(no pycuda / cuda-python dependency).

CUDA graphs (``cuda_graph=True``): TensorRT-RTX captures internally
(``IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE``, feature-detected); full TensorRT
is captured here with ``torch.cuda.CUDAGraph`` once per input-shape set, replayed from static
input buffers (a denoising loop has one shape set, so one capture).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.artifacts import plan as mf
from unidg_rt.artifacts.adapters import INPUT_NAME as ADAPTER_INPUT
from unidg_rt.artifacts.adapters import AdapterScales, graph_adapters
from unidg_rt.artifacts.card import Card, card_from_plan
from unidg_rt.artifacts.io import atomic_write_bytes
from unidg_rt.artifacts.plan_folder import OPTIONAL_ROLES, ROLES, reference_image_size, select_plans
from unidg_rt.errors import BackendUnavailableError, EngineMismatchError, InvalidInputError
from unidg_rt.runtime.backend import GraphAdapters
from unidg_rt.runtime.conditioning import ReferenceEncoderRunner

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
_MAX_GRAPHS = 8


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "the TensorRT backend uses torch for CUDA buffers: pip install torch"
        ) from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("the TensorRT backend needs a CUDA GPU; none is visible")
    return torch


def _trt_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


class TRTRunner:
    """One engine + one execution context; ``infer(feed) -> {output: tensor}``. ``adapters``
    (transformer plans carrying LoRA branches): the :class:`AdapterScales` fed as ``adapter_scales``."""

    adapters: AdapterScales | None = None

    def __init__(
        self,
        plan_path: str | Path,
        *,
        manifest: dict[str, Any],
        trt,
        device: str = "cuda",
        cuda_graph: bool = False,
        runtime_cache: str | Path | None = None,
    ):
        torch = _torch()
        self.torch, self.trt = torch, trt
        self.device = torch.device(device)
        self.plan_path, self.manifest = Path(plan_path), manifest
        self._runtime = trt.Runtime(_trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"{self.plan_path.name} did not deserialize (see the TensorRT log above). Rebuild it with:\n  "
                + mf.rebuild_command(manifest, self.plan_path)
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_in[n])
        self.output_names = tuple(n for n in names if not is_in[n])
        self.dtypes = {
            n: getattr(torch, _TORCH_DTYPES[str(self.engine.get_tensor_dtype(n)).split(".")[-1]])
            for n in names
        }
        self._runtime_cache_path = Path(runtime_cache) if runtime_cache else None
        self._runtime_cache = None
        self.builtin_graph = False
        self.context = self._create_context(cuda_graph)
        self.cuda_graph = cuda_graph and not self.builtin_graph
        self._graphs: dict[tuple, tuple[Any, dict, dict]] = {}
        self._out = self._allocate_outputs()

    # -------------------------------------------------------------- setup
    def _create_context(self, cuda_graph: bool):
        trt, engine = self.trt, self.engine
        if not hasattr(engine, "create_runtime_config"):  # e.g. TensorRT 10.3 (JetPack 6)
            return engine.create_execution_context()
        config = engine.create_runtime_config()  # TensorRT-RTX 1.x (newer TensorRT 10.x too)
        if self._runtime_cache_path is not None and hasattr(config, "create_runtime_cache"):
            cache = config.create_runtime_cache()
            if self._runtime_cache_path.exists() and not cache.deserialize(
                self._runtime_cache_path.read_bytes()
            ):
                # RTX validates GPU/driver/version and rejects a foreign cache: start empty
                logger.info(
                    "runtime cache %s does not fit this GPU/driver: rebuilding it", self._runtime_cache_path
                )
            config.set_runtime_cache(cache)
            # JIT-compiled kernels (RTX) survive restarts via save_runtime_cache()
            self._runtime_cache = cache
        strategy = getattr(getattr(trt, "CudaGraphStrategy", None), "WHOLE_GRAPH_CAPTURE", None)
        if cuda_graph and strategy is not None and hasattr(config, "cuda_graph_strategy"):
            config.cuda_graph_strategy = strategy
            self.builtin_graph = True
        return engine.create_execution_context(config)

    def _allocate_outputs(self) -> dict[str, Any]:
        """Flat output buffers sized at the profile's max input shapes."""
        for name in self.input_names:
            _, _, mx = self.engine.get_tensor_profile_shape(name, 0)
            self.context.set_input_shape(name, tuple(mx))
        out = {}
        for name in self.output_names:
            numel = int(np.prod(tuple(self.context.get_tensor_shape(name))))
            out[name] = self.torch.empty(numel, dtype=self.dtypes[name], device=self.device)
        return out

    def save_runtime_cache(self) -> None:
        """Persist TensorRT-RTX's JIT kernel cache (no-op without one)."""
        if self._runtime_cache is not None and self._runtime_cache_path is not None:
            atomic_write_bytes(self._runtime_cache_path, bytes(self._runtime_cache.serialize()))

    # -------------------------------------------------------------- feed adaptation
    def _adapt(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Treat optional inputs like the ORT runner and the export wrappers do: ``token_groups`` or
        ``group_bias`` ``None`` → both zeros (no bias); a ``[G,G]`` / ``[H,G,G]`` table broadcasts to
        the engine's static ``[L,H,G,G]``; ``[B, N]`` groups with equal rows → one ``[N]`` row;
        ``guidance`` is dropped when the engine has no such input."""
        torch = self.torch
        feed = dict(feed)
        if "group_bias" in self.input_names:
            shape = tuple(self.engine.get_tensor_shape("group_bias"))
            if feed.get("token_groups") is None or feed.get("group_bias") is None:
                n = feed["encoder_hidden_states"].shape[1] + feed["hidden_states"].shape[1]
                feed["token_groups"] = torch.zeros((n,), dtype=torch.int64, device=self.device)
                feed["group_bias"] = torch.zeros(shape, dtype=torch.float32, device=self.device)
            gb = self._tensor(feed["group_bias"], torch.float32)
            if tuple(gb.shape) != shape:
                if gb.ndim > len(shape):
                    raise InvalidInputError(
                        f"group_bias {tuple(gb.shape)} does not broadcast to the engine's {shape}"
                    )
                feed["group_bias"] = gb.reshape((1,) * (len(shape) - gb.ndim) + tuple(gb.shape)).expand(shape)
            groups = feed["token_groups"]
            if groups.ndim == 2:
                groups = self._tensor(groups, torch.int64)
                if not bool((groups == groups[:1]).all()):
                    raise InvalidInputError("token_groups differ per batch row; the engine takes one [N] row")
                feed["token_groups"] = groups[0]
        if "guidance" not in self.input_names:
            feed.pop("guidance", None)
        if self.adapters and feed.get(ADAPTER_INPUT) is None:  # the backend's strengths, [A]
            feed[ADAPTER_INPUT] = torch.from_numpy(self.adapters.array()).to(self.device)
        missing = [n for n in self.input_names if feed.get(n) is None]
        if missing:
            raise InvalidInputError(
                f"{self.plan_path.name} needs inputs {missing}; the feed has {sorted(feed)}"
            )
        return feed

    def _tensor(self, x, dtype):
        t = x if hasattr(x, "data_ptr") else self.torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.device, dtype).contiguous()

    # -------------------------------------------------------------- execution
    def _bind(self, inputs: dict[str, Any]) -> dict[str, Any]:
        for name, t in inputs.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InvalidInputError(
                    f"{self.plan_path.name}: output {name} shape {shape} unresolved (input shapes?)"
                )
            outs[name] = self._out[name][: int(np.prod(shape))].view(shape)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        return outs

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        mn, _, mx = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
        if len(shape) != len(mn) or any(not a <= d <= b for a, d, b in zip(mn, shape, mx, strict=True)):
            raise InvalidInputError(
                f"{name} shape {shape} is outside the engine profile {mn}..{mx}; rebuild with a wider range:\n  "
                + mf.rebuild_command(self.manifest, self.plan_path)
            )

    def infer(self, feed: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        all_numpy = all(isinstance(v, np.ndarray) for v in feed.values() if v is not None)
        feed = self._adapt(feed)
        inputs = {n: self._tensor(feed[n], self.dtypes[n]) for n in self.input_names}
        for n, t in inputs.items():
            self._check_profile(n, tuple(t.shape))
        stream = torch.cuda.current_stream(self.device)
        if self.cuda_graph:
            outs = self._replay(inputs, stream)
        else:
            outs = self._bind(inputs)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.plan_path.name}: execute_async_v3 failed (see the TensorRT log)")
        result = {n: o.clone() for n, o in outs.items()}  # buffers are reused by the next call
        if all_numpy:
            return {
                n: o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy()
                for n, o in result.items()
            }
        return result

    def _replay(self, inputs: dict[str, Any], stream) -> dict[str, Any]:
        """Full TensorRT: one ``torch.cuda.CUDAGraph`` per input-shape set (static input buffers)."""
        torch = self.torch
        key = tuple((n, tuple(t.shape)) for n, t in inputs.items())
        if key not in self._graphs:
            if len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            static = {n: t.clone() for n, t in inputs.items()}
            outs = self._bind(static)
            self.context.execute_async_v3(stream.cuda_stream)  # warm-up: flush deferred shape work
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            self._graphs[key] = (graph, static, outs)
        graph, static, outs = self._graphs[key]
        for n, t in inputs.items():
            static[n].copy_(t)
        graph.replay()
        return outs


class TRTBackend(GraphAdapters):
    """Transformer + VAE engines on one GPU (Backend protocol of :mod:`unidg_rt.runtime.backend`),
    plus ``reference_encoder`` (a runner, ``None`` without a plan)."""

    name = "tensorrt"

    def __init__(
        self,
        plans: dict[str, tuple[Path, dict[str, Any]]],
        *,
        device: str = "cuda",
        cuda_graph: bool = False,
        runtime_cache_dir: str | Path | None = None,
    ):
        from unidg_rt.engines.bindings import load_trt

        self.torch = _torch()
        self.device = self.torch.device(device)
        runners = {}
        for role in [r for r in (*ROLES, *OPTIONAL_ROLES) if r in plans]:
            path, manifest = plans[role]
            trt = load_trt(manifest["builder"])
            cache = Path(runtime_cache_dir) / f"{path.stem}.rtcache" if runtime_cache_dir else None
            runners[role] = TRTRunner(
                path,
                manifest=manifest,
                trt=trt,
                device=device,
                cuda_graph=cuda_graph and role == "transformer",
                runtime_cache=cache,
            )
        self.transformer, self.vae_encoder, self.vae_decoder = (runners[r] for r in ROLES)
        path, manifest = plans["transformer"]
        ref = runners.get("reference_encoder")  # the learned reference encoder over its plan
        size = reference_image_size(plans["reference_encoder"][1]) if ref is not None else 0
        self.reference_encoder = ReferenceEncoderRunner(ref, size) if ref is not None else None
        self.reference_encoder_missing = (
            "the checkpoint has a reference encoder (card defaults 'reference_encoder') but "
            f"{path.parent} has no reference_encoder plan: export it, then `unidg-rt build ONNX_DIR "
            f"--component reference_encoder --out {path.parent}`; or pass reference_encoder=None to run without it"
        )
        meta = manifest.get("metadata") or {}
        self.adapter_scales = graph_adapters(
            list(meta.get("carried_adapters") or []),
            meta,
            self.transformer.input_names,
            path.name,
            "re-export with `unidg-rt export` (it carries the card's adapters) and rebuild with `unidg-rt build`",
        )
        self.transformer.adapters = self.adapter_scales
        self.info = {
            "backend": "tensorrt",
            "device": str(self.device),
            "engines": {r: plans[r][0].name for r in runners},
            "cuda_graph": cuda_graph,
            "adapters": list(self.adapter_scales.names),
        }

    @classmethod
    def open(
        cls,
        engines_dir: str | Path,
        *,
        device: str = "cuda",
        precision: str | None = None,
        variant: str | None = None,
        cuda_graph: bool = False,
        runtime_cache_dir: str | Path | None = None,
        verify_hash: bool = True,
    ) -> tuple[TRTBackend, Card]:
        """Plans built by ``unidg-rt build`` (sidecars checked against this GPU and the installed
        TensorRT / TensorRT-RTX, :func:`select_plans`) and the folder's card (the transformer
        plan's sidecar ``metadata``). UNVERIFIED on hardware (see the module docstring)."""
        from unidg_rt.engines.bindings import load_trt, local_device_cc

        engines_dir = Path(engines_dir)
        _torch()
        cc = local_device_cc()
        versions = {}
        for builder in ("tensorrt", "tensorrt-rtx"):
            try:
                versions[builder] = str(load_trt(builder).__version__)
            except BackendUnavailableError:
                continue
        if not versions:
            load_trt("tensorrt")  # raises the install hint
        plans = select_plans(
            engines_dir,
            cc,
            precision=precision,
            variant=variant,
            runtime_versions=versions,
            verify_hash=verify_hash,
        )
        backend = cls(plans, device=device, cuda_graph=cuda_graph, runtime_cache_dir=runtime_cache_dir)
        path, manifest = plans["transformer"]
        return backend, card_from_plan(manifest.get("metadata") or {}, engines_dir, path.name)

    def asarray(self, x: np.ndarray, dtype: str | None = None):
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if dtype == "int":
            return t.long()
        return t.float() if t.is_floating_point() else t  # engines take float32 I/O; runners cast

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
