"""The model and SAEs a rule runs, built once from the rule's config sections and files.

Every model-running stage (extraction aside, which needs no SAE) takes one :class:`ModelSAEs`
instead of five loose arguments; it loads the model and the SAEs on demand, on one device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError


@dataclass(frozen=True)
class ModelSAEs:
    """``model``: ``config["model"]``; ``model_dir``: the trained toy model's folder (None: the
    model is loaded by name); ``sae``: ``config["sae"]``; ``hooks``: the SAE sites, in order;
    ``sae_dirs``: one SAE folder per hook (empty, or None for a hook: loaded from the hub)."""

    model: Mapping[str, Any]
    model_dir: str | None = None
    sae: Mapping[str, Any] = field(default_factory=dict)
    hooks: tuple[str, ...] = ()
    sae_dirs: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        hooks = tuple(str(h) for h in self.hooks)
        dirs = tuple(None if d is None else str(d) for d in self.sae_dirs) or (None,) * len(hooks)
        if len(dirs) != len(hooks):
            raise InputError("config", "sae.hooks", f"{len(hooks)} hooks for {len(dirs)} SAEs")
        object.__setattr__(self, "hooks", hooks)
        object.__setattr__(self, "sae_dirs", dirs)
        object.__setattr__(self, "model_dir", None if self.model_dir is None else str(self.model_dir))

    @classmethod
    def from_rule(cls, snakemake: Any) -> ModelSAEs:
        """From a rule's ``params.model``, ``params.sae``, ``params.hooks`` (each may be absent
        where the rule needs no model or no SAE) and its inputs
        ``model`` (the toy model; absent otherwise) and ``saes`` (in ``hooks`` order; absent or
        empty for pretrained SAEs)."""
        params, inputs = dict(snakemake.params.items()), dict(snakemake.input.items())
        saes = inputs.get("saes", ())
        return cls(params.get("model") or {}, inputs.get("model"), params.get("sae") or {},
                   tuple(params.get("hooks") or ()),
                   (saes,) if isinstance(saes, (str, Path)) else tuple(saes))

    def site(self, hook: str) -> ModelSAEs:
        """The same model with only the SAE of ``hook``."""
        if hook not in self.hooks:
            raise InputError("config", "sae.hooks", f"{hook!r} is not an SAE site {list(self.hooks)}")
        return ModelSAEs(self.model, self.model_dir, self.sae, (hook,),
                         (self.sae_dirs[self.hooks.index(hook)],))

    def load_model(self, device: str = "cpu") -> Any:
        """The HookedTransformer (:func:`saeflow.core.models.load_model`)."""
        from saeflow.core.models import load_model

        return load_model(dict(self.model), self.model_dir, device)

    def load_saes(self, device: str = "cpu") -> list[Any]:
        """One SAE per hook, in order (:func:`saeflow.core.saes.load_sae`, which checks that it
        reads that hook and writes where the config says)."""
        from saeflow.core.saes import load_sae

        return [load_sae(dict(self.sae), h, d, device)
                for h, d in zip(self.hooks, self.sae_dirs, strict=True)]

    def load(self, device: str = "cpu") -> tuple[Any, list[Any]]:
        """The model and its SAEs."""
        return self.load_model(device), self.load_saes(device)

    def provenance(self) -> dict[str, Any]:
        """The config sections an output computed from them records."""
        return {"model": dict(self.model), "sae": dict(self.sae)}

