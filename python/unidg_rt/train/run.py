"""Stage orchestration for ``unidg-rt train vae|sft|apo|all``: files, resume, report.

Layout of the output folder (every stage reads what the previous one wrote)::

    vae.safetensors        stage vae: calibrated VAE (shift/scale in its config)
    latents.pt             stage sft: precomputed diptych latents (reused by apo)
    sft.safetensors        stage sft: transformer + VAE, float32, no adapters
    embeddings.safetensors stage sft: the learned category table (EmbeddingsCache format)
    reference_encoder.safetensors  stage sft (jointly trained), refit by stage refenc (float32)
    apo.safetensors        stage apo: the gated LoRA (peft keys + gate.a / gate.b)
    model.safetensors      sft / apo: the shippable checkpoint (float16 storage, card defaults)
    train_report.json      steps, losses, wall time per stage, seed, recipe, environment
    ckpt/<stage>.pt        periodic training checkpoints (resume after a crash; removed when done)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from unidg_rt.embeddings import normalize_category
from unidg_rt.train.card import REFERENCE_ENCODER_FILE, card_defaults, sync_card_cutout
from unidg_rt.train.common import environment, setup_torch, update_report
from unidg_rt.train.dataset import (
    DiptychSet,
    LatentSet,
    build_diptych_set,
    encode_diptych_set,
    training_categories,
)
from unidg_rt.train.recipe import Recipe

logger = logging.getLogger(__name__)
STAGES = ("vae", "sft", "refenc", "apo")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def arch_configs(recipe: Recipe):
    from unidg_rt.models.presets import PRESETS

    if recipe.arch not in PRESETS:
        raise ValueError(f"recipe.arch={recipe.arch!r} unknown; choose one of {sorted(PRESETS)}")
    tfn, vfn = PRESETS[recipe.arch]
    vcfg = vfn()
    if recipe.vae.config:
        vcfg = dataclasses.replace(
            vcfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.vae.config.items()}
        )
    return tfn(), vcfg


class Run:
    """One output folder + recipe; stages share built data in memory when run together."""

    def __init__(self, recipe: Recipe, out: str | Path):
        self.recipe, self.out = recipe, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.report = self.out / "train_report.json"
        self._dset: DiptychSet | None = None
        setup_torch(recipe.threads, recipe.seed)

    def path(self, name: str) -> Path:
        return self.out / name

    def _ckpt(self, stage: str) -> Path:
        return self.out / "ckpt" / f"{stage}.pt"

    def _record(self, stage: str, entry: dict[str, Any]) -> None:
        update_report(
            self.report,
            stage,
            entry,
            seed=self.recipe.seed,
            recipe=self.recipe.to_dict(),
            environment=environment(),
            note="CPU training, shared 2-core machine, 1 torch thread",
        )
        self.record_files()  # after every stage, so stage-by-stage runs report current sizes

    # ------------------------------------------------------------------ data
    def diptychs(self) -> DiptychSet:
        if self._dset is None:
            t0 = time.perf_counter()
            self._dset = build_diptych_set(self.recipe.data, self.recipe.seed)
            wall = time.perf_counter() - t0
            self._record(
                "data",
                {
                    "wall_s": round(wall, 1),
                    "num_diptychs": len(self._dset),
                    "num_pairs": self.recipe.data.num_pairs,
                    "categories": len(self._dset.categories),
                },
            )
        return self._dset

    # ------------------------------------------------------------------ stages
    def vae(self):
        from unidg_rt.train.vae import calibrate_latents, reconstruction_error, save_vae, train_vae

        r = self.recipe
        if r.vae.from_checkpoint:  # reuse a trained VAE (warm-started SFT needs its latent space)
            from unidg_rt.models.loading import load_vae

            vae = load_vae(r.vae.from_checkpoint, dtype=torch.float32).float()
            save_vae(self.path("vae.safetensors"), vae)
            self._record(
                "vae",
                {
                    "from_checkpoint": str(r.vae.from_checkpoint),
                    "steps": 0,
                    "wall_s": 0.0,
                    "params": sum(p.numel() for p in vae.parameters()),
                    "config": vae.config.to_dict(),
                },
            )
            return vae
        dset = self.diptychs()
        _, vcfg = arch_configs(self.recipe)
        vae, summary = train_vae(dset, r.vae, vcfg, r.seed, self._ckpt("vae"), r.checkpoint_every_s)
        t0 = time.perf_counter()
        stats = calibrate_latents(vae, dset, r.vae.stats_images)
        summary["wall_s"] = round(summary["wall_s"] + time.perf_counter() - t0, 1)
        save_vae(self.path("vae.safetensors"), vae)
        self._ckpt("vae").unlink(missing_ok=True)
        params = sum(p.numel() for p in vae.parameters())
        self._record(
            "vae",
            {
                **summary,
                **stats,
                **reconstruction_error(vae, dset),
                "params": params,
                "config": vae.config.to_dict(),
            },
        )
        return vae

    def latents(self, vae) -> LatentSet:
        """Encode once; cached in ``latents.pt`` keyed by seed, data recipe and VAE config."""
        key = json.dumps(
            {
                "format": 3,
                "seed": self.recipe.seed,
                "data": self.recipe.to_dict()["data"],
                "vae": vae.config.to_dict(),
            },
            sort_keys=True,
        )
        cache = self.path("latents.pt")
        if cache.is_file():
            blob = torch.load(cache, map_location="cpu", weights_only=False)
            if blob.get("key") == key:
                lat = LatentSet(**blob["latents"])
                if lat.reference_mask is None:  # a cache from before reference masks were kept
                    lat.reference_mask = torch.from_numpy(self.diptychs().reference_mask)
                    torch.save({"key": key, "latents": lat.__dict__}, cache)
                return lat
        t0 = time.perf_counter()
        lat = encode_diptych_set(vae, self.diptychs(), self.recipe.data.encode_batch)
        torch.save({"key": key, "latents": lat.__dict__}, cache)
        self._record("encode", {"wall_s": round(time.perf_counter() - t0, 1), "num": len(lat)})
        return lat

    def sft(self):
        from unidg_rt.embeddings import EmbeddingsCache
        from unidg_rt.models.loading import save_checkpoint
        from unidg_rt.models.refenc import save_reference_encoder
        from unidg_rt.train.sft import fixed_batch_loss, train_sft
        from unidg_rt.train.vae import load_vae_file

        r = self.recipe
        vae = load_vae_file(self.path("vae.safetensors"))
        lat = self.latents(vae)
        tcfg, _ = arch_configs(r)
        from unidg_rt.train.levers import FreshStream, heldout_latents

        fresh = (
            FreshStream(vae, r.data, r.seed, r.sft.fresh_every, len(lat) // 4) if r.sft.fresh_every else None
        )
        heldout = {}
        if r.sft.eval_every:
            heldout["heldout"] = heldout_latents(vae, r.data, r.seed, r.sft.heldout_pairs)
            if r.data.copy_fraction > 0:
                heldout["heldout_copy"] = heldout_latents(
                    vae, r.data, r.seed, r.sft.heldout_pairs, copies=True
                )
        model, table, summary = train_sft(
            lat,
            r.sft,
            tcfg,
            r.seed,
            r.data.text_seq_len,
            self._ckpt("sft"),
            r.checkpoint_every_s,
            device=r.device,
            fresh=fresh,
            heldout=heldout,
        )
        if fresh is not None:
            summary["fresh_pairs"] = summary["steps"] // r.sft.fresh_every
        summary["fixed_batch_loss"] = round(fixed_batch_loss(model, lat, table, r.sft, r.seed), 5)
        defaults = card_defaults(r, with_apo=False)  # the joint encoder sees whole crops
        save_checkpoint(self.path("sft.safetensors"), model, vae, defaults=defaults)
        save_checkpoint(
            self.path("model.safetensors"), model, vae, defaults=defaults, dtype=_DTYPES[r.ship.storage_dtype]
        )
        EmbeddingsCache.save(
            self.path("embeddings.safetensors"),
            table.entries(lat.categories),
            prompts=_prompts(lat.categories),
            encoder="unidg-rt learned category table (Diversity-SFT)",
        )
        if table.encoder is not None:
            save_reference_encoder(self.path(REFERENCE_ENCODER_FILE), table.encoder)
        self._ckpt("sft").unlink(missing_ok=True)
        self._record(
            "sft",
            {
                **summary,
                "params": sum(p.numel() for p in model.parameters()),
                "config": tcfg.to_dict(),
                "table_shape": list(table.embeds.shape),
                "reference_encoder_params": sum(p.numel() for p in table.encoder.parameters())
                if table.encoder is not None
                else 0,
            },
        )
        return model, table

    def _table(self, categories: list[str]):
        """The SFT stage's category table (frozen; rows in ``categories`` order), with its reference
        encoder when the recipe has one."""
        from unidg_rt.embeddings import EmbeddingsCache
        from unidg_rt.models.refenc import load_reference_encoder
        from unidg_rt.train.sft import CategoryTable

        cache = EmbeddingsCache.load(self.path("embeddings.safetensors"))
        e, p = cache.stack(categories)
        table = CategoryTable(len(categories), e.shape[1], e.shape[2], p.shape[1])
        table.load_state_dict({"embeds": torch.from_numpy(e), "pooled": torch.from_numpy(p)})
        if self.recipe.sft.ref_width > 0:
            table.encoder = load_reference_encoder(self.path(REFERENCE_ENCODER_FILE))
        return table.requires_grad_(False)

    def refenc(self):
        """Refit the SFT stage's reference encoder to the frozen table on a fresh reference bank."""
        from unidg_rt.models.refenc import save_reference_encoder
        from unidg_rt.train.refenc import (
            bank_accuracy,
            build_reference_bank,
            table_rows,
            train_reference_encoder,
        )

        r = self.recipe
        if r.sft.ref_width <= 0:
            logger.info("recipe has no reference encoder (sft.ref_width = 0): stage refenc skipped")
            return None
        cats = training_categories()  # the table's rows, in LatentSet.categories order
        table = self._table([normalize_category(c) for c in cats])
        t0 = time.perf_counter()
        bank = build_reference_bank(r.data, r.seed, r.refenc.bank_size, cats)
        held = build_reference_bank(r.data, r.seed, r.refenc.heldout, cats, offset=1 << 40)
        bank_s = time.perf_counter() - t0
        rows = table_rows(table)
        before = bank_accuracy(table.encoder, held, rows)
        summary = train_reference_encoder(table.encoder, table, bank, r.refenc, r.seed)
        after = bank_accuracy(table.encoder, held, rows)
        save_reference_encoder(self.path(REFERENCE_ENCODER_FILE), table.encoder)
        sync_card_cutout(self.path("model.safetensors"), table.encoder.config.cutout)
        self._record(
            "refenc",
            {
                **summary,
                "wall_s": round(summary["wall_s"] + bank_s, 1),
                "bank_build_s": round(bank_s, 1),
                "bank_size": len(bank),
                "heldout_accuracy_sft_encoder": round(before, 4),
                "heldout_accuracy": round(after, 4),
            },
        )
        logger.info("reference encoder: held-out nearest-row accuracy %.3f -> %.3f", before, after)
        return table.encoder

    def apo(self):
        from unidg_rt.models.loading import load_transformer, save_checkpoint
        from unidg_rt.train.apo import ADAPTER, train_apo
        from unidg_rt.train.vae import load_vae_file

        r = self.recipe
        vae = load_vae_file(self.path("vae.safetensors"))
        lat = self.latents(vae)
        model = load_transformer(self.path("sft.safetensors"), dtype=torch.float32)
        table = self._table(lat.categories)
        mgr, summary = train_apo(
            model, table, lat, r.apo, r.sft, r.seed, self._ckpt("apo"), r.checkpoint_every_s
        )
        summary.update(apo_eval(model, mgr, lat, table, r))
        mgr.save(ADAPTER, self.path("apo.safetensors"))
        mgr.detach()
        cutout = table.encoder is not None and table.encoder.config.cutout
        save_checkpoint(
            self.path("model.safetensors"),
            model,
            vae,
            defaults=card_defaults(r, True, cutout),
            dtype=_DTYPES[r.ship.storage_dtype],
        )
        self._ckpt("apo").unlink(missing_ok=True)
        lora_params = (
            sum(v.numel() for v in mgr.state_dict(ADAPTER).values()) if ADAPTER in mgr.adapters else None
        )
        self._record("apo", {**summary, "lora_params": lora_params})
        return mgr

    def all(self) -> dict[str, Any]:
        self.vae()
        self.sft()
        self.refenc()
        self.apo()
        return json.loads(self.report.read_text())

    def record_files(self) -> None:
        sizes = {f.name: f.stat().st_size for f in sorted(self.out.glob("*.safetensors"))}
        report = json.loads(self.report.read_text())
        report["files_bytes"] = sizes
        self.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def apo_eval(model, mgr, lat, table, recipe: Recipe, n_batches: int = 6) -> dict[str, float]:
    """Mean token-weighted flow error with the APO adapter on (strength 1) vs off, on fixed
    batches from a stream disjoint from training."""
    from unidg_rt.train.apo import ADAPTER, apo_errors, apo_step_batch

    on, off = [], []
    for i in range(n_batches):
        batch, _ = apo_step_batch(lat, table, recipe.apo, recipe.sft, recipe.seed + 99_991, i)
        err_theta, err_ref = apo_errors(model, mgr, batch, ADAPTER)
        on.append(float(err_theta.mean()))
        off.append(float(err_ref.mean()))
    return {"eval_err_sft": round(sum(off) / len(off), 5), "eval_err_sft_apo": round(sum(on) / len(on), 5)}


def _prompts(categories: list[str]) -> dict[str, str]:
    from unidg_rt.data import get_category

    return {c: get_category(c).render_caption("product") for c in categories}


def run_stage(stage: str, recipe: Recipe, out: str | Path) -> dict[str, Any]:
    run = Run(recipe, out)
    if stage == "all":
        return run.all()
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} unknown; choose one of {STAGES + ('all',)}")
    getattr(run, stage)()
    run.record_files()
    return json.loads(run.report.read_text())
