"""The example's CNNs: torchvision's architectures where torchvision loads, the built-in plain-torch
networks otherwise, with the same parameter counts; torchvision's state dicts load as `weights`."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from parvagpu.core.errors import ParvaError

torch = pytest.importorskip("torch")

from parvagpu.serving import zoo  # noqa: E402

CNNS = ["resnet50", "resnet101", "resnet152", "densenet121", "densenet169", "densenet201", "vgg16", "vgg19",
        "mobilenet_v2", "inception_v3"]
AUX = 3_326_696  # inception_v3's auxiliary classifier: in torchvision's build (its checkpoints have it)


def _torchvision_loads() -> bool:
    return zoo._torchvision_models(required=False) is not None


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_without_torchvision_auto_builds_the_builtin_and_torchvision_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    assert type(zoo.mobilenet_v2()).__module__ == "torch.nn.modules.container"
    with pytest.raises(ParvaError, match="impl torchvision needs torchvision"):
        zoo.mobilenet_v2(impl="torchvision")
    with pytest.raises(ParvaError, match="impl must be one of auto, torchvision, builtin"):
        zoo.resnet50(impl="tv")


@pytest.mark.skipif(not _torchvision_loads(), reason="torchvision does not load beside this torch (see zoo.py)")
@pytest.mark.parametrize("name", CNNS)
def test_torchvision_architectures_match_the_builtin_ones_in_size(name):
    tv, builtin = getattr(zoo, name)(), getattr(zoo, name)(impl="builtin")
    assert type(tv).__module__.startswith("torchvision.models.")
    assert _params(tv) - (AUX if name == "inception_v3" else 0) == _params(builtin)


@pytest.mark.skipif(not _torchvision_loads(), reason="torchvision does not load beside this torch (see zoo.py)")
def test_a_torchvision_state_dict_loads_as_weights(tmp_path):
    import torchvision

    from parvagpu.serving.workers import build_runner, read_models

    trained = torchvision.models.mobilenet_v2(weights=None).eval()
    torch.save(trained.state_dict(), tmp_path / "mnv2.pt")
    (tmp_path / "models.yaml").write_text(
        "models:\n  m:\n    factory: parvagpu.serving.zoo:mobilenet_v2\n    weights: mnv2.pt\n"
        "    inputs: [{name: x, datatype: FP32, shape: [3, 64, 64]}]\n"
        "    outputs: [{name: y, datatype: FP32, shape: [1000]}]\n")
    runner = build_runner(read_models(tmp_path / "models.yaml")["m"], 2)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out, _ = runner.predict({"x": x})
    with torch.inference_mode():
        want = trained(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["y"], want, rtol=1e-4, atol=1e-4)
