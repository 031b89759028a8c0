"""LoRA adapters with time-aware capacity gates (UniDG/APO, DESIGN §1.4) and external LoRA loading.

Adapters live *beside* the model (forward hooks on the targeted ``nn.Linear`` modules), so the
base state dict keeps diffusers' keys and adapters can be added, rescaled, fused, unfused and
removed at run time. For a target linear ``W`` and adapter ``a``::

    y = W x + Σ_a  s_a · (α_a / r_a) · B_a · diag(k_a(t)) · A_a · x

``s_a`` is the per-call strength (hierarchical segments set it), ``k_a(t) ∈ (0, 1)^r`` the
time-aware capacity gate ``G_t = diag(k(t))`` (``None`` = ungated, k ≡ 1), ``t`` the sigma the
transformer is called with, and ``α/r`` is each pair's own scale (kohya's per-module ``.alpha``,
peft's ``rank_pattern`` / ``alpha_pattern``); ``Adapter.alpha / Adapter.rank`` is the adapter-wide
value written to the metadata. External LoRAs (:meth:`AdapterManager.load_lora`): peft/diffusers
(file, or ``PeftModel.save_pretrained`` folder; rank/alpha from diffusers' ``transformer.``-prefixed
metadata, unprefixed metadata or ``adapter_config.json``), kohya / sd-scripts, xlabs and BFL-named
FLUX LoRAs — see :mod:`unidg_rt.models.lora_formats`. FLUX.1-dev LoRAs on ``x_embedder`` (64 input
channels) are zero-padded onto Fill's 384.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from unidg_rt.errors import WeightsError
from unidg_rt.models.lora_formats import check_metadata, convert_lora, pair_scale, read_lora

logger = logging.getLogger(__name__)

#: attention + MLP projections of every block (what diffusers' FLUX LoRAs target)
DEFAULT_TARGETS = (
    "transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k", "transformer_blocks.*.attn.to_v",
    "transformer_blocks.*.attn.to_out.0", "transformer_blocks.*.attn.add_*_proj", "transformer_blocks.*.attn.to_add_out",
    "transformer_blocks.*.ff.net.*", "transformer_blocks.*.ff_context.net.*",
    "single_transformer_blocks.*.attn.to_*", "single_transformer_blocks.*.proj_mlp",
    "single_transformer_blocks.*.proj_out",
)  # fmt: skip


class TimeGate(nn.Module):
    """``k(t) = sigmoid(a + b·t)`` per rank component: the diagonal of ``G_t`` (starts near 1)."""

    def __init__(self, rank: int, init: float = 4.0):
        super().__init__()
        self.a = nn.Parameter(torch.full((rank,), init))
        self.b = nn.Parameter(torch.zeros(rank))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a[None] + self.b[None] * t.float()[:, None])  # [B, r]


class LoRAPair(nn.Module):
    """``lora_B(lora_A(x))`` with its own ``scale`` (= α/r of this module; a plain float)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float = 1.0):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.scale = float(scale)


@dataclass
class Adapter:
    name: str
    rank: int
    alpha: float
    pairs: nn.ModuleDict  # module name (dots → "::") -> LoRAPair
    gate: TimeGate | None = None
    strength: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """Adapter-wide α/r (metadata); the forward and :meth:`AdapterManager.delta` use each
        pair's own ``LoRAPair.scale``."""
        return self.alpha / self.rank

    def parameters(self):
        yield from self.pairs.parameters()
        if self.gate is not None:
            yield from self.gate.parameters()


def _key(module_name: str) -> str:
    return module_name.replace(".", "::")  # ModuleDict keys may not contain dots


