"""The lower bounds in pyproject.toml are true: a fresh virtual environment with the declared minimum of each Hugging
Face dependency (read from pyproject.toml), the rest of the dependencies at whatever pip picks and hf_divcl itself
imports every module and trains.

The floors and what breaks just below them (re-check them when a bound moves):

- transformers 5.4.0: 5.3 has no ``ViTImageProcessorPil`` / ``CLIPImageProcessorPil`` (hf_divcl.models.vision);
- sentence-transformers 5.4.0: 5.3 has no ``sentence_transformers.base`` (sampler, modules, data collator);
- huggingface_hub 1.5.0: transformers 5.4 requires it; 0.x has no ``set_client_factory`` (push timeouts);
- accelerate 1.13.0: up to 1.12 a streamed data set fails (``Can only concatenate tensors but got <class 'str'>``:
  the collator's modality strings in a dispatched batch);
- datasets 2.17.1: 2.17.0 cannot read a CSV file with pandas 3 (``read_csv() got an unexpected keyword argument
  'verbose'``);
- evaluate 0.2.0: 0.1.x has no ``evaluate.Metric``.

Slow (a new virtual environment and a few hundred MB of wheels); skipped only when the package index cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOORED = ("transformers", "sentence-transformers", "datasets", "accelerate", "evaluate", "huggingface-hub")
EXTRAS = ("vision", "plot")  # Pillow and kornia for the image models and image training, matplotlib for the card
NETWORK_TROUBLE = ("Could not fetch URL", "connection broken by", "NewConnectionError", "ConnectTimeoutError",
                   "Max retries exceeded", "Temporary failure in name resolution", "ProxyError",
                   "Network is unreachable")

SMOKE = textwrap.dedent('''
    """Runs in the floors venv: python smoke.py TESTS_DIR WORK_DIR."""
    import importlib
    import pkgutil
    import sys
    from pathlib import Path

    tests_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(tests_dir))
    from conftest import build_tiny_sentence_transformer  # sets HF_HUB_OFFLINE & co. as in the test suite

    from datasets import Image as ImageFeature
    from sentence_transformers import SentenceTransformer

    import hf_divcl
    from hf_divcl import DivCLTrainer, DivCLTrainingArguments
    from hf_divcl.data.images import digits
    from hf_divcl.data.local import load_local_dataset, load_pair_file
    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.evaluation import metrics
    from hf_divcl.models.vision import build_tiny_clip_sentence_transformer, build_tiny_vit_sentence_transformer
    from hf_divcl.publish import hub
    from hf_divcl.publish.card import write_model_card


    def done(what):
        print("ok:", what, flush=True)


    for info in pkgutil.walk_packages(hf_divcl.__path__, "hf_divcl."):
        importlib.import_module(info.name)
    done("every hf_divcl module imports")

    with hub._request_timeout(5.0):  # huggingface_hub.set_client_factory
        pass
    done("push timeout through huggingface_hub.set_client_factory")

    assert metrics.load("batch_diversity").compute(embeddings=[[1.0, 0.0], [0.0, 1.0]])["effective_rank"] == 2.0
    module = metrics.load("batch_diversity")
    module.add_batch(embeddings=[[1.0, 0.0]])
    module.add_batch(embeddings=[[0.0, 1.0]])
    assert abs(module.compute()["effective_rank"] - 2.0) < 1e-9
    out = metrics.load("embedding_similarity", keep_in_memory=True).compute(
        predictions=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], references=[[1.0, 0.1], [0.2, 1.0], [1.0, 0.0]],
        scores=[1.0, 2.0, 0.5])
    assert out["pairs"] == 3, out
    done("evaluate metric modules by path")

    (work / "pairs.jsonl").write_text("".join(f'{{"q": "a{i}", "a": "b{i}"}}\\n' for i in range(4)))
    (work / "pairs.csv").write_text("anchor,positive\\n" + "".join(f"a{i},b{i}\\n" for i in range(4)))
    local = load_local_dataset(work / "pairs.jsonl", columns={"anchor": "q", "positive": "a"})
    assert local.column_names == ["anchor", "positive"], local
    assert load_pair_file(work / "pairs.csv")[1] == ["b0", "b1", "b2", "b3"]
    images = digits("test", limit=8)
    assert images.cast_column("image", ImageFeature(decode=False))[0]["image"]["bytes"]
    for i in range(4):
        (work / "folder" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        images[i]["image"].save(work / "folder" / f"c{i % 2}" / f"{i}.png")
    assert len(load_local_dataset(work / "folder")) == 4
    done("local files, image folder and digits through datasets")

    model_dir = build_tiny_sentence_transformer(work / "tiny")
    pairs = wordnet_pairs(kind="example", source="embedded").select(range(64)).select_columns(["anchor", "positive"])
    runs = (("random", pairs, {}), ("stream", pairs.to_iterable_dataset(), {}),
            ("window", pairs, {"batch_policy": "window", "batch_policy_kwargs": {"window": "2:6"}}))
    for name, data, kw in runs:
        model = SentenceTransformer(model_dir, device="cpu")
        args = DivCLTrainingArguments(output_dir=str(work / name), max_steps=3, per_device_train_batch_size=8,
                                      report_to=[], disable_tqdm=True, save_strategy="no", use_cpu=True,
                                      logging_steps=1, **kw)
        DivCLTrainer(model=model, args=args, train_dataset=data).train()
        done(f"3 training steps, {name}")
    from datasets import DatasetDict

    from hf_divcl.losses.infonce import InfoNCELoss

    model = SentenceTransformer(model_dir, device="cpu")
    sources = DatasetDict({"a": pairs.select(range(32)), "b": pairs.select(range(32, 64))})
    args = DivCLTrainingArguments(output_dir=str(work / "sources"), max_steps=3, per_device_train_batch_size=8,
                                  report_to=[], disable_tqdm=True, save_strategy="no", use_cpu=True, logging_steps=1)
    DivCLTrainer(model=model, args=args, train_dataset=sources,
                 loss={"a": InfoNCELoss(model), "b": InfoNCELoss(model, temperature=0.1)}).train()
    done("3 training steps, two sources with a loss each")
    card = write_model_card(work / "window", model=model, base_model="tiny", dataset="wordnet", train_rows=64)
    assert "wordnet" in card.read_text()
    model.save(str(work / "saved"))
    assert SentenceTransformer(str(work / "saved"), device="cpu").encode(["a cat"]).shape == (1, 32)
    done("model card, save and reload")

    for build in (build_tiny_vit_sentence_transformer, build_tiny_clip_sentence_transformer):
        vision = SentenceTransformer(build(work / build.__name__), device="cpu")
        assert vision.encode([images[0]["image"]]).shape[0] == 1
    args = DivCLTrainingArguments(output_dir=str(work / "vit-run"), max_steps=2, per_device_train_batch_size=8,
                                  report_to=[], disable_tqdm=True, save_strategy="no", use_cpu=True,
                                  logging_steps=1, loss_kwargs={"loss_type": "nt_xent"})
    vit = SentenceTransformer(str(work / "build_tiny_vit_sentence_transformer" / "st"), device="cpu")
    DivCLTrainer(model=vit, args=args, train_dataset=digits("train", limit=32)).train()
    done("tiny ViT and CLIP built; 2 image training steps")
    print("SMOKE OK", flush=True)
''')


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def declared_floors(pyproject: Path) -> tuple[dict[str, str], list[str]]:
    """``({name: floor}, other requirements)``: the ``>=`` bound of each package in FLOORED, and every other
    dependency (torch excluded: it is installed first, pinned) plus the EXTRAS, as declared."""
    project = tomllib.loads(pyproject.read_text())["project"]
    floors, rest = {}, []
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in FLOORED:
            lows = [spec.version for spec in req.specifier if spec.operator == ">="]
            assert len(lows) == 1, f"pyproject.toml: {line!r} needs exactly one '>=' lower bound"
            floors[name] = lows[0]
        elif name != "torch":
            rest.append(line)
    assert sorted(floors) == sorted(FLOORED), f"pyproject.toml declares no floor for {set(FLOORED) - set(floors)}"
    for extra in EXTRAS:
        rest += project["optional-dependencies"][extra]
    return floors, rest


def index_unreachable(dest: Path) -> str | None:
    """Why the package index cannot be reached (a quick download of one small package), or None."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), "--timeout", "15",
           "--retries", "1", "six"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (subprocess.TimeoutExpired, OSError) as err:
        return f"`pip download six` did not finish: {err}"
    out = proc.stdout + proc.stderr
    trouble = [line for line in out.splitlines() if any(s in line for s in NETWORK_TROUBLE)]
    if proc.returncode != 0 or trouble:
        return f"`pip download six` exited {proc.returncode}: {_tail(chr(10).join(trouble) or out, 5)}"
    return None


