"""int4 packages carry onnxruntime's MatMulNBits accuracy level that the export was asked for."""

import json

import onnx


def _levels(package) -> set[int]:
    model = onnx.load(str(package / "decoder.onnx"), load_external_data=False)
    return {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "accuracy_level"}


def test_int4_decoder_uses_the_configured_accuracy_level(exported):
    out, manifests = exported
    assert manifests["int4"]["quantization"]["accuracy_level"] == 4
    assert json.loads((out / "int4" / "manifest.json").read_text())["quantization"]["block_size"] == 32
    assert _levels(out / "int4") == {4}


def test_accuracy_level_is_validated():
    import pytest

    from export.build import ExportConfig, ExportError

    with pytest.raises(ExportError, match="accuracy_level must be 0-4"):
        ExportConfig(model="x", accuracy_level=7)
