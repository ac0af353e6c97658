"""Compatibility path: the planning code lives in :mod:`hf_divcl.planning` (one module per idea). Every public name
that was importable from here still is, for one release."""

from .planning import *  # noqa: F403
from .planning import __all__  # noqa: F401
from .planning.plan import _check_bank, _resolve_window  # noqa: F401
from .planning.sketch import _chunks  # noqa: F401
