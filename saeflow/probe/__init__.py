"""The probing stage: linear probes and effect sizes over activations and SAE codes
(workflow/rules/probe.smk). Modules, and the rules whose ``*_stage`` each holds:

- :mod:`~saeflow.probe.inputs`: readers of the activation and SAE-code files as probes need
  them (stored and per-prompt positions, activation blocks, SAE codes, metadata columns).
- :mod:`~saeflow.probe.strategies`: the named recipes that turn those files into a probe
  dataset (``probe_data``).
- :mod:`~saeflow.probe.dataset`: the probe dataset (X, y, columns), its checks and its HDF5
  file.
- :mod:`~saeflow.probe.crossval`: outer folds from prompt ids or from a metadata column's
  groups (``probe.cv.group_by``), corrected t-intervals over folds, prompt-level permutations
  of a target.
- :mod:`~saeflow.probe.fold`: one outer fold: the normaliser, the regularisation strength by
  inner CV, the fit and its metrics.
- :mod:`~saeflow.probe.fit`: the cross-validated probe with its permutation baseline and,
  with grouped folds, its metadata-only baseline.
- :mod:`~saeflow.probe.fit_files`: a probe fit as files, JSON record and HDF5 (``probe_fit``).
- :mod:`~saeflow.probe.permutation`: Cohen's d per column and permutation p-values valid at
  any sparsity, Benjamini-Hochberg.
- :mod:`~saeflow.probe.effects`: effect sizes, top-k and where they sit, the toy check,
  :class:`~saeflow.probe.effects.EffectSettings` (``probe.effects``).
- :mod:`~saeflow.probe.effects_files`: effect sizes as files, their readers, the probe fit's
  coefficient reader (``probe_effects``).
- :mod:`~saeflow.probe.summary`: every fit and effects record in one summary, the toy's
  readout check (``probe_summary``).
- :mod:`~saeflow.probe.plots`: the probe figures (``plot_probe_accuracy``,
  ``plot_probe_heatmap``, ``plot_cohens_d``).

Which layers a dataset reads (``per_layer`` expansion) is :mod:`saeflow.core.layerspec`.
"""
