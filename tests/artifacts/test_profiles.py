"""Named profiles in the stage folders (:mod:`unidg_rt.artifacts.profiles`): every shipped TOML
parses into its typed record, names are found from the checkout / cwd / ``UNIDG_RT_ROOT``, and
unknown names, keys and values fail with messages that list what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from unidg_rt.artifacts import profiles as pf
from unidg_rt.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXPORT_TOMLS = sorted((REPO / "export" / "profiles").glob("*.toml"))
BUILD_TOMLS = sorted((REPO / "engines" / "profiles").glob("*.toml"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_checkout_root_is_this_repository():
    assert pf.checkout_root() == REPO


def test_shipped_profiles_exist_for_the_targets():
    assert {"jetson-orin", "rtx-ada", "h100"} <= set(pf.available("export"))
    assert {"jetson-orin", "rtx-ada", "h100"} <= set(pf.available("engines"))
    assert "default" in pf.available("calibration")
    assert EXPORT_TOMLS and BUILD_TOMLS


@pytest.mark.parametrize("path", EXPORT_TOMLS, ids=lambda p: p.stem)
def test_every_shipped_export_profile_parses(path):
    from unidg_rt.export.spec import GenerationRange

    prof = pf.load_export_profile(path.stem)
    assert prof.path.resolve() == path.resolve() and prof.name == path.stem and prof.description
    assert prof.forms and prof.precision and prof.ranges
    for r in prof.ranges.values():
        if r.sides is not None:  # absolute sides must make a valid range (multiples of 16)
            GenerationRange(sides=r.sides, text=r.text or (512,) * 3, batch=r.batch or (1, 1, 4))


@pytest.mark.parametrize("path", BUILD_TOMLS, ids=lambda p: p.stem)
def test_every_shipped_build_profile_parses(path):
    from unidg_rt.artifacts.plan import normalize_builder, normalize_cc

    prof = pf.load_build_profile(path.stem)
    assert prof.path.resolve() == path.resolve() and prof.description
    assert normalize_builder(prof.builder) == prof.builder
    assert prof.targets and all(normalize_cc(t) == t for t in prof.targets)
    # the export profile it names exists and writes the precision this build expects (strongly typed)
    export = pf.load_export_profile(prof.export_profile)
    assert export.precision == prof.precision


def test_rtx_profiles_target_what_tensorrt_rtx_builds():
    """TensorRT-RTX has no sm 9.0 (Hopper) or sm 8.7 (Jetson) target: those profiles use full TensorRT."""
    for path in BUILD_TOMLS:
        prof = pf.load_build_profile(path)
        if prof.builder == "tensorrt-rtx":
            assert set(prof.targets) <= {"7.5", "8.0", "8.6", "8.9", "12.0", "12.1"}, prof.name
        else:
            assert len(prof.targets) == 1, prof.name  # full TensorRT builds for the GPU it runs on


def test_unknown_name_lists_available_and_folders():
    with pytest.raises(ConfigError) as err:
        pf.load_build_profile("jetson-xavier")
    msg = str(err.value)
    assert "'jetson-xavier' not found" in msg and "rtx-ada" in msg and "h100" in msg
    assert str(REPO / "engines" / "profiles") in msg and ".toml" in msg
    with pytest.raises(ConfigError, match="available: .*jetson-orin"):
        pf.load_export_profile("nope")


def test_missing_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        pf.load_export_profile(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        pf.load_build_profile("./none.toml")


def test_installed_wheel_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(pf, "checkout_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(pf.ROOT_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        pf.load_build_profile("rtx-ada")
    assert "available: none" in str(err.value) and f"set {pf.ROOT_ENV}=" in str(err.value)


def test_lookup_order_env_cwd_checkout(monkeypatch, tmp_path):
    env_root, cwd = tmp_path / "env", tmp_path / "cwd"
    _write(env_root / "engines" / "profiles" / "rtx-ada.toml", 'builder = "tensorrt"\ntargets = ["8.9"]\n')
    _write(cwd / "engines" / "profiles" / "line.toml", 'description = "my line"\nprecision = "int8"\n')
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(pf.ROOT_ENV, raising=False)
    assert pf.load_build_profile("line").precision == "int8"  # the current directory's own profile
    assert pf.load_build_profile("rtx-ada").builder == "tensorrt-rtx"  # the checkout's
    monkeypatch.setenv(pf.ROOT_ENV, str(env_root))
    assert pf.load_build_profile("rtx-ada").builder == "tensorrt"  # UNIDG_RT_ROOT first
    assert pf.stage_dirs("engines")[0] == env_root / "engines" / "profiles"
    assert {"line", "rtx-ada", "h100"} <= set(pf.available("engines"))


def test_unknown_keys_are_named(tmp_path):
    p = _write(tmp_path / "a.toml", 'precision = "fp16"\nworkspace = 4\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) workspace; allowed: .*workspace_gb"):
        pf.load_build_profile(p)
    p = _write(tmp_path / "b.toml", "[ranges.default]\nsides = [256, 512, 768]\nheight = [1, 2, 3]\n")
    with pytest.raises(ConfigError, match=r"ranges\.default\.height; allowed: sides, text, batch"):
        pf.load_export_profile(p)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('precision = "fp64"', "precision = 'fp64' unknown"),
        ('forms = ["flash"]', "forms has unknown ['flash']"),
        ("forms = []", "must be a non-empty list"),
        ("opset = true", "opset = True must be of type int"),
        ("[ranges.default]\nsides = [512, 256, 768]", "1 <= min <= opt <= max"),
        ("[ranges.default]\nbatch = [1, 1]", "ranges.default.batch = [1, 1] must be [min, opt, max]"),
        ("ranges = 3", "ranges = 3 must be of type dict"),
        ("precision = ", "cannot be read"),
    ],
)
def test_bad_export_values(tmp_path, text, needle):
    p = _write(tmp_path / "x.toml", text + "\n")
    with pytest.raises(ConfigError) as err:
        pf.load_export_profile(p)
    assert needle in str(err.value) and str(p) in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("workspace_gb = 0", "positive number of GiB"),
        ("opt_level = 7", "must be 0..5"),
        ('targets = "8.9"', "must be of type list"),
        ("refit = 1", "refit = 1 must be of type bool"),
    ],
)
def test_bad_build_values(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        pf.load_build_profile(_write(tmp_path / "x.toml", text + "\n"))


def test_build_profile_record(tmp_path):
    p = _write(
        tmp_path / "line.toml",
        'builder = "tensorrt"\ntargets = [8.7]\nprecision = "int8"\nworkspace_gb = 2\nrefit = true\n'
        'timing_cache = "cache/line.timing"\ncomponents = ["transformer-fold"]\nsize_range = "s768"\n',
    )
    prof = pf.load_build_profile(p)
    assert prof.targets == ("8.7",) and prof.workspace_gb == 2.0 and prof.refit is True
    assert prof.timing_cache == tmp_path / "cache" / "line.timing"  # relative to the profile
    assert prof.components == ("transformer-fold",) and prof.size_range == "s768"
    assert prof.weight_streaming is None and prof.opt_level is None  # unset = the command's default
