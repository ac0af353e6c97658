"""``hf-divcl {train,diagnose,calibrate,push}`` and the recipes' steps.

:mod:`.parser` is the one argument system (transformers' ``HfArgumentParser`` over dataclasses, a safe YAML file
underneath the flags); :mod:`.recipe_config` the recipe configuration; :mod:`.steps` the recipe steps (data → model
→ evaluate → train → evaluate → summary, card, push) that ``recipes/*.py`` spell out; :mod:`.diagnose` and
:mod:`.calibrate` the measuring commands; :mod:`.main` the entry point.
"""
