"""Planning: one epoch as a partition of the rows into batches whose diversity sits in a window.

One module per idea: ``sketch`` (PCA sketch, k-means), ``context`` (what a builder sees), ``target`` (the window's
target on this data), one builder per file (``random``, ``greedy``, ``pool``, ``cluster``; a builder declares
``uses_window`` / ``requires_window``), ``registry`` (builders by name), ``dedupe`` (duplicate groups),
``refine`` (exact swaps) and ``plan`` (``EpochPlan``, ``plan_epoch``).

Batch builders plan one epoch as a partition of the rows into batches whose diversity sits in a window.

Every builder is a strategy with one method, :meth:`BatchBuilder.assign`, that splits ``M`` rows into
``n`` full batches; :func:`plan_epoch` wraps it with what all builders share:

* the rows left over when ``N`` is not a multiple of ``B`` form a last partial batch (or are dropped with
  ``drop_last``), chosen at random;
* rows with the same *group* (identical text/image, see :func:`duplicate_groups`) never share a batch —
  they would be false negatives;
* the exact diversity metric of every batch and whether it lies in the window are recorded;
* deterministic for ``(seed, epoch)``; an infeasible window fails fast with the range measured on the data, or
  moves to the closest achievable one with a warning (``on_infeasible="closest"``).

Builders (chosen by name, class or instance):

* ``random`` — a uniform permutation (the baseline);
* ``greedy`` (Greedy-m) — all batches are filled in parallel, one slot at a time; each batch scores ``m`` fresh
  candidates from the unused pool by how they move its running mean squared cosine towards the window's target
  (incremental second-moment statistics in a ``sketch_dim``-dimensional PCA sketch, never recomputed), and
  takes the best. Filling every batch at once keeps the pool balanced across the epoch (no clumped remainder);
* ``pool`` (Pool-P) — rounds of random candidate batches from the remaining rows; each round keeps the best
  ``1/P`` (inside or closest to the window) and returns the rest to the pool;
* ``cluster`` (TAS-Balanced-like) — k-means over the bank (torch; faiss with ``kmeans_backend="faiss"``); each batch
  mixes ``c`` clusters, with ``c`` chosen on the data so that batches land in the window.
"""
