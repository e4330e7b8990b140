"""The workflow's config, checked while Snakemake builds the DAG: one line naming the user's
file and the key, before any job starts.

Imports nothing heavy (the Snakefile is parsed on every invocation). The schema
(workflow/schemas/config.schema.yaml) is the one home of defaults and types; this module adds
what a schema cannot say: a key given twice, prompt files that must exist, prompt-set names
given twice, hooks and layer specs beyond the model's layers, stage sections a run needs, and
(saeflow.core.config_checks) checks across keys: YAML's non-string keys, the experiment as one
safe folder name, SAE hooks among the extracted ones, the probe stage's sets, names and layers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from saeflow.core.config_checks import (
    check_autointerp,
    check_dashboards,
    check_experiment,
    check_key_types,
    check_model_source,
    check_probe,
    check_prompt_set_names,
    check_sae_hooks_extracted,
    check_sae_training,
    check_toy_prompt_sets,
    strict_integers,
    type_hint,
)
from saeflow.core.errors import InputError, report_input_error
from saeflow.core.hooks import PER_HEAD, block_of, forward_rank

# Blocks of the pretrained models a shipped config names (TransformerLens's registry needs
# transformer_lens imported, too slow for every parse): hooks and layer specs of these models
# are checked before any job runs; other models are checked when their rule loads them.
KNOWN_N_LAYERS = {
    "gpt2": 12, "gpt2-small": 12, "gpt2-medium": 24,
    "gemma-2-2b": 26, "gemma-2-2b-it": 26, "gemma-2-9b": 42, "gemma-2-9b-it": 42,
    "meta-llama/Llama-3.2-1B": 16, "meta-llama/Llama-3.2-1B-Instruct": 16,
}


def config_source(configfiles: Sequence[str | Path], default: str) -> str:
    """How error messages name the config: the --configfile files, else the default."""
    names = [_relative(p) for p in configfiles] or [default]
    return " + ".join(names)


def _relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def fail(err: InputError) -> NoReturn:
    """Stop the Snakemake invocation with the error's one line and exit status 2."""
    sys.exit(report_input_error(err))


def check_files(paths: Iterable[str | Path], config: Mapping[str, Any]) -> None:
    """Every config file parses on the checked path (a key given twice is an error: PyYAML,
    which Snakemake uses, lets the second silently win), and no file's empty mapping was
    swallowed by the merge (Snakemake merges ``{}`` into an earlier file's value as nothing)."""
    from saeflow.core.io import read_yaml

    for path in paths:
        name = _relative(path)
        _check_empty_kept(read_yaml(name), config, name, [])


def _check_empty_kept(raw: Any, merged: Any, source: str, where: list[Any]) -> None:
    if not isinstance(raw, Mapping):
        return
    for key, value in raw.items():
        final = merged.get(key) if isinstance(merged, Mapping) else None
        if value == {} and final not in ({}, None):
            raise InputError(source, _key_path([*where, key]), "an empty mapping does not "
                             "clear what an earlier config file sets (files merge key by key); "
                             "give the value you want")
        _check_empty_kept(value, final, source, [*where, key])


def _key_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def check_schema(config: Mapping[str, Any], schema_path: str | Path, source: str) -> None:
    """The schema's most relevant error, as one line: ``<files>: <key path>: <problem>``
    (snakemake's own validate prints the whole schema and names the rule file)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = strict_integers(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(config)))
    if error is None:
        return
    path = _key_path(error.absolute_path)
    message = error.message
    if error.validator == "type":
        message += type_hint(error.instance, error.validator_value)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if unknown:
            import difflib

            near = difflib.get_close_matches(unknown[0], list(error.schema["properties"]), n=1)
            path = _key_path([*error.absolute_path, unknown[0]])
            message = "unknown key" + (f"; did you mean {near[0]!r}?" if near else "")
    if len(message) > 200:
        message = message[:200] + "..."
    raise InputError(source, path, message)


def n_layers(model: Mapping[str, Any]) -> int | None:
    """The model's block count when known before any weight is loaded (a local checkpoint's
    from its config.json; before the checkpoint exists, its architecture's, if known)."""
    if model.get("source") == "toy":
        return int(model.get("n_layers", 2))
    if model.get("source") == "local" and Path(model["path"]).exists():
        from saeflow.core.local_files import checkpoint_dims, read_checkpoint_config

        return checkpoint_dims(read_checkpoint_config(model["path"], "config")).get("n_layers")
    return KNOWN_N_LAYERS.get(str(model.get("name")))


def check_hooks(hooks: Iterable[str], layers: int | None, source: str, field: str) -> None:
    """Hooks ``blocks.<l>.…`` need ``l`` below the model's layer count (when it is known)."""
    if layers is None:
        return
    for hook in hooks:
        block = block_of(str(hook))
        if block is not None and block >= layers:
            raise InputError(source, field, f"hook {hook!r} is beyond the model's {layers} "
                             f"layers (blocks.0 to blocks.{layers - 1})")


