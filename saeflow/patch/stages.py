"""The patching rules' entry points: each loads what its rule needs (config, model, SAEs,
pairs), seeds, and runs the stage (scripts/patch_*.py make one call here).

``patch`` is ``config["patch"]`` as validated against workflow/schemas/config.schema.yaml;
``config`` is the provenance mapping written into each output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.patch.resid import PatchConfig, optional_input


def load_model_and_saes(model_cfg: Mapping[str, Any], model_dir: str | Path | None,
                        sae_cfg: Mapping[str, Any], hooks: Sequence[str],
                        sae_dirs: Sequence[str | Path | None], device: str
                        ) -> tuple[Any, list[Any]]:
    """What the model-running patch rules load: the model (:func:`saeflow.core.models.load_model`)
    and one SAE per hook (:func:`saeflow.core.saes.load_sae`, which checks it reads that hook
    and writes where the config says; ``sae_dirs`` in ``hooks`` order)."""
    from saeflow.core.models import load_model
    from saeflow.core.saes import load_sae

    if len(hooks) != len(sae_dirs):
        raise InputError("config", "sae.hooks", f"{len(hooks)} hooks for {len(sae_dirs)} SAEs")
    model = load_model(dict(model_cfg), model_dir, device)
    saes = [load_sae(dict(sae_cfg), h, d, device) for h, d in zip(hooks, sae_dirs, strict=True)]
    return model, saes


def _provenance(patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                sae_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config sections a model-and-SAE patch output records."""
    return {"patch": dict(patch), "model": dict(model_cfg), "sae": dict(sae_cfg)}


def _setup(patch: Mapping[str, Any]) -> tuple[PatchConfig, str]:
    """The stage's config, seeded, and its device."""
    from saeflow.core.runtime import resolve_device, seed_everything

    cfg = PatchConfig.from_dict(patch)
    seed_everything(cfg.seed)
    return cfg, resolve_device(cfg.device)


def _model_saes_pairs(patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                      model_dir: str | Path | None, sae_cfg: Mapping[str, Any],
                      hooks: Sequence[str], sae_dirs: Sequence[str | Path],
                      pairs: str | Path) -> tuple[PatchConfig, Any, list[Any], list[Any]]:
    from saeflow.patch.resid import load_pairs

    cfg, device = _setup(patch)
    model, saes = load_model_and_saes(model_cfg, model_dir, sae_cfg, hooks,
                                      list(sae_dirs) or [None] * len(hooks), device)
    return cfg, model, saes, load_pairs(pairs, model.tokenizer)


def patch_resid_stage(patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                      model_dir: str | Path | None, pairs: str | Path, out: str | Path) -> None:
    """Rule ``patch_resid``: residual patching over every layer x position of the pairs file
    ``pairs`` (JSONL) into ``out`` (resid.h5). ``model_dir``: the toy model, None for the hub."""
    from saeflow.core.models import load_model
    from saeflow.patch.resid import load_pairs, run_resid_patching, write_resid

    cfg, device = _setup(patch)
    model = load_model(dict(model_cfg), model_dir, device)
    batches = load_pairs(pairs, model.tokenizer)
    write_resid(out, run_resid_patching(model, batches, cfg),
                {"patch": dict(patch), "model": dict(model_cfg)})


ESTIMATOR_STAGES = {"atp": ("saeflow.patch.attribution", "atp_stage"),
                    "ig": ("saeflow.patch.ig", "ig_stage"),
                    "graddrop": ("saeflow.patch.graddrop", "graddrop_stage"),
                    "qkfix": ("saeflow.patch.qkfix", "qk_fix_stage")}


def patch_estimator_stage(estimator: str, patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                          model_dir: str | Path | None, sae_cfg: Mapping[str, Any],
                          hooks: Sequence[str], sae_dirs: Sequence[str | Path],
                          pairs: str | Path, out: str | Path) -> None:
    """Rules ``patch_atp``, ``patch_ig``, ``patch_graddrop``, ``patch_qkfix``: one node
    estimator (a key of :data:`ESTIMATOR_STAGES`) with and without the error term into ``out``
    (atp.h5's layout). ``sae_dirs`` in ``hooks`` order, empty for pretrained SAEs."""
    import importlib

    module, name = ESTIMATOR_STAGES[estimator]
    stage = getattr(importlib.import_module(module), name)
    cfg, model, saes, batches = _model_saes_pairs(patch, model_cfg, model_dir, sae_cfg, hooks,
                                                  sae_dirs, pairs)
    stage(model, saes, batches, cfg, out, _provenance(patch, model_cfg, sae_cfg))


