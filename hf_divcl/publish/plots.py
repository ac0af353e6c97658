"""Matplotlib helpers shared by reports: figures that never touch the global backend, and one way of saving them.

Figures are built with ``matplotlib.figure.Figure`` (not ``pyplot``), so plotting from a notebook or a GUI session
leaves its interactive backend alone, and no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class _Figures:
    """The two ``pyplot`` calls the reports use, without pyplot's global state."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    @staticmethod
    def get_cmap(name: str):
        import matplotlib

        return matplotlib.colormaps[name]


def pyplot() -> _Figures:
    """An object with ``subplots`` and ``get_cmap`` like ``matplotlib.pyplot``'s, on figures that no backend owns."""
    return _Figures()


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out and write ``fig`` as PNG (creating the folder); returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
