"""``unidg-rt build``: exported ONNX → TensorRT / TensorRT-RTX plans + JSON sidecars.

    unidg-rt build export/out --builder tensorrt-rtx --target 8.9 --precision fp16 --out engines/plans

``--profile NAME`` (``engines/profiles/NAME.toml``, e.g. ``rtx-ada``, ``h100``, ``jetson-orin``) supplies
defaults for the builder, targets, precision and the other options; flags given explicitly win.
Shape profiles come from the exporter's sidecar IOSpec (``--size-range`` picks one of its profiles) or
``--profiles file.json``. One failing component (e.g. the ``plugin`` form without its plugin)
does not stop the others; the command exits with code 2 listing what failed and why.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from unidg_rt.artifacts.profiles import BuildProfile, load_build_profile
from unidg_rt.errors import ConfigError, InvalidInputError, UniDGError

console = Console(stderr=True)


def find_onnx(onnx_dir: Path, precision: str, components: list[str]) -> list[Path]:
    """ONNX files of ``onnx_dir`` (or the file itself) in ``precision``, filtered by component."""
    from unidg_rt.engines.inputs import component_from_path
    from unidg_rt.vocab import PRECISIONS

    if not onnx_dir.exists():
        raise InvalidInputError(f"{onnx_dir} does not exist: export first with `unidg-rt export`")
    files = [onnx_dir] if onnx_dir.is_file() else sorted(onnx_dir.glob("*.onnx"))
    chosen = []
    for f in files:
        tokens = f.name.removesuffix(".onnx").split(".")
        if any(t in PRECISIONS and t != precision for t in tokens):
            continue  # another precision's export
        tag = component_from_path(f)
        if components and tag not in components and tag.split("-")[0] not in components:
            continue
        chosen.append(f)
    if not chosen:
        found = ", ".join(f.name for f in files) or "no .onnx files"
        raise InvalidInputError(
            f"nothing to build in {onnx_dir} for precision {precision}"
            + (f" and components {components}" if components else "")
            + f" (found: {found}); export with `unidg-rt export --precision {precision}`"
        )
    return chosen


def _pick(flag, profile_value, default):
    """An explicit flag wins over the profile, the profile over the command's default."""
    if flag is not None and flag != []:
        return flag
    return profile_value if profile_value is not None else default


