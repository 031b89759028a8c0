"""LoRA files as the ecosystem writes them → low-rank pairs on our (diffusers-named) Linear modules.

Supported layouts (told apart per key, so mixed files load too):

* **peft / diffusers** — ``[transformer.|base_model.model.]<module>.lora_A[.default].weight`` /
  ``lora_B``: what ``FluxPipeline.save_lora_weights``, ``FluxTransformer2DModel.save_lora_adapter``
  and ``PeftModel.save_pretrained`` (a folder with ``adapter_model.safetensors`` +
  ``adapter_config.json``) write; the older diffusers ``lora.down`` / ``lora.up`` (+ ``.alpha``)
  and ``lora_down`` / ``lora_up`` with diffusers module names.
* **kohya / sd-scripts** — ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha`` (BFL module names with underscores; ComfyUI's
  ``diffusion_model.<bfl module>.lora_down.weight``; ``lora_transformer_<diffusers module>``).
* **xlabs** — ``[diffusion_model.]double_blocks.0.processor.{qkv,proj}_lora{1,2}.{down,up}.weight``,
  ``single_blocks.0.processor.{qkv,proj}_lora.{down,up}.weight`` (no alpha: scale 1).
* **BFL-named** — ``[diffusion_model.]double_blocks.0.img_attn.qkv.lora_A.weight`` … (the
  original FLUX module names, as in BFL's own LoRAs).

Fused BFL projections (``img_attn.qkv``, ``txt_attn.qkv``, single ``linear1`` = q|k|v|mlp) become
one pair per diffusers Linear with the *shared* down matrix and the up matrix split by the
targets' output sizes (exact: ``B_i·A`` is row block ``i`` of ``B·A``); ``final_layer.adaLN``
swaps its up-matrix halves (BFL shift|scale → diffusers scale|shift). The key mapping follows
diffusers' own converters (``_convert_kohya_flux_lora_to_diffusers``,
``_convert_xlabs_flux_lora_to_diffusers``, ``_convert_bfl_flux_control_lora_to_diffusers``) but
takes every size from the model, so it works for any FLUX-shaped config.

Scale of each pair (``alpha / r``, ``r`` its own rank): a per-module ``.alpha`` tensor, else
peft's ``alpha_pattern`` match, else the adapter metadata's ``lora_alpha``, else ``r`` (scale 1,
the diffusers/peft convention). Metadata comes from the safetensors header
(``lora_adapter_metadata``: diffusers' ``transformer.``-prefixed keys or unprefixed ones) or
from peft's ``adapter_config.json`` beside the file / in the folder. ``use_rslora`` gives
``alpha / sqrt(r)``.

Text-encoder parts (``lora_te*``, ``text_encoder*.``, ``text_encoders.``) are **ignored with a
warning**: this runtime conditions on cached embeddings / Redux tokens and never runs CLIP/T5
at generation time, so there is nothing for them to act on. Keys that map to no Linear of the
model, DoRA / LoKr / LoHa / LoRA-bias tensors and Control-LoRA full weights are refused with
:class:`~unidg_rt.errors.WeightsError` naming them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unidg_rt.errors import WeightsError
from unidg_rt.models.convert import DOUBLE_BLOCK_KEYS, PLAIN_KEYS, SINGLE_BLOCK_KEYS

logger = logging.getLogger(__name__)

LAYOUTS = ("peft", "kohya", "xlabs", "bfl")
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_A = (".lora_A.default.weight", ".lora_A.weight", ".lora_down.weight", ".lora.down.weight", ".down.weight")
_B = (".lora_B.default.weight", ".lora_B.weight", ".lora_up.weight", ".lora.up.weight", ".up.weight")
_TEXT = ("lora_te", "text_encoder.", "text_encoder_2.", "text_encoders.", "te1.", "te2.")
_UNSUPPORTED = {  # substring -> what it is
    "lora_magnitude_vector": "DoRA", "dora_scale": "DoRA", ".lokr_": "LoKr", ".hada_": "LoHa",
    ".lora_A.bias": "LoRA bias", ".lora_B.bias": "LoRA bias", ".lora_down.bias": "LoRA bias",
    ".lora_up.bias": "LoRA bias",
}  # fmt: skip
_UNSUPPORTED_END = {".diff_b": "full bias diff", ".diff": "full weight diff"}
_STRIP = ("base_model.model.", "model.diffusion_model.", "diffusion_model.")
_XLABS_DOUBLE = {
    "proj_lora1": ("attn.to_out.0",), "proj_lora2": ("attn.to_add_out",),
    "qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}  # fmt: skip
_XLABS_SINGLE = {"qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"), "proj_lora": ("proj_out",)}
_XLABS = re.compile(r"^(double|single)_blocks\.(\d+)\.processor\.(\w+)$")


@dataclass
class LoRAEntry:
    """One low-rank pair on one of our Linear modules (``up @ down`` is the unscaled update)."""

    module: str
    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    alpha: float | None  # from a per-module ``.alpha`` tensor; None = from metadata / rank
    source: str  # the module path as written in the file
    layout: str


# ------------------------------------------------------------------ reading
def read_lora(source, prefix: str = "transformer.") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and this component's adapter metadata from a state dict, file or peft folder."""
    if isinstance(source, dict):
        return dict(source), {}
    path = Path(source)
    config = None
    if path.is_dir():
        names = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors")
        found = [path / n for n in names if (path / n).is_file()] or sorted(path.glob("*.safetensors"))
        if len(found) != 1 and not (found and found[0].name in names):
            raise WeightsError(
                f"LoRA folder {path}: expected adapter_model.safetensors (peft save_pretrained) or one"
                f" .safetensors file, found {[p.name for p in found]}; pass the file itself"
            )
        path = found[0]
    if not path.is_file():
        raise WeightsError(f"LoRA file {path} does not exist")
    if (path.parent / "adapter_config.json").is_file():
        config = path.parent / "adapter_config.json"
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
        sd = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"LoRA file {path} is not a readable .safetensors file ({exc})") from exc
    meta = component_metadata(json.loads(raw), prefix) if raw else {}
    if not meta and config is not None:
        logger.info("LoRA %s: rank/alpha from %s", path.name, config)
        meta = json.loads(config.read_text())
    return sd, meta


