"""Files hf_divcl reads at run time that live outside the Python modules: the model-card template and the recipe
configs. In a checkout they are the top-level ``model_cards/`` and ``recipes/`` folders; a wheel ships copies in
``hf_divcl/_resources/<folder>/`` (see ``setup.py``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["packaged_recipes", "resource_path"]

_PACKAGE = Path(__file__).resolve().parent


def resource_path(folder: str, name: str) -> Path:
    """Path of ``folder/name``: the copy inside the installed package, else the checkout's top-level folder (the
    returned path may not exist; callers name it in their error)."""
    packaged = _PACKAGE / "_resources" / folder / name
    if packaged.is_file():
        return packaged
    return _PACKAGE.parent / folder / name


def packaged_recipes() -> dict[str, Path]:
    """Recipe name (``text_wordnet``) → YAML path, from the installed package or the checkout."""
    found: dict[str, Path] = {}
    for base in (_PACKAGE.parent / "recipes", _PACKAGE / "_resources" / "recipes"):
        if base.is_dir():
            found.update({p.stem: p for p in sorted(base.glob("*.yaml"))})
    return found