def check_transcoders(sae: Mapping[str, Any], source: str) -> None:
    """Each transcoder is a site of ``sae.hooks`` reading one vector per position and writing
    a later hook of its own block, which no other site reads or writes (two splices cannot
    rebuild one activation), with no site in between (it would feed the transcoder's output
    but be ordered after it)."""
    hooks, written = list(sae["hooks"]), {}
    for hook_in, hook_out in (sae.get("transcoders") or {}).items():
        field = f"sae.transcoders.{hook_in}"
        if hook_in not in hooks:
            raise InputError(source, field, f"{hook_in!r} is not a site of sae.hooks")
        if PER_HEAD.match(hook_in):
            raise InputError(source, field, f"{hook_in!r} has one vector per head: a "
                             "transcoder reads one vector per position")
        block_in = block_of(hook_in)
        if block_in is None or block_of(str(hook_out)) != block_in \
                or forward_rank(hook_out) <= forward_rank(hook_in):
            raise InputError(source, field, f"output hook {hook_out!r} is not a later hook of "
                             "the input's block (e.g. blocks.0.ln2.hook_normalized -> "
                             "blocks.0.hook_mlp_out)")
        if hook_out in hooks or hook_out in written:
            other = "a site of sae.hooks" if hook_out in hooks else f"written by {written[hook_out]}"
            raise InputError(source, field, f"{hook_out!r} is also {other}: two splices "
                             "cannot rebuild one activation")
        between = [h for h in hooks if forward_rank(hook_in) < forward_rank(h) < forward_rank(hook_out)]
        if between:
            raise InputError(source, field, f"site {between[0]!r} lies between the "
                             "transcoder's input and output hooks")
        written[hook_out] = hook_in


def check_prompt_sets(sets: Any, source: str) -> None:
    """A list of toy prompt sets without repeats; a study's sets are files (one that does not
    exist yet is :func:`saeflow.core.user_files.absent_inputs`'s)."""
    if isinstance(sets, list):
        repeated = sorted({s for s in sets if sets.count(s) > 1})
        if repeated:
            raise InputError(source, "extraction.prompt_sets", f"{repeated[0]!r} listed twice")
        return
    for name, path in sets.items():
        if Path(path).exists() and not Path(path).is_file():
            raise InputError(source, f"extraction.prompt_sets.{name}",
                             f"prompt file {path!r} is a folder")


def check_sharding(extraction: Mapping[str, Any], source: str, schema_path: str | Path) -> None:
    """Shards of whole batches (so a sharded run computes exactly the batches an unsharded
    one does), and only of prompt-set files: the toy's sets are made by a job, so their
    length is unknown when the DAG is planned."""
    size = extraction.get("shard_size")
    if not size:
        return
    if isinstance(extraction["prompt_sets"], list):
        raise InputError(source, "extraction.shard_size", "the toy world's prompt sets are "
                         "made by the DAG and are not sharded; name prompt-set files to shard")
    # before validation has filled in defaults: the schema's, read from it
    batch = extraction.get("batch_size") or schema_defaults("extraction", schema_path)["batch_size"]
    if size % batch:
        raise InputError(source, "extraction.shard_size", f"{size} is not a multiple of "
                         f"extraction.batch_size ({batch})")


def mark_stale_gathers(gathered: Mapping[str, Sequence[str]]) -> list[str]:
    """Gathered files (gathered file -> its shards) that exist while a shard does not, marked
    out of date: their mtime set to 0 (1970), older than any shard, so Snakemake reruns their
    gather, which rebuilds the missing shard first, and then every consumer. (Snakemake does
    not rebuild a deleted intermediate file whose consumers are up to date,
    snakemake/snakemake#1978, and a gathered file reads its shards in place.) Each is named
    on stderr; returns them."""
    import os

    stale = []
    for path, shards in gathered.items():
        missing = [s for s in shards if not Path(s).exists()]
        if missing and Path(path).exists():
            os.utime(path, (0, 0))
            print(f"saeflow: {path}: shard {missing[0]} is missing ({len(missing)} of "
                  f"{len(shards)}): marked out of date, so the shard is rebuilt and gathered "
                  "again", file=sys.stderr)
            stale.append(path)
    return stale


# Keys only the toy world reads: in a study of another model they would be ignored.
TOY_ONLY = ("world", "model.n_layers", "model.d_model", "model.n_heads", "model.train",
            "labels.membership_threshold", "patch.truth", "probe.toy_check")


