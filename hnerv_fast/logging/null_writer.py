"""What ranks other than 0 log into under torchrun: the AsyncSummaryWriter interface, discarding everything
(callbacks such as epoch lines and health warnings do not run either)."""
from __future__ import annotations


class NullWriter:
    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def add_scalars(self, step, values, callback=None) -> None:
        pass

    def add_histogram(self, tag, values, step) -> None:
        pass

    def add_image(self, tag, image, step) -> None:
        pass

    def add_text(self, tag, text, step) -> None:
        pass

    def add_custom_scalars(self, layout) -> None:
        pass

    def add_mirror(self, mirror) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullWriter":
        return self

    def __exit__(self, *exc) -> None:
        pass