def build(
    onnx_dir: Path = typer.Argument(..., help="folder of exported ONNX (`unidg-rt export`) or one .onnx"),
    profile: Optional[str] = typer.Option(
        None,
        "--profile",
        help="build profile: a name in engines/profiles/ (rtx-ada, rtx-ampere, rtx-blackwell, rtx-portable, h100, "
        "jetson-orin) or a .toml path; its builder, targets, precision… are defaults the flags below override",
    ),
    builder: Optional[str] = typer.Option(
        None, help="tensorrt-rtx (AOT, no GPU needed; the default) | tensorrt (on the GPU)"
    ),
    target: list[str] = typer.Option(
        [], "--target", help="compute capability, repeatable (8.6, 8.9, 12.0); tensorrt: ampere+ or this GPU"
    ),
    precision: Optional[str] = typer.Option(
        None, help="fp32 | bf16 | fp16 | fp8 | int8 (must match the export; default fp16)"
    ),
    out: Path = typer.Option(Path("engines/plans"), "--out", help="plan folder"),
    component: list[str] = typer.Option(
        [], "--component", help="only these (transformer-fold, vae_decoder…)"
    ),
    size_range: Optional[str] = typer.Option(None, help="IOSpec profile to build (default: its first)"),
    profiles: Optional[Path] = typer.Option(None, help="JSON {component: {input: (min, opt, max) shapes}}"),
    timing_cache: Optional[Path] = typer.Option(None, help="timing cache file (no-op in TensorRT-RTX)"),
    workspace_gb: Optional[float] = typer.Option(None, help="builder workspace limit, GiB"),
    refit: Optional[bool] = typer.Option(
        None, "--refit/--no-refit", help="refittable engine (BuilderFlag.REFIT, where present; default off)"
    ),
    weight_streaming: Optional[bool] = typer.Option(
        None, "--weight-streaming/--no-weight-streaming", help="BuilderFlag.WEIGHT_STREAMING, where present"
    ),
    weakly_typed: Optional[bool] = typer.Option(
        None,
        "--weakly-typed/--no-weakly-typed",
        help="full TensorRT: builder picks precisions from an fp32 ONNX",
    ),
    opt_level: Optional[int] = typer.Option(None, help="builder optimization level (0-5)"),
    json_out: bool = typer.Option(False, "--json", help="print the manifests as JSON on stdout"),
) -> None:
    """Build engines from exported ONNX (TensorRT-RTX AOT for RTX GPUs, or TensorRT on the GPU)."""
    from unidg_rt.artifacts.plan import normalize_builder, normalize_precision
    from unidg_rt.engines.build import build_engine
    from unidg_rt.engines.inputs import component_from_path

    prof = load_build_profile(profile) if profile is not None else BuildProfile("", Path())
    try:
        precision = normalize_precision(_pick(precision, prof.precision, "fp16"))
        builder = normalize_builder(_pick(builder, prof.builder, "tensorrt-rtx"))
    except ConfigError as exc:
        if profile is None:
            raise
        raise ConfigError(f"{exc} (build profile {prof.path})") from exc
    target = list(_pick(target, prof.targets, []))
    component = list(_pick(component, prof.components, []))
    size_range = _pick(size_range, prof.size_range, None)
    timing_cache = _pick(timing_cache, prof.timing_cache, None)
    workspace_gb = _pick(workspace_gb, prof.workspace_gb, None)
    opt_level = _pick(opt_level, prof.opt_level, None)
    refit = _pick(refit, prof.refit, False)
    weight_streaming = _pick(weight_streaming, prof.weight_streaming, False)
    weakly_typed = _pick(weakly_typed, prof.weakly_typed, False)
    try:
        files = find_onnx(onnx_dir, precision, component)
    except InvalidInputError as exc:
        if not prof.export_profile:
            raise
        raise InvalidInputError(
            f"{exc} (profile {prof.name} expects `unidg-rt export --profile {prof.export_profile}`)"
        ) from exc
    if profile is not None:
        console.print(f"build profile {prof.name} ({prof.path}): {prof.description}")
    overrides = json.loads(profiles.read_text()) if profiles else {}
    results, failures = [], []
    for f in files:
        tag = component_from_path(f)
        prof = overrides.get(tag, overrides.get(tag.split("-")[0]))
        console.print(
            f"[bold]building[/] {f.name} → {tag} ({precision}, {builder}, {', '.join(target) or 'default target'})"
        )
        t0 = time.perf_counter()
        try:
            info = build_engine(
                f,
                out,
                builder=builder,
                precision=precision,
                profiles=prof,
                target=list(target) or None,
                timing_cache=timing_cache,
                workspace=int(workspace_gb * 2**30) if workspace_gb else None,
                refit=refit,
                weight_streaming=weight_streaming,
                strongly_typed=not weakly_typed,
                component=tag,
                size_range=size_range,
                opt_level=opt_level,
            )
        except UniDGError as exc:
            failures.append((f.name, str(exc)))
            console.print(f"[red]failed[/] {f.name}: {str(exc).splitlines()[0]}")
            continue
        verdict = (info.attention or {}).get("verdict", "")
        console.print(f"[green]wrote[/] {info.plan_path} in {time.perf_counter() - t0:.1f} s — {verdict}")
        results.append(info)
    if onnx_dir.is_dir() and (onnx_dir / "embeddings.safetensors").exists() and results:
        shutil.copy2(
            onnx_dir / "embeddings.safetensors", out / "embeddings.safetensors"
        )  # from_engines reads it

    table = Table(title=f"engines in {out}")
    for col in ("plan", "MB", "build s", "attention"):
        table.add_column(col)
    for info in results:
        m = info.manifest
        table.add_row(
            info.plan_path.name,
            f"{m['plan']['bytes'] / 1e6:.1f}",
            str(m["build_seconds"]),
            (m.get("layer_report") or {}).get("verdict", "-"),
        )
    console.print(table)
    if json_out:
        typer.echo(json.dumps([i.manifest for i in results], indent=2, default=str))
    if failures:
        lines = "\n".join(f"  {name}: {msg}" for name, msg in failures)
        raise UniDGError(f"{len(failures)} of {len(files)} builds failed:\n{lines}")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
