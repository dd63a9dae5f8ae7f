"""Certificate kinds, certified bounds and the algebra that composes them.

A certificate is a proven upper bound on a gain of a causal map started from
the zero state:

* ``gain``: $\\|y\\|_2 \\le \\gamma \\|u\\|_2$ for every input sequence.
* ``incremental``: $\\|G(u_1) - G(u_2)\\|_2 \\le \\gamma \\|u_1 - u_2\\|_2$ and
  $G(0) = 0$, so it implies the ``gain`` bound. For linear maps the two
  coincide. A map with $G(0) \\ne 0$ must not declare this kind.
* ``none``: no bound.

Series composition multiplies bounds, a residual block ``x + F(G(x))`` has
bound $1 + \\gamma_G L_F$, and the kind of a composite is the weakest kind of
its parts.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "Certificate",
    "CertificateKind",
    "CertificateFactor",
    "ModelCertificate",
    "residual",
    "round_up",
    "safety_margin",
    "contraction",
    "series",
    "spectral_norm_upper",
]


class CertificateKind(str, enum.Enum):
    """Kind of a certified bound, ordered from weakest to strongest."""

    NONE = "none"
    GAIN = "gain"
    INCREMENTAL = "incremental"

    @property
    def rank(self) -> int:
        """Position in the order ``none < gain < incremental``."""
        return {"none": 0, "gain": 1, "incremental": 2}[self.value]

    @classmethod
    def weakest(cls, kinds: Iterable[CertificateKind]) -> CertificateKind:
        """Return the weakest of ``kinds`` (``incremental`` for an empty iterable)."""
        result = cls.INCREMENTAL
        for kind in kinds:
            kind = cls(kind)
            if kind.rank < result.rank:
                result = kind
        return result


@dataclass(frozen=True)
class Certificate:
    """A certified bound of one map.

    Attributes:
        bound: The upper bound, or ``None`` when the map is uncertified.
        kind: What the bound bounds.
    """

    bound: float | None
    kind: CertificateKind

    def __post_init__(self) -> None:
        kind = CertificateKind(self.kind)
        object.__setattr__(self, "kind", kind)
        if kind is CertificateKind.NONE:
            object.__setattr__(self, "bound", None)
            return
        if self.bound is None:
            raise ValueError(f"a certificate of kind {kind.value!r} needs a bound, got None")
        bound = float(self.bound)
        if not math.isfinite(bound) or bound < 0:
            raise ValueError(
                f"invalid certified bound {bound!r}: a bound must be finite and non-negative; "
                "check the parameters for NaN or inf"
            )
        object.__setattr__(self, "bound", bound)

    @classmethod
    def uncertified(cls) -> Certificate:
        """Return the certificate of a map with no bound."""
        return cls(None, CertificateKind.NONE)

    @property
    def certified(self) -> bool:
        """Whether this certificate carries a bound."""
        return self.kind is not CertificateKind.NONE


def series(*parts: Certificate) -> Certificate:
    """Compose certificates of maps applied one after the other."""
    kind = CertificateKind.weakest(part.kind for part in parts)
    if kind is CertificateKind.NONE:
        return Certificate.uncertified()
    bound = 1.0
    for part in parts:
        assert part.bound is not None  # guaranteed by the kind check above
        bound *= part.bound
    return Certificate(bound, kind)


def residual(inner: Certificate) -> Certificate:
    """Compose the certificate of ``x + F(x)`` from the certificate of ``F``."""
    if not inner.certified:
        return Certificate.uncertified()
    assert inner.bound is not None
    return Certificate(1.0 + inner.bound, inner.kind)


def safety_margin(dtype: torch.dtype) -> float:
    """Relative margin that covers round-off when a normalisation is applied in ``dtype``.

    Dividing by a norm computed in float64 and storing the result in ``dtype``
    can raise the norm of the stored matrix by a few units in the last place.
    Normalisers are inflated by this margin so the stored map stays within its
    bound.
    """
    if dtype in (torch.float64, torch.complex128):
        return 1e-12
    return 4.0 * float(torch.finfo(torch.float32).eps)


def spectral_norm_upper(weight: torch.Tensor) -> torch.Tensor:
    """Return the largest singular value of ``weight``, rounded up, as a 0-d float64 tensor.

    The norm comes from an exact SVD in float64 (never power iteration, which
    underestimates) and is inflated by the float64 round-off margin. The result
    is differentiable with respect to ``weight``.

    Args:
        weight: A matrix of shape ``(m, n)``, real or complex.

    Returns:
        A 0-d float64 tensor; NaN when ``weight`` contains NaN or inf.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a matrix, got a tensor of shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=weight.device)
    wide = weight.to(torch.complex128 if weight.is_complex() else torch.float64)
    # The SVD fails on NaN or inf, so it runs with those entries zeroed and the result is then set to NaN,
    # which invalidates every certificate built on it. Without a branch on a value, torch.compile keeps one graph.
    entries_finite = torch.isfinite(wide)
    sigma = torch.linalg.matrix_norm(torch.where(entries_finite, wide, torch.zeros_like(wide)), ord=2)
    nan = torch.full((), math.nan, dtype=torch.float64, device=weight.device)
    return torch.where(entries_finite.all(), sigma * (1.0 + safety_margin(torch.float64)), nan)


