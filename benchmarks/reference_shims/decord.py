"""Stand-in for `decord`, for benchmarks/reference_trainer.py.

The published trainer calls `decord.bridge.set_bridge('torch')` on import, reads video *files* with
`decord.VideoReader`, and checks `isinstance(video, decord.VideoReader)`. The harness always gives it a
folder of PNG frames, so a class that refuses to open anything is enough.
"""
import types

bridge = types.SimpleNamespace(set_bridge=lambda name: None)


class VideoReader:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("decord stand-in: give the reference trainer a folder of frames, not a video file")
