"""Matplotlib figures on the Agg canvas (no pyplot state), saved as PNG."""

from __future__ import annotations

import io
import os
import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(size: tuple[float, float]) -> Figure:
    """An empty figure of `size` inches with its own Agg canvas."""
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def identity_colours(count: int) -> list:
    """`count` distinct RGBA colours (tab20 up to 20, else spread over turbo)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if count <= 20 else "turbo"]
    return [cmap(i % 20 if count <= 20 else i / max(count - 1, 1)) for i in range(count)]


def finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Tightens the layout and saves a PNG at `path` (if given)."""
    fig.tight_layout()
    if path is not None:
        save_png(fig, path)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (for IPython.display.Image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
