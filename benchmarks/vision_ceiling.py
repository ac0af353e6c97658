"""How high can k-NN accuracy go on the vision benchmark's split? The same small ResNet trained *with labels*.

``benchmarks/vision_simclr.py`` asks a self-supervised encoder to beat centred raw pixels by 0.03 in k-NN accuracy
on a fixed split (memory = the first 2,000 Fashion-MNIST training images, queries = the first 1,000 test images,
cosine k = 20). This script trains the same encoder
(:func:`hf_divcl.models.convnet.build_small_resnet_sentence_transformer`, same widths and stem) with a linear
classifier and cross-entropy on the labels of ``--rows`` training images, with the same augmentations, and scores
its pre-classifier features with the same k-NN on the same split. A supervised encoder is a ceiling for what
self-supervision reaches at that size: if it is close to the bar, the bar asks for more than this encoder can give
on this split, whatever the batches. A plain PyTorch loop (nothing contrastive here, so no DivCLTrainer). Written
to ``--output`` with the raw-pixel baselines of the same split.

    OMP_NUM_THREADS=1 python benchmarks/vision_ceiling.py --steps 800 --output benchmarks/results/vision_ceiling.json
    python benchmarks/vision_ceiling.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vision_simclr import K, raw_pixel_baselines, split_pixels

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rows", type=int, default=60000, help="labelled training images (the first N)")
    p.add_argument("--memory", type=int, default=2000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--scale-min", type=float, default=0.3)
    p.add_argument("--jitter", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    if a.smoke:
        a.steps, a.eval_every, a.rows, a.memory, a.queries, a.batch_size = 6, 3, 256, 200, 100, 32
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.images import fashion_mnist
    from hf_divcl.evaluation.probes import knn_accuracy_from_embeddings
    from hf_divcl.models.augment import TwoViewAugment, to_model_inputs
    from hf_divcl.models.convnet import backbone_embeddings, build_small_resnet_sentence_transformer, pixel_values

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    mem_x, mem_y, qry_x, qry_y = split_pixels(a.memory, a.queries)
    baselines = raw_pixel_baselines(mem_x, mem_y, qry_x, qry_y)
    train = fashion_mnist("train", limit=a.rows)
    images = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in train["image"]]))
    labels = torch.tensor(train["label"])
    with tempfile.TemporaryDirectory() as tmp:
        path = build_small_resnet_sentence_transformer(tmp, widths=a.widths, stem_stride=a.stem_stride, seed=a.seed)
        model = SentenceTransformer(path, device="cpu", trust_remote_code=True)
    encoder = model[0]
    head = torch.nn.Linear(encoder.get_embedding_dimension(), 10)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05,
                                                anneal_strategy="cos")
    augment = TwoViewAugment(28, scale=(a.scale_min, 1.0), jitter=a.jitter, seed=a.seed)
    mem_px, qry_px = (pixel_values(model, torch.from_numpy(x[:, None])) for x in (mem_x, qry_x))
    gen = torch.Generator().manual_seed(a.seed)

    def evaluate() -> float:
        mem, qry = backbone_embeddings(model, mem_px), backbone_embeddings(model, qry_px)
        return knn_accuracy_from_embeddings(mem, mem_y.tolist(), qry, qry_y.tolist(), k=K)

    curve = [{"step": 0, "knn": evaluate(), "seconds": 0.0}]
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        idx = torch.randint(0, len(images), (a.batch_size,), generator=gen)
        view, _ = augment(images[idx][:, None])
        model.train()
        features = encoder(to_model_inputs(model, view))["sentence_embedding"]
        loss = torch.nn.functional.cross_entropy(head(features), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % a.eval_every == 0 or step == a.steps:
            seconds = time.perf_counter() - t0
            curve.append({"step": step, "knn": evaluate(), "seconds": seconds, "loss": loss.item()})
            print(f"step {step}: loss {loss.item():.3f} k-NN {curve[-1]['knn']:.4f}", flush=True)
    result = {"benchmark": "vision_ceiling", "config": vars(a), "baselines": baselines, "curve": curve,
              "final_knn": curve[-1]["knn"], "max_knn": max(c["knn"] for c in curve),
              "bar": baselines["centred_knn"] + 0.03}
    print(json.dumps({k: v for k, v in result.items() if k in ("baselines", "final_knn", "max_knn", "bar")}, indent=1))
    out = Path(a.output or Path(tempfile.gettempdir()) / "vision_ceiling_smoke.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
