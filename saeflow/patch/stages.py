"""The patching rules' entry points: each loads what its rule needs (config, model, SAEs,
pairs), seeds, and runs the stage (scripts/patch_*.py make one call here).

``patch`` is ``config["patch"]`` as validated against workflow/schemas/config.schema.yaml;
``bundle`` the rule's model and SAEs (:class:`saeflow.core.bundle.ModelSAEs`, built by
``ModelSAEs.from_rule``); each output records ``patch`` and the bundle's config sections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saeflow.core.bundle import ModelSAEs
from saeflow.patch.pairs import PatchConfig, load_pairs, optional_input
from saeflow.patch.splice import PatchRun


def _provenance(patch: Mapping[str, Any], bundle: ModelSAEs) -> dict[str, Any]:
    """The config sections a model-and-SAE patch output records."""
    return {"patch": dict(patch), **bundle.provenance()}


def _setup(patch: Mapping[str, Any]) -> tuple[PatchConfig, str]:
    """The stage's config, seeded, and its device."""
    from saeflow.core.runtime import resolve_device, seed_everything

    cfg = PatchConfig.from_dict(patch)
    seed_everything(cfg.seed)
    return cfg, resolve_device(cfg.device)


def _run(bundle: ModelSAEs, patch: Mapping[str, Any], pairs: str | Path) -> PatchRun:
    """Seed, load the model and its SAEs, read the pairs, and splice (:class:`PatchRun`)."""
    cfg, device = _setup(patch)
    model, saes = bundle.load(device)
    return PatchRun.build(model, saes, load_pairs(pairs, model.tokenizer), cfg)


def patch_resid_stage(bundle: ModelSAEs, patch: Mapping[str, Any], pairs: str | Path,
                      out: str | Path) -> None:
    """Rule ``patch_resid``: residual patching over every layer x position of the pairs file
    ``pairs`` (JSONL) into ``out`` (resid.h5); the bundle's model only (no SAE)."""
    from saeflow.patch.resid import run_resid_patching, write_resid

    cfg, device = _setup(patch)
    model = bundle.load_model(device)
    batches = load_pairs(pairs, model.tokenizer)
    write_resid(out, run_resid_patching(model, batches, cfg),
                {"patch": dict(patch), "model": dict(bundle.model)})


def patch_estimate_stage(estimator: str, bundle: ModelSAEs, patch: Mapping[str, Any],
                         pairs: str | Path, out: str | Path) -> None:
    """Rule ``patch_estimate``: node estimator ``estimator`` (a key of
    :data:`saeflow.patch.estimators.ESTIMATORS`) with and without the error term into ``out``
    (``{estimator}.h5``, atp.h5's layout)."""
    from saeflow.patch.estimators import estimate_stage

    estimate_stage(_run(bundle, patch, pairs), estimator, out, _provenance(patch, bundle))


def patch_exact_stage(bundle: ModelSAEs, patch: Mapping[str, Any], pairs: str | Path,
                      out: str | Path) -> None:
    """Rule ``patch_exact``: every latent and error node patched exactly, both modes, into
    ``out`` (exact.h5)."""
    from saeflow.patch.exhaustive import exact_stage

    exact_stage(_run(bundle, patch, pairs), out, _provenance(patch, bundle))


def patch_verify_stage(bundle: ModelSAEs, patch: Mapping[str, Any], pairs: str | Path,
                       atp: str | Path, descriptions: str | Sequence[str],
                       out_verify: str | Path, out_faithfulness: str | Path,
                       out_top_latents: str | Path) -> None:
    """Rule ``patch_verify``: exact patching of the top AtP latents of ``atp`` (atp.h5),
    faithfulness curves and the top latents' activations (three JSON files).
    ``descriptions``: the descriptions file, or ``[]``/``""`` when there is none."""
    from saeflow.formats.descriptions import descriptions_by_hook
    from saeflow.patch.faithfulness import verify_stage

    run = _run(bundle, patch, pairs)
    verify_stage(run, atp, descriptions_by_hook(optional_input(descriptions)), out_verify,
                 out_faithfulness, out_top_latents, _provenance(patch, bundle))


def patch_circuit_stage(bundle: ModelSAEs, patch: Mapping[str, Any], pairs: str | Path,
                        atp: str | Path, descriptions: str | Sequence[str], out: str | Path
                        ) -> None:
    """Rule ``patch_circuit``: nodes, edges and checks of the sparse feature circuit into
    ``out`` (circuit.json). ``descriptions``: the descriptions file, or ``[]``/``""``."""
    from saeflow.formats.descriptions import descriptions_by_hook
    from saeflow.patch.circuit import circuit_stage

    run = _run(bundle, patch, pairs)
    circuit_stage(run, atp, descriptions_by_hook(optional_input(descriptions)), out,
                  _provenance(patch, bundle))


def patch_summary_stage(patch: Mapping[str, Any], inputs: Mapping[str, Any],
                        out: str | Path) -> None:
    """Rule ``patch_summary``: the stage's headline numbers in ``out`` (summary.json).
    ``inputs``: the rule's named inputs: ``resid``, ``verify``, ``faithfulness``, ``circuit``,
    one file per estimator of ``patch.estimators`` named by it (``atp``, ``ig``, ...), and
    ``truth`` (the toy world's truth.json) and ``exact`` (exact.h5), each ``[]``/``""`` when
    there is none."""
    from saeflow.patch.summary import SummaryInputs, summary_stage

    cfg = PatchConfig.from_dict(patch)
    summary_stage(SummaryInputs(
        resid=inputs["resid"], estimates={name: inputs[name] for name in cfg.estimators},
        verify=inputs["verify"], faithfulness=inputs["faithfulness"],
        truth=optional_input(inputs["truth"]), exact=optional_input(inputs["exact"]),
        circuit=optional_input(inputs["circuit"])), cfg, out, {"patch": patch})
