"""What leaves a run: plots (:mod:`.plots`), the model card (:mod:`.card`, Jinja template in ``model_cards/``) and the
upload to the Hugging Face Hub (:mod:`.hub`). In: an output folder (model, ``diversity_log.jsonl``, run files);
out: a card and a Hub commit. Reads the log format from :mod:`hf_divcl.diversity.log`; nothing here trains.
"""
