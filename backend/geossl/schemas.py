"""Job parameters: the one contract shared by the CLI, the service and the QGIS plugin.

The CLI builds these from its flags, the service validates request bodies with them, and the
pipeline functions take them, so an option exists once with one default and one check.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENCODERS = ("resnet18", "resnet34", "resnet50")  # DeepLabV3+ backbones GeoSSL supports
Encoder = Literal[ENCODERS]  # type: ignore[valid-type]
Device = Literal["auto", "cpu", "cuda"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


WeightsName = Literal["imagenet"]  # named weights GeoSSL finds in local caches
INIT_HELP = ("Start the encoder from a `geossl pretrain` checkpoint, or from a torchvision/timm/torchgeo ResNet "
             "state dict (.pth/.pt/.ckpt/.safetensors; its first convolution is adapted to the rasters' bands)")
ENCODER_WEIGHTS_HELP = ("'imagenet': start the encoder from ImageNet weights already in the local torch or "
                        "Hugging Face cache (never downloaded)")


def _one_start(encoder_weights: str | None, **others: str | None) -> None:
    given = [name for name, value in others.items() if value]
    if encoder_weights and given:
        raise ValueError(f"give either encoder_weights or {' / '.join(given)} to start from, not both")


def check_smooth(v: int | None) -> int | None:
    """A smoothing window: odd, 1 (none) to 63 pixels; None passes (the model's own)."""
    if v is not None and (v < 1 or v > 63 or v % 2 == 0):
        raise ValueError(f"the smoothing window must be an odd number of pixels from 1 (none) to 63, not {v}")
    return v


def _tile_ok(v: int) -> int:
    if v % 16:
        raise ValueError(f"tile must be a multiple of 16 (DeepLabV3+ downsamples by 16), got {v}")
    return v


DEFAULT_FINETUNE_MINUTES = 8.0  # the default budget: planned to end within 10 minutes on a 2-core laptop


class FinetuneParams(_Params):
    """Few-label fine-tuning of DeepLabV3+ from polygons."""

    rasters: list[str] = Field(min_length=1, description="Training rasters (same bands)")
    labels: str = Field(description="Polygon file (GeoPackage, Shapefile, GeoJSON)")
    class_field: str = Field(description="Field holding each polygon's class")
    layer: str | None = Field(None, description="Layer of a multi-layer vector file")
    out: str = Field(description="Model file to write (.pt)")
    encoder: Encoder = "resnet18"
    init: str | None = Field(None, description=INIT_HELP)
    encoder_weights: WeightsName | None = Field(None, description=ENCODER_WEIGHTS_HELP)
    init_aspp: bool = Field(False, description="Also load the pretrained ASPP module")
    init_model: str | None = Field(None, description="Warm start: continue from this fine-tuned model (all "
                                   "weights, its classes, encoder and band statistics)")
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1, description="Total optimisation steps (overrides epochs)")
    minutes: float | None = Field(None, gt=0, le=10080, description="Wall-time budget: the steps that fit are "
                                  "measured at the start and recorded in the model (instead of steps/epochs; "
                                  f"without either: {DEFAULT_FINETUNE_MINUTES:g} minutes)")
    max_steps: int | None = Field(None, ge=1, description="Upper bound on the steps a minutes budget plans")
    steps_per_epoch: int = Field(50, ge=1)
    tile: int = Field(128, ge=32, le=2048, description="Window size in pixels (128: more, smaller steps fit a "
                      "CPU budget; measured in bench/results/ablations.md)")
    batch: int = Field(8, ge=1, le=512)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of polygons per class held out")
    class_balance: float = Field(0.0, ge=0, le=1, description="Window sampling: 1 draws every class equally "
                                 "often, 0 in proportion to its labelled area")
    photometric: float = Field(0.0, ge=0, le=1, description="Per-band gain/offset/noise augmentation "
                               "(in band standard deviations; 0: flips and rotations only)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    forest: bool = Field(True, description="Also fit a per-pixel Random Forest on the polygons' pixels and "
                         "blend its probabilities into the map")
    forest_texture: list[int] = Field([5], max_length=4, description="Window sizes (odd, pixels) of the "
                                      "local mean/std features the forest sees besides the bands")
    forest_ratios: bool | None = Field(None, description="Also give the forest the normalised difference "
                                       "(a − b)/(a + b) of every pair of bands (rasters of 2–16 non-negative "
                                       "bands; default: on for 4 bands or more, where they measured a gain)")
    forest_ratio_texture: bool = Field(True, description="With the band ratios, also their local mean/std "
                                       "over the texture windows (how uniform NDVI is around a pixel)")
    forest_weight: float | None = Field(None, ge=0, le=1, description="Share of the forest in the blend "
                                        "(default: the best of 0, ¼, ½, ¾, 1 on the validation polygons)")
    forest_pixels: int = Field(300_000, ge=1000, description="Most labelled pixels the forest is fitted on")
    smooth: int | None = Field(None, ge=1, le=63, description="Window (odd, pixels) the map's class "
                               "probabilities are averaged over (default: the best of 1, 3, 5, 9, 15 on the "
                               "validation polygons; 1: none)")
    ema: float = Field(0.995, ge=0, lt=1, description="Decay of the moving average of the weights that is "
                       "validated and saved (0: the raw weights)")
    self_training: float = Field(0.0, ge=0, le=0.75, description="Share of each batch filled with windows "
                                 "the model labels itself (confident pixels only; 0: off)")
    self_training_start: float = Field(0.3, ge=0, lt=1, description="Share of the steps trained on the "
                                       "polygons alone before self-training starts")
    pseudo_threshold: float = Field(0.9, gt=0, lt=1, description="Smallest probability that makes a "
                                    "pseudo-label")
    pseudo_weight: float = Field(1.0, gt=0, description="Weight of the pseudo-labelled windows' loss")
    pseudo_photometric: float = Field(0.0, ge=0, le=1, description="Per-band gain/offset/noise on the "
                                      "pseudo-labelled windows (the 'strong' view of FixMatch)")
    patience: int = Field(20, ge=1, description="Epochs without validation gain before stopping (the "
                          "averaged weights keep improving slowly: a short patience stops on noise)")
    seed: int = 0
    workers: int = Field(0, ge=0, le=64)
    device: Device = "auto"
    amp: bool = True
    colours: dict[str, str] | None = Field(None, description="Class name → #rrggbb")
    resume: bool = Field(False, description="Continue from <out>.state.pt (written after every epoch)")

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int) -> int:
        return _tile_ok(v)

    @field_validator("smooth")
    @classmethod
    def _smooth(cls, v: int | None) -> int | None:
        return check_smooth(v)

    @field_validator("forest_texture")
    @classmethod
    def _odd(cls, v: list[int]) -> list[int]:
        if any(k < 3 or k % 2 == 0 or k > 101 for k in v):
            raise ValueError(f"forest texture windows must be odd sizes from 3 to 101 pixels, got {v}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> FinetuneParams:
        if self.minutes is not None and (self.epochs is not None or self.steps is not None):
            raise ValueError("give a budget in minutes or in steps/epochs, not both")
        if self.epochs is None and self.steps is None and self.minutes is None:
            self.minutes = DEFAULT_FINETUNE_MINUTES
        if self.init and self.init_model:
            raise ValueError("give either init (a pretrained encoder) or init_model (a fine-tuned model), not both")
        _one_start(self.encoder_weights, init=self.init, init_model=self.init_model)
        return self

    @property
    def total_steps(self) -> int | None:
        """Steps of a steps/epochs budget; None for a minutes budget (planned when the run starts)."""
        if self.minutes is not None:
            return None
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch


class _Extent(_Params):
    """An optional area to restrict a job to (the panel's canvas / layer / drawn extent)."""

    extent: list[float] | None = Field(None, min_length=4, max_length=4,
                                       description="[xmin, ymin, xmax, ymax] to restrict the job to")
    extent_crs: str | None = Field(None, description="CRS of extent (e.g. EPSG:4326); default: the raster's")

    @field_validator("extent")
    @classmethod
    def _ordered(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError("extent must be [xmin, ymin, xmax, ymax] with xmin < xmax and ymin < ymax")
        return v


PREDICT_TILE = 768  # the largest default tile (memory grows with tile × stripe: ≈ +0.3 GB at 768 against 256)
PREDICT_TILE_MIN = 512  # the smallest: the raster's best fit is chosen in between (tiling.tile_plan)
PREDICT_OVERLAP = 16  # blends the model's border effect, a few pixels wide whatever the tile
BATCH_PIXELS = {"cpu": 768 * 768, "cuda": 8 * 768 * 768}  # pixels per forward pass by default
# Below this many computed pixels an ONNX export (≈ 8 s on 2 cores) costs more than ONNX Runtime
# saves (≈ 0.24 s per Mpx there): break-even ≈ 34 Mpx.
ORT_MIN_PIXELS = 40_000_000
PREDICT_TILE_HELP = (f"the size from {PREDICT_TILE_MIN} to {PREDICT_TILE} that computes the fewest pixels over "
                     "the raster, at least the training tile, at most the raster's shorter side")
PREDICT_BATCH_HELP = (f"about {BATCH_PIXELS['cpu'] / 1e6:.1f} Mpx a pass, "
                      f"{BATCH_PIXELS['cuda'] // BATCH_PIXELS['cpu']}× that on CUDA")


class PredictParams(_Extent):
    """Tiled prediction of a whole raster."""

    model: str
    raster: str
    out: str = Field(description="Classified GeoTIFF to write")
    confidence: str | None = Field(None, description="Confidence GeoTIFF (max probability)")
    tile: int | None = Field(None, ge=32, le=4096, description=f"Default: {PREDICT_TILE_HELP}")
    overlap: int | None = Field(None, ge=0, description=f"Default: {PREDICT_OVERLAP} px (a quarter of a tile "
                                "under 64 px)")
    batch: int | None = Field(None, ge=1, le=1024, description=f"Tiles per forward pass (default: "
                              f"{PREDICT_BATCH_HELP})")
    device: Device = "auto"
    amp: bool = True
    tta: bool = Field(False, description="Average over the 8 flips/rotations of every tile (8× the compute)")
    engine: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description=f"auto: ONNX Runtime on the CPU for rasters of ≥ {ORT_MIN_PIXELS // 10**6} Mpx or a "
        "model already exported at this tile (faster there; the graph exported once and cached), torch on CUDA "
        "and for TTA")
    cog: bool = Field(False, description="Write Cloud Optimized GeoTIFFs (with overviews: fast to display at any "
                      "zoom, readable over HTTP)")
    forest_weight: float | None = Field(None, ge=0, le=1, description="Share of the model's per-pixel forest "
                                        "in the map (default: the one chosen on validation polygons; 0: the "
                                        "network alone)")
    smooth: int | None = Field(None, ge=1, le=63, description="Window (odd, pixels) the class probabilities are "
                               "averaged over before the argmax (default: the one chosen on validation polygons; "
                               "1: none)")
    vector: str | None = Field(None, description="Also write the classes as polygons (GeoPackage, .gpkg)")
    min_area: float | None = Field(None, gt=0, description="Vector: merge regions smaller than this area "
                                   "(map units², e.g. m²) into their neighbours first")
    simplify: float | None = Field(None, gt=0, description="Vector: simplification tolerance (map units); "
                                   "neighbouring polygons keep shared edges")

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int | None) -> int | None:
        return None if v is None else _tile_ok(v)

    @field_validator("smooth")
    @classmethod
    def _smooth(cls, v: int | None) -> int | None:
        return check_smooth(v)

    @model_validator(mode="after")
    def _engine(self) -> PredictParams:
        if self.tta and self.engine == "onnxruntime":
            raise ValueError("tta (the smoother map) runs on the torch engine only: drop tta, or choose engine "
                             "auto or torch")
        return self

    @field_validator("vector")
    @classmethod
    def _gpkg(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith(".gpkg"):
            raise ValueError(f"vector output must be a GeoPackage (.gpkg), got '{v}'")
        return v

    @model_validator(mode="after")
    def _vector_options(self) -> PredictParams:
        if self.vector is None and (self.min_area is not None or self.simplify is not None):
            raise ValueError("min_area and simplify apply to the vector output: give vector too")
        return self


class ExportParams(_Params):
    """A fine-tuned model as ONNX for the Deepness QGIS plugin."""

    model: str = Field(description="Fine-tuned model (.pt)")
    out: str = Field(description="ONNX file to write (.onnx)")
    tile: int | None = Field(None, ge=32, le=4096, description="Fixed input size (default: the training tile)")
    opset: int = Field(18, ge=18, le=21, description="ONNX opset (18 runs on onnxruntime ≥ 1.14)")
    overlap: int = Field(25, ge=0, le=75, description="Tile overlap Deepness proposes, in percent")

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int | None) -> int | None:
        return None if v is None else _tile_ok(v)

    @field_validator("out")
    @classmethod
    def _onnx(cls, v: str) -> str:
        if not v.lower().endswith(".onnx"):
            raise ValueError(f"the output must be an .onnx file, got '{v}'")
        return v


