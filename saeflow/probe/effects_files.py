"""Effect sizes as files: the JSON record and the per-column arrays (HDF5) of
:func:`saeflow.probe.effects.compute_effects`, their reader, the reader of a probe fit's
coefficients for the toy check, and the rule's entry point (read a probe dataset, compute,
check, write).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path, write_json
from saeflow.core.provenance import provenance_json
from saeflow.formats.descriptions import descriptions_by_hook
from saeflow.formats.hdf5 import open_h5, read_array, reading
from saeflow.probe.dataset import COLUMN_FIELDS, read_probe_dataset
from saeflow.probe.effects import EffectSettings, EffectsResult, compute_effects, toy_check
from saeflow.probe.permutation import P_KINDS


def coefficient_weights(h5_path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean over folds of the summed |coefficient| per input column ``[d]``, and the columns.

    Coefficients live on the normalised scale, so with ``standardize`` they compare across
    columns; this is what the toy check uses to ask where a probe puts its weight.
    """
    with open_h5(h5_path) as h5:
        folds = [k for k in h5 if k.startswith("fold_")]
        if not folds:
            raise InputError(h5_path, "fold_0/coef", "missing: not a probe fit file")
        coefs = [np.abs(read_array(h5, f"{k}/coef", h5_path)).sum(axis=0) for k in folds]
        columns = {c: read_array(h5, f"columns/{c}", h5_path) for c in COLUMN_FIELDS}
    return np.mean(coefs, axis=0), columns


def effects_record(res: EffectsResult) -> dict[str, Any]:
    """JSON record (``probe/effects/{name}.json``): settings, counts, top-k, localisation."""
    tested = np.isfinite(res.d)
    ds = res.dataset
    return {"name": ds.name, "prompt_set": ds.meta.get("prompt_set"),
            "strategy": ds.meta.get("strategy"),
            "input_kind": ds.meta.get("input_kind"), "positive_class": res.positive_class,
            "n_samples": int(ds.X.shape[0]), "n_positive": int((ds.y == ds.class_names.index(
                res.positive_class)).sum()), "n_columns": int(res.d.size),
            "n_tested": int(tested.sum()),
            "n_significant": int(np.sum(res.q <= res.settings["alpha"])),
            **res.settings, "top": res.top, "localisation": res.localisation}


def write_effects(res: EffectsResult, json_path: str | Path, h5_path: str | Path,
                  config: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> None:
    """Write full per-column arrays (HDF5 ``d``, ``p``, ``q``, ``p_kind`` ``[d]``,
    ``columns/*``) and the JSON record (plus ``extra`` keys, e.g. the toy check); no
    half-written pair on error."""
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        for key, value in (("d", res.d), ("p", res.p), ("q", res.q)):
            h5.create_dataset(key, data=value)
        if res.p_kind is not None:
            h5.create_dataset("p_kind", data=res.p_kind)
            h5["p_kind"].attrs["names"] = json.dumps({"-1": "normal", **{
                str(i): name for i, name in enumerate(P_KINDS)}})
        for key, value in res.dataset.columns.items():
            h5.create_dataset(f"columns/{key}", data=value)
        h5.attrs.update(name=res.dataset.name, positive_class=res.positive_class,
                        prompt_set=str(res.dataset.meta.get("prompt_set")),
                        alpha=res.settings["alpha"], positions=json.dumps(res.dataset.positions),
                        layers=json.dumps(res.dataset.layers), provenance=provenance_json(config))
    try:
        write_json(json_path, {**effects_record(res), **(extra or {})}, config)
    except BaseException:
        Path(h5_path).unlink(missing_ok=True)
        raise


def read_effect_arrays(h5_path: str | Path) -> dict[str, Any]:
    """``d``, ``p``, ``q`` ``[d]`` and attributes of a file from :func:`write_effects`."""
    with open_h5(h5_path) as h5:
        arrays = {key: read_array(h5, key, h5_path) for key in ("d", "p", "q")}
        for key in ("name", "alpha"):
            if key not in h5.attrs:
                raise InputError(h5_path, f"attrs/{key}", "missing root attribute: not an "
                                 "effects file")
        with reading(h5_path, "attrs"):
            return {**arrays, "name": str(h5.attrs["name"]), "alpha": float(h5.attrs["alpha"]),
                    "prompt_set": str(h5.attrs.get("prompt_set", ""))}


def probe_effects_stage(dataset_path: str | Path, json_out: str | Path, h5_out: str | Path, *,
                        positive_class: str | int | None = None,
                        descriptions: str | Path | None = None, fit_h5: str | Path | None = None,
                        config: dict[str, Any] | None = None) -> EffectsResult:
    """Rule ``probe_effects``: effects of one dataset, plus the toy check when the
    informative positions are known (with the fitted probe's weights if ``fit_h5`` is given).
    ``config``: ``config["probe"]``, recorded as the provenance, whose ``effects``
    (:class:`EffectSettings`), ``descriptions_hook`` (the hook of ``descriptions``'
    features) and ``toy_check.informative_positions`` it reads; None: the defaults, no toy
    check."""
    section = config or {}
    settings = EffectSettings.from_dict(section.get("effects"))
    informative = [str(p) for p in section.get("toy_check", {}).get("informative_positions", [])]
    ds = read_probe_dataset(dataset_path)
    res = compute_effects(ds, settings, positive_class=positive_class,
                          descriptions=descriptions_by_hook(descriptions,
                                                            section.get("descriptions_hook")))
    extra: dict[str, Any] = {}
    if informative:
        weights, columns = coefficient_weights(fit_h5) if fit_h5 else (None, None)
        extra["toy_check"] = toy_check(res.localisation, informative, probe_weights=weights,
                                       columns=columns, alpha=res.settings["alpha"],
                                       source=ds.name)
    write_effects(res, json_out, h5_out, config, extra)
    return res
