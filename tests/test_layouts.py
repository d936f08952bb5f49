"""Each Custom Scalars chart plots exactly what it names. TensorBoard reads every Multiline entry as a regex and
matches it from the start of the tag (re.match), so an unanchored "Train/Loss/clip_loss" would also plot
Train/Loss/clip_loss_weighted."""
from __future__ import annotations

import re

import pytest

from hnerv_fast.logging.layouts import CascadeTags, DualTags, cascade_layout, dual_layout

STAGES = ["stage_16", "stage_32"]
DUAL_TAGS = DualTags.SCALARS + DualTags.PERF + (DualTags.SKIPPED_STEPS,)
CASCADE_TAGS = tuple(CascadeTags.tag(s, n) for s in STAGES
                     for n in CascadeTags.STEP + CascadeTags.EPOCH + tuple(CascadeTags.PERF) + (CascadeTags.SKIPPED_STEPS,)
                     + CascadeTags.SAMPLE_QUALITY)
LAYOUTS = {"dual": (dual_layout(), DUAL_TAGS), "cascade": (cascade_layout(STAGES), CASCADE_TAGS)}


def _multiline_charts(layout: dict):
    for category, charts in layout.items():
        for title, (kind, entries) in charts.items():
            if kind == "Multiline":
                yield f"{category}/{title}", entries


def _plotted(entries, tags) -> set[str]:
    return {t for t in tags if any(re.match(e, t) for e in entries)}


def test_the_clip_loss_chart_does_not_plot_the_weighted_loss():
    charts = dict(_multiline_charts(dual_layout()))
    assert _plotted(charts["Loss Breakdown/CLIP loss"], DUAL_TAGS) == {"Train/Loss/clip_loss"}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_entry_plots_written_tags_and_a_literal_one_exactly_one(name):
    layout, tags = LAYOUTS[name]
    for chart, entries in _multiline_charts(layout):
        for entry in entries:
            plotted = _plotted([entry], tags)
            assert plotted, (chart, entry)
            if ".*" not in entry:
                assert len(plotted) == 1, (chart, entry, plotted)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_margin_chart_names_written_tags(name):
    """Margin charts (value, lower, upper) name exact tags: each must be a tag the trainer writes."""
    layout, tags = LAYOUTS[name]
    kinds = {kind for charts in layout.values() for kind, _ in charts.values()}
    assert kinds <= {"Multiline", "Margin"}  # no chart kind escapes the checks of this file
    for category, charts in layout.items():
        for title, (kind, entries) in charts.items():
            if kind == "Margin":
                assert len(entries) == 3, (category, title, entries)
                for entry in entries:
                    assert entry in tags, (category, title, entry)
