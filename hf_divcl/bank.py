"""The embedding bank: one unit-norm embedding per training row (and view), which batch builders read.

Stored compactly — float16 by default, in RAM when small and as a memory-mapped ``.npy`` file when large — so
10⁶ rows × 384 dims take 768 MB and are never loaded whole. Filled from a *reference* encoding of the data set
(:meth:`EmbeddingBank.from_reference`: batched, progress bar, sharded across processes and gathered, cached on
disk by model and data fingerprints), updated in place from training steps (:meth:`update`, no extra forward
passes), and re-encoded periodically (:meth:`refresh`). Saved as ``.npy`` + JSON, atomically; never pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import cache_root
from .models.fingerprint import data_fingerprint, model_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingBank"]

_NP = {torch.float16: np.float16, torch.float32: np.float32}
_META = "bank.json"
_DATA = "embeddings.npy"
_STEPS = "last_update_step.npy"


def _scratch_file(owner: object) -> str:
    """A new ``.npy`` path in the cache folder, deleted when ``owner`` is garbage-collected or at exit."""
    cache_root().mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npy", prefix="bank-", dir=cache_root())
    os.close(fd)
    weakref.finalize(owner, _unlink, tmp)
    return tmp


def _map_saved(path: Path) -> np.ndarray:
    """Memory-map a saved bank file shared (not copy-on-write: private mappings count as process memory under
    memory limits); writes are kept off it by :meth:`EmbeddingBank._own_storage`. Read-only files map read-only."""
    try:
        return np.load(path, mmap_mode="r+", allow_pickle=False)
    except PermissionError:
        return np.load(path, mmap_mode="r", allow_pickle=False)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class EmbeddingBank:
    """``(num_rows, num_views, dim)`` unit embeddings with a per-row last-update step.

    Args:
        num_rows (`int`): rows of the training set.
        dim (`int`): embedding dimension.
        num_views (`int`, *optional*, defaults to 1): embeddings per row (e.g. 2: anchor and positive).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float16`): storage dtype (float16 or float32).
        path (`str`, *optional*): file for a memory-mapped bank; forces memory mapping.
        mmap_threshold_bytes (`int`, *optional*, defaults to 512 MiB): larger banks are memory-mapped (in
            ``$HF_DIVCL_CACHE`` or ``~/.cache/hf_divcl`` when no `path` is given).
    """

    def __init__(self, num_rows: int, dim: int, *, num_views: int = 1, dtype: torch.dtype = torch.float16,
                 path: str | os.PathLike | None = None, mmap_threshold_bytes: int = 512 * 2**20) -> None:
        if num_rows < 1 or dim < 1 or num_views < 1:
            raise ValueError(f"A bank needs num_rows, dim, num_views >= 1; got {num_rows}, {dim}, {num_views}.")
        if dtype not in _NP:
            raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}.")
        self.dtype = dtype
        shape = (num_rows, num_views, dim)
        nbytes = int(np.prod(shape)) * np.dtype(_NP[dtype]).itemsize
        self.path: Path | None = None
        self._borrowed = False
        if path is not None or nbytes > mmap_threshold_bytes:
            if path is None:
                path = _scratch_file(self)
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._mmap = np.lib.format.open_memmap(self.path, mode="w+", dtype=_NP[dtype], shape=shape)
            self._data = torch.from_numpy(self._mmap)
        else:
            self._mmap = None
            self._data = torch.zeros(shape, dtype=dtype)
        self.last_update_step = torch.full((num_rows,), -1, dtype=torch.long)
        self.source = "empty"

    # -- shape ---------------------------------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return self._data.shape[0]

    @property
    def num_views(self) -> int:
        return self._data.shape[1]

    @property
    def dim(self) -> int:
        return self._data.shape[2]

    @property
    def nbytes(self) -> int:
        return self._data.numel() * self._data.element_size()

    @property
    def is_memmapped(self) -> bool:
        return self.path is not None

    @property
    def filled_fraction(self) -> float:
        return (self.last_update_step >= 0).float().mean().item()

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (f"EmbeddingBank(rows={self.num_rows}, views={self.num_views}, dim={self.dim}, dtype={self.dtype}, "
                f"{'memmap ' + str(self.path) if self.is_memmapped else 'in RAM'}, "
                f"filled={self.filled_fraction:.1%})")

    # -- read / write -------------------------------------------------------------------------------------------

    def _own_storage(self) -> None:
        """Before the first write to a bank memory-mapped from a saved copy (a cache entry or a checkpoint):
        move it to a private scratch file, so the saved copy is never changed — a crash mid-update or mid-refresh
        leaves it exactly as it was saved."""
        if not self._borrowed:
            return
        src, dst = self.path, _scratch_file(self)
        shutil.copyfile(src, dst)
        self._mmap = np.load(dst, mmap_mode="r+", allow_pickle=False)
        self._data = torch.from_numpy(self._mmap)
        self.path, self._borrowed = Path(dst), False
        logger.info("bank memory-mapped from %s copied to %s before its first update", src, dst)

    def _check_indices(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_rows):
            bad = idx[(idx < 0) | (idx >= self.num_rows)].tolist()
            raise ValueError(f"Row indices {bad[:10]} are out of range for a bank of {self.num_rows} rows.")
        return idx

    def update(self, indices: torch.Tensor | Sequence[int], embeddings: torch.Tensor, *, step: int | None = None,
               view: int | None = None) -> None:
        """Write ``embeddings`` ``(n, d)`` (one view, default 0) or ``(n, V, d)`` for rows ``indices``.

        Rows are L2-normalised. NaN/Inf or all-zero rows are rejected with their row ids and nothing is written.
        """
        idx = self._check_indices(indices)
        e = embeddings.detach().to("cpu", torch.float32)
        if e.ndim == 2:
            view = 0 if view is None else view
            if not 0 <= view < self.num_views:
                raise ValueError(f"view {view} out of range: the bank has {self.num_views} view(s).")
            e = e.unsqueeze(1)
        elif view is not None or e.ndim != 3 or e.shape[1] != self.num_views:
            raise ValueError(f"embeddings must be (n, {self.dim}) with `view`, or (n, {self.num_views}, {self.dim}); "
                             f"got {tuple(e.shape)}.")
        if e.shape[0] != idx.numel() or e.shape[-1] != self.dim:
            raise ValueError(f"{idx.numel()} indices but embeddings of shape {tuple(embeddings.shape)}; expected "
                             f"({idx.numel()}, {self.dim}).")
        norms = torch.linalg.vector_norm(e, dim=-1)  # (n, V)
        bad = ~torch.isfinite(e).all(-1).all(-1) | (norms == 0).any(-1)
        if bool(bad.any()):
            rows = idx[bad].tolist()
            raise ValueError(f"Embeddings of rows {rows[:10]}{'...' if len(rows) > 10 else ''} are NaN/Inf or zero; "
                             "nothing was written. Check the model output for those rows.")
        e = (e / norms.unsqueeze(-1)).to(self.dtype)
        self._before_write()
        self._own_storage()
        if e.shape[1] == self.num_views:
            self._data[idx] = e
        else:
            self._data[idx, view] = e[:, 0]
        if step is not None:
            self.last_update_step[idx] = int(step)
        else:
            self.last_update_step[idx] = self.last_update_step[idx].clamp_min(0)

    def on_write(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` before every change to the stored rows, until the returned function removes it: a
        reader holding a view of the rows (a re-plan in the background) copies what it still needs first."""
        listeners = self.__dict__.setdefault("_write_listeners", [])
        listeners.append(listener)

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)
        return remove

    def _before_write(self) -> None:
        for listener in list(self.__dict__.get("_write_listeners", ())):
            listener()

    def get(self, indices: torch.Tensor | Sequence[int], *, view: int = 0, dtype: torch.dtype = torch.float32,
            device: str | torch.device | None = None) -> torch.Tensor:
        """Embeddings ``(n, d)`` of rows ``indices`` and one view."""
        idx = self._check_indices(indices)
        return self._data[idx, view].to(device=device, dtype=dtype)

    def all(self, *, view: int = 0, dtype: torch.dtype | None = None,
            device: str | torch.device | None = None) -> torch.Tensor:
        """All rows of one view, ``(N, d)``; in the storage dtype by default (a view, no copy, when possible)."""
        x = self._data[:, view]
        return x if dtype in (None, self.dtype) and device is None else x.to(device=device, dtype=dtype or self.dtype)

    def staleness(self, current_step: int) -> dict[str, float]:
        """Mean and max age in steps of the filled rows, and the fraction never filled."""
        filled = self.last_update_step >= 0
        age = (current_step - self.last_update_step[filled]).float()
        return {"mean": age.mean().item() if age.numel() else float("nan"),
                "max": age.max().item() if age.numel() else float("nan"),
                "never_filled_fraction": 1.0 - filled.float().mean().item()}

    # -- persistence ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"embeddings": self._data, "last_update_step": self.last_update_step, "source": self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        emb = state["embeddings"]
        if tuple(emb.shape) != tuple(self._data.shape):
            raise ValueError(f"State has shape {tuple(emb.shape)}, the bank {tuple(self._data.shape)}.")
        self._before_write()
        self._own_storage()
        self._data.copy_(emb.to(self.dtype))
        self.last_update_step.copy_(state["last_update_step"])
        self.source = state.get("source", "state_dict")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings.npy``, ``last_update_step.npy`` and ``bank.json`` into ``directory``, atomically.

        Files are written under temporary names and renamed; ``bank.json`` goes last, so a directory without it
        (a save interrupted midway) is never loaded as a bank.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self._mmap is not None:
            self._mmap.flush()
        temporaries = [d / f".{name}.tmp" for name in (_DATA, _STEPS, _META)]
        try:
            for name, arr, tmp in ((_DATA, self._data.numpy(), temporaries[0]),
                                   (_STEPS, self.last_update_step.numpy(), temporaries[1])):
                with tmp.open("wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, d / name)
            meta = {"format": "hf_divcl.bank/1", "num_rows": self.num_rows, "num_views": self.num_views,
                    "dim": self.dim, "dtype": str(self.dtype).removeprefix("torch."), "source": self.source}
            temporaries[2].write_text(json.dumps(meta, indent=2))
            os.replace(temporaries[2], d / _META)
        except OSError:  # a full disk: leave no half-written temporary behind (the folder is still no bank)
            for tmp in temporaries:
                tmp.unlink(missing_ok=True)
            raise
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool | None = None) -> EmbeddingBank:
        """Load a bank written by :meth:`save`; memory-maps the embeddings when ``mmap`` (default: if > 512 MiB).

        A memory-mapped bank reads the saved file in place and is copied to a scratch file before its first
        :meth:`update`: the directory it was loaded from is never written to.
        """
        d = Path(directory)
        if not (d / _META).is_file():
            raise FileNotFoundError(f"{str(d)!r} holds no complete bank ({_META} is missing: never saved, or the "
                                    "save was interrupted). Rebuild it with EmbeddingBank.from_reference.")
        meta = json.loads((d / _META).read_text())
        if meta.get("format") != "hf_divcl.bank/1":
            raise ValueError(f"{str(d / _META)!r} is not an hf_divcl bank (format {meta.get('format')!r}).")
        size = (d / _DATA).stat().st_size if (d / _DATA).is_file() else 0
        use_mmap = size > 512 * 2**20 if mmap is None else mmap
        try:
            arr = _map_saved(d / _DATA) if use_mmap else np.load(d / _DATA, allow_pickle=False)
            steps = np.load(d / _STEPS, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"The bank in {str(d)!r} is corrupt ({err}); rebuild it.") from err
        want = (meta["num_rows"], meta["num_views"], meta["dim"])
        if arr.shape != want or steps.shape != (want[0],):
            raise ValueError(f"The bank in {str(d)!r} is corrupt: embeddings {arr.shape}, steps {steps.shape}, "
                             f"expected {want}.")
        bank = cls.__new__(cls)
        bank.dtype = getattr(torch, meta["dtype"])
        bank._mmap = arr if use_mmap else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only saved file: never written (see _own_storage)
            bank._data = torch.from_numpy(arr)
        bank.path = d / _DATA if use_mmap else None
        bank._borrowed = use_mmap
        bank.last_update_step = torch.from_numpy(steps.copy())
        bank.source = meta.get("source", "disk")
        return bank

    # -- encoding -------------------------------------------------------------------------------------------------

    @staticmethod
    def _views(texts: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
        if len(texts) and isinstance(texts[0], str):
            return [list(texts)]
        views = [list(v) for v in texts]
        if not views or any(len(v) != len(views[0]) for v in views):
            raise ValueError(f"All views need the same number of rows; got {[len(v) for v in views]}.")
        return views

    @staticmethod
    def _encode_shards(model, views: list[list[str]], batch_size: int, show_progress_bar: bool) -> torch.Tensor:
        """Encode this process's contiguous shard of rows and gather all shards: ``(N, V, d)`` float32 CPU."""
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        n = len(views[0])
        lo, hi = n * rank // world, n * (rank + 1) // world
        parts = [model.encode(v[lo:hi], batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=show_progress_bar and rank == 0).float().cpu() for v in views]
        shard = torch.stack(parts, dim=1)  # (hi - lo, V, d)
        if world == 1:
            return shard
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, shard.numpy())
        return torch.from_numpy(np.concatenate(gathered, axis=0))

    @classmethod
    def from_user(cls, bank: EmbeddingBank | torch.Tensor, rows: int) -> EmbeddingBank:
        """A bank given by the user (a bank, or an ``(N, d)`` tensor of view-0 embeddings), checked against the
        training set's ``rows``."""
        if isinstance(bank, torch.Tensor):
            tensor, bank = bank, cls(bank.shape[0], bank.shape[1])
            bank.update(torch.arange(tensor.shape[0]), tensor, step=0)
            bank.source = "user"
        if bank.num_rows != rows:
            raise ValueError(f"The bank has {bank.num_rows} rows but the training set has {rows}.")
        return bank

    @classmethod
    def from_reference(cls, model, texts: Sequence[str] | Sequence[Sequence[str]], *, batch_size: int = 64,
                       cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float16,
                       show_progress_bar: bool = True, data_fingerprint_: str | None = None) -> EmbeddingBank:
        """Encode the data set once with ``model`` (a SentenceTransformer); reuse the on-disk cache when the
        model and data fingerprints match. Under ``torch.distributed`` every rank encodes a shard and all end
        with the same full bank; rank 0 writes the cache."""
        views = cls._views(texts)
        data_key = data_fingerprint(views) if data_fingerprint_ is None else \
            hashlib.blake2b(data_fingerprint_.encode(), digest_size=16).hexdigest()  # no path parts from users
        key = f"{model_fingerprint(model)}-{data_key}-{str(dtype)[6:]}"
        cache = Path(cache_dir) / key if cache_dir is not None else None
        if cache is not None and (cache / _META).is_file():
            bank = cls.load(cache)
            bank.source = "cache"
            logger.info("embedding bank loaded from cache %s", cache)
            return bank
        emb = cls._encode_shards(model, views, batch_size, show_progress_bar)
        bank = cls(emb.shape[0], emb.shape[2], num_views=emb.shape[1], dtype=dtype)
        bank.update(torch.arange(emb.shape[0]), emb, step=0)
        bank.source = "reference"
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized()
        if cache is not None and (not distributed or dist.get_rank() == 0):
            try:
                bank.save(cache)
            except OSError as err:  # a read-only or full cache folder costs a re-encoding next time, not the run
                logger.warning("Could not write the bank cache to %s (%s); training goes on without it, and the "
                               "next run encodes the bank again. Set bank_cache_dir (or HF_DIVCL_CACHE) to a "
                               "writable folder to keep it.", cache, err)
        if cache is not None and distributed:
            dist.barrier()
        return bank

    def refresh(self, model, texts: Sequence[str] | Sequence[Sequence[str]], *, step: int, batch_size: int = 64,
                show_progress_bar: bool = True) -> None:
        """Re-encode every row in place (e.g. every k epochs) and stamp it with ``step``."""
        views = self._views(texts)
        if len(views[0]) != self.num_rows or len(views) != self.num_views:
            raise ValueError(f"refresh needs {self.num_views} view(s) of {self.num_rows} rows; got "
                             f"{len(views)} of {len(views[0])}.")
        emb = self._encode_shards(model, views, batch_size, show_progress_bar)
        self.update(torch.arange(self.num_rows), emb, step=step)
        self.source = "refresh"
