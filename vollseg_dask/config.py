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


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    import textwrap

    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), 96 - len(indent))]


def _yaml_value(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _yaml_lines(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    data = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        lines += _comment(info.description, indent)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines += _yaml_lines(value, indent + "  ")
        elif value is None:
            lines.append(f"{indent}{name}: null  # default: unset")
        else:
            lines.append(f"{indent}{name}: {_yaml_value(data[name])}")
    return lines


def _unset_paths(model: BaseModel, prefix: str = "") -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out += _unset_paths(value, f"{prefix}{name}.")
        elif value is None:
            out.append((f"{prefix}{name}", info.description))
    return out


def render_config(config: BaseModel, fmt: str = "yaml") -> str:
    """Every key of ``config`` as a commented YAML or TOML document (``create-config``).

    YAML: each key preceded by its description; keys whose default is None are written as
    ``key: null`` (loading the file gives the same defaults). TOML has no null, so such keys are
    listed in comments at the top (``# segment.foreground_threshold = <unset>: description``) and
    every other key follows as TOML.
    """
    if fmt == "yaml":
        head = [f"# {type(config).__name__}: every setting with its default; null = unset (uses the default)."]
        return "\n".join(head + _yaml_lines(config, "")) + "\n"
    if fmt == "toml":
        import tomli_w

        head = [f"# {type(config).__name__}: every setting with its default.",
                "# Settings without a default (TOML has no null): uncomment and set to use them."]
        for path, desc in _unset_paths(config):
            head.append(f"# {path} = <unset>" + (f"  # {' '.join(desc.split())}" if desc else ""))
        return "\n".join(head) + "\n\n" + tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
    raise ConfigError(f"config format must be 'yaml' or 'toml', got {fmt!r}")


def write_config_template(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_config` of ``config`` to ``path`` (.yaml/.yml/.toml), atomically."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in {".yaml", ".yml", ".toml"}:
        raise ConfigError(f"config file {p} must end in .yaml, .yml or .toml (got {suffix!r})")
    text = render_config(config, "toml" if suffix == ".toml" else "yaml")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p
