"""CLIP-style image–text: a small CLIP (random init) on Fashion-MNIST images and their class descriptions.

    python recipes/clip_fashion_mnist.py                      # recipes/clip_fashion_mnist.yaml (minutes on CPU)
    python recipes/clip_fashion_mnist.py --per_device_train_batch_size 256 --max_steps 2000   # GPU-sized
    accelerate launch recipes/clip_fashion_mnist.py --max_steps 20      # any key can be overridden
"""

import sys
from pathlib import Path

from hf_divcl.train import main

if __name__ == "__main__":
    sys.exit(main(default_config=str(Path(__file__).with_suffix(".yaml"))))
