"""Typed configuration: dataclasses per section, YAML + dotted `key=value` overrides via OmegaConf.

Every trainer has one root dataclass (`DualHNeRVConfig`, `CascadeConfig`); `load_config` picks it by
the YAML's `task` key, merges the file and the overrides into the structured schema (so unknown keys
and wrong types fail with the key's name), then the root's `validate()` checks settings that types cannot
and parses the string settings once (`data.split`, `model.embed_spec`, `train.schedule`).

Modules: common (error, engine/ops sections, lr schedule), health (the `health` section), dual and
cascade (each task's sections and checks), loading (YAML, overrides, dict round trips). This package
imports no torch and nothing of hnerv_fast.train / models / logging / data / ops.
"""
from hnerv_fast.config.cascade import CascadeConfig, Plateau
from hnerv_fast.config.common import ConfigError, Cosine, EngineConfig, OpsConfig
from hnerv_fast.config.dual import DataSplit, DualHNeRVConfig, Embed
from hnerv_fast.config.health import HealthThresholds
from hnerv_fast.config.loading import from_dict, load_config, to_dict, to_yaml

__all__ = [
    "CascadeConfig", "ConfigError", "Cosine", "DataSplit", "DualHNeRVConfig", "Embed", "EngineConfig",
    "HealthThresholds", "OpsConfig", "Plateau", "from_dict", "load_config", "to_dict", "to_yaml",
]
