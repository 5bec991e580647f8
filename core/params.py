"""Every parameter of a style job, validated once; defaults are the seed's numbers (docs/api.md lists them)."""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from core.layers import SELECTABLE_LAYERS

MAX_ITERATIONS = 20_000
MIN_SIDE = 16  # conv5_1 sits behind four 2x2 poolings: 16 px leaves it one position
MAX_SIDE = 4096


def _check_layer(name: str) -> str:
    if name not in SELECTABLE_LAYERS:
        raise ValueError(
            f"unknown VGG-19 layer {name!r}; use convN_M or reluN_M, e.g. conv4_2 "
            f"(one of {', '.join(SELECTABLE_LAYERS)})"
        )
    return name


def _check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


LayerName = Annotated[str, AfterValidator(_check_layer)]
Weight = Annotated[float, Field(ge=0.0), AfterValidator(_check_finite)]
Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]

MAX_SCALES = 16

InitKind = Literal["blend", "content", "style", "noise"]
PoolingKind = Literal["avg", "max"]
OptimizerKind = Literal["adam", "lbfgs"]
ColorMatchKind = Literal["none", "pca", "chol", "sym"]
StyleLossKind = Literal["gram", "w2"]
# An EMA's decay: 0 would be no average, 1 would never move.
Decay = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
MAX_LBFGS_HISTORY = 1000


class Scale(BaseModel):
    """One stage of a coarse-to-fine run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Side = Field(description="long side of the working image at this stage, pixels")
    iterations: int = Field(ge=1, le=MAX_ITERATIONS, description="optimiser steps at this stage")


def _schedule_kind(value: Any) -> str:
    """Which form of `scales` a value is meant as, so an error names only that form's problem."""
    return "list" if isinstance(value, list | tuple) else "auto"


ScaleSchedule = Annotated[
    Annotated[Literal["auto"], Tag("auto")]
    | Annotated[list[Scale], Field(min_length=1, max_length=MAX_SCALES), Tag("list")],
    Discriminator(_schedule_kind),
]