class SuggestParams(_Params):
    """Where to label next: the windows a fine-tuned model is least sure about."""

    model: str = Field(description="Fine-tuned model (.pt)")
    raster: str
    labels: str | None = Field(None, description="Existing polygons: their ground is never suggested")
    class_field: str | None = Field(None, description="Class field of labels (checked against the model)")
    layer: str | None = Field(None, description="Layer of a multi-layer vector file")
    out: str = Field(description="GeoPackage to write (layer 'label here next')")
    k: int = Field(10, ge=1, le=1000, description="Number of suggestions")
    window: int = Field(64, ge=8, le=4096, description="Side of a suggested square, in pixels (multiple of 4)")
    spacing: int | None = Field(None, ge=0, description="Minimum distance between centres in pixels "
                                "(default: twice the window)")
    measure: Literal["margin", "entropy"] = "margin"
    score: Literal["drawable", "uncertainty"] = Field(
        "drawable", description="Rank by the uncertainty of the class polygon a mapper can draw in the square "
        "(drawable), or by the square's mean uncertainty (uncertainty: favours class edges)")
    class_decay: float = Field(0.5, gt=0, le=1, description="Score factor per earlier pick of the same "
                               "class: the drawn one, or with score=uncertainty the most likely (1: no class "
                               "diversity)")
    tile: int | None = Field(None, ge=32, le=4096, description="Default: the model's training tile")
    overlap: int | None = Field(None, ge=0, description="Default: a quarter of the tile")
    batch: int = Field(8, ge=1, le=1024)
    device: Device = "auto"
    amp: bool = True

    @field_validator("window")
    @classmethod
    def _window(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"window must be a multiple of 4, got {v}")
        return v

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int | None) -> int | None:
        return None if v is None else _tile_ok(v)

    @model_validator(mode="after")
    def _field(self) -> SuggestParams:
        if self.labels is not None and not self.class_field:
            raise ValueError("class_field is required with labels")
        return self


