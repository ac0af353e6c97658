"""Sentence-embedding fine-tune: all-MiniLM-L6-v2 on WordNet example → gloss pairs with diversity-window batches.

    python recipes/text_wordnet.py                                   # recipes/text_wordnet.yaml (minutes on CPU)
    python recipes/text_wordnet.py --config recipes/text_wordnet_gpu.yaml
    accelerate launch recipes/text_wordnet.py --max_steps 20        # any key can be overridden
"""

import sys
from pathlib import Path

from hf_divcl.train import main

if __name__ == "__main__":
    sys.exit(main(default_config=str(Path(__file__).with_suffix(".yaml"))))
