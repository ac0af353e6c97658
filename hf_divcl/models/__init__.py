"""Encoders and their inputs: offline model loading (:mod:`.loading`, the packaged all-MiniLM-L6-v2), tiny ViT /
CLIP vision encoders built from configs (:mod:`.vision`), two augmented views of an image (:mod:`.augment`) and pairs →
embeddings (:mod:`.embed`).
"""
