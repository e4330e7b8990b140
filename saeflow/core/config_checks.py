"""Checks of the config across keys, run by :func:`saeflow.core.config.check_config` while
Snakemake builds the DAG (one line naming the user's file and the key path, exit 2): YAML's
non-string keys, the experiment name as a results folder, the toy's prompt-set names, SAE hooks
among the extracted hooks, the probe stage's prompt sets, dataset names and layers, a local
model's checkpoint folder and architecture, and SAE training's corpus and options.

Runs before the schema fills in defaults: a key the user left out reads its schema default.
Imports nothing heavy (the Snakefile is parsed on every invocation).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError

# The toy world's prompt sets (outputs of rule toy_world), in the order it writes them.
TOY_PROMPT_SETS = ("train", "heldout_seen", "heldout_unseen", "pairs")
# One path component: no separator, not "." or "..", not hidden, not an option (-x).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Longest path a run writes below results/{experiment}/, beyond the names in the config
# (logs/extract/extract_shard/{prompt_set}/{shard}.log and the like, with a margin).
_DEEPEST_OUTPUT = 120
_YAML_WORDS = "an unquoted no, yes, on, off, true, false (a boolean) or null"


def check_key_types(node: Any, source: str, where: str = "") -> None:
    """Every mapping key is a string: YAML reads an unquoted ``no`` as False, ``1`` as 1."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str):
                field = where or "<root>"
                raise InputError(source, field, f"key {key!r} is not a name: YAML reads "
                                 f"{_YAML_WORDS} or a number as such; quote it (e.g. 'no')")
            check_key_types(value, source, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_key_types(value, source, f"{where}[{i}]")


def check_experiment(name: Any, source: str, root: str | Path = ".") -> None:
    """``experiment`` names one folder, results/{experiment}/: a single safe path component
    (never ``..``, a separator or a hidden name), within the file system's NAME_MAX, and the
    results paths beneath it within PATH_MAX."""
    if not isinstance(name, str):
        return  # the schema says what type it wants
    if not _SAFE_NAME.fullmatch(name):
        raise InputError(source, "experiment", f"{name!r} is not a folder name: letters, digits, "
                         "_ . - only, not starting with . or - (outputs go to "
                         "results/{experiment}/, never elsewhere)")
    name_max, path_max = _limits(root)
    if len(name.encode()) > name_max:
        raise InputError(source, "experiment", f"{len(name.encode())} bytes long, beyond the "
                         f"file system's limit of {name_max} for one name")
    folder = Path(os.path.abspath(root)) / "results" / name
    if len(str(folder).encode()) + _DEEPEST_OUTPUT > path_max:
        raise InputError(source, "experiment", f"results path {folder} is "
                         f"{len(str(folder).encode())} bytes: with the files under it, beyond "
                         f"the file system's limit of {path_max} for a path")


def check_prompt_set_names(sets: Any, source: str, root: str | Path = ".") -> None:
    """Each prompt-set name fits in a file name as outputs use it ({name}.shards/...)."""
    name_max = _limits(root)[0]
    for name in sets if isinstance(sets, (list, Mapping)) else []:
        if isinstance(name, str) and len(f"{name}.shards".encode()) > name_max:
            raise InputError(source, f"extraction.prompt_sets.{name[:40]}...", f"a name of "
                             f"{len(name.encode())} bytes: outputs named after it "
                             f"({{name}}.shards) would pass the file system's limit of "
                             f"{name_max} for one name")


def _limits(root: str | Path) -> tuple[int, int]:
    try:
        return os.pathconf(root, "PC_NAME_MAX"), os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def check_toy_prompt_sets(sets: Any, toy: bool, source: str) -> None:
    """A list of prompt-set names is the toy world's own sets: a toy model, known names."""
    if not isinstance(sets, list):
        return
    if not toy:
        raise InputError(source, "extraction.prompt_sets", "names without files are the toy "
                         "world's sets: a pretrained model needs name -> JSONL path "
                         "(e.g. {mine: data/prompts.jsonl})")
    unknown = [s for s in sets if s not in TOY_PROMPT_SETS]
    if unknown:
        raise InputError(source, "extraction.prompt_sets", f"{unknown[0]!r} is not a toy "
                         f"prompt set (they are {', '.join(TOY_PROMPT_SETS)})")


def check_sae_hooks_extracted(sae: Mapping[str, Any], extraction: Mapping[str, Any],
                              source: str) -> None:
    """Encoding reads each SAE hook's stored activations: every sae.hooks entry is among
    extraction.hooks (checked now, not after the activations are written). A transcoder's
    output hook need not be: the SAE metrics, ablations and patching run the model for it."""
    extracted = list(extraction["hooks"])
    for i, hook in enumerate(sae["hooks"]):
        if hook not in extracted:
            raise InputError(source, f"sae.hooks[{i}]", f"{hook!r} is not among "
                             f"extraction.hooks {extracted}: encoding reads each SAE hook's "
                             "stored activations; add it there")


def probe_datasets(probe: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """``probe.datasets`` expanded per layer (as the probe rules see them), each with ``index``:
    its entry's index in the config; a name given twice (after expansion) is an error."""
    from saeflow.core.layerspec import parse_layer_spec

    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(probe.get("datasets") or []):
        names = [entry["name"]]
        if entry.get("per_layer"):
            layers = parse_layer_spec(entry.get("layers", ""), source=source,
                                      field=f"probe.datasets[{i}].layers")
            names = [f"{entry['name']}_L{layer}" for layer in layers]
        for name in names:
            if name in seen:
                raise InputError(source, f"probe.datasets[{i}].name", f"dataset {name!r} is also "
                                 f"probe.datasets[{seen[name]}]'s: names must differ (per_layer "
                                 "adds _L<layer>)")
            seen[name] = i
        out.append({**entry, "index": i})
    return out


def check_probe(probe: Mapping[str, Any], config: Mapping[str, Any], layers: int | None,
                source: str) -> None:
    """The probe section (with its schema defaults): dataset names differ, and, when the stage
    runs, it has datasets, their prompt sets are extracted and their layers are stored hooks
    of the model (through ``probe.hook_template``), with an SAE where the strategy reads codes."""
    datasets = probe_datasets(probe, source)
    if "probe" not in config.get("stages", []):
        return  # a config merged over config.yaml inherits the toy's probe section
    if not datasets:
        raise InputError(source, "probe.datasets", "'probe' is in stages but no dataset is "
                         "defined")
    sets = config["extraction"]["prompt_sets"]
    extracted = list(sets) if isinstance(sets, (list, Mapping)) else []
    for dataset in datasets:
        i = dataset["index"]
        own = "prompt_sets" in dataset
        for name in dataset.get("prompt_sets", probe["prompt_sets"]):
            if name not in extracted:
                field = f"probe.datasets[{i}].prompt_sets" if own else "probe.prompt_sets"
                raise InputError(source, field, f"{name!r} is not among extraction.prompt_sets "
                                 f"{extracted}")
        _check_probe_layers(dataset, probe["hook_template"], config, layers, source)


def _check_probe_layers(dataset: Mapping[str, Any], template: str, config: Mapping[str, Any],
                        layers: int | None, source: str) -> None:
    from saeflow.core.layerspec import parse_layer_spec

    i, strategy = dataset["index"], dataset["strategy"]
    specs = [("layers", dataset["layers"])] if "layers" in dataset else []
    target = dataset.get("target") or {}
    if isinstance(target, Mapping) and "layer" in target:
        specs.append(("target.layer", target["layer"]))
    for key, spec in specs:
        field = f"probe.datasets[{i}].{key}"
        parsed = parse_layer_spec(spec, source=source, field=field)
        if layers is not None and parsed and max(parsed) >= layers:
            raise InputError(source, field, f"spec {spec!r} names layer {max(parsed)}, beyond "
                             f"the model's {layers} layers (0 to {layers - 1})")
        for layer in parsed:
            hook = template.replace("{layer}", str(layer))
            if hook not in config["extraction"]["hooks"]:
                raise InputError(source, field, f"spec {spec!r} names layer {layer}, whose hook "
                                 f"{hook!r} (probe.hook_template) is not among extraction.hooks")
            reads_codes = key == "target.layer" or strategy.startswith("sae-") or \
                strategy == "hidden-to-feature"
            if reads_codes and hook not in config["sae"]["hooks"]:
                raise InputError(source, field, f"spec {spec!r} names layer {layer}, whose hook "
                                 f"{hook!r} has no SAE (sae.hooks): {strategy} reads its codes")


def strict_integers(validator_class: Any) -> Any:
    """``validator_class`` whose ``integer`` is a Python int only: JSON Schema counts 8.0 as an
    integer, which later fails as a shard count or a range step."""
    def is_integer(checker: Any, instance: Any) -> bool:
        return isinstance(instance, int) and not isinstance(instance, bool)

    import jsonschema

    checker = validator_class.TYPE_CHECKER.redefine("integer", is_integer)
    return jsonschema.validators.extend(validator_class, type_checker=checker)


def type_hint(instance: Any, expected: Sequence[str] | str) -> str:
    """What the user most likely meant by a value of the wrong type: a YAML boolean where a
    string was meant (an unquoted ``no``), or a whole float where an integer was (``8.0``)."""
    wants = [expected] if isinstance(expected, str) else list(expected)
    if isinstance(instance, bool) and "string" in wants:
        return f" (YAML reads {_YAML_WORDS} as such: quote it, e.g. 'no')"
    if isinstance(instance, float) and instance.is_integer() and "integer" in wants:
        return f" (write {int(instance)})"
    return ""


def check_dashboards(dashboards: Mapping[str, Any], config: Mapping[str, Any], source: str) -> None:
    """The dashboards section: its prompt set is extracted and its listed latents' hooks are
    SAE hooks. (Whether the codes hold every token, :func:`check_dashboard_corpus`, is
    checked only when the DAG holds a dashboards job: the section is in every config.)"""
    prompt_set = dashboards.get("prompt_set")
    if prompt_set is not None and prompt_set not in config["extraction"]["prompt_sets"]:
        raise InputError(source, "dashboards.prompt_set", f"{prompt_set!r} is not among "
                         f"extraction.prompt_sets {list(config['extraction']['prompt_sets'])}")
    hooks = list(config["sae"]["hooks"])
    for hook in dashboards.get("latents") or {}:
        if hook not in hooks:
            raise InputError(source, f"dashboards.latents.{hook}", f"not an SAE hook {hooks}")


def check_autointerp(config: Mapping[str, Any], source: str) -> None:
    """``labels.describe.backend: autointerp`` reads each latent's contexts token by token
    from the codes of ``labels.prompt_set``: extraction must store every token."""
    labels = config.get("labels") or {}
    if (labels.get("describe") or {}).get("backend") != "autointerp":
        return
    if config["extraction"].get("positions") != "all":
        raise InputError(source, "extraction.positions", f"{config['extraction'].get('positions')!r}"
                         ": labels.describe.backend autointerp reads every token's code "
                         "(contexts around each latent's activations): set positions: all")


def check_model_source(model: Mapping[str, Any], source: str) -> None:
    """``model.source: local`` names a checkpoint folder (``model.path``: config, weights,
    tokenizer) and the TransformerLens architecture it instantiates (``model.name``, one
    TransformerLens knows); ``model.path`` belongs to local models only."""
    from saeflow.core.local_files import check_architecture, checkpoint_files

    if model.get("source") != "local":
        if "path" in model:
            raise InputError(source, "model.path", "only for model.source: local (a checkpoint "
                             "folder of your own)")
        return
    if "path" not in model:
        raise InputError(source, "model.path", "required for model.source: local: the Hugging "
                         "Face checkpoint folder (config.json, weights, tokenizer)")
    if "name" not in model:
        raise InputError(source, "model.name", "required for model.source: local: the "
                         "TransformerLens architecture the checkpoint instantiates (e.g. "
                         "meta-llama/Llama-3.2-1B)")
    if Path(model["path"]).exists():  # not yet: absent_inputs (a run stops, a dry run plans)
        checkpoint_files(model["path"], source)
    check_architecture(model["name"], source)


def check_sae_training(sae: Mapping[str, Any], toy: bool, source: str) -> None:
    """``sae.source: train`` outside the toy world has a corpus that exists and is not empty;
    positions, packing, architecture and transcoders that fit together (before the schema
    fills in defaults: a key the user left out has its default)."""
    from saeflow.core.local_files import check_corpus, corpus_kind, is_absent_corpus_file

    training = sae.get("source") == "train"
    corpus = sae.get("corpus")
    if corpus is not None and not training:
        raise InputError(source, "sae.corpus", "only with sae.source: train (the corpus SAEs are "
                         "trained on)")
    if not training:
        return
    if corpus is None:
        if not toy:
            raise InputError(source, "sae.corpus", "required to train SAEs on this model: a JSONL "
                             "or text file, a datasets save_to_disk folder, or a dataset name in "
                             "the local Hugging Face cache")
    else:
        # a file not there yet is absent_inputs' (a run stops, a dry run plans): its kind is
        # what its name says
        kind = corpus_kind(corpus) if is_absent_corpus_file(corpus) else check_corpus(corpus, source)
        named = [p for p in _position_list(sae.get("positions", "all"))
                 if p != "final" and not _is_int(p)]
        if named and kind == "text":
            raise InputError(source, "sae.positions", f"named position {named[0]!r} needs "
                             f"pos_{named[0]} fields: a text-file corpus has none (give a JSONL "
                             "file or a dataset)")
    _check_sae_shape(sae, source)


def _check_sae_shape(sae: Mapping[str, Any], source: str) -> None:
    positions = sae.get("positions", "all")
    if sae.get("pack") and positions != "all":
        raise InputError(source, "sae.pack", "packs whole records; it trains on every token "
                         "(sae.positions: all), not on chosen positions")
    architecture = sae.get("architecture", "standard")
    if architecture in ("topk", "batchtopk") and "k" in sae and "d_sae" in sae \
            and sae["k"] > sae["d_sae"]:
        raise InputError(source, "sae.k", f"{sae['k']} active latents of sae.d_sae "
                         f"{sae['d_sae']}: k must not exceed d_sae")
    if sae.get("transcoders") and (architecture != "standard" or positions != "all"
                                   or sae.get("pack")):
        raise InputError(source, "sae.transcoders", "transcoders are trained by saeflow's own "
                         "loop (sae-lens has none): standard architecture, every token of each "
                         "record (sae.architecture: standard, sae.positions: all, no sae.pack)")


def _position_list(positions: Any) -> list[Any]:
    if positions == "all":
        return []
    return ["final"] if positions == "final" else list(positions or [])


def _is_int(entry: Any) -> bool:
    text = str(entry)
    return text.lstrip("-").isdigit() and text.count("-") <= 1


def check_dashboard_corpus(extraction: Mapping[str, Any], source: str) -> None:
    """Dashboards read every token's codes: extraction must store every position. Checked
    when the DAG holds a dashboards job (the section is in every config)."""
    if extraction["positions"] != "all":
        raise InputError(source, "extraction.positions", f"{extraction['positions']!r}: the "
                         "dashboards' contexts read the SAE codes of every token; set it to "
                         "all (the dashboards need no forward pass)")