def component_metadata(meta: dict, prefix: str = "transformer.") -> dict:
    """diffusers' pipeline metadata is ``{"transformer.r": 4, "transformer.lora_alpha": 8, …}``;
    ``save_lora_adapter`` (and :meth:`AdapterManager.save`) write unprefixed keys."""
    prefixed = {k.removeprefix(prefix): v for k, v in meta.items() if prefix and k.startswith(prefix)}
    return prefixed or {k: v for k, v in meta.items() if "." not in k}


def pattern_value(patterns: dict | None, module: str):
    """peft's ``get_pattern_key``: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)``."""
    for p, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({p})$", module):
            return v
    return None


def check_metadata(meta: dict) -> None:
    """Refuse adapter configs whose forward is not ``W x + s·B A x`` (DoRA, LoRA bias)."""
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias")):
        if meta.get(flag):
            raise WeightsError(
                f"LoRA metadata sets {flag}=true ({what}), which this runtime does not support"
            )


def pair_scale(entry: LoRAEntry, meta: dict) -> float:
    """``alpha / r`` of one pair (see the module docstring for where alpha comes from)."""
    r = entry.down.shape[0]
    alpha = entry.alpha
    if alpha is None:
        alpha = pattern_value(meta.get("alpha_pattern"), entry.module)
    if alpha is None:
        alpha = meta.get("lora_alpha", meta.get("alpha", r))
    return float(alpha) / (math.sqrt(r) if meta.get("use_rslora") else r)


# ------------------------------------------------------------------ module tables
def _bfl_table(model: nn.Module) -> dict[str, tuple[tuple[str, ...], bool]]:
    """BFL module name -> (our target modules, swap-halves-of-up)."""
    n_double = len(getattr(model, "transformer_blocks", ()))
    n_single = len(getattr(model, "single_transformer_blocks", ()))
    table = {bfl: ((dif,), False) for dif, bfl in PLAIN_KEYS.items()}
    table["final_layer.adaLN_modulation.1"] = (("norm_out.linear",), True)
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        table.update(
            {b + bfl: ((d + dif,), False) for dif, bfl in DOUBLE_BLOCK_KEYS.items() if "norm" not in bfl}
        )
        table[b + "img_attn.qkv"] = (tuple(d + f"attn.to_{x}" for x in "qkv"), False)
        table[b + "txt_attn.qkv"] = (tuple(d + f"attn.add_{x}_proj" for x in "qkv"), False)
    for i in range(n_single):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        table.update(
            {b + bfl: ((d + dif,), False) for dif, bfl in SINGLE_BLOCK_KEYS.items() if "norm" not in bfl}
        )
        table[b + "linear1"] = ((*(d + f"attn.to_{x}" for x in "qkv"), d + "proj_mlp"), False)
    return table


