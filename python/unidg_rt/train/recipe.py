"""Every hyper-parameter of the embedded default model's training, as data.

The defaults of these dataclasses *are* the shipped recipe (``unidg-rt train all`` with no
``--recipe``); a JSON file with the same nesting overrides any subset of them::

    {"seed": 1, "sft": {"steps": 500}, "apo": {"beta": 200.0}}

The full resolved recipe is written into ``train_report.json`` beside the weights. Budgets were
chosen on a shared 2-core CPU (one torch thread each: see :func:`unidg_rt.train.common.setup_torch`)
so that the whole run takes about an hour there (the shipped run: 72 min, much of it sharing the
cores with a second training run).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unidg_rt.errors import ConfigError


@dataclass
class DataRecipe:
    """Procedural quadruplets → diptychs (reference and text mode), seeded."""

    source_size: int = 160  # side of the procedural images the crops are taken from
    gen_size: int = 96  # per-side generation size: diptychs are gen_size × 2·gen_size
    num_pairs: int = 800  # reference pairs; each gives 2 reference-mode + 2 text-mode diptychs
    cross_surface: float = 0.25  # fraction of pairs whose target is another surface kind
    text_seq_len: int = 8  # text tokens (learned per-category embeddings / zeros in reference mode)
    encode_batch: int = 32  # VAE encode batch during latent precomputation
    # adaptive crop rule (unidg_rt.crops.adaptive_crop_box), written into the card so the runtime
    # crops the same way. Tight crops make a defect span ~2x more latent pixels: with the same
    # 8x VAE the round-trip category consistency of real defects rose from 17 % to 32 %
    # (50 % with residual paste-back), see README "Default model".
    crop: dict[str, float] = field(
        default_factory=lambda: {"context": 0.05, "min_side": 32, "max_margin": 0.5}
    )
    # copy pairs (unidg_rt.data.copies): this share of the pairs carries ONE defect instance on
    # both items (same renderer stream, size and colour; the target's copy warped by a scale in
    # copy_scale_range, a random rotation and a new centre), so copying the reference is the best
    # prediction; the rest stay independent same-category pairs. 0 = off (the shipped v1 data).
    copy_fraction: float = 0.0
    copy_scale_range: list[float] = field(default_factory=lambda: [0.7, 1.4])


@dataclass
class VAERecipe:
    steps: int = 4500
    batch_size: int = 8
    crop: int = 64  # random square crops (fully convolutional); 0 = whole diptychs
    lr: float = 2e-4  # 1e-3 collapsed to gray (colour lost) on this tiny VAE; diffusers' AutoencoderKL too
    warmup: int = 50
    min_lr_frac: float = 0.2
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    grad: float = 0.5  # L1 between finite-difference image gradients (keeps thin scratches sharp)
    kl: float = 1e-6  # small, like FLUX's VAE: latents stay close to deterministic
    color: float = 1.0  # L1 between 8×8-average-pooled images (low-frequency colour fidelity)
    stats_images: int = 128  # diptychs encoded (gt + masked) for shift_factor / scaling_factor
    # take the VAE from an existing UniDG checkpoint (e.g. the shipped model.safetensors) instead
    # of training one: needed to warm-start SFT from that checkpoint (sft.init_from)
    from_checkpoint: str | None = None
    autocast_bf16: bool = True  # training forward in bf16 autocast (latents are computed in fp32)
    logvar_init: float | None = -6.0  # initial posterior log-variance bias (None = PyTorch default)
    # defects are a few % of the pixels: without these the VAE learns textures and blurs defects
    # away (round-trip category consistency of real defects fell from 72 % to 20 %)
    defect_weight: float = 4.0  # extra per-pixel loss weight where the target holds a defect
    defect_crop: float = 0.3  # share of crops centred on a defect pixel (the rest uniform)
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the arch preset's VAEConfig


@dataclass
class SFTRecipe:
    """Diversity-SFT: rectified flow on diptychs, mixed reference / text (category) mode."""

    steps: int = 10000
    batch_size: int = 16
    lr: float = 1e-3
    embed_lr: float = 2e-3  # the learned category table
    warmup: int = 100
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    text_fraction: float = 0.4  # share of text-mode samples per batch (the rest: reference mode)
    cond_dropout: float = 0.15  # samples trained with zero conditioning (the true-CFG unconditional branch)
    guidance: float = 3.5  # distilled-guidance input, fixed (the runtime default)
    logit_mean: float = 0.0  # sigma ~ sigmoid(N(mean, std)), then FLUX's resolution time shift
    logit_std: float = 1.0
    time_shift: bool = True
    context_weight: float = 0.1  # loss weight of tokens outside TARGET_REGION (paste-back drops them)
    defect_weight: float = 4.0  # extra loss weight of tokens holding ground-truth defect pixels
    group_bias_lambda: float = 1.0  # λ of the default group-bias table, as at inference
    embed_init_std: float = 0.5
    # reference mode: a learned reference encoder (unidg_rt.models.refenc) turns the reference crop
    # into the text slots + pooled vector; ref_align pulls its output towards the category table
    # row of the reference's category (a stop-gradient target). 0 = off (zero conditioning in
    # reference mode), the default: with 32 (+ stage refenc) reference mode rose only 13 -> 15 %
    # while text mode, diversity and FD got worse (README "Reference encoder"), so the shipped
    # model does not use it.
    ref_width: int = 0
    ref_align: float = 1.0
    # --- issue 18 levers (all off by default = the v1 recipe; see docs/default-model.md) ---
    # EMA of the transformer + category-table weights (decay per step; 0 = off). With it on, the
    # held-out curve, the saved weights and everything downstream (APO, shipping) use the EMA copy.
    ema: float = 0.0
    # fresh data: every `fresh_every` steps one new procedural pair (4 diptychs, encoded on the fly)
    # replaces the oldest pair of the latent bank (a ring of data.num_pairs pairs); 0 = fixed set
    fresh_every: int = 0
    # warm start: transformer weights from this UniDG checkpoint and the category table from the
    # embeddings.safetensors beside it (use with vae.from_checkpoint of the same file)
    init_from: str | None = None
    # held-out flow loss (independent pairs from a disjoint seed stream, reference and text mode
    # separately) every eval_every steps into the report's learning curve; 0 = off
    eval_every: int = 0
    heldout_pairs: int = 32
    # wall-clock cap of the stage in seconds (resume included; 0 = off): training stops after the
    # first step past it and saves what it has (the EMA copy with sft.ema). A safety net for a run
    # that must end by a deadline: the cosine schedule still spans `steps`, so size `steps` from a
    # measured step time and leave the cap as the backstop; the report records the steps done.
    max_wall_s: float = 0.0


@dataclass
class RefEncRecipe:
    """Stage ``refenc`` (:mod:`unidg_rt.train.refenc`): the reference encoder fitted to the frozen
    category table on a bank of fresh procedural reference crops (skipped when sft.ref_width = 0)."""

    bank_size: int = 8000  # training reference crops (the SFT set has 1600)
    heldout: int = 500  # crops of a disjoint seed stream, for the reported accuracy
    steps: int = 5000  # 3000 steps: held-out accuracy 40 % (train 49 %: still under-fitted)
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tau: float = 0.05  # temperature of the prototype logits -mean (v - t_c)^2 / tau
    align: float = 1.0  # + align · mean (v - t_y)^2
    augment: bool = True  # random flips / 90° turns
    # the encoder sees the reference cut out (gray outside its mask): held-out accuracy 55 % vs
    # 40 % on the full crop (3000 steps, measured); the card tells the pipeline to do the same
    cutout: bool = True


@dataclass
class APORecipe:
    """Anomaly Preference Optimization: gated LoRA vs the frozen SFT model."""

    steps: int = 250
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 20
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    rank: int = 8
    alpha: float = 8.0
    beta: float = 500.0  # β_t = beta · (beta_floor + (1 - beta_floor) · (1 - t)^beta_power)
    beta_floor: float = 0.25
    beta_power: float = 1.0
    text_fraction: float = 0.4
    data_seed_offset: int = 7919  # APO draws its own batches (and noise) from seed + offset
    # Losers: "none" = positives only (the seed-2 loss as written); "self" = pairs against the SFT
    # model's own samples in the target region (unidg_rt.train.negatives), drawn for a fixed pool.
    negatives: str = "self"
    num_negatives: int = 640
    negative_steps: int = 8
    negative_cfg: float = 4.0
    anchor: float = 1.0  # with losers: + anchor · mean(β_t (err_θ - err_ref)) on the winners (keeps the fit)
    # condition-mismatch pairs (unidg_rt.train.mismatch): + mismatch · the pairwise loss of the
    # target under its own condition vs under another category's (text row / reference half)
    mismatch: float = 0.0


@dataclass
class ShipRecipe:
    """Card defaults written into the checkpoint metadata (read by UniDGPipeline)."""

    num_inference_steps: int = 8
    guidance_scale: float = 3.5
    feather: int = 4
    apo_strength: float = 1.0
    # paste-back: "residual" adds (decoded result - decoded normal) to the input pixels, which
    # cancels the tiny VAE's reconstruction error of the surface (see UniDGPipeline paste)
    paste: str = "residual"
    # hierarchical sampling: lower APO strength in the early (high-noise) segment for diversity,
    # full strength late (low noise) for fidelity; fractions of the step count. true_cfg_scale:
    # two-pass CFG against zero embeddings — in text mode it is what makes defects visible
    # (without it the category signal is averaged away); in reference mode it guides with the
    # reference encoder's conditioning (without an encoder the conditioning is zero and the
    # pipeline skips the second pass).
    segments: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"start": 0.0, "end": 0.25, "adapter_scales": {"apo": 0.5}, "true_cfg_scale": 4.0},
            {"start": 0.25, "end": 1.0, "adapter_scales": {"apo": 1.0}, "true_cfg_scale": 4.0},
        ]
    )
    storage_dtype: str = "float16"  # the loader casts back to float32 on CPU
    # bundled sample images (assets/samples): make_reference_pair(seed, category, surfaces, size)
    sample_seed: int = 79  # a hole on tiles, chosen by looking at outputs (large enough to render)
    sample_category: str = "hole"
    sample_surface: str | None = None
    sample_target_surface: str | None = None
    sample_size: list[int] = field(default_factory=lambda: [192, 256])  # (height, width)


@dataclass
class Recipe:
    seed: int = 0
    arch: str = "default"  # unidg_rt.models.presets.PRESETS key (transformer + VAE)
    threads: int = 1  # torch intra-op threads (1 is fastest on a shared, oversubscribed CPU)
    device: str = "cpu"  # SFT stage device ("cpu" / "cuda"); VAE / APO stages run on the CPU
    checkpoint_every_s: float = 180.0
    data: DataRecipe = field(default_factory=DataRecipe)
    vae: VAERecipe = field(default_factory=VAERecipe)
    sft: SFTRecipe = field(default_factory=SFTRecipe)
    refenc: RefEncRecipe = field(default_factory=RefEncRecipe)
    apo: APORecipe = field(default_factory=APORecipe)
    ship: ShipRecipe = field(default_factory=ShipRecipe)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return _merge(cls(), data, "recipe")

    @classmethod
    def load(cls, path: str | Path | None) -> Recipe:
        if path is None:
            return cls()
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"recipe {path} is not a readable JSON file: {exc}") from exc
        return cls.from_dict(data)

    def with_steps(self, stage: str, steps: int | None) -> Recipe:
        """A copy with ``steps`` overridden for one stage (``vae``/``sft``/``refenc``/``apo``) or all."""
        if steps is None:
            return self
        stages = ("vae", "sft", "refenc", "apo") if stage == "all" else (stage,)
        out = Recipe.from_dict(self.to_dict())
        for s in stages:
            getattr(out, s).steps = int(steps)
        return out


def _merge(obj, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown {where} key {key!r}; known: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, value)
    return obj
