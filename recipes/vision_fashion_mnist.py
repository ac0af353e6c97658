"""SimCLR-style vision: a small ViT (random init) on Fashion-MNIST, two augmented views per image, NT-Xent.

    python recipes/vision_fashion_mnist.py                      # recipes/vision_fashion_mnist.yaml (minutes on CPU)
    python recipes/vision_fashion_mnist.py --config recipes/vision_fashion_mnist_gpu.yaml
    python recipes/vision_fashion_mnist.py --data digits       # scikit-learn digits instead
    accelerate launch recipes/vision_fashion_mnist.py --max_steps 20      # any key can be overridden

Every key of the YAML file is a field of ``RecipeConfig`` (what to train on, evaluation, card, push) or of
``DivCLTrainingArguments`` (every training option); the command line overrides it (``--help`` lists them).
``hf-divcl train --config vision_fashion_mnist`` runs the same steps; ``recipes/clip_fashion_mnist.py`` runs them
on image–text pairs.
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
        load_images,
        load_model,
        preflight_step,
        reset_card_scores,
    )
    from hf_divcl.evaluation.tasks import evaluate_vision

    started = time.perf_counter()

    # 1. Data: labelled images (task: vision; the labels are used only by the k-NN evaluation) or images with
    #    their class descriptions (task: clip). Read from Debian's dataset-fashion-mnist or scikit-learn.
    train, test, description = load_images(cfg)
    labelled = train.select_columns(["image", "label"])  # the k-NN evaluation's reference set

    # 2. Model: a small ViT (tiny-vit) or CLIP (tiny-clip) built from a config with random weights, no download.
    #    A single image column becomes two kornia-augmented views per image in the collator (SimCLR).
    model, base = load_model(cfg, args)

    # 3. Pre-flight: random batches of the training rows as the model sees them (diversity, duplicates, likely false
    #    negatives, gradient regime at τ) and a recommendation, saved for the card (preflight: false skips it).
    preflight_step(cfg, args, model, train, description)

    # 4. The starting model's held-out quality: k-NN accuracy (and zero-shot accuracy for CLIP).
    before = {}
    if cfg.run_evaluation and is_main_process():
        print(f"evaluating the starting model on {len(test)} held-out rows ...", flush=True)
        before = evaluate_vision(model, labelled, test, show_progress_bar=not args.disable_tqdm)
    reset_card_scores(model, base)

    # 5. Train: NT-Xent over both views (vision) or symmetric InfoNCE (clip) on the global batch, batches from the
    #    batch policy (random by default), the batch geometry logged, resumable checkpoints that carry the plan and
    #    the bank.
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return {"main_process": False, "steps": trainer.state.global_step}

    # 6. The fine-tuned model's quality on the same held-out images.
    after = {}
    if cfg.run_evaluation:
        print(f"evaluating the fine-tuned model on {len(test)} held-out rows ...", flush=True)
        after = evaluate_vision(model, labelled, test, show_progress_bar=not args.disable_tqdm)

    # 7. Summary, model card (diversity plots, window decisions, before → after) and, with push_repo_id, the Hub.
    return finish_run(trainer, cfg, base=base, description=description, train=train, test=test, before=before,
                      after=after, started=started)


if __name__ == "__main__":
    from hf_divcl.cli.steps import run_cli as main

    sys.exit(main(default_config=CONFIG, run=run))
