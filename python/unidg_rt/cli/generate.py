"""``unidg-rt generate``: one defect into one image; PNG + JSON record of every setting and seed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from unidg_rt.cli.common import (
    ConfigOption,
    DeviceOption,
    DtypeOption,
    EmbeddingsOption,
    FastPathOption,
    HeightOption,
    PrecisionOption,
    WeightsOption,
    WidthOption,
    atomic_save_png,
    atomic_write_json,
    pipeline_from_settings,
    progress_bar,
)
from unidg_rt.errors import InvalidInputError

console = Console(stderr=True)


def _open_image(path: Path | None, name: str):
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError as exc:
        raise InvalidInputError(f"--{name} {path} does not exist: check the path") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(
            f"--{name} {path} is not a readable image ({exc}); pass a PNG or JPEG"
        ) from exc


def generate(
    image: Optional[Path] = typer.Option(None, help="normal target image (default: bundled sample)"),
    mask: Optional[Path] = typer.Option(None, help="target mask, white where the defect goes"),
    reference: Optional[Path] = typer.Option(None, help="reference defect image (reference mode)"),
    reference_mask: Optional[Path] = typer.Option(None, help="defect mask of the reference image"),
    category: Optional[str] = typer.Option(None, help="defect category (text mode, cached embeddings)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output PNG (default outputs/...)"),
    weights: WeightsOption = None,
    embeddings: EmbeddingsOption = None,
    seed: Optional[int] = typer.Option(None, help="random seed (recorded in the JSON)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="num_inference_steps"),
    guidance: Optional[float] = typer.Option(None, help="guidance_scale"),
    height: HeightOption = None,
    width: WidthOption = None,
    num_images: int = typer.Option(1, help="num_images_per_prompt"),
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    fast_path: FastPathOption = None,
    precision: PrecisionOption = None,
    backend: Optional[str] = typer.Option(None, help="torch / onnxruntime / tensorrt"),
    onnx_dir: Optional[Path] = typer.Option(None, help="exported ONNX folder for --backend onnxruntime"),
    engines_dir: Optional[Path] = typer.Option(None, help="built engine folder for --backend tensorrt"),
    config: ConfigOption = None,
) -> None:
    """Insert a defect (reference mode with --reference, text mode with --category)."""
    from unidg_rt.artifacts.assets import samples_dir
    from unidg_rt.settings import load_settings

    settings = load_settings(
        config,
        weights=weights,
        embeddings=embeddings,
        device=device,
        dtype=dtype,
        backend=backend,
        onnx_dir=onnx_dir,
        engines_dir=engines_dir,
        fast_path=fast_path,
        precision=precision,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
    )
    if image is None and mask is None:
        samples = samples_dir()
        image, mask = samples / "target.png", samples / "target_mask.png"
        if reference is None and category is None:
            reference, reference_mask = samples / "reference.png", samples / "reference_mask.png"
    elif image is None or mask is None:
        raise InvalidInputError(
            "--image and --mask go together: pass both (or neither for the bundled sample)"
        )
    if (reference is None) != (reference_mask is None):
        raise InvalidInputError("--reference and --reference-mask go together: pass both")
    if reference is None and category is None:
        raise InvalidInputError(
            "pass --reference/--reference-mask (reference mode) or --category (text mode)"
        )

    pipe = pipeline_from_settings(settings)
    args = dict(
        image=_open_image(image, "image"),
        mask_image=_open_image(mask, "mask"),
        reference_image=_open_image(reference, "reference"),
        reference_mask=_open_image(reference_mask, "reference-mask"),
        defect_category=category,
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        num_images_per_prompt=num_images,
        seed=seed,
        segments=settings.segments,
        paste_mode=settings.paste_mode,
    )
    steps_total = settings.num_inference_steps or pipe.card.defaults.num_inference_steps
    t0 = time.perf_counter()
    with progress_bar(console, "denoising") as progress:
        task = progress.add_task("steps", total=steps_total)

        def on_step(_pipe, i, _t, kwargs):
            progress.update(task, completed=i + 1)
            return kwargs

        out = pipe(**args, callback_on_step_end=on_step)
    elapsed = time.perf_counter() - t0

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = output or settings.output_dir / f"unidg_{stamp}_seed{out.seeds[0]}.png"
    written = []
    for i, img in enumerate(out.images):
        path = base if len(out.images) == 1 else base.with_name(f"{base.stem}_{i}{base.suffix}")
        atomic_save_png(path, img)
        record = {
            "output": str(path),
            "seed": out.seeds[i],
            "elapsed_s": round(elapsed, 3),
            "inputs": {
                "image": str(image),
                "mask": str(mask),
                "reference": str(reference) if reference else None,
                "reference_mask": str(reference_mask) if reference_mask else None,
                "category": category,
            },
            "settings": settings.model_dump(mode="json"),
            "pipeline": out.info,
        }
        atomic_write_json(path.with_suffix(".json"), record)
        written.append(path)
    for p in written:
        console.print(f"[green]wrote[/] {p} (+ {p.with_suffix('.json').name}) in {elapsed:.2f} s")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
