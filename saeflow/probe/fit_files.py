"""A probe fit as files: the metrics JSON record, the fitted probes in HDF5, and the rule's
entry point that reads a probe dataset, fits (:func:`saeflow.probe.fit.fit_probe`) and writes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path, write_json
from saeflow.probe.dataset import COLUMN_FIELDS, constant_columns, read_probe_dataset
from saeflow.probe.crossval import ProbeConfig
from saeflow.probe.fit import Grouping, ProbeResult, fit_probe
from saeflow.probe.inputs import read_groups
from saeflow.core.provenance import provenance_json

log = logging.getLogger(__name__)


def probe_record(result: ProbeResult) -> dict[str, Any]:
    """The JSON record of a probe fit (``probe/fits/{name}.json``)."""
    ds, primary = result.dataset, result.primary_metric
    m = result.metrics[primary]
    return {
        "name": ds.name, "strategy": ds.meta.get("strategy"),
        "input_kind": ds.meta.get("input_kind"),
        "target_kind": ds.target_kind, "target": ds.meta.get("target"),
        # y computed from X itself (hidden-to-feature): R² is not evidence of information
        "target_function_of_input": bool((ds.meta.get("target") or {}).get(
            "function_of_input", False)),
        "class_names": ds.class_names, "layers": ds.layers, "positions": ds.positions,
        "group": ds.meta.get("group"), "prompt_set": ds.meta.get("prompt_set"),
        "sources": ds.meta.get("sources"),
        "n_samples": int(ds.X.shape[0]), "n_prompts": int(np.unique(ds.sample_index).size),
        "n_inputs": int(ds.X.shape[1]),
        "n_constant_inputs": int(constant_columns(ds.X).sum()),
        "class_counts": np.bincount(ds.y.astype(np.int64)).tolist()
        if ds.target_kind == "label" else None,
        "primary_metric": primary,
        "test": m["test"], "train": m["train"], "gap": m["gap"],
        "baseline": result.baseline,
        # what the group_by column alone predicts (same folds and procedure); None ungrouped
        "metadata_baseline": result.metadata, "metrics": result.metrics,
        "regularisation": [f.regularisation for f in result.fits],
        "inner_folds": [f.inner_folds for f in result.fits],
        "cv": asdict(result.config), "notes": result.notes,
    }


def write_probe_fit(result: ProbeResult, json_path: str | Path, h5_path: str | Path,
                    config: dict[str, Any] | None = None) -> None:
    """Write the metrics JSON and the fitted probes (HDF5: ``folds`` ``[n]``, ``oof`` and per
    fold ``fold_{k}/{coef,intercept,normaliser/shift,normaliser/factor}`` with attribute
    ``regularisation`` and ``normalise``, the normaliser applied, which for SAE codes is the
    configured one's scale-only form; ``columns/*`` copied from the dataset). Both atomically."""
    ds = result.dataset
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("folds", data=result.folds)
        h5.create_dataset("oof", data=result.oof)
        h5.create_dataset("sample_index", data=ds.sample_index)
        for key in COLUMN_FIELDS:
            h5.create_dataset(f"columns/{key}", data=ds.columns[key])
        for k, fit in enumerate(result.fits):
            g = h5.create_group(f"fold_{k}")
            g.create_dataset("coef", data=fit.coef)
            g.create_dataset("intercept", data=fit.intercept)
            for key, value in fit.normaliser.items():
                g.create_dataset(f"normaliser/{key}", data=value)
            g.attrs.update(regularisation=fit.regularisation, inner_folds=fit.inner_folds,
                           normalise=result.normalise or result.config.normalise)
        h5.attrs.update(name=ds.name, target_kind=ds.target_kind,
                        provenance=provenance_json(config))
    try:
        write_json(json_path, probe_record(result), config)
    except BaseException:
        Path(h5_path).unlink(missing_ok=True)  # no half of a result without the other
        raise


def probe_fit_stage(dataset_path: str | Path, json_out: str | Path, h5_out: str | Path,
                    cv: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                    n_jobs: int = 1, activations: str | Path | None = None) -> ProbeResult:
    """Rule ``probe_fit``: read a probe dataset, cross-validate, write JSON + HDF5.
    ``activations``: the dataset's activation file, whose ``meta/<probe.cv.group_by>``
    column gives the groups when ``cv`` groups folds."""
    cfg = ProbeConfig.from_dict(cv)
    ds = read_probe_dataset(dataset_path)
    grouping = None
    if cfg.group_by is not None:
        if activations is None:
            raise InputError(dataset_path, "probe.cv.group_by", "grouped folds need the "
                             "dataset's activation file (meta/<column>)")
        grouping = Grouping(read_groups(activations, cfg.group_by, ds.sample_index),
                            cfg.group_by, str(activations))
    result = fit_probe(ds, cfg, n_jobs, grouping)
    write_probe_fit(result, json_out, h5_out, config)
    meta = (result.metadata or {}).get("mean", float("nan"))
    log.info("%s: test %s %.3f (baseline %.3f, metadata-only %.3f)", ds.name,
             result.primary_metric, result.metrics[result.primary_metric]["test"]["mean"],
             result.baseline.get(result.primary_metric, {}).get("mean", float("nan")), meta)
    return result
