"""The labels stage: feature descriptions, category classification, human (or oracle) labels,
agreement, category ablation and the loss-per-feature (LPF) correction
(workflow/rules/labels.smk). Modules, and the rules whose ``*_stage`` each holds:

- :mod:`~saeflow.labels.exports`: Neuronpedia's explanation exports, fetched into a local
  cache (``fetch_neuronpedia``).
- :mod:`~saeflow.labels.describe`: one description per SAE feature, generated from the
  activations or imported, and the toy world's true category members (``describe``,
  ``truth_membership``).
- :mod:`~saeflow.labels.autointerp`, :mod:`~saeflow.labels.explainer`,
  :mod:`~saeflow.labels.scorers`: describe's ``autointerp`` backend, an LLM's explanation per
  latent from its contexts, scored by delphi's detection and fuzzing.
- :mod:`~saeflow.labels.classify`: descriptions sorted into a category, by keyword, by an LLM
  or from a file (``classify``).
- :mod:`~saeflow.labels.labelling`: human labels of a random sample of features, the terminal
  tool and the toy's oracle (``import_human_labels``, ``label_oracle``).
- :mod:`~saeflow.labels.serve`, :mod:`~saeflow.labels.serve_page`: ``saeflow label --serve``,
  the labelling tool as a local web page, and its HTML.
- :mod:`~saeflow.labels.agreement`: how a classifier agrees with the human labels (``agree``).
- :mod:`~saeflow.labels.ablation`: a category's features zero-ablated with the SAE and its
  error term spliced in, the sets ablated, :class:`~saeflow.labels.ablation.AblationSettings`
  (``labels.ablation``) (``ablate_categories``).
- :mod:`~saeflow.labels.study`: the study file a correction works on (``correction_study``).
- :mod:`~saeflow.labels.correction`: the LPF corrections for a noisy classifier, and the toy's
  summary against the truth (``correct``, ``correction_summary``).
- :mod:`~saeflow.labels.planting`: planted label noise, classifiers with known errors drawn
  from the toy world's truth.
- :mod:`~saeflow.labels.validation`: the planted classifiers measured, every correction solved
  and scored against the measured truth (``validate_correction``).
- :mod:`~saeflow.labels.validation_table`: ``correction/validation.json`` as docs/validation.md's
  Markdown table.
- :mod:`~saeflow.labels.plots`: the confusion and LPF figures (``plot_confusion``,
  ``plot_lpf``).
"""