@pytest.mark.slow
def test_the_declared_floors_install_import_and_train(tmp_path):
    start = time.monotonic()
    floors, rest = declared_floors(ROOT / "pyproject.toml")
    reason = index_unreachable(tmp_path / "probe")
    if reason:
        pytest.skip(f"package index unreachable, the floors cannot be installed: {reason}")

    torch_version = metadata.version("torch")  # the one scripts/setup.sh installed (local CPU wheel)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n")  # never let pip pull another torch
    pip_log = tmp_path / "pip.log"
    venv = tmp_path / "venv"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def run(cmd: list[str], what: str, timeout: float, **kw) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"{what}: no result after {timeout:.0f} s\n--- pip log tail:\n{_log_tail()}\n{err}")
        if proc.returncode != 0:
            pytest.fail(f"{what} exited {proc.returncode}\n--- stderr tail:\n{_tail(proc.stderr)}\n"
                        f"--- stdout tail:\n{_tail(proc.stdout, 20)}\n--- pip log tail:\n{_log_tail()}")
        return proc

    def _log_tail(lines: int = 40) -> str:
        return _tail(pip_log.read_text(errors="replace"), lines) if pip_log.is_file() else "(no pip log)"

    def pip(*args: str, what: str, timeout: float = 1500) -> subprocess.CompletedProcess:
        return run([str(python), "-m", "pip", *args], what, timeout)

    run([sys.executable, "-m", "venv", str(venv)], "python -m venv", 300)
    pip("install", "--log", str(pip_log), "-c", str(constraints), f"torch=={torch_version}",
        what=f"installing torch=={torch_version}")
    pins = [f"{name}=={version}" for name, version in floors.items()]
    resolved = pip("install", "--log", str(pip_log), "-c", str(constraints), *pins, *rest, "pytest",
                   what=f"installing the floors {pins} and the other dependencies").stdout
    resolved = next((line for line in resolved.splitlines() if line.startswith("Successfully installed")), resolved)
    pip("install", "--log", str(pip_log), "--no-deps", "-e", str(ROOT), what="installing hf_divcl --no-deps")

    shown = pip("show", *FLOORED, "torch", what="pip show").stdout
    installed = {}
    for block in shown.split("\n---"):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if ": " in line)
        installed[canonicalize_name(fields["Name"])] = fields["Version"]
    wrong = {name: (installed.get(name), floor) for name, floor in floors.items()
             if installed.get(name) is None or Version(installed[name]) != Version(floor)}
    assert not wrong, f"pip installed other versions than the floors (installed, floor): {wrong}\n{_log_tail()}"
    assert installed.get("torch") == torch_version, f"torch changed: {installed.get('torch')} != {torch_version}"

    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DIVCL_CACHE=str(tmp_path / "divcl-cache"), MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONNOUSERSITE="1")
    try:
        proc = subprocess.run([str(python), str(script), str(ROOT / "tests"), str(work)], capture_output=True,
                              text=True, timeout=900, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the smoke run at the floors did not finish in 900 s: {err}")
    versions = ", ".join(f"{name} {installed[name]}" for name in FLOORED)
    assert proc.returncode == 0 and "SMOKE OK" in proc.stdout, (
        f"hf_divcl fails at the declared floors ({versions}): exit {proc.returncode}\n"
        f"--- steps passed:\n{_tail(proc.stdout, 20)}\n--- stderr tail:\n{_tail(proc.stderr, 60)}\n"
        f"--- pip resolved:\n{resolved}\n--- pip log tail:\n{_log_tail(10)}")
    print(f"floors ({versions}) install and train in {time.monotonic() - start:.0f} s")
