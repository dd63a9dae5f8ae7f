"""Tests of ``nssm certify`` on checkpoints saved here, including models whose certificate is false."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

import nssm_plugins.hooks as builtin_hooks
from nssm_core import (
    CertificateKind,
    DeepSSM,
    LayerBase,
    PluginEntry,
    PluginKind,
    RecurrenceStructure,
    hookimpl,
    load_plugins,
    reset_registry,
)
from nssm_core.checkpoint import save_checkpoint
from nssm_core.cli import main
from nssm_core.cli._certify import load_input_windows
from nssm_plugins.cores import L2N, L2NOptions
from nssm_plugins.layers import LGLU
from nssm_plugins.layers._glu import LGLUOptions

FAST = ["--length", "16", "--starts", "2", "--steps", "5", "--restarts", "0"]


class UnderstatedCore(L2N):
    """An ``l2n`` core that declares a hundredth of its true gain: a false certificate."""

    def bound(self) -> torch.Tensor:
        return super().bound() * 0.01


class UnderstatedLayer(LGLU):
    """An ``LGLU`` with output gains 200 that declares a bound of 0.01: a false certificate."""

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model, scale=200.0)

    def bound(self) -> torch.Tensor:
        return torch.tensor(0.01, dtype=torch.float64)


class OpaqueCore(L2N):
    """An ``l2n`` core that hides its LTI realisation, so certify must search it."""

    lti_matrices = None


class ScaledIdentity(LayerBase):
    """The linear layer ``y = 0.5 x``: a true incremental bound of 0.5, for incremental models."""

    certificate_kind = CertificateKind.INCREMENTAL

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model)
        self.register_buffer("factor", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor.to(x.dtype) * x

    def bound(self) -> torch.Tensor:
        return self.factor.to(torch.float64)


class TestPlugin:
    """Registers the test cores and layers through the ordinary hooks."""

    @hookimpl
    def nssm_register_cores(self) -> list[PluginEntry]:
        return [
            PluginEntry(
                name="understated_l2n",
                kind=PluginKind.CORE,
                factory=lambda spec, options: UnderstatedCore(spec.d_input, spec.d_output, spec.d_state, gamma=0.5),
                options=L2NOptions,
                certificate=CertificateKind.INCREMENTAL,
                structure=RecurrenceStructure.DIAGONAL,
            ),
            PluginEntry(
                name="opaque_l2n",
                kind=PluginKind.CORE,
                factory=lambda spec, options: OpaqueCore(spec.d_input, spec.d_output, spec.d_state, gamma=0.5),
                options=L2NOptions,
                certificate=CertificateKind.INCREMENTAL,
                structure=RecurrenceStructure.DIAGONAL,
            ),
        ]

    @hookimpl
    def nssm_register_layers(self) -> list[PluginEntry]:
        return [
            PluginEntry(
                name="understated_lglu",
                kind=PluginKind.LAYER,
                factory=lambda spec, options: UnderstatedLayer(spec.d_model),
                options=LGLUOptions,
                certificate=CertificateKind.GAIN,
            ),
            PluginEntry(
                name="half_identity",
                kind=PluginKind.LAYER,
                factory=lambda spec, options: ScaledIdentity(spec.d_model),
                certificate=CertificateKind.INCREMENTAL,
            ),
        ]


@pytest.fixture(autouse=True)
def registry_with_test_plugins():
    registry = load_plugins(plugins=[("builtins", "nssm", builtin_hooks), ("certify-tests", "nssm-tests", TestPlugin())])
    reset_registry(registry)
    yield registry
    reset_registry(None)


def save_model(path, param="l2n", ff="LGLU", gamma=2.0, extra=None, seed=0, **fields):
    torch.manual_seed(seed)
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=2, param=param, ff=ff, gamma=gamma, **fields)
    return save_checkpoint(model, path, extra=extra), model


def certify_json(capsys, *args):
    status = main(["certify", *FAST, *map(str, args), "--json"])
    report = json.loads(capsys.readouterr().out)
    return status, report


def test_certify_text_report_passes(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors")
    status = main(["certify", str(path), *FAST])
    out = capsys.readouterr().out
    assert status == 0
    assert "certificate: kind gain" in out
    assert "block 0 core" in out
    assert "hinf" in out
    assert "result: passed" in out
    assert "VIOLATED" not in out


def test_certify_json_checks_every_part(tmp_path, capsys):
    path, model = save_model(tmp_path / "model.safetensors")
    status, report = certify_json(capsys, path)
    assert status == 0
    assert report["passed"] is True
    assert report["invalid"] == []
    assert math.isclose(report["certificate"]["bound"], 2.0, rel_tol=1e-5)
    names = {(check["name"], check["method"]) for check in report["checks"]}
    for index in range(2):
        assert (f"block {index} core", "hinf") in names
        assert (f"block {index} layer", "search") in names
    assert ("model", "search") in names
    assert ("model", "incremental search") not in names  # LGLU makes the certificate a plain gain
    for check in report["checks"]:
        assert 0.0 < check["measured"] <= check["bound"] * (1 + check["tolerance"]), check


def test_certify_hinf_matches_core_bound(tmp_path, capsys):
    path, model = save_model(tmp_path / "model.safetensors")
    _, report = certify_json(capsys, path)
    core_bounds = [float(block.core.bound()) for block in model.blocks]
    hinf = [check for check in report["checks"] if check["method"] == "hinf"]
    assert [check["bound"] for check in hinf] == pytest.approx(core_bounds)


def test_certify_incremental_model_runs_incremental_search(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors", ff="half_identity")
    status, report = certify_json(capsys, path)
    assert status == 0
    assert report["certificate"]["kind"] == "incremental"
    methods = {check["method"] for check in report["checks"] if check["name"] == "model"}
    assert methods == {"search", "incremental search"}


def test_certify_searches_core_without_realisation(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors", param="opaque_l2n")
    status, report = certify_json(capsys, path)
    assert status == 0
    methods = {check["method"] for check in report["checks"] if check["name"] == "block 0 core"}
    assert methods == {"search", "incremental search"}


def test_certify_stored_dtype(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors")
    status, report = certify_json(capsys, path, "--dtype", "stored")
    assert status == 0
    assert report["search"]["dtype"] == "stored"
    assert report["model"]["dtype"] == "float32"
    tolerances = {check["tolerance"] for check in report["checks"] if check["method"] == "search"}
    assert tolerances == {1e-3}


def test_certify_rejects_zero_length(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors")
    status = main(["certify", str(path), "--length", "0"])
    assert status == 2
    assert "--length must be a positive integer" in capsys.readouterr().err


def test_certify_understated_core_fails(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors", param="understated_l2n")
    status, report = certify_json(capsys, path)
    assert status == 1
    assert report["passed"] is False
    failed = [(check["name"], check["method"]) for check in report["checks"] if not check["passed"]]
    assert ("block 0 core", "hinf") in failed
    assert ("block 1 core", "hinf") in failed


def test_certify_understated_layer_fails_model_search(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors", ff="understated_lglu")
    status, report = certify_json(capsys, path)
    assert status == 1
    failed = {(check["name"], check["method"]) for check in report["checks"] if not check["passed"]}
    assert ("block 0 layer", "search") in failed
    assert ("model", "search") in failed


def test_certify_understated_core_text_says_violated(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors", param="understated_l2n")
    status = main(["certify", str(path), *FAST])
    out = capsys.readouterr().out
    assert status == 1
    assert "VIOLATED" in out
    assert "result: failed (a measured value exceeds its certificate)" in out


def test_certify_nan_weight_is_invalid(tmp_path, capsys):
    torch.manual_seed(0)
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=2, param="l2n", ff="LGLU", gamma=2.0)
    with torch.no_grad():
        model.blocks[1].core.K12[0, 0] = float("nan")
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    status, report = certify_json(capsys, path)
    assert status == 1
    assert report["checks"] == []
    assert any("blocks.1.core.K12" in reason for reason in report["invalid"])


def test_certify_inf_gain_is_invalid(tmp_path, capsys):
    torch.manual_seed(0)
    model = DeepSSM(1, 1, d_model=4, d_state=4, n_layers=2, param="l2n", ff="LGLU", gamma=2.0)
    with torch.no_grad():
        model.blocks[0].layer.gain_raw[0] = float("inf")
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    status = main(["certify", str(path), *FAST])
    out = capsys.readouterr().out
    assert status == 1
    assert "invalid: NaN or inf values in blocks.0.layer.gain_raw" in out
    assert "result: failed (no valid certificate)" in out


def test_certify_uncertified_model_fails(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors", param="lru", ff="GLU", gamma=None)
    status, report = certify_json(capsys, path)
    assert status == 1
    assert report["certificate"]["kind"] == "none"
    assert any("no certified bound" in reason for reason in report["invalid"])


def test_certify_missing_file(tmp_path, capsys):
    status = main(["certify", str(tmp_path / "absent.safetensors")])
    err = capsys.readouterr().err
    assert status == 2
    assert "checkpoint not found" in err


def test_certify_truncated_file(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    status = main(["certify", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "truncated" in err


def test_certify_non_nssm_safetensors(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    status = main(["certify", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "not an nssm checkpoint" in err


def test_certify_text_file_is_rejected(tmp_path, capsys):
    path = tmp_path / "notes.safetensors"
    path.write_text("not a checkpoint\n")
    status = main(["certify", str(path)])
    assert status == 2
    assert "nssm certify: error:" in capsys.readouterr().err


def write_csv(path, rows):
    lines = ["u1,y1,u2"] + [",".join(str(value) for value in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_certify_data_windows(tmp_path, capsys):
    normalization = {"u_mean": [3.0], "u_std": [2.0], "y_mean": [0.0], "y_std": [1.0]}
    path, _ = save_model(tmp_path / "model.safetensors", extra={"normalization": normalization})
    rows = [(3.0 + 2.0 * math.sin(0.3 * t), 0.0, 1.0) for t in range(40)]
    data = write_csv(tmp_path / "data.csv", rows)
    status, report = certify_json(capsys, path, "--data", data, "--inputs", "u1")
    assert status == 0
    assert report["search"]["data_windows"] == 2
    names = [check["name"] for check in report["checks"]]
    assert "model (data starts)" in names


def test_certify_data_comma_separated_inputs(tmp_path, capsys):
    torch.manual_seed(0)
    model = DeepSSM(2, 1, d_model=4, d_state=4, n_layers=1, param="l2n", ff="LGLU", gamma=2.0)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    data = write_csv(tmp_path / "data.csv", [(0.1 * t, 0.0, 1.0 - 0.1 * t) for t in range(20)])
    status, report = certify_json(capsys, path, "--data", data, "--inputs", "u1,u2")
    assert status == 0
    assert report["search"]["data_windows"] == 2


def test_certify_data_missing_column(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors")
    data = write_csv(tmp_path / "data.csv", [(1.0, 2.0, 3.0)] * 5)
    status = main(["certify", str(path), "--data", str(data), "--inputs", "uEst", *FAST])
    err = capsys.readouterr().err
    assert status == 2
    assert "no column 'uEst'" in err
    assert "u1" in err


def test_certify_data_needs_inputs(tmp_path, capsys):
    path, _ = save_model(tmp_path / "model.safetensors")
    data = write_csv(tmp_path / "data.csv", [(1.0, 2.0, 3.0)] * 5)
    status = main(["certify", str(path), "--data", str(data)])
    assert status == 2
    assert "--data and --inputs go together" in capsys.readouterr().err


def test_load_input_windows_normalises(tmp_path):
    rows = [(float(t), 0.0, 10.0 - t) for t in range(10)]
    data = write_csv(tmp_path / "data.csv", rows)
    normalization = {"u_mean": [1.0, 2.0], "u_std": [2.0, 4.0]}
    windows = load_input_windows(data, ["u1", "u2"], d_input=2, length=4, count=3, normalization=normalization)
    assert windows.shape == (3, 4, 2)
    assert windows[0, :, 0].tolist() == pytest.approx([(t - 1.0) / 2.0 for t in range(4)])
    assert windows[-1, -1].tolist() == pytest.approx([(9.0 - 1.0) / 2.0, (1.0 - 2.0) / 4.0])


def test_load_input_windows_short_record(tmp_path):
    data = write_csv(tmp_path / "data.csv", [(1.0, 0.0, 2.0)] * 3)
    windows = load_input_windows(data, ["u1"], d_input=1, length=10, count=4)
    assert windows.shape == (1, 3, 1)


def test_load_input_windows_rejects_text(tmp_path):
    data = write_csv(tmp_path / "data.csv", [(1.0, 0.0, 2.0), ("volts", 0.0, 2.0)])
    with pytest.raises(ValueError, match="line 3"):
        load_input_windows(data, ["u1"], d_input=1, length=10, count=4)


def test_load_input_windows_rejects_bad_statistics(tmp_path):
    data = write_csv(tmp_path / "data.csv", [(1.0, 0.0, 2.0)] * 3)
    with pytest.raises(ValueError, match="positive std"):
        load_input_windows(data, ["u1"], d_input=1, length=2, count=1, normalization={"u_mean": [0], "u_std": [0]})
