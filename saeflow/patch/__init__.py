"""The patching stage (workflow/rules/patch.smk): which layers, positions and SAE latents carry
the difference between clean and corrupted prompts.

Modules:

* :mod:`~saeflow.patch.pairs` -- ``PatchConfig``, ``PairBatch``, ``load_pairs``,
  ``check_batches``, the metric (``logit_diff``) and right-alignment (``align_right``,
  ``position_offsets``): what every module shares.
* :mod:`~saeflow.patch.bootstrap` -- the cluster bootstrap every interval over pairs uses
  (``Clusters``: a pair's ``group``, else its clean row's ``template``, else the pair).
* :mod:`~saeflow.patch.resid` -- residual-stream patching over layer x position (resid.h5).
* :mod:`~saeflow.patch.splice` -- SAEs and transcoders spliced in (``run_spliced``,
  ``RunOptions``, ``decoder_rows``), ``PatchRun``.
* :mod:`~saeflow.patch.resume` -- patched runs started at the patched site's layer.
* :mod:`~saeflow.patch.attribution` -- AtP, any estimator over every pair (``run_atp``), exact
  latent patching, the node ranking, atp.h5.
* :mod:`~saeflow.patch.estimators` -- the node-estimator registry (``ESTIMATORS``) and rule
  ``patch_estimate``'s stage; :mod:`~saeflow.patch.ig`, :mod:`~saeflow.patch.graddrop`,
  :mod:`~saeflow.patch.qkfix` -- integrated gradients, AtP* GradDrop, AtP* QK fix.
* :mod:`~saeflow.patch.exhaustive` -- every node patched exactly (exact.h5).
* :mod:`~saeflow.patch.gate` -- the estimator gate against exact patching (Spearman, sign
  agreement, relative L1 error; ``patch.gate``) and whether the sampled checks can tell.
* :mod:`~saeflow.patch.faithfulness` -- AtP vs exact, faithfulness curves, top latents
  (rule ``patch_verify``).
* :mod:`~saeflow.patch.edges`, :mod:`~saeflow.patch.edge_pruning`,
  :mod:`~saeflow.patch.circuit` -- direct edges, edge pruning, circuit.json
  (rule ``patch_circuit``).
* :mod:`~saeflow.patch.summary` -- summary.json and the toy-world check (rule
  ``patch_summary``); :mod:`~saeflow.patch.plots` -- the figures.
* :mod:`~saeflow.patch.stages` -- the rules' entry points (scripts/patch_*.py call one each).
"""
