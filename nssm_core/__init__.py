"""nssm: deep state-space models with a prescribed, certified L2 gain.

The public API of the core package: the model and its config, the plugin
protocols and registry, the certificate algebra and the analysis tools.
"""

from importlib.metadata import PackageNotFoundError, version

from ._base import CoreBase as CoreBase
from ._base import LayerBase as LayerBase
from ._base import check_input as check_input
from ._base import check_state as check_state
from ._base import recurrence_dtype as recurrence_dtype
from ._base import resolve_backend as resolve_backend
from ._certificate import Certificate as Certificate
from ._certificate import CertificateFactor as CertificateFactor
from ._certificate import CertificateKind as CertificateKind
from ._certificate import contraction as contraction
from ._certificate import ModelCertificate as ModelCertificate
from ._certificate import residual as residual
from ._certificate import safety_margin as safety_margin
from ._certificate import series as series
from ._certificate import spectral_norm_upper as spectral_norm_upper
from ._config import SSMConfig as SSMConfig
from ._transforms import parameter_transform as parameter_transform
from ._transforms import reuse_parameter_transforms as reuse_parameter_transforms
from ._model import SSL as SSL
from ._model import DeepSSM as DeepSSM
from ._model import build_core as build_core
from ._model import build_layer as build_layer
from ._protocols import CoreSpec as CoreSpec
from ._protocols import DynamicCore as DynamicCore
from ._protocols import LayerSpec as LayerSpec
from ._protocols import LTICore as LTICore
from ._protocols import PluginKind as PluginKind
from ._protocols import RecurrenceStructure as RecurrenceStructure
from ._protocols import ScanBackend as ScanBackend
from ._protocols import StaticLayer as StaticLayer
from ._registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._registry import NoOptions as NoOptions
from ._registry import PluginEntry as PluginEntry
from ._registry import PluginError as PluginError
from ._registry import PluginFailure as PluginFailure
from ._registry import PluginLoadWarning as PluginLoadWarning
from ._registry import Registry as Registry
from ._registry import get_registry as get_registry
from ._registry import load_plugins as load_plugins
from ._registry import reset_registry as reset_registry
from .hookspecs import hookimpl as hookimpl

try:
    __version__ = version("nssm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "SSL",
    "Certificate",
    "CertificateFactor",
    "CertificateKind",
    "CoreBase",
    "CoreSpec",
    "DeepSSM",
    "DynamicCore",
    "LTICore",
    "LayerBase",
    "LayerSpec",
    "ModelCertificate",
    "NoOptions",
    "PluginEntry",
    "PluginError",
    "PluginFailure",
    "PluginKind",
    "PluginLoadWarning",
    "RecurrenceStructure",
    "Registry",
    "SSMConfig",
    "ScanBackend",
    "StaticLayer",
    "__version__",
    "build_core",
    "build_layer",
    "check_input",
    "check_state",
    "recurrence_dtype",
    "contraction",
    "get_registry",
    "hookimpl",
    "load_plugins",
    "parameter_transform",
    "reset_registry",
    "residual",
    "resolve_backend",
    "reuse_parameter_transforms",
    "safety_margin",
    "series",
    "spectral_norm_upper",
]
