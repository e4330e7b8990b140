"""The ``saeflow`` command: the stage tools a person runs by hand, outside the DAG.

    saeflow label --descriptions FILE --category NAME --question TEXT --out FILE [--n 300] [--seed 42]
                  [--serve [--port 8765]]
    saeflow disagreements MERGED_CSV [--port 8765]
    saeflow agreement --human H --model M --json OUT [--merged CSV]
    saeflow correct STUDY.yaml --method {naive,two-bucket,general} --json OUT
    saeflow classify --descriptions FILE --category NAME --out FILE (--pattern RE ... | --llm ... | --from FILE)
    saeflow import-neuronpedia FOLDER --source ID --out FILE

Bad input prints one line, ``saeflow: error: <file>: <field>: <problem>``, and exits 2
without writing anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from saeflow.core.errors import InputError, report_input_error
from saeflow.labels.correction import METHODS as CORRECTION_METHODS


def _label(args: argparse.Namespace) -> None:
    from saeflow.labels.labelling import label_interactively

    if args.serve:
        from saeflow.labels.serve import serve_labels

        serve_labels(args.out, args.descriptions, args.category, args.question, args.n, args.seed,
                     8765 if args.port is None else args.port)
        return
    if args.port is not None:
        raise InputError("arguments", "--port", "only with --serve")
    label_interactively(args.out, args.descriptions, args.category, args.question, args.n, args.seed)


def _disagreements(args: argparse.Namespace) -> None:
    from saeflow.labels.serve import serve_disagreements

    serve_disagreements(args.merged, args.port)


def _agreement(args: argparse.Namespace) -> None:
    from saeflow.labels.agreement import agreement, write_merged_csv
    from saeflow.core.io import write_json

    metrics, merged = agreement(args.human, args.model, args.n_boot, args.seed)
    if args.merged:
        write_merged_csv(args.merged, merged)
    write_json(args.json, metrics, {"n_boot": args.n_boot, "seed": args.seed})
    print(f"n={metrics['n']} accuracy={metrics['accuracy']:.3f} kappa={metrics['kappa']}")


def _correct(args: argparse.Namespace) -> None:
    from saeflow.labels.correction import correct
    from saeflow.core.io import write_json
    from saeflow.labels.study import load_study

    result = correct(load_study(args.study), args.method, args.n_boot, args.seed)
    write_json(args.json, result, {"method": args.method, "n_boot": args.n_boot, "seed": args.seed})
    for name, cat in result["categories"].items():
        print(f"{name}: naive={cat['lpf_naive']:.4g} corrected={cat['lpf_corrected']:.4g} "
              f"ci95={cat['ci95']} {' '.join(cat['flags'])}")
    for key, ratio in result["ratios"].items():
        ci = "unbounded (Fieller)" if ratio["ci95_unbounded"] else ratio["ci95"]
        print(f"{key}: corrected={ratio['corrected']} ci95={ci}")


def _classify(args: argparse.Namespace) -> None:
    from saeflow.labels.classify import classify
    from saeflow.formats.descriptions import read_descriptions
    from saeflow.core.io import write_json

    if args.from_file:
        backend = {"backend": "file", "path": args.from_file}
    elif args.base_url:
        backend = {"backend": "llm", "question": args.question,
                   "llm": {k: v for k, v in {
                       "base_url": args.base_url, "model": args.model,
                       "api_key_env": args.api_key_env, "cache_dir": args.cache_dir,
                       "concurrency": args.concurrency}.items() if v is not None}}
    else:
        backend = {"backend": "keyword", "patterns": args.pattern or []}
    payload = classify(read_descriptions(args.descriptions), args.category, backend, "arguments")
    write_json(args.out, payload, backend)
    print(f"{args.category}: {payload['counts']}")


def _import_neuronpedia(args: argparse.Namespace) -> None:
    from saeflow.formats.neuronpedia import import_neuronpedia
    from saeflow.core.io import write_json

    records, stats = import_neuronpedia(args.folder, args.source, args.model_id,
                                        args.explanation_model)
    write_json(args.out, {"source": args.source, "n_features": len(records), **stats,
                          "records": records},
               {"folder": args.folder, "source": args.source, "model_id": args.model_id,
                "explanation_model": args.explanation_model})
    print(f"{len(records)} descriptions ({stats})")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a sample size, a bootstrap count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0..65535): {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saeflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", help="label a random sample of features by hand")
    p.add_argument("--descriptions", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=positive_int, default=300)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--serve", action="store_true",
                   help="label in a browser: a local page on 127.0.0.1 (URL printed, with a token)")
    p.add_argument("--port", type=port_number, help="--serve: the port (default 8765; 0: any free)")
    p.set_defaults(func=_label)

    p = sub.add_parser("disagreements", help="page listing human/classifier disagreements")
    p.add_argument("merged", help="the merged CSV of saeflow agreement --merged")
    p.add_argument("--port", type=port_number, default=8765, help="default 8765; 0: any free")
    p.set_defaults(func=_disagreements)

    p = sub.add_parser("agreement", help="classifier vs human labels")
    p.add_argument("--human", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--merged")
    p.add_argument("--n-boot", type=positive_int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_agreement)

    p = sub.add_parser("correct", help="correct loss per feature for classifier noise")
    p.add_argument("study")
    p.add_argument("--method", choices=CORRECTION_METHODS, default="two-bucket")
    p.add_argument("--json", required=True)
    p.add_argument("--n-boot", type=positive_int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_correct)

    p = sub.add_parser("classify", help="sort descriptions into one category")
    p.add_argument("--descriptions", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pattern", action="append", help="keyword backend: a regex (repeatable)")
    p.add_argument("--question", help="llm backend: the question asked per feature")
    p.add_argument("--base-url", help="llm backend: OpenAI-compatible endpoint, e.g. http://host/v1")
    p.add_argument("--model")
    p.add_argument("--api-key-env", help="name of the environment variable holding the key")
    p.add_argument("--cache-dir", help="llm backend: reply cache (default: the schema's)")
    p.add_argument("--concurrency", type=positive_int, help="llm backend: requests at once")
    p.add_argument("--from", dest="from_file", help="file backend: import this classification")
    p.set_defaults(func=_classify)

    p = sub.add_parser("import-neuronpedia", help="normalise Neuronpedia explanation exports")
    p.add_argument("folder")
    p.add_argument("--source", required=True, help="source id, e.g. 12-gemmascope-res-65k")
    p.add_argument("--model-id")
    p.add_argument("--explanation-model")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_import_neuronpedia)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from saeflow.labels.labelling import Interrupted

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as err:
        return report_input_error(err)
    except Interrupted as stop:
        print(f"saeflow: {stop}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
