"""YAML + dotted `key=value` overrides -> a validated root dataclass (OmegaConf), and back to plain dicts."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hnerv_fast.config.cascade import CascadeConfig
from hnerv_fast.config.common import ConfigError
from hnerv_fast.config.dual import DualHNeRVConfig

TASK_SCHEMAS: dict[str, type] = {"dual_hnerv": DualHNeRVConfig, "cascade": CascadeConfig}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), task: str | None = None):
    """YAML file + dotted overrides -> validated root dataclass instance."""
    file_cfg = OmegaConf.create()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a text YAML file (not UTF-8)") from None
        except OSError as exc:  # e.g. no read permission
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
        data = _yaml_load(text, str(path)) or {}
        if not isinstance(data, dict):  # OmegaConf would build a list config and fail on its first key
            raise ConfigError(f"config file {path} must be a YAML mapping of sections (e.g. `train:` with "
                              f"`epochs: 20` indented under it), not a {type(data).__name__}")
        file_cfg = OmegaConf.create(data)
    cli_cfg = OmegaConf.create()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}: expected key=value (e.g. train.epochs=20)")
        try:
            OmegaConf.update(cli_cfg, key, _yaml_load(value, item), force_add=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{key}: {_first_line(exc)}") from None
    name = task or cli_cfg.get("task") or file_cfg.get("task") or "dual_hnerv"
    if name not in TASK_SCHEMAS:
        raise ConfigError(f"task: unknown task {name!r}; choose one of {sorted(TASK_SCHEMAS)}")
    schema = OmegaConf.structured(TASK_SCHEMAS[name])
    try:
        merged = OmegaConf.merge(schema, file_cfg, cli_cfg)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key or 'config'}: {_first_line(exc)}") from None
    except ValueError as exc:  # a section's own __post_init__ check (e.g. health thresholds)
        raise ConfigError(f"config: {exc}") from None
    cfg.validate()
    return cfg


def _yaml_loader() -> type:
    """YAML 1.1 reads `9_10_10` as the integer 91010; our values (splits, schedules) use underscores,
    so numbers with underscores stay strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    integer = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
    decimal = re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
                         r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", integer, list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", decimal, list("-+0123456789."))
    return Loader


def _yaml_load(text: str, where: str):
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse YAML in {where}: {exc}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def to_dict(cfg: Any) -> dict:
    """Plain dict (for YAML dumps and checkpoints, which must load with weights_only=True).
    Only schema fields: the cached parsed values (e.g. `model.embed_spec`) are not written."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict):
    """Inverse of to_dict (a checkpoint's config -> the validated root); ConfigError when it does not fit."""
    name = data.get("task", "dual_hnerv")
    if name not in TASK_SCHEMAS:
        raise ConfigError(f"task: {name!r} not in {sorted(TASK_SCHEMAS)}")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TASK_SCHEMAS[name]), data))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {_first_line(exc)}") from None
    cfg.validate()
    return cfg
