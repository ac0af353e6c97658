"""The contrastive loss, once: InfoNCE / NT-Xent over the global batch.

In: anchor and positive embeddings (and optional hard negatives, duplicate groups, a guide model). Out: the loss.
:mod:`.maths` holds the maths (one-way or symmetric, in-batch whitening), :mod:`.gather` the all-gather that keeps
gradients, :mod:`.false_negatives` the masks, :mod:`.infonce` the ``InfoNCELoss`` module the trainer uses.
"""
