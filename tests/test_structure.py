"""The package layout keeps its promises: old import paths still work, shared helpers behave, and the smells that
the split removed stay removed (backends never switched, damaged logs never read silently)."""

from __future__ import annotations

import json

import pytest
import torch


def test_the_old_builders_path_re_exports_the_planning_objects():
    import hf_divcl.builders as old

    import hf_divcl.planning as new

    for name in new.__all__:
        assert getattr(old, name) is getattr(new, name), name
    assert not new.RandomBuilder.requires_window and not new.ClusterBuilder.requires_window
    assert new.GreedyBuilder.requires_window and new.PoolBuilder.requires_window


def test_plotting_leaves_the_global_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from hf_divcl.publish.plots import pyplot, save_figure

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        fig, axes = pyplot().subplots(1, 2, figsize=(4, 2))
        axes[0].plot([0, 1], [1, 0], color=pyplot().get_cmap("tab20")(3))
        out = save_figure(fig, tmp_path / "sub" / "f.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_a_torn_last_log_line_is_skipped_but_a_damaged_middle_line_is_an_error(tmp_path):
    from hf_divcl.diversity.log import read_diversity_log

    path = tmp_path / "diversity_log.jsonl"
    rows = [json.dumps({"step": i}) for i in (1, 2)]
    path.write_text("\n".join([*rows, '{"step": 3, "div']))
    assert [r["step"] for r in read_diversity_log(path)] == [1, 2]
    path.write_text("\n".join([rows[0], "garbage", rows[1]]))
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_diversity_log(path)


def test_kmeans_backend_is_explicit_and_recorded():
    from hf_divcl.planning.cluster import ClusterBuilder
    from hf_divcl.planning.sketch import kmeans

    x = torch.nn.functional.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = kmeans(x, 5, torch.Generator().manual_seed(1))
    b = kmeans(x, 5, torch.Generator().manual_seed(1), backend="torch")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="backend must be 'torch' or 'faiss'"):
        kmeans(x, 5, torch.Generator(), backend="sklearn")
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install faiss-cpu"):
            kmeans(x, 5, torch.Generator(), backend="faiss")
    assert ClusterBuilder().config()["kmeans_backend"] == "torch"


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    from hf_divcl._common import atomic_write_text

    target = tmp_path / "a" / "divcl_window.json"
    atomic_write_text(target, "{}")
    atomic_write_text(target, '{"policy": "progress"}')
    assert json.loads(target.read_text()) == {"policy": "progress"}
    assert [p.name for p in target.parent.iterdir()] == ["divcl_window.json"]


def test_shared_helpers_answer_one_way(monkeypatch):
    from hf_divcl._common import ROW_ID_COLUMN, input_columns, is_image_feature, world_size
    from hf_divcl._common import ROW_ID_COLUMN as collator_row_id

    assert collator_row_id == ROW_ID_COLUMN  # defined once, importable from its old place
    assert input_columns(["anchor", "label", ROW_ID_COLUMN, "positive", "dataset_name"], ["label"]) == \
        ["anchor", "positive"]
    from datasets import Image, Value

    assert is_image_feature(Image()) and not is_image_feature(Value("string")) and not is_image_feature(None)
    monkeypatch.setenv("WORLD_SIZE", "3")  # before torch.distributed is initialised: the launcher's value
    assert world_size() == 3
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size() == 1
