"""The trainer and everything around one training run.

In: a model, data and :class:`~.arguments.DivCLTrainingArguments`. Out: a trained model, ``diversity_log.jsonl``, run
files and resumable checkpoints. :mod:`.trainer` (``DivCLTrainer``) applies the batch policy and wires
:mod:`.recorder` (each step's embeddings → log and bank), :mod:`.callbacks` (``DiversityLogger``,
``DiversityCallback``), :mod:`.checkpoints`, :mod:`.guards` (non-finite losses, out-of-memory advice) and
:mod:`.run_files`. The top of the library: it depends on every package below it, none depends on it.
"""
