"""``SSMConfig``: the validated configuration of a :class:`~nssm_core.DeepSSM`."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._certificate import CertificateKind
from ._protocols import PluginKind
from ._registry import PluginEntry, PluginError, get_registry, suggest, validate_options

__all__ = ["SSMConfig"]


class SSMConfig(BaseModel):
    """Configuration of a :class:`~nssm_core.DeepSSM`.

    The flat fields keep the names of the older ``neural-ssm`` library. A
    field is passed to the chosen core or layer when that plugin's options
    model has a field of the same name, and that model validates it.
    Other plugin-specific options go in ``core_options`` and ``layer_options``.

    Example:
        >>> from nssm_core import SSMConfig
        >>> cfg = SSMConfig(d_model=16, d_state=16, n_layers=4, param="l2n", ff="LGLU", gamma=2.0)
        >>> SSMConfig.model_validate_json(cfg.model_dump_json()) == cfg
        True
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    d_model: int = Field(16, gt=0, description="Width of the signal between blocks.")
    d_state: int = Field(32, gt=0, description="State width of each dynamic core.")
    n_layers: int = Field(2, gt=0, description="Number of residual blocks.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability after each static layer.")
    param: str = Field("lru", description="Registry name of the dynamic core.")
    ff: str = Field("GLU", description="Registry name of the static layer.")
    gamma: float | None = Field(
        None, description="Prescribed L2 gain of the whole model; None leaves the model unconstrained."
    )
    train_gamma: bool = Field(False, description="Let cores with a gain parameter train it.")
    rmin: float = Field(0.9, ge=0.0, lt=1.0, description="Smallest initial eigenvalue modulus (lru-type cores).")
    rmax: float = Field(0.99, gt=0.0, lt=1.0, description="Largest initial eigenvalue modulus (lru-type cores).")
    max_phase: float = Field(2 * math.pi, ge=0.0, description="Largest initial eigenvalue phase in radians.")
    scale: float = Field(1.0, gt=0.0, description="Lipschitz or gain scale of bounded static layers.")
    d_hidden: int = Field(32, gt=0, description="Hidden width of static layers that have one.")
    nl_layers: int = Field(1, gt=0, description="Hidden layers of static layers that stack them.")
    rho: float = Field(0.9, gt=0.0, lt=1.0, description="Initial modulus of the 2x2 rotation blocks (l2n).")
    max_phase_b: float = Field(math.pi, ge=0.0, description="Half-width of the initial angle range (l2n).")
    phase_center: float = Field(0.0, description="Centre of the initial angle range (l2n).")
    random_phase: bool = Field(True, description="Draw initial angles at random rather than evenly spaced.")
    offdiag_scale: float = Field(0.1, ge=0.0, description="Std of the initial off-diagonal blocks of K (l2n).")
    init: str = Field("random", description="Initialisation scheme name, interpreted by the core.")
    learn_initial_state: bool = Field(
        False,
        description="Learn one initial state per block, used when no state is passed (real-state cores only).",
    )
    core_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra options of the core, validated by its options model."
    )
    layer_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra options of the static layer, validated by its options model."
    )

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(
                        f"unknown SSMConfig field {key!r}.{suggest(str(key), valid)} "
                        f"Plugin-specific options go in core_options or layer_options."
                    )
        return data

    @field_validator("gamma")
    @classmethod
    def _check_gamma(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"gamma must be a positive finite number or None, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_against_registry(self) -> SSMConfig:
        if self.rmin > self.rmax:
            raise ValueError(f"rmin ({self.rmin}) must not exceed rmax ({self.rmax})")
        registry = get_registry()
        core = registry.get(PluginKind.CORE, self.param)
        layer = registry.get(PluginKind.LAYER, self.ff)
        self.core_plugin_options()
        self.layer_plugin_options()
        if self.gamma is not None:
            for role, entry in (("core (param)", core), ("static layer (ff)", layer)):
                if entry.certificate is CertificateKind.NONE:
                    certified = [
                        e.name for e in registry.entries(entry.kind) if e.certificate is not CertificateKind.NONE
                    ]
                    raise ValueError(
                        f"gamma={self.gamma} asks for a certified model, but the {role} {entry.name!r} has no "
                        f"certified bound, so no gain can be guaranteed. Choose a certified one "
                        f"({', '.join(certified) or 'none registered'}) or set gamma=None (--gamma none on the command line)."
                    )
        return self

    def _plugin_options(self, entry: PluginEntry, extra: dict[str, Any]) -> BaseModel:
        flat = self.model_dump(exclude={"core_options", "layer_options", "param", "ff"})
        raw = {key: value for key, value in flat.items() if key in entry.options.model_fields}
        raw.update(extra)
        try:
            return validate_options(entry, raw)
        except PluginError as error:
            raise ValueError(str(error)) from error

    def core_plugin_options(self) -> BaseModel:
        """Return the validated options model of the chosen core."""
        entry = get_registry().get(PluginKind.CORE, self.param)
        return self._plugin_options(entry, self.core_options)

    def layer_plugin_options(self) -> BaseModel:
        """Return the validated options model of the chosen static layer."""
        entry = get_registry().get(PluginKind.LAYER, self.ff)
        return self._plugin_options(entry, self.layer_options)

    def certificate_kind(self) -> CertificateKind:
        """Return the certificate kind a model built from this config declares."""
        registry = get_registry()
        core = registry.get(PluginKind.CORE, self.param)
        layer = registry.get(PluginKind.LAYER, self.ff)
        return CertificateKind.weakest([core.certificate, layer.certificate])

