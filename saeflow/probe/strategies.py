"""Probe dataset strategies: named recipes that turn activation/code files into (X, y) tables.

Inputs follow ``docs/outputs.md``: the activation file (``acts/{hook}`` ``[n, P, d_model]``,
``positions`` ``[n, P]``, ``meta/{column}``, root attributes ``hooks`` and ``position_names``)
and the SAE-code file (CSR ``codes/{hook}/{indptr,indices,values,row_valid}``, rows
``i * P + p``, group attribute ``d_sae``).

Strategies (``STRATEGIES``):

- ``embedding-to-feature``: X = embedding output (``hook_embed + hook_pos_embed`` when both are
  stored, else ``blocks.0.hook_resid_pre``); y = activation of SAE feature ``target.feature``
  of layer ``target.layer``.
- ``hidden-to-feature``: X = hidden state at the single layer L; y = feature ``target.feature``
  of layer L's SAE. That SAE encodes this very hidden state, so y is a deterministic function
  of X: ``target.function_of_input`` records it (feature strategies), with a warning.
- ``hidden-to-concept``: X = hidden states of the layers, concatenated; y = ``meta/<target.column>`` (default ``label``; classes sorted unless ``target.classes`` orders them).
- ``sae-to-concept`` / ``sae-to-failure``: X = SAE codes of the layers x positions,
  concatenated, as a CSR matrix (built from the CSR codes, never densified); y = the concept,
  or 1 where the model answered wrongly (``model_correct`` false).

Positions (default ``["final"]`` only, so no partial fragment leaks in) are names from the
file's ``position_names`` (one stored column for every prompt) or, for files extracted with
``positions: all`` (column = token index), per-prompt positions: ``final`` (the last real
token), a negative offset such as ``-2`` (``lengths - 2``) or a name ``x`` recorded as
``meta/pos_x`` (e.g. ``snippet_end``); see :func:`saeflow.probe.inputs.stored_columns`.
Feature strategies stack one row per (prompt, position) — the target is per position;
concept/failure strategies have one row per prompt and concatenate positions as column
blocks, dropping prompts where a requested position is absent.

``target.feature: auto`` picks the feature of the target layer's SAE that fires most often
in this code file (``stats/{hook}/firing_frequency``), a choice that never looks at probe
results; the chosen index and its frequency are recorded in ``target``.

The result is a :class:`saeflow.probe.dataset.ProbeDataset`, written in the format that module
describes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from saeflow.core.errors import InputError
from saeflow.core.layerspec import format_layer_spec, parse_layer_spec
from saeflow.probe.dataset import (COLUMN_FIELDS, FORMAT_VERSION, ProbeDataset, check_classes,
                                   check_dataset, write_probe_dataset)
from saeflow.formats.hdf5 import json_attr, open_h5, require
from saeflow.probe.inputs import (CodeReader, act_block, as_bool, embedding_block, layers_of,
                                  meta_column, stored_columns)

log = logging.getLogger(__name__)

STRATEGIES = ("embedding-to-feature", "hidden-to-feature", "hidden-to-concept",
              "sae-to-concept", "sae-to-failure")
HOOK_TEMPLATE = "blocks.{layer}.hook_resid_post"


@dataclass(frozen=True)
class BuildOptions:
    """How a dataset is built beyond its spec, and where it comes from: ``hook_template``
    (``probe.hook_template``); ``n_folds`` (``probe.cv.n_folds``: fewer samples of a class is
    an error here, before anything is written); ``key``, its config entry (e.g.
    ``probe.datasets[2]``), and ``prompts``, the prompt set's file (the labels' source), both
    named in errors about its classes."""

    hook_template: str = HOOK_TEMPLATE
    n_folds: int | None = None
    key: str | None = None
    prompts: str | None = None


def build_probe_dataset(spec: dict[str, Any], activations: str | Path,
                        codes: str | Path | None = None, *, model_correct: np.ndarray | None = None,
                        options: BuildOptions | None = None) -> ProbeDataset:
    """Build the dataset that ``spec`` (``name``, ``strategy``, ``layers``, ``positions``,
    ``target``) defines from an activation file and (for feature/SAE strategies) a code file.

    ``model_correct`` ``[n]`` overrides ``meta/model_correct`` for ``sae-to-failure``.
    """
    options = options or BuildOptions()
    hook_template = options.hook_template
    name = str(spec.get("name", "")) or "<unnamed>"
    strategy = spec.get("strategy")
    if strategy not in STRATEGIES:
        raise InputError(name, "strategy", f"unknown strategy {strategy!r}; choose from "
                         f"{list(STRATEGIES)}")
    positions = [str(p) for p in spec.get("positions") or ["final"]]
    target = dict(spec.get("target") or {})
    with open_h5(activations) as act:
        names = [str(p) for p in json_attr(act, "position_names", activations)]
        pos_cols = stored_columns(act, positions, activations, name)
        hooks = [str(h) for h in json_attr(act, "hooks", activations)]
        n = int(require(act, "positions", activations).shape[0])
        layer_hooks = layers_of(hooks, hook_template)
        code_file = open_h5(codes) if codes is not None else None
        try:
            if code_file is not None:
                code_names = [str(p) for p in json_attr(code_file, "position_names", codes)]
                if code_names != names:
                    raise InputError(codes, "position_names", f"{code_names} differ from the "
                                     f"activation file's {names}")
            ctx = _Ctx(name, strategy, act, code_file, activations, codes, names, n,
                       positions, layer_hooks, hook_template)
            if strategy.endswith("-to-feature"):
                ds = _feature_dataset(ctx, spec, pos_cols, target)
            else:
                ds = _label_dataset(ctx, spec, pos_cols, target, model_correct)
        finally:
            if code_file is not None:
                code_file.close()
    ds.meta.update(format_version=FORMAT_VERSION, name=name, strategy=strategy,
                   positions=positions, prompt_set=Path(activations).stem,
                   group=str(spec.get("group", name)),
                   sources={"activations": str(activations),
                            "codes": str(codes) if codes else None})
    if ds.target_kind == "label":
        check_classes(ds, options.n_folds, *_label_source(ds, activations, options,
                                                          model_correct is not None))
    check_dataset(ds, options.n_folds)
    log.info("%s: %d samples x %d inputs (%s)", name, ds.X.shape[0], ds.X.shape[1], strategy)
    return ds


def _label_source(ds: ProbeDataset, activations: str | Path, options: BuildOptions,
                  given: bool) -> tuple[tuple[str, str], str]:
    """The (file, field) a label dataset's classes come from, and the dataset's config key:
    the prompt file's column (``target.column``) when the prompt file is known, else the
    activation file's ``meta/<column>``; a failure target's ``model_correct`` (the
    activation file's, or the one ``given``)."""
    key = options.key or "probe.datasets[]"
    if ds.meta["strategy"] == "sae-to-failure":
        source = ("model_correct", "values") if given else (str(activations),
                                                             "meta/model_correct")
        return source, f"dataset {ds.name!r} ({key}, strategy sae-to-failure)"
    column = str(ds.meta["target"]["column"])
    source = (options.prompts, column) if options.prompts else (str(activations),
                                                                f"meta/{column}")
    return source, f"dataset {ds.name!r} ({key}.target.column = {column!r})"


@dataclass
class _Ctx:
    """The open inputs a strategy builder reads from (internal)."""

    name: str
    strategy: str
    act: h5py.File
    codes: h5py.File | None
    act_path: str | Path
    codes_path: str | Path | None
    names: list[str]  # stored position names
    n: int
    positions: list[str]  # requested positions
    layer_hooks: dict[int, str]
    hook_template: str

    def code_reader(self, hook: str) -> CodeReader:
        if self.codes is None or self.codes_path is None:
            raise InputError(self.name, "codes", f"strategy {self.strategy} needs a code file")
        return CodeReader(self.codes, hook, self.n, len(self.names), self.codes_path)

    def layers(self, spec: Any) -> list[int]:
        return parse_layer_spec(spec, available=self.layer_hooks, source=self.name,
                                field="layers")


def _feature_dataset(ctx: _Ctx, spec: dict[str, Any], pos_cols: list[np.ndarray],
                     target: dict[str, Any]) -> ProbeDataset:
    """Rows are (prompt, position) pairs valid in both files; y = one SAE feature.
    ``pos_cols``: per requested position, the stored column per prompt ``[n]`` (-1 absent)."""
    if "feature" not in target:
        raise InputError(ctx.name, "target.feature", "feature strategies need target.feature")
    auto = str(target["feature"]) == "auto"
    feature = -1 if auto else _int_field(target["feature"], ctx.name, "target.feature")
    if ctx.strategy == "hidden-to-feature":
        layers = ctx.layers(spec.get("layers", ""))
        if len(layers) != 1:
            raise InputError(ctx.name, "layers", f"spec {spec.get('layers')!r}: hidden-to-feature "
                             "takes exactly one layer")
        layer = layers[0]
        if "layer" in target and _int_field(target["layer"], ctx.name, "target.layer") != layer:
            raise InputError(ctx.name, "target.layer", f"{target['layer']} differs from layers "
                             f"{spec.get('layers')!r}; the feature is from that layer's SAE")
    else:
        if "layer" not in target:
            raise InputError(ctx.name, "target.layer", "embedding-to-feature needs target.layer")
        layer = parse_layer_spec(target["layer"], available=ctx.layer_hooks, source=ctx.name,
                                 field="target.layer")[0]
        layers = []
    target_hook = ctx.layer_hooks[layer]
    reader = ctx.code_reader(target_hook)
    target_meta: dict[str, Any] = {"layer": layer, "feature": feature, "hook": target_hook}
    if auto:
        assert ctx.codes is not None  # code_reader succeeded
        feature, freq = reader.most_frequent_feature(ctx.codes)
        target_meta.update(feature=feature, feature_rule="auto: most frequent feature "
                           f"(stats/{target_hook}/firing_frequency of this code file)",
                           firing_frequency=freq)
        log.info("%s: feature auto -> %d (firing frequency %.3f)", ctx.name, feature, freq)
    xs, ys, idx, rowpos, input_hook = [], [], [], [], ""
    for j, cols in enumerate(pos_cols):
        if ctx.strategy == "hidden-to-feature":
            x, input_hook = act_block(ctx.act, target_hook, cols, ctx.act_path), target_hook
        else:
            x, input_hook = embedding_block(ctx.act, cols, ctx.act_path)
        y, valid = reader.feature(cols, feature, "target.feature")
        keep = valid & (cols >= 0)
        xs.append(x[keep])
        ys.append(y[keep])
        idx.append(np.flatnonzero(keep))
        rowpos.append(np.full(int(keep.sum()), j))
    X = np.concatenate(xs)
    d = X.shape[1]
    # the SAE encodes its own hook: y = ReLU(W x + b) of the probe's input x, so R² measures
    # how linear that function is, not what the hidden state "knows"
    target_meta["function_of_input"] = input_hook == target_hook
    if target_meta["function_of_input"]:
        target_meta["function_of_input_note"] = (
            f"the target is a deterministic function of the input: feature {feature} of the "
            f"SAE on {target_hook}, the probe's own input hook")
        log.warning("%s: %s (R² measures how linear the SAE encoder is there)", ctx.name,
                    target_meta["function_of_input_note"])
    columns = {"hook": np.zeros(d, np.int32), "layer": np.full(d, layers[0] if layers else -1,
                                                              np.int32),
               "position": np.full(d, -1, np.int32), "unit": np.arange(d, dtype=np.int32)}
    n_rows = ctx.n * len(pos_cols)
    meta = {"input_kind": "hidden" if layers else "embedding", "target_kind": "continuous",
            "target": target_meta,
            "class_names": [], "class_values": [], "layers": layers, "hooks": [input_hook],
            "input_dims": {f"{input_hook}@{p}": d for p in ctx.positions},
            "n_samples": int(X.shape[0]), "n_dropped": int(n_rows - X.shape[0]),
            "row_layout": "prompt_position"}
    return ProbeDataset(ctx.name, X, np.concatenate(ys), np.concatenate(idx).astype(np.int64),
                        np.concatenate(rowpos).astype(np.int32), columns, meta)


def _label_dataset(ctx: _Ctx, spec: dict[str, Any], pos_cols: list[np.ndarray],
                   target: dict[str, Any], model_correct: np.ndarray | None) -> ProbeDataset:
    """One row per prompt present at every requested position; columns = layer x position.
    ``pos_cols``: per requested position, the stored column per prompt ``[n]`` (-1 absent)."""
    layers = ctx.layers(spec.get("layers", ""))
    use_codes = ctx.strategy.startswith("sae-")
    keep = np.all([at >= 0 for at in pos_cols], axis=0)
    blocks, cols, dims = [], {f: [] for f in COLUMN_FIELDS}, {}
    hooks = [ctx.layer_hooks[layer] for layer in layers]
    for h, (layer, hook) in enumerate(zip(layers, hooks, strict=True)):
        reader = ctx.code_reader(hook) if use_codes else None
        for j, at in enumerate(pos_cols):
            if reader is not None:
                x, valid = reader.block(at)
                keep &= valid
            else:
                x = act_block(ctx.act, hook, at, ctx.act_path)
            blocks.append(x)
            d = x.shape[1]
            dims[f"{hook}@{ctx.positions[j]}"] = d
            for key, value in (("hook", h), ("layer", layer), ("position", j)):
                cols[key].append(np.full(d, value, np.int32))
            cols["unit"].append(np.arange(d, dtype=np.int32))
    y, class_names, class_values, target_meta = _label_target(ctx, target, model_correct)
    rows = np.flatnonzero(keep & (y >= 0))  # y = -1: a class not listed in target.classes
    # SAE codes stay CSR: dense, X would be prompts x d_sae x positions x layers floats
    X = sp.hstack([b[rows] for b in blocks], format="csr") if use_codes else \
        np.concatenate([b[rows] for b in blocks], axis=1)
    meta = {"input_kind": "sae" if use_codes else "hidden", "target_kind": "label",
            "target": target_meta, "class_names": class_names, "class_values": class_values,
            "layers": layers, "layer_spec": format_layer_spec(layers), "hooks": hooks,
            "input_dims": dims, "n_samples": int(rows.size), "n_dropped": int(ctx.n - rows.size),
            "row_layout": "prompt"}
    if rows.size < ctx.n:
        log.warning("%s: %d prompt(s) lack a requested position or class and are left out",
                    ctx.name, ctx.n - rows.size)
    columns = {k: np.concatenate(v) for k, v in cols.items()}
    # row_position -1: every row holds all requested positions, as column blocks
    return ProbeDataset(ctx.name, X, y[rows], rows.astype(np.int64),
                        np.full(rows.size, -1, np.int32), columns, meta)


def _label_target(ctx: _Ctx, target: dict[str, Any], model_correct: np.ndarray | None
                  ) -> tuple[np.ndarray, list[str], list[Any], dict[str, Any]]:
    """Per-prompt class index ``[n]``, class names/values and the target record."""
    if ctx.strategy == "sae-to-failure":
        if model_correct is None:
            model_correct = meta_column(ctx.act, target.get("column", "model_correct"),
                                         ctx.act_path)
        correct = as_bool(model_correct, ctx.name, "model_correct")
        if correct.shape != (ctx.n,):
            raise InputError(ctx.name, "model_correct", f"{correct.shape[0]} values for "
                             f"{ctx.n} prompts")
        # class 1 = answered wrongly: precision/recall then describe catching failures
        return ((~correct).astype(np.int64), ["correct", "wrong"], [True, False],
                {"column": "model_correct", "positive": "wrong"})
    column = str(target.get("column", "label"))
    raw = meta_column(ctx.act, column, ctx.act_path)
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise InputError(ctx.act_path, f"meta/{column}", "NaN in the concept labels")
    values = sorted({v.item() if hasattr(v, "item") else v for v in raw})
    wanted = target.get("classes")
    if wanted is not None:
        values = _match_classes(wanted, values, ctx.name, column)
    elif target.get("order") is not None:
        values = _ordered_classes(target["order"], values, ctx.name, column)
    lookup = {v: i for i, v in enumerate(values)}
    y = np.array([lookup.get(v.item() if hasattr(v, "item") else v, -1) for v in raw], np.int64)
    # class i is values[i]: sorted, or in the order target.classes lists; class_values in the
    # dataset file records the mapping
    return y, [str(v) for v in values], values, {"column": column}


def _match_classes(wanted: list[Any], values: list[Any], source: str, column: str
                   ) -> list[Any]:
    """The listed classes, cast to the column's type. Rows of other classes get y = -1 and
    are left out; a listed class with no row is an empty class (see :func:`check_dataset`)."""
    cast = type(values[0]) if values else str
    try:
        return [cast(w) for w in wanted]
    except (TypeError, ValueError):
        raise InputError(source, "target.classes", f"{wanted} do not match the type of "
                         f"meta/{column}") from None


def _ordered_classes(order: list[Any], values: list[Any], source: str, column: str
                     ) -> list[Any]:
    """The classes present, in the order ``target.order`` gives (a class vocabulary shared by
    prompt sets that need not each hold every class). A present value the order lacks is an
    error: dropping its rows, or a misspelt entry, would pass unseen."""
    listed = _match_classes(order, values, source, column)
    unlisted = [v for v in values if v not in listed]
    if unlisted:
        raise InputError(source, "target.order", f"meta/{column} holds {unlisted[:5]}, "
                         f"which the order {list(order)} does not list")
    present = set(values)
    return [v for v in listed if v in present]


def _int_field(value: Any, source: str, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)) or \
            not str(value).lstrip("-").isdigit() or int(value) < 0:
        raise InputError(source, field_name, f"{value!r} is not a non-negative integer")
    return int(value)