class AdapterManager:
    """Adds LoRA adapters to a :class:`~unidg_rt.models.mmdit.FluxTransformer` via hooks."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapters: dict[str, Adapter] = {}
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._t: torch.Tensor | None = None
        self._fused: dict[str, torch.Tensor] = {}  # module name -> original weight (exact unfuse)
        self._fused_names: list[str] = []
        #: adapter name -> strength tensor (0-d) while :meth:`strength_inputs` is active (export)
        self._strength_inputs: dict[str, torch.Tensor] = {}
        self._pre = model.register_forward_pre_hook(self._capture_timestep, with_kwargs=True)

    # -------------------------------------------------------------- hooks
    def _capture_timestep(self, _module, args, kwargs):
        t = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        self._t = t

    def _make_hook(self, module_name: str):
        key = _key(module_name)

        def hook(_mod, inputs, output):
            x = inputs[0]
            for ad in self.adapters.values():
                if ad.name in self._fused_names or key not in ad.pairs:
                    continue
                strength = self._strength_inputs.get(ad.name, ad.strength)
                if isinstance(strength, float) and strength == 0:
                    continue
                pair = ad.pairs[key]
                h = pair.lora_A(x.to(pair.lora_A.weight.dtype))  # [B, N, r]
                if ad.gate is not None and self._t is not None:
                    h = h * ad.gate(self._t).to(h.dtype)[:, None, :]  # diag(k(t)) per sample
                output = output + (strength * pair.scale) * pair.lora_B(h).to(output.dtype)
            return output

        return hook

    def _linear(self, name: str) -> nn.Linear:
        mod = self.model.get_submodule(name)
        if not isinstance(mod, nn.Linear):
            raise WeightsError(f"LoRA target {name!r} is a {type(mod).__name__}, not a Linear layer")
        return mod

    def _ensure_hook(self, name: str) -> None:
        if name not in self._hooks:
            self._hooks[name] = self._linear(name).register_forward_hook(self._make_hook(name))

    # -------------------------------------------------------------- creation
    def add(
        self,
        name: str,
        rank: int = 8,
        alpha: float | None = None,
        targets=DEFAULT_TARGETS,
        gated: bool = False,
        init: str = "zeros",
    ) -> Adapter:
        """A new trainable adapter (``B = 0`` so it starts as the identity, like peft)."""
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} exists; remove it first or choose another name")
        names = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear) and _match(n, targets)]
        if not names:
            raise ValueError(f"no Linear module matches targets {targets}")
        ref = self._linear(names[0]).weight
        alpha = float(alpha or rank)
        pairs = nn.ModuleDict()
        for n in names:
            lin = self._linear(n)
            pair = LoRAPair(lin.in_features, lin.out_features, rank, alpha / rank).to(
                ref.device, torch.float32
            )
            nn.init.kaiming_uniform_(pair.lora_A.weight, a=math.sqrt(5))
            if init == "zeros":
                nn.init.zeros_(pair.lora_B.weight)
            pairs[_key(n)] = pair
            self._ensure_hook(n)
        gate = TimeGate(rank).to(ref.device) if gated else None
        ad = Adapter(name, rank, alpha, pairs, gate)
        self.adapters[name] = ad
        return ad

    def load_lora(
        self,
        source,
        name: str,
        strength: float = 1.0,
        prefix: str = "transformer.",
        metadata: dict | None = None,
    ) -> Adapter:
        """Load a LoRA (state dict, ``.safetensors`` file or peft folder) in any layout of
        :mod:`~unidg_rt.models.lora_formats`; ``metadata`` (``r``, ``lora_alpha``, peft's
        ``rank_pattern`` / ``alpha_pattern``) overrides what the file carries. Returns the adapter."""
        sd, meta = read_lora(source, prefix)
        if metadata is not None:
            meta = {**meta, **metadata}
        check_metadata(meta)
        try:
            entries, extras, layouts = convert_lora(sd, self.model, prefix)
        except WeightsError as exc:
            raise WeightsError(
                f"LoRA {source if not isinstance(source, dict) else 'state dict'}: {exc}"
            ) from exc
        ref = next(self.model.parameters())
        built: dict[str, LoRAPair] = {}
        for e in sorted(entries, key=lambda e: e.module):
            lin = self._linear(e.module)
            a, b = e.down.float(), e.up.float()
            if a.shape[1] < lin.in_features:  # FLUX.1-dev LoRA on Fill's wider x_embedder: zero-pad
                logger.info("zero-padding LoRA %s input %d -> %d", e.module, a.shape[1], lin.in_features)
                a = torch.cat([a, a.new_zeros(a.shape[0], lin.in_features - a.shape[1])], dim=1)
            if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features or b.shape[1] != a.shape[0]:
                raise WeightsError(
                    f"LoRA {e.source!r} for {e.module}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
                    f"Linear({lin.in_features}, {lin.out_features}); it was trained for another architecture"
                )
            pair = LoRAPair(lin.in_features, lin.out_features, a.shape[0], pair_scale(e, meta))
            pair = pair.to(ref.device, torch.float32)
            pair.lora_A.weight.data.copy_(a)
            pair.lora_B.weight.data.copy_(b)
            built[e.module] = pair
        ranks = Counter(p.lora_A.out_features for p in built.values())
        rank = ranks.most_common(1)[0][0]
        alphas = Counter(p.scale * p.lora_A.out_features for p in built.values())
        alpha = float(meta.get("lora_alpha", meta.get("alpha", alphas.most_common(1)[0][0])))
        gate = None
        if "gate.a" in extras:
            if len(ranks) > 1:
                raise WeightsError(
                    f"gated LoRA {name!r} has modules of ranks {sorted(ranks)}; a gate needs one rank"
                )
            gate = TimeGate(rank).to(ref.device)
            gate.load_state_dict({"a": extras["gate.a"], "b": extras["gate.b"]})
        pairs = nn.ModuleDict()
        for m, pair in built.items():
            pairs[_key(m)] = pair
            self._ensure_hook(m)
        logger.info("LoRA %r: %d modules, layout %s", name, len(pairs), "+".join(sorted(layouts)))
        ad = Adapter(name, rank, alpha, pairs, gate, strength, {**meta, "layout": "+".join(sorted(layouts))})
        self.adapters[name] = ad
        return ad

    # -------------------------------------------------------------- run-time control
    def set_scales(self, scales: dict[str, float]) -> None:
        for n, s in scales.items():
            if n not in self.adapters:
                raise KeyError(f"unknown adapter {n!r}; loaded: {sorted(self.adapters)}")
            if n in self._fused_names and s != self.adapters[n].strength:
                raise ValueError(f"adapter {n!r} is fused; unfuse() before changing its strength")
            self.adapters[n].strength = float(s)

    def is_fused(self, name: str) -> bool:
        """Whether adapter ``name`` is merged into the base weights (:meth:`fuse`)."""
        return name in self._fused_names

    @contextlib.contextmanager
    def strength_inputs(self, strengths: dict[str, torch.Tensor]):
        """Take each adapter's strength from a tensor (a graph input while exporting) instead of
        its float ``strength``: the branch is then always in the graph, even at strength 0."""
        unknown = set(strengths) - set(self.adapters)
        if unknown:
            raise KeyError(f"unknown adapters {sorted(unknown)}; loaded: {sorted(self.adapters)}")
        self._strength_inputs = dict(strengths)
        try:
            yield
        finally:
            self._strength_inputs = {}

    def remove(self, name: str) -> None:
        if name in self._fused_names:
            self.unfuse()
        self.adapters.pop(name)

    def delta(self, name: str, module_name: str, t: float | None = None) -> torch.Tensor:
        """The dense weight update ``s·(α/r)·B·diag(k(t))·A`` of one module."""
        ad = self.adapters[name]
        pair = ad.pairs[_key(module_name)]
        a = pair.lora_A.weight
        if ad.gate is not None:
            if t is None:
                raise ValueError(f"adapter {name!r} is time-gated: pass t (sigma) to fuse it")
            a = ad.gate(torch.tensor([t], device=a.device))[0][:, None] * a
        return (ad.strength * pair.scale) * (pair.lora_B.weight @ a)

    @torch.no_grad()
    def fuse(self, names=None, t: float | None = None) -> None:
        """Merge adapters into the base weights (exactly undone by :meth:`unfuse`)."""
        names = list(names or self.adapters)
        for name in names:
            for key in self.adapters[name].pairs:
                m = key.replace("::", ".")
                lin = self._linear(m)
                self._fused.setdefault(m, lin.weight.detach().clone())
                lin.weight += self.delta(name, m, t).to(lin.weight.dtype)
            self._fused_names.append(name)

    @torch.no_grad()
    def unfuse(self) -> None:
        for m, w in self._fused.items():
            self._linear(m).weight.copy_(w)
        self._fused.clear()
        self._fused_names.clear()

    def detach(self) -> None:
        """Remove every hook (the model is plain again; fused weights stay fused)."""
        for h in self._hooks.values():
            h.remove()
        self._pre.remove()
        self._hooks.clear()

    # -------------------------------------------------------------- saving
    def state_dict(self, name: str, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
        """peft layout: ``<prefix><module>.lora_A.weight`` (+ ``gate.a``/``gate.b`` when gated)."""
        ad = self.adapters[name]
        out = {}
        for key, pair in ad.pairs.items():
            m = prefix + key.replace("::", ".")
            out[f"{m}.lora_A.weight"] = pair.lora_A.weight.detach().cpu().contiguous()
            out[f"{m}.lora_B.weight"] = pair.lora_B.weight.detach().cpu().contiguous()
        if ad.gate is not None:
            out["gate.a"], out["gate.b"] = ad.gate.a.detach().cpu(), ad.gate.b.detach().cpu()
        return out

    def save(self, name: str, path: str | Path) -> Path:
        from safetensors.torch import save_file

        ad = self.adapters[name]
        info = {"r": ad.rank, "lora_alpha": ad.alpha, "gated": ad.gate is not None}
        ranks, alphas = {}, {}  # peft's patterns for pairs off the adapter-wide r / alpha (exact round trip)
        for key, pair in ad.pairs.items():
            m, r = key.replace("::", "."), pair.lora_A.out_features
            if r != ad.rank:
                ranks[f"^{m}"] = r
            if pair.scale != ad.alpha / r:
                alphas[f"^{m}"] = pair.scale * r
        if ranks:
            info["rank_pattern"] = ranks
        if alphas:
            info["alpha_pattern"] = alphas
        meta = {"lora_adapter_metadata": json.dumps(info)}
        save_file(self.state_dict(name), str(path), metadata=meta)
        return Path(path)


# ------------------------------------------------------------------ key handling
def _match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
