"""Which batches a run trains on, and why.

In: the training arguments, the bank, held-out probe/reference rows. Out: a :class:`~.decide.BatchPolicy` (builder,
window, super-batch factor) plus the objects it needs, which the trainer applies. :mod:`.calibration` places a window
from gradient magnitudes; :mod:`.progress` measures held-out progress per diversity level against random batches;
:mod:`.follower` schedules those measurements during training and moves the window (``window="progress"``, the
default); :mod:`.explore` and :mod:`.explorer` make the first training steps the experiment instead
(``window="explore"``: arms in blocks, each step scored from its own gradient, a sequential test);
:mod:`.learnability` and :mod:`.selectors` keep B rows of each super-batch; :mod:`.decide` puts it together.
Depends on diversity, losses, bank, planning, sampler; never on the trainer (it declares what it needs as protocols).
"""
