"""A tiny, randomly initialised causal LM for smoke tests and contract tests on CPU.

It is a real ``transformers`` Llama (2 layers, width 64) with the packaged
SmolLM2 tokenizer, so every code path of the LM plug-ins runs exactly as with a
real checkpoint, in seconds. It knows nothing until fine-tuned: use it to test
plumbing, never to report accuracy. Select it with
``model_name_or_path = "tiny-random"``. Built once and kept in ``~/.cache/bench``.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

TINY_RANDOM = "tiny-random"


CACHE = Path.home() / ".cache" / "bench"  # beside the dataset cache


@functools.lru_cache(maxsize=1)
def tiny_causal_lm(seed: int = 0) -> str:
    """Directory of the tiny LM, built once (parsing the GGUF tokenizer is slow) and kept in ~/.cache/bench."""
    import transformers

    folder = CACHE / f"tiny-random-llama-seed{seed}-transformers{transformers.__version__}"
    if (folder / "config.json").exists():
        return str(folder)
    built = Path(_build(seed))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        built.rename(folder)  # atomic: a concurrent builder's folder wins, ours is dropped
    except OSError:
        shutil.rmtree(built, ignore_errors=True)
        if not (folder / "config.json").exists():
            raise
    return str(folder)


def _build(seed: int) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm_models import runtime

    location, gguf_file = runtime.resolve_checkpoint(runtime.DEFAULT_LM, "tiny-random")
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)  # the tokenizer only, not the weights
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(state)
    CACHE.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".tiny-random-", dir=CACHE))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
