"""Probe datasets: named strategies that turn activation/code files into (X, y) tables.

Inputs follow ``docs/outputs.md``: the activation file (``acts/{hook}`` ``[n, P, d_model]``,
``positions`` ``[n, P]``, ``meta/{column}``, root attributes ``hooks`` and ``position_names``)
and the SAE-code file (CSR ``codes/{hook}/{indptr,indices,values,row_valid}``, rows
``i * P + p``, group attribute ``d_sae``).

Strategies (``STRATEGIES``):

- ``embedding-to-feature``: X = embedding output (``hook_embed + hook_pos_embed`` when both are
  stored, else ``blocks.0.hook_resid_pre``); y = activation of SAE feature ``target.feature``
  of layer ``target.layer``.
- ``hidden-to-feature``: X = hidden state at the single layer L; y = feature ``target.feature``
  of layer L's SAE.
- ``hidden-to-concept``: X = hidden states of the layers, concatenated; y = ``meta/label_id``.
- ``sae-to-concept`` / ``sae-to-failure``: X = SAE codes of the layers x positions,
  concatenated; y = the concept, or 1 where the model answered wrongly (``model_correct`` false).

Positions (default ``["final"]`` only, so no partial fragment leaks in) are names from the
file's ``position_names`` (one stored column for every prompt) or, for files extracted with
``positions: all`` (column = token index), per-prompt positions: ``final`` (the last real
token), a negative offset such as ``-2`` (``lengths - 2``) or a name ``x`` recorded as
``meta/pos_x`` (e.g. ``snippet_end``); see :func:`saeflow.probe_inputs.resolve_positions`.
Feature strategies stack one row per (prompt, position) — the target is per position;
concept/failure strategies have one row per prompt and concatenate positions as column
blocks, dropping prompts where a requested position is absent.

``target.feature: auto`` picks the feature of the target layer's SAE that fires most often
in this code file (``stats/{hook}/firing_frequency``), a choice that never looks at probe
results; the chosen index and its frequency are recorded in ``target``.

File format (HDF5, one file per dataset; chosen to match the other stages' files):

| dataset | shape | dtype | meaning |
|---|---|---|---|
| ``X`` | ``[n, d]`` | float32 (gzip) | inputs |
| ``y`` | ``[n]`` | int64 class index into ``class_names`` / float64 for feature targets |
| ``sample_index`` | ``[n]`` | int64 | prompt row in the source activation file |
| ``row_position`` | ``[n]`` | int32 | index into ``positions`` the row (target) was taken at;
  -1 for one-row-per-prompt strategies, whose positions are column blocks |
| ``columns/{hook,layer,position,unit}`` | ``[d]`` | int32 | per column: index into ``hooks``,
  layer (-1 = embedding), index into ``positions`` (-1 = the row's own position), hidden
  dimension or SAE feature index |

Root attributes: ``format_version``, ``name``, ``group`` (the per-layer family it came from,
see :func:`saeflow.layerspec.expand_per_layer`), ``prompt_set``, ``strategy``,
``input_kind`` (``embedding``, ``hidden``, ``sae``), ``target_kind`` (``label``/``continuous``),
``target`` (JSON: column, or layer/feature/hook), ``class_names``, ``class_values``,
``layers``, ``positions``, ``hooks`` (JSON lists), ``layer_spec``, ``input_dims`` (JSON
``{"hook@position": d}``), ``n_samples``, ``n_dropped`` (prompts/rows left out because a
position was absent or a class was not listed), ``row_layout`` (``prompt`` or
``prompt_position``), ``sources`` (JSON paths), ``provenance``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from saeflow.errors import InputError
from saeflow.io import atomic_path
from saeflow.layerspec import format_layer_spec, parse_layer_spec
from saeflow.probe_inputs import (CodeReader, act_block, as_bool, embedding_block, json_attr,
                                  layers_of, load_model_correct, meta_column, open_h5,
                                  resolve_positions)
from saeflow.provenance import provenance_json

__all__ = ["STRATEGIES", "ProbeDataset", "build_probe_dataset", "check_dataset",
           "load_model_correct", "make_probe_dataset_file", "read_probe_dataset",
           "write_probe_dataset"]

log = logging.getLogger(__name__)

STRATEGIES = ("embedding-to-feature", "hidden-to-feature", "hidden-to-concept",
              "sae-to-concept", "sae-to-failure")
FORMAT_VERSION = 1
HOOK_TEMPLATE = "blocks.{layer}.hook_resid_post"
COLUMN_FIELDS = ("hook", "layer", "position", "unit")


@dataclass
class ProbeDataset:
    """One probe table. ``X`` ``[n, d]``, ``y`` ``[n]``, ``columns[f]`` ``[d]``, ``meta`` attrs."""

    name: str
    X: np.ndarray
    y: np.ndarray
    sample_index: np.ndarray
    row_position: np.ndarray
    columns: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def target_kind(self) -> str:
        return str(self.meta["target_kind"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def positions(self) -> list[str]:
        return list(self.meta["positions"])

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])


# ---------------------------------------------------------------------------- validation


def check_dataset(ds: ProbeDataset, n_folds: int | None = None) -> None:
    """Raise ``InputError(ds.name, ...)`` on NaN/inf inputs, an empty or lone class, or fewer
    samples (per class for labels) than ``n_folds``. Called before writing and before fitting.
    """
    n = ds.X.shape[0]
    if ds.X.ndim != 2 or ds.y.shape != (n,) or ds.sample_index.shape != (n,):
        raise InputError(ds.name, "X", f"shape {ds.X.shape} does not match y {ds.y.shape}")
    if n == 0:
        raise InputError(ds.name, "X", "no samples")
    bad = ~np.isfinite(ds.X)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise InputError(ds.name, "X", f"{int(bad.sum())} NaN/inf value(s), first at prompt "
                         f"{int(ds.sample_index[rows[0]])}, column {int(cols[0])}")
    if not np.all(np.isfinite(ds.y.astype(np.float64))):
        raise InputError(ds.name, "y", "NaN/inf target value(s)")
    if ds.target_kind == "label":
        counts = np.bincount(ds.y.astype(np.int64), minlength=len(ds.class_names))
        empty = [ds.class_names[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise InputError(ds.name, "y", f"empty class(es) {empty}: no sample has them")
        if len(counts) < 2:
            raise InputError(ds.name, "y", "only one class: a probe needs two or more")
        if n_folds is not None and counts.min() < n_folds:
            c = int(np.argmin(counts))
            raise InputError(ds.name, "y", f"class {ds.class_names[c]!r} has {int(counts[c])} "
                             f"sample(s), fewer than the {n_folds} CV folds")
    elif n_folds is not None and len(np.unique(ds.sample_index)) < n_folds:
        raise InputError(ds.name, "y", f"{len(np.unique(ds.sample_index))} prompt(s), fewer "
                         f"than the {n_folds} CV folds")


# ---------------------------------------------------------------------------- building


def build_probe_dataset(spec: dict[str, Any], activations: str | Path,
                        codes: str | Path | None = None, *, model_correct: np.ndarray | None = None,
                        hook_template: str = HOOK_TEMPLATE, n_folds: int | None = None
                        ) -> ProbeDataset:
    """Build the dataset that ``spec`` (``name``, ``strategy``, ``layers``, ``positions``,
    ``target``) defines from an activation file and (for feature/SAE strategies) a code file.

    ``model_correct`` ``[n]`` overrides ``meta/model_correct`` for ``sae-to-failure``.
    ``n_folds`` makes too few samples per class an error here, before anything is written.
    """
    name = str(spec.get("name", "")) or "<unnamed>"
    strategy = spec.get("strategy")
    if strategy not in STRATEGIES:
        raise InputError(name, "strategy", f"unknown strategy {strategy!r}; choose from "
                         f"{list(STRATEGIES)}")
    positions = [str(p) for p in spec.get("positions") or ["final"]]
    target = dict(spec.get("target") or {})
    with open_h5(activations) as act:
        names = [str(p) for p in json_attr(act, "position_names", activations)]
        pos_cols = resolve_positions(act, positions, activations, name)
        hooks = [str(h) for h in json_attr(act, "hooks", activations)]
        n = int(act["positions"].shape[0])
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
    check_dataset(ds, n_folds)
    log.info("%s: %d samples x %d inputs (%s)", name, ds.X.shape[0], ds.X.shape[1], strategy)
    return ds


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
    X = np.concatenate([b[rows] for b in blocks], axis=1)
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
    column = str(target.get("column", "label_id"))
    raw = meta_column(ctx.act, column, ctx.act_path)
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise InputError(ctx.act_path, f"meta/{column}", "NaN in the concept labels")
    values = sorted({v.item() if hasattr(v, "item") else v for v in raw})
    wanted = target.get("classes")
    if wanted is not None:
        values = _match_classes(wanted, values, ctx.name, column)
    lookup = {v: i for i, v in enumerate(values)}
    y = np.array([lookup.get(v.item() if hasattr(v, "item") else v, -1) for v in raw], np.int64)
    names = [str(v) for v in values]
    if column == "label_id" and "meta/label" in ctx.act:
        labels = meta_column(ctx.act, "label", ctx.act_path)
        names = [str(labels[np.flatnonzero(raw == v)[0]]) if np.any(raw == v) else str(v)
                 for v in values]
    return y, names, values, {"column": column}


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


def _int_field(value: Any, source: str, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)) or \
            not str(value).lstrip("-").isdigit() or int(value) < 0:
        raise InputError(source, field_name, f"{value!r} is not a non-negative integer")
    return int(value)


# ---------------------------------------------------------------------------- file I/O


def write_probe_dataset(ds: ProbeDataset, path: str | Path,
                        config: dict[str, Any] | None = None) -> None:
    """Write ``ds`` atomically in the format of this module's docstring (checked first)."""
    check_dataset(ds)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("X", data=ds.X.astype(np.float32), compression="gzip",
                          chunks=(min(256, ds.X.shape[0]), ds.X.shape[1]))
        y_dtype = np.int64 if ds.target_kind == "label" else np.float64
        h5.create_dataset("y", data=ds.y.astype(y_dtype))
        h5.create_dataset("sample_index", data=ds.sample_index.astype(np.int64))
        h5.create_dataset("row_position", data=ds.row_position.astype(np.int32))
        for key in COLUMN_FIELDS:
            h5.create_dataset(f"columns/{key}", data=ds.columns[key].astype(np.int32))
        for key, value in ds.meta.items():
            h5.attrs[key] = value if isinstance(value, (int, str)) else json.dumps(value)
        h5.attrs.update(format_version=FORMAT_VERSION, name=ds.name,
                        provenance=provenance_json(config))


