"""`python tests/plugins/run_bench.py ARGS` = `bench ARGS` with the faulty test models registered."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faulty_models  # noqa: E402,F401

from bench.cli import main  # noqa: E402

if __name__ == "__main__":  # cell processes re-import this file (multiprocessing's rule for scripts)
    sys.exit(main(sys.argv[1:]))