class EvaluateParams(_Params):
    """Accuracy of a classified map against a reference raster or polygons."""

    prediction: str
    reference: str | None = None
    labels: str | None = None
    class_field: str | None = None
    layer: str | None = None
    out: str | None = Field(None, description="JSON file for the metrics")

    @model_validator(mode="after")
    def _one_reference(self) -> EvaluateParams:
        if (self.reference is None) == (self.labels is None):
            raise ValueError("give either a reference raster or labels (polygons), not both")
        if self.labels is not None and not self.class_field:
            raise ValueError("class_field is required with labels")
        return self


def _method_names() -> tuple[str, ...]:
    from .methods import method_names

    return tuple(method_names())


Method = Literal[_method_names()]  # type: ignore[valid-type]


def view_size(tile: int) -> int:
    """Contrastive view size: 7/8 of the tile (the paper's 224 from 256), a multiple of 16, ≥ 32."""
    return max(32, tile * 7 // 8 // 16 * 16)


class PretrainParams(_Extent):
    """Self-supervised pretraining of a DeepLabV3+ on unlabeled rasters."""

    rasters: list[str] = Field(min_length=1, description="Unlabeled rasters or folders of GeoTIFFs (same bands)")
    out: str = Field(description="Pretrained checkpoint to write (.pt)")
    method: Method = "glcnet"
    method_options: dict[str, Any] = Field(default_factory=dict, description="Method hyper-parameters")
    encoder: Encoder = "resnet18"
    init: str | None = Field(None, description="Continue from these encoder weights: a GeoSSL checkpoint's "
                             "encoder, or a torchvision/timm/torchgeo ResNet state dict (first convolution adapted "
                             "to the bands)")
    encoder_weights: WeightsName | None = Field(None, description=ENCODER_WEIGHTS_HELP)
    tile: int = Field(256, ge=64, le=2048, description="Window size; views are 7/8 of it")
    batch: int = Field(32, ge=2, le=4096, description="Windows per step over all processes")
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1, description="Total optimisation steps (overrides epochs)")
    steps_per_epoch: int = Field(500, ge=1)
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60,
                                  description="Wall-time budget instead of steps/epochs: the steps that fit are "
                                              "measured once before the first step and fixed (recorded as the plan)")
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine to 0 over the run (the paper's), or constant after a linear warm-up: "
                              "then every snapshot is what a run of that length would have made")
    warmup_steps: int | None = Field(None, ge=0, description="constant schedule: warm-up steps (default: 2% of "
                                     "the run, at most 100); fixed for the run, so all its snapshots share it")
    weight_decay: float = Field(1e-5, ge=0)
    seed: int = Field(0, ge=0)
    workers: int = Field(0, ge=0, le=64)
    device: Device = "auto"
    amp: bool = True
    checkpoint_every: int = Field(500, ge=1, description="Steps between resume states")
    checkpoint_minutes: float | None = Field(10.0, gt=0, le=7 * 24 * 60,
                                             description="Also write the resume state after this many minutes (a "
                                                         "run killed at any time loses at most that); None: by "
                                                         "steps only")
    snapshot_steps: list[int] | None = Field(None, min_length=1, description="Also write a complete pretrained "
                                             "checkpoint <out stem>.step<N>.pt after each of these steps")
    snapshot_minutes: list[float] | None = Field(None, min_length=1, description="With minutes: snapshots after "
                                                 "the steps these shorter budgets would have planned")
    resume: bool = Field(False, description="Continue from <out>.state.pt when it exists")
    view_bands: list[str] | None = Field(
        None, min_length=1, max_length=2,
        description="RS-BYOL views (byol, moco): two equal-size 1-based band groups, e.g. ['1,2,3,7', '8,9,10,11'], "
                    "or ['random:K'] for K random bands per view")
    pair: list[str] | None = Field(
        None, min_length=1,
        description="Co-registered raster per raster (byol, moco), e.g. Sentinel-1 for Sentinel-2: view 2 comes "
                    "from it, reprojected on the fly if its grid differs")

    @field_validator("tile")
    @classmethod
    def _tile(cls, v: int) -> int:
        return _tile_ok(v)

    @field_validator("snapshot_steps")
    @classmethod
    def _snapshot_steps(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("snapshot steps must be at least 1")
        return None if v is None else sorted(set(v))

    @field_validator("snapshot_minutes")
    @classmethod
    def _snapshot_minutes(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(0 < m <= 7 * 24 * 60 for m in v):
            raise ValueError("snapshot minutes must be positive and at most a week")
        return None if v is None else sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> PretrainParams:
        if self.minutes is not None:
            if self.epochs is not None or self.steps is not None:
                raise ValueError("give minutes or steps/epochs, not both")
        elif self.epochs is None and self.steps is None:
            self.epochs = 20
        _one_start(self.encoder_weights, init=self.init)
        if self.snapshot_minutes and self.minutes is None:
            raise ValueError("snapshot_minutes needs minutes (the steps come from the same measurement)")
        if self.snapshot_steps and self.total_steps is not None and self.snapshot_steps[-1] > self.total_steps:
            raise ValueError(f"snapshot step {self.snapshot_steps[-1]} is beyond the run's {self.total_steps} steps")
        from .methods import get_method
        from .views import check_view_bands_syntax

        cls = get_method(self.method)
        known = cls.default_options()
        unknown = sorted(set(self.method_options) - set(known))
        if unknown:
            raise ValueError(f"unknown {self.method} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cls.check_options(self.method_options, self.batch)
        if (self.view_bands or self.pair) and not cls.supports_views:
            raise ValueError(f"view_bands and pair need a method with band views (byol, moco), not {self.method}")
        check_view_bands_syntax(self.view_bands)
        return self

    @property
    def total_steps(self) -> int | None:
        """The steps asked for; None for a ``minutes`` budget (planned by measurement when the run starts)."""
        if self.minutes is not None:
            return None
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch

    @property
    def view_size(self) -> int:
        return view_size(self.tile)