_JSON_ATTRS = ("target", "class_names", "class_values", "layers", "positions", "hooks",
               "input_dims", "sources")


def read_probe_dataset(path: str | Path) -> ProbeDataset:
    """Read a file written by :func:`write_probe_dataset`; a malformed one is an InputError."""
    with open_h5(path) as h5:
        for key in ("X", "y", "sample_index", "row_position",
                    *(f"columns/{c}" for c in COLUMN_FIELDS)):
            if key not in h5:
                raise InputError(path, key, "missing: not a probe dataset file")
        version = int(h5.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise InputError(path, "attrs/format_version", f"{version}, expected {FORMAT_VERSION}")
        meta: dict[str, Any] = {}
        for key, value in h5.attrs.items():
            if key == "provenance":
                continue
            value = value.item() if hasattr(value, "item") else value
            meta[key] = json.loads(value) if key in _JSON_ATTRS else value
        ds = ProbeDataset(str(meta.get("name", Path(path).stem)), h5["X"][()], h5["y"][()],
                          h5["sample_index"][()], h5["row_position"][()],
                          {c: h5[f"columns/{c}"][()] for c in COLUMN_FIELDS}, meta)
    return ds


def make_probe_dataset_file(spec: dict[str, Any], activations: str | Path,
                            codes: str | Path | None, out: str | Path, *,
                            model_correct: np.ndarray | None = None,
                            hook_template: str = HOOK_TEMPLATE, n_folds: int | None = None,
                            config: dict[str, Any] | None = None) -> ProbeDataset:
    """Build and write one dataset; on any error nothing is written at ``out``."""
    ds = build_probe_dataset(spec, activations, codes, model_correct=model_correct,
                             hook_template=hook_template, n_folds=n_folds)
    write_probe_dataset(ds, out, config)
    return ds