def _resolve(path: str, linears: dict, bfl: dict, kohya: dict):
    """-> (layout, targets, swap) or None."""
    if path in linears:
        return "peft", (path,), False
    if path in bfl:
        return "bfl", *bfl[path]
    if m := _XLABS.match(path):
        kind, i, proc = m.groups()
        table = _XLABS_DOUBLE if kind == "double" else _XLABS_SINGLE
        block = "transformer_blocks" if kind == "double" else "single_transformer_blocks"
        if proc in table:
            return "xlabs", tuple(f"{block}.{i}.{t}" for t in table[proc]), False
    for p in ("lora_unet_", "lora_transformer_"):
        if path.startswith(p) and path[len(p) :] in kohya:
            return "kohya", *kohya[path[len(p) :]]
    return None


# ------------------------------------------------------------------ conversion
def convert_lora(
    sd: dict[str, torch.Tensor], model: nn.Module, prefix: str = "transformer."
) -> tuple[list[LoRAEntry], dict[str, torch.Tensor], set[str]]:
    """LoRA tensors in any supported layout -> (entries, extras such as ``gate.*``, layouts seen)."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    bfl = _bfl_table(model)
    kohya = {k.replace(".", "_"): v for k, v in bfl.items()}
    kohya.update({n.replace(".", "_"): ((n,), False) for n in linears})
    groups: dict[str, dict[str, torch.Tensor]] = {}
    origin: dict[str, list[str]] = {}
    extras, text, unmatched = {}, [], []
    for key, value in sd.items():
        if key.startswith("gate."):
            extras[key] = value
            continue
        if key.startswith(_TEXT):
            text.append(key)
            continue
        bad = next((what for s, what in _UNSUPPORTED.items() if s in key), None) or next(
            (what for s, what in _UNSUPPORTED_END.items() if key.endswith(s)), None
        )
        if bad:
            raise WeightsError(
                f"LoRA key {key!r} is a {bad} tensor, which this runtime does not support; "
                "export the adapter as a plain LoRA (lora_A/lora_B or lora_down/lora_up)"
            )
        for kind, suffixes in (("A", _A), ("B", _B), ("alpha", (".alpha",))):
            suffix = next((s for s in suffixes if key.endswith(s)), None)
            if suffix:
                path = key[: -len(suffix)]
                if prefix:
                    path = path.removeprefix(prefix)
                for p in _STRIP:
                    path = path.removeprefix(p)
                groups.setdefault(path, {})[kind] = value
                origin.setdefault(path, []).append(key)
                break
        else:
            unmatched.append(key)
    if text:
        logger.warning(
            "ignoring %d text-encoder LoRA tensors (e.g. %s): this runtime uses cached prompt "
            "embeddings, so only the transformer part is loaded",
            len(text),
            text[0],
        )
    if not groups:
        raise WeightsError(
            "no LoRA tensors found (expected '*.lora_A.weight' / '*.lora_B.weight', kohya "
            "'*.lora_down.weight' / '*.lora_up.weight' or xlabs '*.down.weight' / '*.up.weight'); "
            f"first keys: {sorted(unmatched)[:5]}"
        )
    entries, layouts = [], set()
    for path, parts in groups.items():
        hit = _resolve(path, linears, bfl, kohya)
        if hit is None:
            unmatched += origin[path]
            continue
        if "A" not in parts or "B" not in parts:
            unmatched.append(f"{origin[path][0]} (its lora_A / lora_B partner is missing)")
            continue
        layout, targets, swap = hit
        layouts.add(layout)
        down, up = parts["A"], parts["B"]
        alpha = float(parts["alpha"]) if "alpha" in parts and layout != "xlabs" else None
        sizes = [linears[t].out_features for t in targets if t in linears]
        if len(sizes) != len(targets) or sum(sizes) != up.shape[0]:
            raise WeightsError(
                f"LoRA {path!r}: up matrix has {up.shape[0]} rows, the model's {targets} "
                f"have {sizes} outputs; the LoRA was trained for a different architecture"
            )
        if swap:
            up = torch.cat(up.chunk(2, dim=0)[::-1], dim=0)
        for t, u in zip(targets, up.split(sizes, dim=0), strict=True):
            entries.append(LoRAEntry(t, down, u, alpha, path, layout))
    if unmatched:
        raise WeightsError(
            f"LoRA keys match no Linear module of this model (layouts understood: {', '.join(LAYOUTS)}; "
            f"{len(unmatched)} unmatched, e.g. {sorted(unmatched)[:5]}); check that the file is a FLUX "
            "transformer LoRA, or pass prefix= if its keys carry another component prefix"
        )
    dup = [m for m, n in Counter(e.module for e in entries).items() if n > 1]
    if dup:
        raise WeightsError(
            f"LoRA file targets {sorted(dup)[:5]} more than once (mixed layouts for one module)"
        )
    return entries, extras, layouts
