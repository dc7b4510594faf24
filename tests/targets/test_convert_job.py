"""ConvertJob is task-agnostic: feeds by input name, outputs in order, a validation evaluator and a
task payload. The Ascend converter works from the generic fields alone (a non-classifier job gets
its linted, parity-checked bundle and device row); classifier specifics come from the payload;
the mobile converter refuses what it cannot convert, with exit 2, before writing anything."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.errors import UserError
from edgekd.targets import ClassifierPayload, ConvertJob, family
from edgekd.targets.base import host_device
from tests import ascend_fakes
from tests.export.test_ascend import _card
from tests.export.test_ascend_device import _fp16_fragile_model, _fragile_data


def _job(tmp_path: Path, target, payload=None, **over) -> ConvertJob:
    _fp16_fragile_model(tmp_path / "m.onnx")
    x, _ = _fragile_data(8, 0)
    fields = dict(wd=tmp_path / "convert", target=target, selected="fp32", onnx_path=tmp_path / "m.onnx",
                  fp32_onnx=tmp_path / "m.onnx", student=None, example={"x": x}, expected=[x + 0.0],
                  calib={"x": x}, input_shapes={"x": [1, 4]}, payload=payload, host_device=host_device())
    (tmp_path / "convert").mkdir()
    return ConvertJob(**{**fields, **over})


def test_ascend_converts_a_job_without_a_classifier_payload(tmp_path, monkeypatch):
    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    card = _card(ascend__loop=50, ascend__warmup=5, ascend__idle_seconds=0.2, ascend__power_interval_s=0.05)
    outputs, metrics = family(card).convert(_job(tmp_path, card))
    man = metrics["manifest"]
    assert man["input"] == {"name": "x", "shape": [1, 4], "dtype": "float32"} and man["host_parity"]["ok"]
    assert man["precision_preflight"] is None and man["accuracy"] is None  # no test data: nothing reported
    assert man["amct"]["samples"] == 8 and "model.om" in outputs
    (row,) = metrics["models"]
    assert row["variant"] == "ascend-om" and row["measured_on"] == "device" and row["params"] is None
    assert row["energy"]["method"] == "npu-smi"


def test_ascend_reads_test_data_only_from_the_classifier_payload(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no CANN: the bundle alone, an estimate row
    x, y = _fragile_data(200, 0)
    xv, yv = _fragile_data(64, 1)
    payload = ClassifierPayload(class_names=list("abcd"), normalization={}, x_test=x, y_test=y, x_val=xv, y_val=yv)
    _, metrics = family(_card()).convert(_job(tmp_path, _card(), payload=payload, budget_points=0.5))
    prec = metrics["manifest"]["precision_preflight"]
    assert metrics["manifest"]["accuracy"]["static_onnx_fp32"] == 1.0
    assert sorted(prec["keep_fp32"]) == ["g1", "g2"]  # the fragile layers, found through the payload's data
    assert metrics["models"][0]["measured_on"] == "estimate"


def test_one_input_converters_refuse_other_models(tmp_path):
    x, _ = _fragile_data(4, 0)
    job = _job(tmp_path, _card(), example={"ids": x, "mask": x}, calib={"ids": x, "mask": x})
    with pytest.raises(UserError) as e:
        family(_card()).convert(job)
    assert e.value.exit_code == 2 and "one input and one output" in e.value.message and "ids, mask" in e.value.message
    assert not (tmp_path / "convert" / "ascend").exists()


def test_mobile_refuses_a_job_without_a_torch_classifier(tmp_path):
    from edgekd.cards import load_target

    mobile = load_target("mobile")
    with pytest.raises(UserError) as e:
        family(mobile).convert(_job(tmp_path, mobile))
    assert e.value.exit_code == 2 and "converts classifiers" in e.value.message
    assert list((tmp_path / "convert").iterdir()) == []
