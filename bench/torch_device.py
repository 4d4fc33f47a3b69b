"""The one home of what every PyTorch plug-in shares: the torch import, devices, timing, top-k.

Both plug-in families use it (``llm_models`` and the neural baselines in
``baselines``), and neither imports the other. torch is imported only when a
model is built or fitted, so ``bench list`` and the CF-only core work without
it. One code path serves CPU and CUDA: the model's ``device`` setting (``cpu``,
``cuda[:n]`` or ``auto``, resolved by :func:`bench.protocol.resolve_device`)
picks where tensors live; :func:`synchronize` makes the runner's wall-clock
timers cover queued kernels (``bench.systems.Clock`` does the same around
every reading), and the runner's ``fit_peak_gpu_mb`` / ``serve_peak_gpu_mb``
rows read ``torch.cuda.max_memory_allocated``.

:func:`topk_on_device` ranks a [n, n_items] score tensor where it was computed
and copies back only the [n, k] answer, with exactly the semantics of
:func:`bench.protocol.mask_and_rank` (exclusions, shared or per-user candidates
padded with -1, ties broken by the lower item index).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from bench.errors import ConfigError

TORCH_HINT = "install torch from constraints.txt: pip install -c constraints.txt -e '.[torch]'"


def require_torch(model: str, hint: str = TORCH_HINT) -> Any:
    """Import torch, or say exactly what to install (a ConfigError naming the model)."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"model '{model}' needs torch, which is not installed; {hint}") from None
    return torch


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision on CPU (CPU bf16 is slower on most machines)."""
    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: str) -> None:
    """Wait for queued GPU work so the runner's timers measure it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def use_threads(num_threads: int) -> None:
    """Set torch's intra-op threads (process-wide); 0 leaves torch's default.

    On a shared or oversubscribed CPU, one thread per process is often several
    times faster than torch's default (its OpenMP workers wait on each other).
    """
    if num_threads > 0:
        import torch

        torch.set_num_threads(int(num_threads))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) so a CPU fit repeats bit for bit."""
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class GpuPeak:
    """Peak GPU memory so far (None on CPU). Read-only: the runner's systems timers own the resets."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def take(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return float(torch.cuda.max_memory_allocated()) / 2**20


def batches(n: int, size: int) -> Iterator[slice]:
    size = max(1, int(size))
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def serving_dtype(device: str) -> Any:
    """float64 on CPU, float32 on CUDA.

    On CPU the extra precision is nearly free at recommendation time and keeps a
    user's scores identical whatever batch they are scored in (float32 GEMM
    kernels change their summation order with the batch shape, which can swap
    near-tied items); GPUs are slow at float64, and there batch invariance is
    only guaranteed up to float32 rounding.
    """
    import torch

    return torch.float64 if device == "cpu" else torch.float32


def _stable_top_k(scores: Any, k: int) -> tuple[Any, Any]:
    """Top-k values and column indices, best first, ties broken by the lower index (on the device)."""
    import torch

    values, index = torch.topk(scores, k, dim=1)
    # torch.topk picks an arbitrary member of a tie; redo the rows where a tie straddles the cut or sits inside it
    kth = values[:, -1:]
    crowded = (scores >= kth).sum(1) > k
    inner_tie = (values[:, 1:] == values[:, :-1]).any(1) if k > 1 else torch.zeros_like(crowded)
    redo = crowded | inner_tie
    if bool(redo.any()):
        rows = torch.nonzero(redo).squeeze(1)
        sorted_vals, sorted_idx = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], index[rows] = sorted_vals[:, :k], sorted_idx[:, :k]
    return values, index


def topk_on_device(scores: Any, k: int, *, candidates: np.ndarray | None = None,
                   exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bench.protocol.mask_and_rank` for a torch score tensor [n, n_items], ranked where it lives.

    Only the [n, k] item ids and scores are copied back to the host.
    """
    import torch

    scores = scores.clone()
    n, m = scores.shape
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        rows = torch.as_tensor(coo.row, dtype=torch.long, device=scores.device)
        cols = torch.as_tensor(coo.col, dtype=torch.long, device=scores.device)
        scores[rows, cols] = -torch.inf
    if candidates is None:
        values, index = _stable_top_k(scores, min(k, m))
        return index.cpu().numpy().astype(np.int64), values.cpu().numpy().astype(np.float64)
    cand = np.asarray(candidates)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand, (n, cand.size))
    cand_t = torch.as_tensor(np.ascontiguousarray(cand), dtype=torch.long, device=scores.device)
    padding = cand_t < 0
    sub = torch.gather(scores, 1, torch.where(padding, torch.zeros_like(cand_t), cand_t))
    sub = sub.masked_fill(padding, -torch.inf)
    values, index = _stable_top_k(sub, min(k, sub.shape[1]))
    items = torch.gather(cand_t, 1, index)
    return items.cpu().numpy().astype(np.int64), values.cpu().numpy().astype(np.float64)
