"""CLIP-style image–text: a small CLIP (random init) on Fashion-MNIST images and their class descriptions.

    python recipes/clip_fashion_mnist.py                      # recipes/clip_fashion_mnist.yaml (minutes on CPU)
    python recipes/clip_fashion_mnist.py --per_device_train_batch_size 256 --max_steps 2000   # GPU-sized
    accelerate launch recipes/clip_fashion_mnist.py --max_steps 20      # any key can be overridden

The steps are those of ``recipes/vision_fashion_mnist.py`` (images → small encoder → ``DivCLTrainer`` → k-NN and
zero-shot accuracy → card); only the configuration differs: ``task: clip``, ``model: tiny-clip``, and the
symmetric image ↔ text InfoNCE. ``hf-divcl train --config clip_fashion_mnist`` runs the same steps.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    from hf_divcl.cli.steps import run_cli as main

    steps = runpy.run_path(str(Path(__file__).with_name("vision_fashion_mnist.py")))["run"]
    sys.exit(main(default_config=Path(__file__).with_suffix(".yaml"), run=steps))
