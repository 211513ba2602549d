"""The configuration system, the error hierarchy and the CLI group."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from pydantic import Field

from vollseg_dask.cli import COMMANDS, main
from vollseg_dask.config import StrictModel, load_config, parse_config, save_config
from vollseg_dask.errors import ConfigError, StoreExistsError, StoreNotFoundError, VollSegError


class _Demo(StrictModel):
    radius: float = Field(2.0, gt=0, description="a radius in µm")
    name: str = Field("x", description="a name")


def test_errors_inherit_builtin_errors():
    err = ConfigError("bad")
    assert isinstance(err, VollSegError) and isinstance(err, ValueError)
    assert issubclass(StoreNotFoundError, FileNotFoundError)


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match="unknown key 'radiu'"):
        parse_config(_Demo, {"radiu": 3})


def test_bad_value_names_field():
    with pytest.raises(ConfigError, match="radius"):
        parse_config(_Demo, {"radius": -1})


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_round_trip(tmp_path, suffix):
    cfg = _Demo(radius=3.5, name="é")
    path = save_config(cfg, tmp_path / f"c{suffix}")
    assert load_config(_Demo, path) == cfg
    assert not list(tmp_path.glob(".*tmp*"))  # written aside and renamed


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(StoreNotFoundError):
        load_config(_Demo, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("radius: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(_Demo, bad)
    with pytest.raises(ConfigError, match="must end in"):
        load_config(_Demo, bad.rename(tmp_path / "bad.json"))


def test_help_lists_commands_without_heavy_imports():
    code = (
        "import sys, time; t=time.perf_counter();"
        "from click.testing import CliRunner; from vollseg_dask.cli import main;"
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('tensorflow', 'distributed', 'napari', 'dask.array', 'zarr', 'stardist') if m in sys.modules];"
        "print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, seconds = out.rsplit(" ", 1)
    assert heavy == "[]", f"--help imported {heavy}"
    assert float(seconds) < 5.0


def test_every_listed_command_resolves():
    runner = CliRunner()
    listed = main.list_commands(None)  # type: ignore[arg-type]
    assert {"create-config", "convert", "info"} <= set(listed)
    for name in listed:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert name in COMMANDS


def test_create_config_writes_loadable_defaults(tmp_path):
    from vollseg_dask.config_registry import CONFIG_MODELS, config_model

    runner = CliRunner()
    for kind in CONFIG_MODELS:
        try:
            model = config_model(kind)
        except ConfigError:
            continue  # stage not installed in this build
        out = tmp_path / f"{kind}.yaml"
        result = runner.invoke(main, ["create-config", str(out), "--kind", kind])
        assert result.exit_code == 0, result.output
        assert load_config(model, out) == model()
        again = runner.invoke(main, ["create-config", str(out), "--kind", kind])
        assert isinstance(again.exception, StoreExistsError)


def test_unknown_config_kind():
    from vollseg_dask.config_registry import config_model

    with pytest.raises(ConfigError, match="unknown config kind"):
        config_model("nope")
