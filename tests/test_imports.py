"""Top-level exports: every public name importable from ``hf_divcl``, lazily (``import hf_divcl`` stays light)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import hf_divcl


def test_import_hf_divcl_loads_no_heavy_library():
    code = ("import sys, hf_divcl; heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'datasets') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_public_name_resolves_to_its_submodule_object():
    names = [n for n in hf_divcl.__all__ if n != "__version__"]
    assert set(names) == set(hf_divcl._LAZY)
    for name in names:
        module = importlib.import_module(f"hf_divcl.{hf_divcl._LAZY[name]}")
        assert getattr(hf_divcl, name) is getattr(module, name), name
    from hf_divcl import DivCLTrainer, DivCLTrainingArguments, DiversityWindowBatchSampler

    assert DivCLTrainer.training_args_class is DivCLTrainingArguments and DiversityWindowBatchSampler.configure
    assert set(names) <= set(dir(hf_divcl))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'DivCLTrainr'"):
        hf_divcl.DivCLTrainr  # noqa: B018
    with pytest.raises(ImportError):
        from hf_divcl import DivCLTrainr  # noqa: F401