def make_probe_dataset_file(spec: dict[str, Any], activations: str | Path,
                            codes: str | Path | None, out: str | Path, *,
                            model_correct: np.ndarray | None = None,
                            options: BuildOptions | None = None,
                            config: dict[str, Any] | None = None) -> ProbeDataset:
    """Build and write one dataset; on any error nothing is written at ``out``."""
    ds = build_probe_dataset(spec, activations, codes, model_correct=model_correct,
                             options=options)
    write_probe_dataset(ds, out, config)
    return ds


def probe_data_stage(spec: dict[str, Any], activations: str | Path, codes: str | Path | None,
                     out: str | Path, *, model_correct: str | Path | None = None,
                     options: dict[str, Any] | None = None,
                     config: dict[str, Any] | None = None) -> ProbeDataset:
    """Rule ``probe_data``: :func:`make_probe_dataset_file` of one dataset ``spec``;
    ``codes`` None for strategies that read none; ``model_correct``: a ``.npy``/JSON file of
    per-prompt correctness (:func:`saeflow.probe.inputs.load_model_correct`), or None;
    ``options``: the fields of :class:`BuildOptions`."""
    from saeflow.probe.inputs import load_model_correct

    return make_probe_dataset_file(
        spec, activations, codes, out,
        model_correct=load_model_correct(model_correct) if model_correct else None,
        options=BuildOptions(**(options or {})), config=config)