def patch_exact_stage(patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                      model_dir: str | Path | None, sae_cfg: Mapping[str, Any],
                      hooks: Sequence[str], sae_dirs: Sequence[str | Path], pairs: str | Path,
                      out: str | Path) -> None:
    """Rule ``patch_exact``: every latent and error node patched exactly, both modes, into
    ``out`` (exact.h5). ``sae_dirs`` in ``hooks`` order, empty for pretrained SAEs."""
    from saeflow.patch.exhaustive import exact_stage

    cfg, model, saes, batches = _model_saes_pairs(patch, model_cfg, model_dir, sae_cfg, hooks,
                                                  sae_dirs, pairs)
    exact_stage(model, saes, batches, cfg.max_batch, out,
                _provenance(patch, model_cfg, sae_cfg))


def patch_verify_stage(patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                       model_dir: str | Path | None, sae_cfg: Mapping[str, Any],
                       hooks: Sequence[str], sae_dirs: Sequence[str | Path], pairs: str | Path,
                       atp: str | Path, descriptions: str | Sequence[str],
                       out_verify: str | Path, out_faithfulness: str | Path,
                       out_top_latents: str | Path) -> None:
    """Rule ``patch_verify``: exact patching of the top AtP latents of ``atp`` (atp.h5),
    faithfulness curves and the top latents' activations (three JSON files).
    ``descriptions``: the descriptions file, or ``[]``/``""`` when there is none."""
    from saeflow.formats.descriptions import descriptions_by_hook
    from saeflow.patch.faithfulness import verify_stage

    cfg, model, saes, batches = _model_saes_pairs(patch, model_cfg, model_dir, sae_cfg, hooks,
                                                  sae_dirs, pairs)
    verify_stage(model, saes, batches, atp, cfg,
                 descriptions_by_hook(optional_input(descriptions)), out_verify,
                 out_faithfulness, out_top_latents,
                 _provenance(patch, model_cfg, sae_cfg))


def patch_circuit_stage(patch: Mapping[str, Any], model_cfg: Mapping[str, Any],
                        model_dir: str | Path | None, sae_cfg: Mapping[str, Any],
                        hooks: Sequence[str], sae_dirs: Sequence[str | Path], pairs: str | Path,
                        atp: str | Path, descriptions: str | Sequence[str], out: str | Path
                        ) -> None:
    """Rule ``patch_circuit``: nodes, edges and checks of the sparse feature circuit into
    ``out`` (circuit.json). ``descriptions``: the descriptions file, or ``[]``/``""``."""
    from saeflow.formats.descriptions import descriptions_by_hook
    from saeflow.patch.circuit import circuit_stage

    cfg, model, saes, batches = _model_saes_pairs(patch, model_cfg, model_dir, sae_cfg, hooks,
                                                  sae_dirs, pairs)
    circuit_stage(model, saes, batches, atp, cfg,
                  descriptions_by_hook(optional_input(descriptions)), out,
                  _provenance(patch, model_cfg, sae_cfg))


def patch_summary_stage(patch: Mapping[str, Any], resid: str | Path, atp: str | Path,
                        verify: str | Path, faithfulness: str | Path,
                        truth: str | Sequence[str], out: str | Path,
                        exact: str | Sequence[str] = (), ig: str | Sequence[str] = (),
                        circuit: str | None = None, graddrop: str | Sequence[str] = (),
                        qkfix: str | Sequence[str] = ()) -> None:
    """Rule ``patch_summary``: the stage's headline numbers in ``out`` (summary.json).
    ``truth``: the toy world's truth.json, ``exact``: the exhaustive reference (exact.h5),
    ``ig``: integrated gradients (ig.h5), ``graddrop``: AtP* GradDrop (graddrop.h5), ``qkfix``: AtP* QK fix (qkfix.h5); each
    ``[]``/``""`` when there is none."""
    from saeflow.patch.summary import summary_stage

    summary_stage(resid, atp, verify, faithfulness, optional_input(truth),
                  PatchConfig.from_dict(patch), out, {"patch": patch},
                  exact_path=optional_input(exact), ig_path=optional_input(ig),
                  circuit_path=circuit, graddrop_path=optional_input(graddrop),
                  qkfix_path=optional_input(qkfix))
