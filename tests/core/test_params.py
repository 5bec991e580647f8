"""StyleParams: the seed's defaults, and every bad value rejected with a message naming it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from core.params import StyleParams


def test_defaults_are_the_seeds_numbers() -> None:
    p = StyleParams()
    assert (p.iterations, p.height, p.width) == (2500, 384, 512)
    assert (p.content_weight, p.style_weight, p.learning_rate) == (1.0, 1000.0, 2.0)
    assert p.content_layers == ["conv4_2"] and p.content_layer_weights == [1.0]
    assert p.style_layers == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    assert p.style_layer_weights == [0.5, 1.0, 1.5, 3.0, 4.0]
    assert (p.init, p.noise_ratio, p.pooling, p.tv_weight) == ("blend", 0.7, "avg", 0.0)
    assert (p.keep_aspect, p.preserve_colors, p.style_scale, p.snapshot_every) == (False, False, 1.0, 50)


def test_snapshot_iterations_are_one_and_every_period() -> None:
    assert StyleParams(iterations=120).snapshot_iterations() == [1, 50, 100]
    assert StyleParams().snapshot_iterations()[:3] == [1, 50, 100]
    assert StyleParams().snapshot_iterations()[-1] == 2500
    assert len(StyleParams().snapshot_iterations()) == 51
    assert StyleParams(iterations=1).snapshot_iterations() == [1]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 20001}, "iterations"),
        ({"height": 15}, "height"),
        ({"width": 4097}, "width"),
        ({"content_weight": -1.0}, "content_weight"),
        ({"style_weight": math.inf}, "style_weight"),
        ({"style_weight": math.nan}, "style_weight"),
        ({"tv_weight": -0.1}, "tv_weight"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"noise_ratio": 1.5}, "noise_ratio"),
        ({"init": "zeros"}, "init"),
        ({"pooling": "min"}, "pooling"),
        ({"style_layers": ["conv6_1"], "style_layer_weights": [1.0]}, "style_layers"),
        ({"content_layers": ["conv_4"]}, "content_layers"),
        ({"style_layer_weights": [1.0, 2.0]}, "style_layer_weights"),
        ({"content_layer_weights": [1.0, 1.0]}, "content_layer_weights"),
        ({"style_blend_weights": [0.0, 0.0]}, "style_blend_weights"),
        ({"style_blend_weights": [-1.0]}, "style_blend_weights"),
        ({"style_scale": 0.0}, "style_scale"),
        ({"seed": -1}, "seed"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"iterations": "many"}, "iterations"),
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"content_layers": [], "content_layer_weights": [], "style_layers": [], "style_layer_weights": []}, "layer"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        StyleParams(**changes)
    assert field in str(caught.value)


def test_blend_weights_normalise_and_check_the_count() -> None:
    assert StyleParams().blend_weights(4) == [0.25] * 4
    assert StyleParams(style_blend_weights=[3.0, 1.0]).blend_weights(2) == [0.75, 0.25]
    with pytest.raises(ValueError, match="2 values for 3 style images"):
        StyleParams(style_blend_weights=[1.0, 1.0]).blend_weights(3)


def test_params_are_frozen_and_round_trip_as_json() -> None:
    p = StyleParams(iterations=10, seed=3)
    with pytest.raises(ValidationError):
        p.iterations = 11  # type: ignore[misc]
    assert StyleParams.model_validate_json(p.model_dump_json()) == p
