"""One configuration system: pydantic models, YAML/TOML files, environment variables.

Every stage's parameters are a :class:`StrictModel` subclass (described fields,
``extra="forbid"`` so that a misspelt key is an error, not a silent default).
Models are loaded from and saved to YAML or TOML next to the results they
produced. Runtime-only options (worker count, scheduler address) may also come
from ``VOLLSEG_*`` environment variables, see :func:`env_override`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from vollseg_dask.errors import ConfigError, StoreNotFoundError

__all__ = [
    "StrictModel",
    "load_config",
    "save_config",
    "parse_config",
    "env_override",
    "read_config_dict",
]

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every configuration model: unknown keys are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _section_model(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested config model reached by following ``path`` (field names or aliases), if any."""
    current: type[BaseModel] = model
    for part in path:
        fields = current.model_fields
        info = fields.get(str(part)) or next((f for f in fields.values() if f.alias == part), None)
        ann = getattr(info, "annotation", None)
        # `Sub | None` and similar unions: the model among the arguments
        found = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not found:
            return None
        current = found[0]
    return current


def _format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid {model.__name__} configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            section = _section_model(model, err["loc"][:-1])
            if len(err["loc"]) > 1 and section is not None:
                # name the key and its section, and list what that section (not the top level) allows
                where = ".".join(str(p) for p in err["loc"][:-1])
                allowed = ", ".join(sorted(section.model_fields))
                lines.append(f"  unknown key {str(err['loc'][-1])!r} in section {where!r} "
                             f"(allowed in {where}: {allowed})")
            else:
                allowed = ", ".join(sorted(model.model_fields))
                lines.append(f"  unknown key {loc!r} (allowed at top level: {allowed})")
        else:
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_config(model: type[M], data: dict[str, Any] | None, source: str = "<dict>") -> M:
    """Validate ``data`` against ``model``, raising :class:`ConfigError` with a readable message."""
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, model, source)) from None


def read_config_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {p} must end in .yaml, .yml or .toml (got {suffix!r})")
    except ConfigError:
        raise
    except Exception as exc:  # yaml/toml syntax errors
        raise ConfigError(f"cannot parse config file {p}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level, got {type(data).__name__}")
    return data


def load_config(model: type[M], path: str | os.PathLike[str]) -> M:
    """Load and validate a YAML or TOML file as ``model``."""
    return parse_config(model, read_config_dict(path), source=str(path))


def save_config(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML or TOML (by suffix), atomically (write aside, then rename)."""
    p = Path(path)
    data = config.model_dump(mode="json", exclude_none=True)
    suffix = p.suffix.lower()
    if suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(data)
    elif suffix in {".yaml", ".yml"}:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ConfigError(f"config file {p} must end in .yaml, .yml or .toml (got {suffix!r})")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


def env_override(name: str, default: Any = None) -> str | None:
    """Return the value of ``VOLLSEG_<NAME>`` from the environment, or ``default``."""
    return os.environ.get(f"VOLLSEG_{name.upper()}", default)