class StyleParams(BaseModel):
    """Hyperparameters of one optimisation. Unknown names are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(2500, ge=1, le=MAX_ITERATIONS, description="optimiser steps")
    height: Side = Field(384, description="working height of the optimisation, pixels")
    width: Side = Field(512, description="working width of the optimisation, pixels")
    keep_aspect: bool = Field(
        False, description="fit the content's aspect ratio inside height x width instead of stretching"
    )
    content_weight: Weight = Field(1.0, description="alpha, weight of the content loss")
    style_weight: Weight = Field(1000.0, description="beta, weight of the style loss")
    learning_rate: float = Field(
        2.0, gt=0.0, le=1000.0, description="Adam step, in pixel units (0..255 space); L-BFGS takes 1, as its anchors"
    )
    optimizer: OptimizerKind = Field(
        "adam",
        description='"adam" (the seed) or "lbfgs" (jcjohnson/neural-style\'s default: one function evaluation a '
        "step, as crowsonkb/style-transfer-pytorch; its history restarts at each scale)",
    )
    lbfgs_history: int = Field(
        100,
        ge=1,
        le=MAX_LBFGS_HISTORY,
        description="L-BFGS: how many past steps shape the next (jcjohnson/neural-style's -lbfgs_num_correction: "
        "100; crowsonkb uses 10); each keeps two image-sized vectors",
    )
    content_layers: list[LayerName] = Field(
        default_factory=lambda: ["conv4_2"], max_length=16, description="VGG-19 layers for the content loss"
    )
    content_layer_weights: list[Weight] = Field(
        default_factory=lambda: [1.0], max_length=16, description="one weight per content layer"
    )
    style_layers: list[LayerName] = Field(
        default_factory=lambda: ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"],
        max_length=16,
        description="VGG-19 layers for the style loss",
    )
    style_layer_weights: list[Weight] = Field(
        default_factory=lambda: [0.5, 1.0, 1.5, 3.0, 4.0], max_length=16, description="one weight per style layer"
    )
    init: InitKind = Field(
        "blend", description='initial image: "blend" (noise_ratio * noise + rest content), "content", "style", "noise"'
    )
    noise_ratio: float = Field(0.7, ge=0.0, le=1.0, description='share of noise for init "blend"')
    pooling: PoolingKind = Field("avg", description='"avg" (the seed) or "max" (plain VGG)')
    tv_weight: Weight = Field(0.0, description="total-variation smoothing weight")
    style_blend_weights: list[Weight] | None = Field(
        None, max_length=16, description="one weight per style image; null mixes them equally"
    )
    style_scale: float = Field(1.0, ge=0.05, le=4.0, description="style image size relative to the working size")
    preserve_colors: bool = Field(False, description="keep the content's colours, transfer only luminance")
    color_match: ColorMatchKind = Field(
        "none",
        description="before the run, give the style images the content's colour mean and covariance "
        '(ProGamerGov/Neural-Tools linear-color-transfer: "pca", "chol" or "sym" matrix square roots)',
    )
    style_loss: StyleLossKind = Field(
        "gram",
        description='"gram" (the seed) or "w2": the Wasserstein-2 distance between the features\' means and '
        "covariances (crowsonkb/style-transfer-pytorch); its scale differs from the Gram loss's, so style_weight "
        "wants retuning",
    )
    average: Decay | None = Field(
        None,
        description="null: the result is the lowest-loss image (the seed); a decay such as 0.99: snapshots and "
        "the result are the bias-corrected moving average of the image, restarted at each scale "
        "(crowsonkb/style-transfer-pytorch)",
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="random seed; the same seed on the same device gives the same image"
    )
    snapshot_every: int = Field(
        50,
        ge=1,
        le=MAX_ITERATIONS,
        description="snapshot period in iterations (plus iteration 1); the service's snapshots are the content's "
        "size scaled down to fit NST_SNAPSHOT_MAX_SIDE (1024 px on the long side)",
    )
    scales: ScaleSchedule | None = Field(
        None,
        description="coarse-to-fine: null runs at the working size only; a list of {size, iterations} runs each "
        "in turn, sizes (long side, px) increasing to the working size's long side, iterations then their sum; "
        '"auto" goes from 128 px up by sqrt(2) to the working size, the first stage taking twice the '
        "iterations of each later one, `iterations` in all",
    )

    @model_validator(mode="before")
    @classmethod
    def _total_of_scales(cls, data: Any) -> Any:
        """With a list of scales, `iterations` is their sum unless given (then it must be)."""
        stages = data.get("scales") if isinstance(data, dict) else None
        if isinstance(stages, list) and stages and "iterations" not in data:
            try:
                total = sum(int(_field(stage, "iterations")) for stage in data["scales"])
            except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError):  # ints like 1e999
                return data  # the field's own validation says what is wrong
            return {**data, "iterations": total}
        return data

    @model_validator(mode="after")
    def _check_scales(self) -> StyleParams:
        if not isinstance(self.scales, list):
            return self
        sizes = [stage.size for stage in self.scales]
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ValueError(f"scales: sizes must increase, got {sizes}")
        total = sum(stage.iterations for stage in self.scales)
        if total != self.iterations:
            raise ValueError(f"iterations is {self.iterations} but the scales add up to {total}; give one or the other")
        if not self.keep_aspect and sizes[-1] != max(self.height, self.width):
            raise ValueError(
                f"scales: the last size must be the working size's long side, {max(self.height, self.width)} px"
            )
        return self

    @model_validator(mode="after")
    def _check_lists(self) -> StyleParams:
        if len(self.content_layers) != len(self.content_layer_weights):
            raise ValueError(
                f"content_layer_weights has {len(self.content_layer_weights)} values "
                f"for {len(self.content_layers)} content_layers"
            )
        if len(self.style_layers) != len(self.style_layer_weights):
            raise ValueError(
                f"style_layer_weights has {len(self.style_layer_weights)} values "
                f"for {len(self.style_layers)} style_layers"
            )
        if not self.content_layers and not self.style_layers:
            raise ValueError("name at least one content or style layer")
        if self.style_blend_weights is not None and not any(w > 0 for w in self.style_blend_weights):
            raise ValueError("style_blend_weights must contain at least one positive weight")
        return self

    @model_validator(mode="after")
    def _check_weight_products(self) -> StyleParams:
        """Each layer's loss is scaled by its weight times alpha or beta: a product past the largest
        float is infinite, and the run could only diverge."""
        for overall, layer_weights, names in (
            ("content_weight", self.content_layer_weights, "content_layer_weights"),
            ("style_weight", self.style_layer_weights, "style_layer_weights"),
        ):
            for index, weight in enumerate(layer_weights):
                if not math.isfinite(getattr(self, overall) * weight):
                    raise ValueError(f"{overall} x {names}[{index}] is past the largest number: make one smaller")
        return self

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema with every default in it (pydantic leaves out defaults made by a
        default_factory, the layer lists here), for forms and generated clients."""
        schema = cls.model_json_schema()
        fill_defaults(schema)
        return schema

    def blend_weights(self, style_count: int) -> list[float]:
        """The style mixing weights for `style_count` images, normalised to sum to 1."""
        if style_count < 1:
            raise ValueError("at least one style image is needed")
        weights = self.style_blend_weights
        if weights is None:
            weights = [1.0] * style_count
        elif len(weights) != style_count:
            raise ValueError(f"style_blend_weights has {len(weights)} values for {style_count} style images")
        total = sum(weights)
        return [w / total for w in weights]

    def snapshot_iterations(self) -> list[int]:
        """Iteration 1 and every multiple of snapshot_every up to iterations (docs/api.md)."""
        marks = {1, *range(self.snapshot_every, self.iterations + 1, self.snapshot_every)}
        return sorted(marks)

    def is_snapshot(self, iteration: int) -> bool:
        return iteration == 1 or iteration % self.snapshot_every == 0


def _field(stage: Any, name: str) -> Any:
    return stage[name] if isinstance(stage, dict) else getattr(stage, name)


def fill_defaults(schema: dict[str, Any]) -> None:
    """Give each property of StyleParams' JSON Schema its default, in place."""
    for name, value in StyleParams().model_dump().items():
        schema["properties"][name].setdefault("default", value)
