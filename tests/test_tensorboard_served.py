"""A real TensorBoard process (127.0.0.1 only) serves the logged contract: tags, Custom Scalars layout, page."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import DualTags, dual_layout
from hnerv_fast.tensorboard import (
    TensorBoardError, _http_ok, get_json, start_tensorboard, stop_tensorboard, tensorboard_server, wait_for_data,
)
from tools.chromium import chromium_capture, chromium_page_text, find_chromium

ROOT = Path(__file__).resolve().parents[1]
RUN = "patch_dual/tiny/synthetic/tensorboard"
CATEGORIES = ("Overview", "Loss Breakdown", "Gradients", "Evaluation", "Statistics", "Distributions", "Performance")
APT_HINT = "apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    """A synthetic dual run: every tag of the contract, the guide's layout, 5 epochs."""
    root = tmp_path_factory.mktemp("tb")
    with AsyncSummaryWriter(str(root / RUN)) as writer:
        writer.add_custom_scalars(dual_layout())
        for step in range(1, 6):
            writer.add_scalars(step, {tag: 1.0 / step + i * 0.01 for i, tag in enumerate(DualTags.SCALARS)})
    return root


@pytest.fixture(scope="module")
def server(logdir):
    with tensorboard_server(logdir, reload_interval=1, timeout=60) as url:
        wait_for_data(url, lambda tags: RUN in tags, timeout=60)
        yield url


def test_scalar_tags_served(server):
    assert server.startswith("http://127.0.0.1:")
    assert list(get_json(server, "data/runs")) == [RUN]
    tags = get_json(server, "data/plugin/scalars/tags")[RUN]
    missing = [t for t in DualTags.SCALARS if t not in tags]
    assert not missing, f"TensorBoard does not serve {missing}"
    points = get_json(server, f"data/plugin/scalars/scalars?run={RUN}&tag={DualTags.TOTAL_LOSS}")
    assert [p[1] for p in points] == [1, 2, 3, 4, 5]


def test_custom_scalars_layout_served(server):
    assert "custom_scalars" in get_json(server, "data/plugins_listing")
    layout = get_json(server, "data/plugin/custom_scalars/layout")
    served = {c["title"]: [chart["title"] for chart in c["chart"]] for c in layout["category"]}
    assert tuple(served) == CATEGORIES
    assert served == {title: list(charts) for title, charts in dual_layout().items()}
    overview = layout["category"][0]["chart"][0]
    assert overview["multiline"]["tag"] == dual_layout()["Overview"]["PSNR (train vs val)"][1]


@pytest.mark.skipif(find_chromium() is None, reason=f"chromium is not installed (CI: {APT_HINT})")
def test_custom_scalars_page_renders_in_chromium(server, tmp_path):
    page = server + "#custom_scalars"
    dom = chromium_capture(page, dump_dom=True, virtual_time_budget_ms=10000)
    assert "<title>TensorBoard</title>" in dom and "<tf-custom-scalar-dashboard" in dom
    # the dashboard renders inside shadow roots (not in --dump-dom): read the text through them
    chart_titles = [c for charts in dual_layout().values() for c in charts]
    text = chromium_page_text(page, expect=CATEGORIES + tuple(chart_titles), timeout=60)
    missing = [s for s in CATEGORIES + tuple(chart_titles) if s not in text]
    assert not missing, f"not on the Custom Scalars page: {missing}\n{text[:2000]}"
    shot = tmp_path / "tb.png"
    chromium_capture(page, screenshot=shot, virtual_time_budget_ms=10000)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1400 and int.from_bytes(data[20:24], "big") == 1000


def test_server_is_terminated(logdir):
    process, url = start_tensorboard(logdir, timeout=60)
    try:
        assert _http_ok(url + "data/environment")
    finally:
        stop_tensorboard(process)
    assert process.poll() is not None and not _http_ok(url + "data/environment", timeout=1)


def test_missing_logdir_fails_fast(tmp_path):
    with pytest.raises(TensorBoardError, match="not a directory"):
        start_tensorboard(tmp_path / "missing")  # raised before any process starts


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "kill"])
def test_cli_prints_url_and_stops_with_its_server(logdir, stop):
    process = subprocess.Popen([sys.executable, "-m", "hnerv_fast.tensorboard", "--logdir", str(logdir)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()  # printed once TensorBoard answers (its own 60 s bound)
        assert "http://127.0.0.1:" in line, line
        url = line[line.index("http://"):].split()[0]
        assert _http_ok(url + "data/environment")
        process.send_signal(stop)
        assert process.wait(30) == 0
        assert not _http_ok(url + "data/environment", timeout=1)  # its TensorBoard child is gone too
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        process.stdout.close()
