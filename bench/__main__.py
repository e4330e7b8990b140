"""``python -m bench [NAME ...] [--smoke] [--out DIR] [--device cuda]``: run benchmarks, write
one JSON each under ``DIR`` (default ``results/bench``) and print a table of every figure;
``python -m bench.report`` puts the figures in README."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    from bench import BENCHMARKS
    from bench.common import DEFAULT_OUT, table, write_result

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny, quick mode: checks the code "
                        "path and the JSON, not performance")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine a pool of "
                        "more threads than free cores stalls at every barrier)")
    parser.add_argument("--device", default="cpu", help="where the models run: cpu (default) "
                        "or cuda (times then wait for the device; the scale benchmark also "
                        "records peak GPU memory)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    import torch

    from bench import common

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    common.DEVICE = args.device
    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="sae_lens")
    records = []
    for name in args.names or BENCHMARKS:
        load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        print(f"[bench] {name}{' (smoke)' if args.smoke else ''} ...", file=sys.stderr, flush=True)
        result = importlib.import_module(f"bench.{name}").run(smoke=args.smoke)
        path = write_result(result, args.out, args.smoke, time.perf_counter() - t0, load)
        records.append(json.loads(path.read_text()))
        print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s -> {path}", file=sys.stderr,
              flush=True)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
