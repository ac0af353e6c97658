"""SimCLR-style vision: a small ViT (random init) on Fashion-MNIST, two augmented views per image, NT-Xent.

    python recipes/vision_fashion_mnist.py                      # recipes/vision_fashion_mnist.yaml (minutes on CPU)
    python recipes/vision_fashion_mnist.py --config recipes/vision_fashion_mnist_gpu.yaml
    accelerate launch recipes/vision_fashion_mnist.py --max_steps 20      # any key can be overridden
"""

import sys
from pathlib import Path

from hf_divcl.train import main

if __name__ == "__main__":
    sys.exit(main(default_config=str(Path(__file__).with_suffix(".yaml"))))
