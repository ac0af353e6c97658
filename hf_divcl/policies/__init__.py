"""Which batches a run trains on: the batch-policy protocol (:mod:`.base`), the registry (:mod:`.registry`) and the
stable policies — random batches (:mod:`.random`, the default) and a fixed window planned by the paper's builders
(:mod:`.window`) — plus what measures data before training (:mod:`.preflight`) and the gradient-peak window
calibration (:mod:`.calibration`). Experimental policies live in :mod:`hf_divcl.experimental`.
"""

from . import random, window  # noqa: F401  (registers the stable policies)
