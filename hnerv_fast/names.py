"""Names shared by the config, data and models (plain tuples, no torch): each defined once, here, so the
config can validate without importing torch-side modules. The ops library keeps its own names
(ops/reference.py PIXEL_LOSSES, ops/_backends.py BACKENDS): it imports nothing else of the package, so the
config holds checked copies of those (tests/test_config.py)."""
from __future__ import annotations

VIDEO_SOURCES = ("synthetic", "folder", "video")  # data.source of the dual-head trainer (data/video.py)
ACTIVATIONS = ("gelu", "relu", "silu", "leaky_relu")  # model.act (models/blocks.py)
OUT_ACTIVATIONS = ("tanh", "sigmoid", "none")  # model.out_act (models/hnerv_dual.py)
VIEWS = ("frontal", "lateral")  # X-ray views of the cascade (data/phantoms.py, data/ct_folder.py, models/drr.py)
