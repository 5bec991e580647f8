"""Where the weights come from: a file, torchvision, random only on request, never a fallback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from core import StyleParams, WeightsUnavailableError, stylize
from core.layers import conv_shapes
from core.vgg import cached_state_dict
from core.weights import WeightsSource, features_state_dict, random_state_dict


def test_the_environment_variable_chooses_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NST_VGG_WEIGHTS")
    assert WeightsSource.from_env() == WeightsSource("imagenet")
    monkeypatch.setenv("NST_VGG_WEIGHTS", "random")
    assert WeightsSource.from_env().label == "random"
    monkeypatch.setenv("NST_VGG_WEIGHTS", "/tmp/w.pth")
    assert WeightsSource.from_env() == WeightsSource("file", Path("/tmp/w.pth"))
    assert WeightsSource.from_env().label == "/tmp/w.pth"


def scaled_state() -> dict[str, torch.Tensor]:
    return {k: v * 1.5 for k, v in random_state_dict().items()}


@pytest.mark.parametrize("layout", ["full_model", "features_only"])
def test_a_weights_file_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, content_image: Image.Image, style_image: Image.Image
) -> None:
    state = scaled_state()
    if layout == "full_model":
        state = {f"features.{k}": v for k, v in state.items()} | {"classifier.0.weight": torch.zeros(4, 4)}
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    monkeypatch.setenv("NST_VGG_WEIGHTS", str(path))
    loaded = features_state_dict(WeightsSource.from_env())
    assert set(loaded) == set(conv_shapes())
    assert torch.equal(loaded["28.weight"], scaled_state()["28.weight"])
    result = stylize(content_image, [style_image], StyleParams(iterations=2, height=16, width=16))
    assert result.weights == str(path)


def test_a_missing_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"NST_VGG_WEIGHTS=.*no such file"):
        features_state_dict(WeightsSource.parse(str(tmp_path / "absent.pth")))


@pytest.mark.parametrize(
    "content",
    [b"not a torch file", None, {"0.weight": torch.zeros(3)}],
    ids=["garbage", "not_a_dict", "wrong_shapes"],
)
def test_a_bad_file_is_a_clear_error(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2] if content is None else content, path)
    with pytest.raises(WeightsUnavailableError, match="NST_VGG_WEIGHTS"):
        features_state_dict(WeightsSource("file", path))


def test_no_network_and_no_variable_is_a_clear_error_not_random_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content_image: Image.Image, style_image: Image.Image
) -> None:
    monkeypatch.delenv("NST_VGG_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: torchvision must download

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(WeightsUnavailableError) as caught:
        stylize(content_image, [style_image], StyleParams(iterations=1, height=16, width=16))
    assert "NST_VGG_WEIGHTS" in str(caught.value)
    with pytest.raises(WeightsUnavailableError):  # asked again: still no silent fallback
        cached_state_dict(WeightsSource("imagenet"))


def test_random_weights_are_the_same_in_every_call() -> None:
    first, second = random_state_dict(), random_state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
