"""Hostile input: text that tries to run templates or inject Markdown/HTML/YAML into model cards, configs that try
to build Python objects or explode, names that try to leave a folder, model folders that would run code when
loaded, and a Hub token that must never reach a log, a card, saved arguments, a checkpoint or an exception.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import hub_server as loopback
import pytest
import torch
import yaml
from test_card import fake_run
from test_hub import REPO, full_text

from hf_divcl.bank import EmbeddingBank
from hf_divcl.cli.diagnose import DiagnoseConfig
from hf_divcl.cli.parser import config_parser, parse_config
from hf_divcl.cli.recipe_config import load_recipe_config
from hf_divcl.models.loading import load_sentence_transformer
from hf_divcl.publish.card import write_model_card
from hf_divcl.publish.hub import PushError, push_to_hub, select_files, validate_repo_id

hub_server = loopback.hub_server
hub_client = loopback.hub_client
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


# ------------------------------------------------------------------------------------------------ model cards
CARD_ATTACKS = {
    "jinja_expression": ("{{ 7*7 }}", ["49"]),
    "jinja_statement": ("{% for x in range(3) %}XYZ{% endfor %}", ["XYZXYZ"]),
    "jinja_attribute_escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ["<class"]),
    "script_tag": ("<script>alert(1)</script>", ["<script>"]),
    "html_img_onerror": ('<img src=x onerror="alert(1)">', ["<img"]),
    "markdown_link": ("[click](http://evil.example)", ["[click](http://evil.example)"]),
    "markdown_image_beacon": ("![t](http://evil.example/t.png)", ["![t](http://evil.example/t.png)"]),
    "html_comment_hides_rest": ("<!-- hidden", ["<!--"]),
    "table_break": ("a | b\n| c | d |", ["\n| c | d |"]),
    "front_matter_injection": ("x\n---\nlicense: evil\n---\n", ["\nlicense: evil", "\n---\nlicense"]),
    "code_fence_break": ("```\nimport os; os.system('rm -rf /')\n```", ["```\nimport os"]),
}


@pytest.mark.parametrize("attack", list(CARD_ATTACKS))
def test_model_card_renders_hostile_text_inert(attack, tmp_path):
    text, forbidden = CARD_ATTACKS[attack]

    def render(value: str, name: str) -> str:
        out = tmp_path / name
        fake_run(out)
        return write_model_card(out, base_model=value, dataset=value, train_rows=3, repo_id=None,
                                evaluation={value: (0.5, 0.6)}, usage_inputs=[value]).read_text()

    benign, card = render("plain words", "benign"), render(text, "hostile")
    prose = re.sub(r"```.*?```", "", card, flags=re.S)
    for bad in forbidden:
        assert bad not in prose, (attack, bad)
    usage = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    ast.parse(usage)  # still valid Python, and the text inside it is only a string literal
    literal = re.search(r"\.encode\((\[.*?\])\)\n", usage, flags=re.S).group(1)
    assert ast.literal_eval(literal) == [text]
    header = card.split("---\n")[1]
    meta = yaml.safe_load(header)
    assert "license" not in meta or meta["license"] != "evil"
    assert card.count("```") == benign.count("```")  # no code block opened or closed by the text
    assert card.count("\n---\n") == benign.count("\n---\n")  # no new front matter / rule


# ------------------------------------------------------------------------------------------------ configs
PAYLOADS = {
    "python_object_apply": "output_dir: !!python/object/apply:os.system ['touch {marker}']\n",
    "python_name": "output_dir: !!python/name:os.system\n",
    "python_object_new": "max_steps: !!python/object/new:os.system ['touch {marker}']\n",
    "billion_laughs": "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 10)}]\n" for p, k in zip("abcd", "bcde", strict=True)),
}


@pytest.mark.parametrize("loader", ["recipe", "diagnose"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_configs_are_parsed_as_plain_data_only(payload, loader, tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(PAYLOADS[payload].format(marker=marker))
    match = "expands to more than" if payload == "billion_laughs" else "not valid plain YAML"
    with pytest.raises(ValueError, match=match):
        if loader == "recipe":
            load_recipe_config(cfg)
        else:
            parse_config(config_parser(DiagnoseConfig), [DiagnoseConfig], ["--config", str(cfg)])
    assert not marker.exists()


@pytest.mark.parametrize("key", ["batch_policy_kwargs", "loss_kwargs"])
def test_policy_and_loss_kwargs_from_a_config_must_be_a_json_object(tmp_path, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(key + ": '[\"__import__(\\\"os\\\")\"]'\noutput_dir: " + str(tmp_path / "o") + "\n")
    with pytest.raises(ValueError, match=key + r" must be a dict \(or a JSON object\), got list"):
        load_recipe_config(cfg)


# ------------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("repo_id", ["../../etc/passwd", "ns/..", "../x", "ns/.git", "ns/x.git", "ns\\..\\x",
                                     "/abs/path", "ns/a/../b", "~/x", "ns/%2e%2e"])
def test_repo_ids_that_look_like_paths_are_refused_before_any_request(repo_id):
    with pytest.raises(ValueError, match="Invalid repo id"):
        validate_repo_id(repo_id)


def test_link_to_a_file_outside_the_output_folder_is_never_uploaded(hub_client, tiny_model_dir, tmp_path, caplog):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY MATERIAL")
    out = tmp_path / "run"
    shutil.copytree(tiny_model_dir, out)
    (out / "notes.md").symlink_to(secret)
    (out / "inside.md").symlink_to(out / "README.md")  # a link within the folder is fine
    uploaded, skipped = select_files(out)
    assert "notes.md" in skipped and "notes.md" not in uploaded and "inside.md" in uploaded
    caplog.set_level(logging.WARNING, logger="hf_divcl.publish.hub")
    push_to_hub(out, REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    files = hub_client.server.repo_files(REPO)
    assert "notes.md" not in files and b"PRIVATE KEY" not in b"".join(files.values())
    assert "outside" in caplog.text


def test_column_names_cannot_move_the_bank_cache_out_of_its_folder(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    cache = tmp_path / "cache"
    EmbeddingBank.from_reference(model, ["a b", "c d", "e f"], cache_dir=cache, show_progress_bar=False,
                                 data_fingerprint_="fp-../../../escaped-/abs")
    written = [p for p in tmp_path.rglob("bank.json")]
    assert len(written) == 1 and written[0].parent.parent == cache
    assert not (tmp_path / "escaped-").exists()


# ------------------------------------------------------------------------------------------------ model loading
class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_are_never_unpickled(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for st in folder.rglob("*.safetensors"):
        st.unlink()
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump(_RunsCode(marker), fh)
    with pytest.raises(ValueError, match=r"only as pickled files \(pytorch_model\.bin\).*safetensors"):
        load_sentence_transformer(str(folder), device="cpu")
    assert not marker.exists()


def test_code_shipped_with_a_model_runs_only_with_trust_remote_code(tiny_model_dir, tmp_path):
    import json

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "pwned"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n")
    model = load_sentence_transformer(str(folder), device="cpu")  # the shipped code is ignored ...
    assert not marker.exists()
    assert type(model[0].auto_model).__name__ == "BertModel"  # ... and the built-in class is used


# ------------------------------------------------------------------------------------------------ the Hub token
def test_hub_token_never_reaches_logs_cards_arguments_checkpoints_or_errors(hub_client, tiny_model_dir, tmp_path,
                                                                           caplog, capfd):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    caplog.set_level(logging.DEBUG)
    token = hub_client.token
    out = tmp_path / "run"
    args = DivCLTrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=4, save_steps=2,
                                  logging_steps=2, report_to=[], disable_tqdm=True, collapse_threshold=0,
                                  batch_policy="random", hub_token=token, hub_model_id=REPO)
    data = wordnet_pairs(kind="example", source="embedded").select(range(32)).select_columns(["anchor", "positive"])
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args, train_dataset=data)
    trainer.train()
    hub_client.server.fail(r"/commit/main$", times=None, status=500)
    with pytest.raises(PushError) as info:
        trainer.push_to_hub(endpoint=hub_client.endpoint, retries=0)
    assert token not in full_text(info.value)
    hub_client.server.clear_faults()
    trainer.push_to_hub(endpoint=hub_client.endpoint)
    assert (out / "README.md").is_file() and (out / "checkpoint-4" / "training_args.bin").is_file()
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token == "<HUB_TOKEN>"
    captured = capfd.readouterr()
    assert token not in caplog.text + captured.out + captured.err + hub_client.server.transcript()
    assert trainer.args.hub_token == token  # the live arguments still hold it for the push itself
