"""Registry lookups and SSMConfig validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nssm_core import DeepSSM, PluginError, PluginKind, SSMConfig, get_registry

BUILT_INS = {
    PluginKind.CORE: {"lru", "l2n", "tv", "l2ru", "zak", "l2nt"},
    PluginKind.LAYER: {"GLU", "MLP", "LGLU", "LMLP", "TLIP"},
    PluginKind.BACKEND: {"loop", "scan", "assoc", "chunked"},
}


@pytest.mark.parametrize("kind", list(BUILT_INS))
def test_registry_lists_builtins(kind):
    names = set(get_registry().names(kind))
    assert BUILT_INS[kind] <= names


def test_builtins_come_from_nssm_distribution():
    for entry in get_registry().entries():
        if entry.name in BUILT_INS[entry.kind]:
            assert entry.distribution == "nssm"


def test_unknown_core_lists_valid_names():
    with pytest.raises(PluginError) as info:
        get_registry().get(PluginKind.CORE, "l2m")
    message = str(info.value)
    assert "'l2m'" in message
    assert "Did you mean 'l2n'" in message
    for name in BUILT_INS[PluginKind.CORE]:
        assert name in message


def test_config_unknown_param_rejected():
    with pytest.raises(ValidationError) as info:
        SSMConfig(param="lruu")
    assert "Did you mean 'lru'" in str(info.value)


def test_config_typo_field_suggests():
    with pytest.raises(ValidationError) as info:
        SSMConfig(rhoo=0.5)
    message = str(info.value)
    assert "'rhoo'" in message
    assert "Did you mean 'rho'" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("d_model", 0), ("d_state", -2), ("n_layers", 0), ("gamma", -1.0), ("gamma", 0.0), ("dropout", 1.5)],
)
def test_config_rejects_bad_sizes(field, value):
    with pytest.raises(ValidationError) as info:
        SSMConfig(**{field: value})
    assert field in str(info.value)


def test_config_gamma_needs_certified_parts():
    with pytest.raises(ValidationError) as info:
        SSMConfig(param="lru", ff="LGLU", gamma=2.0)
    message = str(info.value)
    assert "'lru'" in message
    assert "no certified bound" in message
    with pytest.raises(ValidationError) as info:
        SSMConfig(param="l2n", ff="GLU", gamma=2.0)
    assert "'GLU'" in str(info.value)


def test_config_plugin_option_validated_by_plugin():
    with pytest.raises(ValidationError) as info:
        SSMConfig(param="l2n", d_state=7)
    assert "even" in str(info.value)
    with pytest.raises(ValidationError) as info:
        SSMConfig(param="l2n", core_options={"rhoo": 0.3})
    assert "Did you mean 'rho'" in str(info.value)


def test_config_json_round_trip():
    config = SSMConfig(d_model=8, d_state=6, n_layers=3, param="l2n", ff="LGLU", gamma=2.5, rho=0.7)
    assert SSMConfig.model_validate_json(config.model_dump_json()) == config


def test_model_keyword_and_config_styles_agree():
    config = SSMConfig(d_model=8, d_state=6, n_layers=3, param="l2n", ff="LGLU", gamma=2.5)
    from_config = DeepSSM(2, 3, config=config)
    from_fields = DeepSSM(2, 3, d_model=8, d_state=6, n_layers=3, param="l2n", ff="LGLU", gamma=2.5)
    assert from_config.config == from_fields.config
    overridden = DeepSSM(2, 3, config=config, n_layers=1)
    assert len(overridden.blocks) == 1