def contraction(weight: torch.Tensor) -> torch.Tensor:
    """Return ``weight / max(1, sigma_max(weight))``, whose spectral norm is at most 1.

    The norm comes from :func:`spectral_norm_upper` and is inflated by
    :func:`safety_margin` for ``weight``'s dtype, so the stored result stays
    within 1 after round-off. A weight already inside the unit ball is left
    unchanged. Differentiable with respect to ``weight``.
    """
    sigma = spectral_norm_upper(weight) * (1.0 + safety_margin(weight.dtype))
    return weight / torch.clamp(sigma, min=1.0).to(weight.dtype)


def round_up(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a float64 tensor to ``dtype``, rounding every entry up, keeping its gradient."""
    low = value.to(dtype)
    if dtype == torch.float64:
        return low
    bumped = torch.nextafter(low.detach(), torch.full_like(low.detach(), math.inf))
    correction = torch.where(low.detach().double() < value.detach(), bumped - low.detach(), 0.0)
    return low + correction


@dataclass(frozen=True)
class CertificateFactor:
    """One factor of a model's certificate.

    Attributes:
        name: Which part of the model the factor bounds, for example ``"block 0 core"``.
        bound: Its bound, or ``None`` when the part is uncertified.
        kind: Its certificate kind, as a string.
    """

    name: str
    bound: float | None
    kind: str


@dataclass(frozen=True)
class ModelCertificate:
    """Certificate report of a whole model.

    Attributes:
        prescribed_gamma: The gain the model was asked to respect, or ``None``.
        bound: The certified bound of the whole model (``None`` if uncertified).
        kind: ``"none"``, ``"gain"`` or ``"incremental"``.
        factors: The bounds the model bound is made of, in signal order. The
            product of the block factors, encoder, decoder and decoder scale
            is ``bound`` (up to float64 round-off, rounded up).
        notes: Reasons the model is uncertified, if any.
        initial_state_gains: For a model with learned initial states, one
            coefficient $c_i$ per block such that
            $\\|y\\|_2 \\le \\text{bound} \\, \\|u\\|_2 + \\sum_i c_i \\|x_{0,i}\\|_2$
            for every input, where $x_{0,i}$ is block $i$'s initial state;
            ``None`` when the model has no learned initial states or a core
            declares no bound on its free response.
        transient_bound: $\\sum_i c_i \\|x_{0,i}\\|_2$ for the learned initial
            states: the largest output norm the initial states can add.
    """

    prescribed_gamma: float | None
    bound: float | None
    kind: str
    factors: list[CertificateFactor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initial_state_gains: list[float] | None = None
    transient_bound: float | None = None

    @property
    def certificate(self) -> Certificate:
        """The bound and kind as a :class:`Certificate`."""
        return Certificate(self.bound, CertificateKind(self.kind))

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-compatible data."""
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise the report to a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCertificate:
        """Rebuild a report from :meth:`to_dict` output."""
        factors = [CertificateFactor(**item) for item in data.get("factors", [])]
        return cls(
            prescribed_gamma=data.get("prescribed_gamma"),
            bound=data.get("bound"),
            kind=data["kind"],
            factors=factors,
            notes=list(data.get("notes", [])),
            initial_state_gains=data.get("initial_state_gains"),
            transient_bound=data.get("transient_bound"),
        )
