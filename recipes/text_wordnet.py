"""Sentence embeddings: fine-tune all-MiniLM-L6-v2 on WordNet example → gloss pairs with diversity-window batches.

    python recipes/text_wordnet.py                                   # recipes/text_wordnet.yaml (minutes on CPU)
    python recipes/text_wordnet.py --config recipes/text_wordnet_gpu.yaml
    python recipes/text_wordnet.py --data pairs.tsv --anchor_column query --positive_column doc   # your own pairs
    accelerate launch recipes/text_wordnet.py --max_steps 20        # several processes; any key can be overridden

Every key of the YAML file is a field of ``RecipeConfig`` (what to train on, evaluation, card, push) or of
``DivCLTrainingArguments`` (every training option); the command line overrides it (``--help`` lists them).
``hf-divcl train --config text_wordnet`` runs the same steps.
"""

import sys
import time
from pathlib import Path

CONFIG = Path(__file__).with_suffix(".yaml")


def run(cfg, args) -> dict:
    """The recipe's steps; returns the run summary (also written to ``output_dir/divcl_summary.json``)."""
    # heavy imports here, so that --help answers at once
    from hf_divcl import DivCLTrainer
    from hf_divcl.cli.steps import (
        finish_run,
        is_main_process,
        load_model,
        load_text_pairs,
        preflight_step,
        reset_card_scores,
    )
    from hf_divcl.evaluation.tasks import evaluate_text

    started = time.perf_counter()

    # 1. Data: (anchor, positive) pairs. WordNet pairs are split by synset, so no test gloss is ever trained on;
    #    a local .csv/.tsv/.jsonl/.parquet file is shuffled and max_eval_rows of it held out.
    train, test, description = load_text_pairs(cfg, seed=args.seed)

    # 2. Model: all-MiniLM-L6-v2 ships with hf_divcl (no download); any SentenceTransformer folder works.
    model, base = load_model(cfg, args)

    # 3. Pre-flight: random batches of the training rows as the model sees them (diversity, duplicates, likely false
    #    negatives, gradient regime at τ) and a recommendation, saved for the card (preflight: false skips it).
    preflight_step(cfg, args, model, train, description)

    # 4. The starting model's held-out quality: retrieval (ndcg@10, MRR) and, on WordNet, word similarity.
    before = {}
    if cfg.run_evaluation and is_main_process():
        print(f"evaluating the starting model on {len(test)} held-out rows ...", flush=True)
        before = evaluate_text(model, test, name=cfg.data_name(), show_progress_bar=not args.disable_tqdm)
    reset_card_scores(model, base)

    # 5. Train. DivCLTrainer is a SentenceTransformerTrainer: InfoNCE on the global batch, batches from the batch
    #    policy (batch_policy: random by default), the batch geometry logged to diversity_log.jsonl, resumable
    #    checkpoints that carry the plan and the bank.
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return {"main_process": False, "steps": trainer.state.global_step}

    # 6. The fine-tuned model's quality on the same held-out rows.
    after = {}
    if cfg.run_evaluation:
        print(f"evaluating the fine-tuned model on {len(test)} held-out rows ...", flush=True)
        after = evaluate_text(model, test, name=cfg.data_name(), show_progress_bar=not args.disable_tqdm)

    # 7. Summary, model card (diversity plots, window decisions, before → after) and, with push_repo_id, the Hub.
    return finish_run(trainer, cfg, base=base, description=description, train=train, test=test, before=before,
                      after=after, started=started)


if __name__ == "__main__":
    from hf_divcl.cli.steps import run_cli as main

    sys.exit(main(default_config=CONFIG, run=run))
