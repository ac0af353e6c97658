"""Encoders and their inputs: offline model loading (:mod:`.loading`, the packaged all-MiniLM-L6-v2), tiny ViT /
CLIP vision encoders built from configs (:mod:`.vision`), a small ResNet for SimCLR from scratch (:mod:`.convnet`;
reload with ``trust_remote_code=True``), two augmented views of an image (:mod:`.augment`) and pairs →
embeddings (:mod:`.embed`).
"""
