"""SAE-code probe datasets stay CSR from the code file to the fit and the effect sizes, and give
what their dense copies give."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError
from saeflow.probe.dataset import ProbeDataset, read_probe_dataset, write_probe_dataset
from saeflow.probe.effects import cohens_d, compute_effects
from saeflow.probe.crossval import ProbeConfig
from saeflow.probe.fit import fit_probe
from saeflow.probe.strategies import build_probe_dataset


def _toy_sae_dataset(tmp_path, n=60):
    from test_probe_data import write_toy_files

    act, codes = write_toy_files(tmp_path, n=n)
    return build_probe_dataset({"name": "sc", "strategy": "sae-to-concept", "layers": "0-2",
                                "positions": ["mid", "final"]}, act, codes)


def _densified(ds: ProbeDataset) -> ProbeDataset:
    return dataclasses.replace(ds, X=ds.X.toarray(), meta=dict(ds.meta))


@pytest.mark.parametrize("normalise, dtype", [("standardize", np.float64), ("minmax", np.float64),
                                              ("none", np.float64), ("standardize", np.float32)])
def test_sparse_fit_equals_the_densified_fit(tmp_path, normalise, dtype):
    ds = _toy_sae_dataset(tmp_path)
    assert ds.sparse and ds.meta["input_kind"] == "sae"
    ds = dataclasses.replace(ds, X=ds.X.astype(dtype))
    cfg = ProbeConfig.from_dict({**schema_defaults("probe.cv"), "n_folds": 4, "inner_folds": 2,
                                 "Cs": [0.01, 1.0], "n_permutations": 2, "seed": 1,
                                 "normalise": normalise})
    a, b = fit_probe(ds, cfg), fit_probe(_densified(ds), cfg)
    # float64: the same fit to rounding. float32 (what datasets hold): summation order moves
    # the solver's iterates by float32 rounding, which its tolerance (1e-3) leaves in place
    tol = 1e-9 if dtype == np.float64 else 1e-3
    np.testing.assert_array_equal(a.folds, b.folds)
    assert a.normalise == b.normalise and a.normalise != "standardize"
    for fa, fb in zip(a.fits, b.fits, strict=True):
        assert fa.regularisation == fb.regularisation
        np.testing.assert_allclose(fa.coef, fb.coef, atol=tol)
        np.testing.assert_allclose(fa.intercept, fb.intercept, atol=tol)
        for key in fa.normaliser:
            np.testing.assert_allclose(fa.normaliser[key], fb.normaliser[key], rtol=1e-6)
        if fa.normaliser:  # scaled, never centred: a zero code stays zero
            assert not fa.normaliser["shift"].any()
    np.testing.assert_allclose(a.oof, b.oof, atol=tol)
    for name, m in a.metrics.items():
        assert m["test"]["mean"] == pytest.approx(b.metrics[name]["test"]["mean"], abs=tol)
    for name, m in a.baseline.items():
        np.testing.assert_allclose(m["values"], b.baseline[name]["values"], atol=tol)
    assert a.metrics["accuracy"]["test"]["mean"] > 0.8  # the label shifts every layer at 'mid'


def test_scale_only_statistics_are_the_training_rows_sd(tmp_path):
    ds = _toy_sae_dataset(tmp_path)
    cfg = ProbeConfig.from_dict({**schema_defaults("probe.cv"), "n_folds": 3, "inner_folds": 2,
                                 "Cs": [1.0], "n_permutations": 0})
    res = fit_probe(ds, cfg)
    dense = ds.X.toarray()
    train = res.folds != 0
    sd = dense[train].std(0)
    live = sd > 0
    np.testing.assert_allclose(res.fits[0].normaliser["factor"][live], 1 / sd[live], rtol=1e-5)
    assert "applied as scale" in " ".join(res.notes)


def test_sparse_effects_equal_the_densified_effects(tmp_path):
    ds = _toy_sae_dataset(tmp_path, n=90)
    kw = {"positive_class": "TypeError", "n_permutations": 199, "seed": 3, "top_k": 5,
          "batch_size": 64}
    a, b = compute_effects(ds, **kw), compute_effects(_densified(ds), **kw)
    np.testing.assert_array_equal(np.isnan(a.d), np.isnan(b.d))
    np.testing.assert_allclose(a.d, b.d, rtol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(a.p, b.p)
    np.testing.assert_allclose(a.q, b.q, rtol=1e-12, equal_nan=True)
    assert a.localisation == b.localisation
    for ta, tb in zip(a.top, b.top, strict=True):
        assert ta["d"] == pytest.approx(tb["d"], rel=1e-12)
        assert {k: v for k, v in ta.items() if k != "d"} == {k: v for k, v in tb.items() if k != "d"}


def test_cohens_d_of_csr_matches_dense_and_drops_constant_columns():
    rng = np.random.default_rng(0)
    X = sp.random(80, 30, density=0.2, format="lil", random_state=1, dtype=np.float32) * 5
    X[:, 7] = 3.0  # constant but stored: no defined d, whatever the rounding
    X = sp.csr_matrix(X)
    y = rng.random(80) < 0.4
    d = cohens_d(X, y)
    assert np.isnan(d[7]) and np.isnan(cohens_d(X.toarray(), y)[7])
    np.testing.assert_allclose(d, cohens_d(X.toarray(), y), rtol=1e-9, equal_nan=True)


def test_csr_file_roundtrip_and_an_empty_matrix(tmp_path):
    ds = _toy_sae_dataset(tmp_path)
    write_probe_dataset(ds, tmp_path / "sc.h5")
    with h5py.File(tmp_path / "sc.h5", "r") as h5:
        assert isinstance(h5["X"], h5py.Group) and h5.attrs["format_version"] == 2
        assert tuple(h5["X"].attrs["shape"]) == ds.X.shape
        assert h5["X/data"].shape == (ds.X.nnz,)
    back = read_probe_dataset(tmp_path / "sc.h5")
    assert back.sparse and (back.X != ds.X).nnz == 0
    with h5py.File(tmp_path / "sc.h5", "r+") as h5:  # a damaged copy is named, not a traceback
        del h5["X/indptr"]
        h5["X/indptr"] = np.zeros(3, np.int64)
    with pytest.raises(InputError, match=r"sc.h5: X/indptr: length 3"):
        read_probe_dataset(tmp_path / "sc.h5")
    # all-zero codes (every feature dead) are a valid, empty CSR X
    empty = dataclasses.replace(ds, X=sp.csr_matrix(ds.X.shape, dtype=np.float32))
    write_probe_dataset(empty, tmp_path / "empty.h5")
    assert read_probe_dataset(tmp_path / "empty.h5").X.nnz == 0


def test_hidden_datasets_stay_dense(tmp_path):
    from test_probe_data import write_toy_files

    act, _ = write_toy_files(tmp_path)
    ds = build_probe_dataset({"name": "h", "strategy": "hidden-to-concept", "layers": "1"}, act)
    assert isinstance(ds.X, np.ndarray)
    write_probe_dataset(ds, tmp_path / "h.h5")
    with h5py.File(tmp_path / "h.h5", "r") as h5:
        assert isinstance(h5["X"], h5py.Dataset)


def _wide_files(tmp_path, n, n_pos, n_layers, d_sae, l0, seed=0):
    """An activation file (labels, positions; tiny d_model) and a code file of ``d_sae``-wide
    CSR codes with ``l0`` non-zeros per valid row, written without any dense code matrix."""
    rng = np.random.default_rng(seed)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    act, codes = tmp_path / "wide.h5", tmp_path / "codes_wide.h5"
    names = [f"p{j}" for j in range(n_pos)]
    with h5py.File(act, "w") as h5:
        h5["positions"] = np.tile(np.arange(n_pos, dtype=np.int32), (n, 1))
        h5["lengths"] = np.full(n, n_pos, np.int32)
        for hook in hooks:
            h5.create_dataset(f"acts/{hook}", data=np.zeros((n, n_pos, 2), np.float16))
        h5["meta/label_id"] = np.arange(n) % 2
        h5.attrs.update(hooks=json.dumps(hooks), position_names=json.dumps(names))
    with h5py.File(codes, "w") as h5:
        rows = n * n_pos
        for hook in hooks:
            g = h5.create_group(f"codes/{hook}")
            g["indptr"] = np.arange(rows + 1, dtype=np.int64) * l0
            g["indices"] = np.sort(rng.integers(0, d_sae, size=(rows, l0)), axis=1
                                   ).astype(np.int32).ravel()
            g["values"] = rng.random(rows * l0).astype(np.float32) + 0.1
            g["row_valid"] = np.ones(rows, bool)
            g.attrs.update(d_sae=d_sae, n_prompts=n, n_positions=n_pos)
        h5.attrs.update(hooks=json.dumps(hooks), position_names=json.dumps(names))
    return act, codes


def test_the_builder_never_allocates_a_dense_x(tmp_path):
    n, n_pos, n_layers, d_sae, l0 = 128, 2, 2, 65536, 16
    act, codes = _wide_files(tmp_path, n, n_pos, n_layers, d_sae, l0)
    dense_bytes = n * d_sae * n_pos * n_layers * 4  # 128 MiB
    tracemalloc.start()
    try:
        ds = build_probe_dataset({"name": "w", "strategy": "sae-to-concept", "layers": "0-1",
                                  "positions": ["p0", "p1"], "target": {"column": "label_id"}},
                                 act, codes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(ds.X, sp.csr_matrix) and ds.X.shape == (n, d_sae * n_pos * n_layers)
    assert ds.X.nnz == n * n_pos * n_layers * l0
    # what remains is O(nnz) plus the per-column metadata (4 int32 [d] arrays, 16 B a column
    # against the dense X's 512 B a column at 128 prompts)
    assert peak < dense_bytes / 8, f"peak {peak / 2**20:.1f} MiB vs dense {dense_bytes / 2**20} MiB"
