"""Inference reads checkpoints without the trainer: the commands that use trained models load no module of
hnerv_fast.train or hnerv_fast.logging (ARCHITECTURE.md, directions of imports)."""
from tests.imports import modules_loaded_by, within

COMMANDS = ("hnerv_fast.inference.dual", "hnerv_fast.sample", "hnerv_fast.decode", "hnerv_fast.compress",
            "hnerv_fast.evaluate", "hnerv_fast.search")


def test_inference_commands_do_not_import_the_trainer():
    loaded = modules_loaded_by(*COMMANDS)
    assert "hnerv_fast.models.hnerv_dual" in loaded  # the check sees the package's imports at all
    bad = within(loaded, "hnerv_fast.train", "hnerv_fast.logging")
    assert not bad, bad
