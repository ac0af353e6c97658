"""An unchanged SentenceTransformerTrainer with DiversityCallback attached, run by the tests in a subprocess (plain
python or ``accelerate launch`` with several processes).

    python tests/callback_run.py MODEL_DIR OUT_DIR

Every rank also saves, independently of the callback, the anchor and positive embeddings of each training step it
ran (its own forward hook) to ``OUT_DIR/steps_rank<r>.pt``, so a test can recompute the global batch's metrics.
"""

import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback

from hf_divcl import end_distributed
from hf_divcl.training.callbacks import DiversityCallback

BATCH = 8


class SaveSteps(TrainerCallback):
    """Keeps the first 2·B captured embeddings of every training step (anchors, positives)."""

    def __init__(self, model) -> None:
        self.steps, self.current = [], []
        model.register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        if module.training:
            self.current.append(output["sentence_embedding"].detach().float())

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = []

    def on_step_end(self, args, state, control, **kwargs):
        flat = torch.cat(self.current)
        self.steps.append(torch.nn.functional.normalize(flat[:2 * BATCH], dim=-1))


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")
    ds = Dataset.from_dict({"anchor": [f"word {i} of kind {i % 7}" for i in range(96)],
                            "positive": [f"meaning {i * 5 % 11} of item {i}" for i in range(96)]})
    args = SentenceTransformerTrainingArguments(
        output_dir=out, max_steps=4, per_device_train_batch_size=BATCH, learning_rate=1e-3, logging_steps=2,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=3)
    loss = MultipleNegativesRankingLoss(model, scale=10.0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
    DiversityCallback(plots=False, collapse_threshold=0).attach(trainer)
    saver = SaveSteps(model)
    trainer.add_callback(saver)
    trainer.train()
    torch.save(saver.steps, os.path.join(out, f"steps_rank{trainer.args.process_index}.pt"))
    end_distributed()


if __name__ == "__main__":
    main()
