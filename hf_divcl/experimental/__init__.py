"""Experimental batch policies: no benchmark supports them yet, so their names, settings and behaviour may change.

- ``"auto"`` (:mod:`.fixed`): a window around the gradient-magnitude peak, calibrated once (the paper's proposal);
- ``"mega_batch"`` (:mod:`.fixed`): from M × B random rows per step, keep the B that fit a window best;
- ``"progress"`` (:mod:`.progress_window`): random batches until a level measured by held-out progress per step
  beats them with confidence (:mod:`.progress`, :mod:`.follower`);
- ``"explore"`` (:mod:`.explore_window`): the first training steps are the experiment, decided by a sequential test
  (:mod:`.sequential`, :mod:`.explore_plan`, :mod:`.explorer`);
- ``"learnability"`` / ``"hard"`` (:mod:`.selection`): JEST-style joint selection from a super-batch
  (:mod:`.learnability`).

Each registers under its name; ``DivCLTrainingArguments(batch_policy="explore", batch_policy_kwargs={...})``.
"""

from . import explore_window, fixed, progress_window, selection  # noqa: F401  (registers the policies)
