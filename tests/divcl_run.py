"""A small DivCLTrainer run used by the tests in subprocesses (plain python, accelerate launch, SIGKILL + resume).

Every rank appends one JSON line per training micro-step to ``<out>/rows_rank<r>.jsonl`` with the global step
and the local row ids it trained on.

    python tests/divcl_run.py MODEL_DIR OUT_DIR [--rows 200] [--batch 16] [--save-steps 5] [--kill-at 7] [--resume]
"""

import argparse
import json
import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from hf_divcl.data import wordnet_pairs
from hf_divcl.trainer import DivCLTrainer, DivCLTrainingArguments


class RecordingTrainer(DivCLTrainer):
    def _after_step(self, row_ids, captured):
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(self.args.output_dir, f"rows_rank{rank}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": self.state.global_step + 1, "rows": row_ids.tolist()}) + "\n")
        super()._after_step(row_ids, captured)


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--save-steps", type=int, default=5)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--builder", default="greedy")
    a = p.parse_args()
    ds = wordnet_pairs(kind="example", source="embedded").select(range(a.rows)).select_columns(["anchor", "positive"])
    model = SentenceTransformer(a.model, device="cpu")
    args = DivCLTrainingArguments(
        output_dir=a.out, per_device_train_batch_size=a.batch, num_train_epochs=a.epochs, learning_rate=1e-3,
        logging_steps=2, save_steps=a.save_steps, save_strategy="steps", report_to=[], disable_tqdm=True,
        collapse_threshold=0, builder=a.builder, bank_cache_dir=os.path.join(a.out, "bank_cache"), seed=7)
    callbacks = [KillAt(a.kill_at)] if a.kill_at else []
    trainer = RecordingTrainer(model=model, args=args, train_dataset=ds, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    if trainer.is_world_process_zero():
        trainer.save_model(os.path.join(a.out, "final"))


if __name__ == "__main__":
    main()