def _has(config: Mapping[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def check_toy_only(config: Mapping[str, Any], source: str) -> None:
    """A toy-only key in a pretrained model's config is an error, not silently ignored
    (called before the schema fills in defaults, so only keys the user wrote count)."""
    if config.get("model", {}).get("source") == "toy":
        return
    for key in TOY_ONLY:
        if _has(config, key):
            raise InputError(source, key, "toy-world only: a pretrained model does not use it")
    if config.get("labels", {}).get("labeller") == "oracle":
        raise InputError(source, "labels.labeller", "oracle is toy-world only (it reads the "
                         "toy's truth): use human, with labels.human files")
    for name, category in (config.get("labels", {}).get("categories") or {}).items():
        if isinstance(category, Mapping) and "token_classes" in category:
            raise InputError(source, f"labels.categories.{name}.token_classes",
                             "toy-world only: a pretrained model does not use it")


def check_stages(config: Mapping[str, Any], source: str) -> None:
    """Each stage named in ``stages`` has its section."""
    for stage in config.get("stages", []):
        if stage not in config:
            raise InputError(source, "stages", f"{stage!r} is listed but the config has no "
                             f"{stage!r} section (config/README.md)")


def check_config(config: Mapping[str, Any], configfiles: Sequence[str | Path], default: str,
                 schema_path: str | Path) -> str:
    """Every parse-time check, in the order a user would fix them; returns the source name.
    Bad config ends the invocation with one line and exit status 2."""
    source = config_source(configfiles, default)
    try:
        check_files(configfiles or [default], config)
        check_key_types(config, source)
        check_experiment(config.get("experiment"), source)
        check_schema(config, schema_path, source)
        check_toy_only(config, source)
        check_stages(config, source)
        check_model_source(config["model"], source)
        toy = config["model"]["source"] == "toy"
        check_sae_training(config["sae"], toy, source)
        check_toy_prompt_sets(config["extraction"]["prompt_sets"], toy, source)
        check_prompt_sets(config["extraction"]["prompt_sets"], source)
        check_prompt_set_names(config["extraction"]["prompt_sets"], source)
        check_sharding(config["extraction"], source, schema_path)
        layers = n_layers(config["model"])
        check_hooks(config["extraction"]["hooks"], layers, source, "extraction.hooks")
        check_hooks(config["sae"]["hooks"], layers, source, "sae.hooks")
        check_transcoders(config["sae"], source)
        check_sae_hooks_extracted(config["sae"], config["extraction"], source)
        probe = {**schema_defaults("probe", schema_path), **config.get("probe", {})}
        check_probe(probe, config, layers, source)
        check_dashboards(config.get("dashboards", {}), config, source)
        check_autointerp(config, source)
    except InputError as err:
        fail(err)
    return source


def shard_counts(extraction: Mapping[str, Any], source: str) -> dict[str, int]:
    """Prompt set -> number of shards, for the prompt-set files longer than
    extraction.shard_size (their length is known before any job runs; the toy's are not
    sharded). Counted as every reader counts records (.jsonl.gz decompressed); an unreadable
    file ends the invocation with one line."""
    from saeflow.core.prompts import count_records

    size, sets = extraction.get("shard_size"), extraction["prompt_sets"]
    if not size or not isinstance(sets, Mapping):
        return {}
    counts = {}
    for name, path in sets.items():
        if not Path(path).exists():  # absent_inputs: a run stops before it would be read
            continue
        try:
            n = count_records(path)
        except InputError as err:
            fail(InputError(err.source, err.field, f"{err.problem} (extraction.prompt_sets."
                            f"{name} in {source})"))
        if n > size:
            counts[name] = -(-n // size)
    return counts


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _defaults_of(node: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults an object schema ``node`` gives its properties, nested objects filled in
    the way validation fills them (an object property with a default gets its own defaults)."""
    import copy

    out: dict[str, Any] = {}
    for key, prop in node.get("properties", {}).items():
        if "default" not in prop:
            continue
        value = copy.deepcopy(prop["default"])
        if isinstance(value, dict) and "properties" in prop:
            value = {**_defaults_of(prop), **value}
        out[key] = value
    return out


def schema_defaults(section: str, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The defaults of one config section, read from the schema (their one home): ``section``
    is a dotted key path such as ``"patch"`` or ``"probe.cv"`` (``""``: the top level); keys
    without a default (e.g. ``patch.pairs``) are absent. For callers with no validated config
    (tests, benchmarks, the CLI)."""
    import yaml

    node = yaml.safe_load(Path(schema_path).read_text())
    for part in section.split(".") if section else []:
        try:  # "<name>": any key of a mapping (its additionalProperties schema)
            node = node["additionalProperties"] if part == "<name>" else node["properties"][part]
        except KeyError:
            raise KeyError(f"{schema_path}: no config section {section!r}") from None
    return _defaults_of(node)


def strict_fields(cls: type, raw: Mapping[str, Any] | None, section: str,
                  source: str = "config", defaults: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """``raw`` (a config section) as keyword arguments of the dataclass ``cls``: a key that is
    not a field, or a field with neither a value nor a default in ``defaults``, is one
    InputError naming ``section.key``. The schema is the one home of defaults, so a validated
    section holds every field; ``defaults`` serves a section read over the schema's defaults."""
    from dataclasses import fields

    known = [f.name for f in fields(cls)]
    values = {**dict(defaults or {}), **dict(raw or {})}
    prefix = f"{section}." if section else ""
    for key in values:
        if key not in known:
            raise InputError(source, f"{prefix}{key}", f"unknown key; known: {sorted(known)}")
    for key in known:
        if key not in values:
            raise InputError(source, f"{prefix}{key}", "missing (the schema gives its default "
                             "once the config is validated)")
    return values
