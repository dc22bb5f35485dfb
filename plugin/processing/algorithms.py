"""The GeoSSL Processing algorithms: one per job type, each a thin form over the same job parameters.

Layers are turned into file paths (and class colours read from the polygon style) in
``prepareAlgorithm``, which runs on the main thread where touching project layers is safe; the
job itself runs in ``processAlgorithm`` on the worker thread, through the blocking client.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ..client import ApiError, BlockingClient
from ..gain import WARN, gain_path, gain_sentence
from ..layers import LayerError, class_colours, polygon_source, raster_path
from .runner import backend_connection, run_job

ENCODERS = ("resnet18", "resnet34", "resnet50")
GROUP = "Few-label segmentation"
# ENCODER_WEIGHTS choices and the job parameter each sends (ImageNet: from the backend's local cache only).
ENCODER_WEIGHTS = (("Random (or the weight file above)", None), ("ImageNet (already in the backend's torch cache)",
                                                                 "imagenet"))
WEIGHT_FILTER = "Weights (*.pt *.pth *.ckpt *.safetensors);;All files (*)"
INIT_HELP = ("<p><b>Start from</b>: a weight file — a GeoSSL pretrained encoder, or a torchvision/timm/torchgeo ResNet "
             "state dict such as SSL4EO-S12 Sentinel-2 weights (its first layer is adapted to the rasters' bands; "
             "choose the file's encoder) — or ImageNet weights the backend already has in its torch cache (nothing "
             "is downloaded; if they are missing the error names the file to fetch and where to put it).</p>")


def _raster_file(layer: QgsRasterLayer | None, what: str) -> str:
    if layer is None:
        raise QgsProcessingException(f"Choose the {what}.")
    try:
        return raster_path(layer)
    except LayerError as exc:
        raise QgsProcessingException(str(exc)) from exc


def _integer(name: str, description: str, default: int | None, minimum: int,
             optional: bool = False) -> QgsProcessingParameterNumber:
    return QgsProcessingParameterNumber(name, description, QgsProcessingParameterNumber.Integer, default,
                                        optional=optional, minValue=minimum)


def _add_training_parameters(algorithm: QgsProcessingAlgorithm, steps: int, tile: int, min_tile: int,
                             batch: int, min_batch: int) -> None:
    """STEPS, TILE and BATCH: how long and on what pieces pretraining trains."""
    algorithm.addParameter(_integer("STEPS", "Training steps", steps, 1))
    algorithm.addParameter(_integer("TILE", "Tile size (pixels, multiple of 16)", tile, min_tile))
    algorithm.addParameter(_integer("BATCH", "Batch size", batch, min_batch))


def _add_start_parameters(algorithm: QgsProcessingAlgorithm, init_label: str) -> None:
    """INIT (a weight file) and ENCODER_WEIGHTS (ImageNet): what the encoder starts from."""
    algorithm.addParameter(QgsProcessingParameterFile("INIT", init_label, fileFilter=WEIGHT_FILTER, optional=True))
    algorithm.addParameter(QgsProcessingParameterEnum("ENCODER_WEIGHTS", "Start from known weights",
                                                      [label for label, _ in ENCODER_WEIGHTS], defaultValue=0))


def _start_values(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any],
                  context: QgsProcessingContext) -> dict[str, str]:
    """``init`` and/or ``encoder_weights``; both given is refused by the backend, naming them."""
    values: dict[str, str] = {}
    init = algorithm.parameterAsFile(parameters, "INIT", context)
    if init:
        values["init"] = init
    weights = ENCODER_WEIGHTS[algorithm.parameterAsEnum(parameters, "ENCODER_WEIGHTS", context)][1]
    if weights:
        values["encoder_weights"] = weights
    return values


def _training_values(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any],
                     context: QgsProcessingContext) -> dict[str, int]:
    return {"steps": algorithm.parameterAsInt(parameters, "STEPS", context),
            "tile": algorithm.parameterAsInt(parameters, "TILE", context),
            "batch": algorithm.parameterAsInt(parameters, "BATCH", context)}


def _raster_layers(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext,
                   what: str) -> list[QgsRasterLayer]:
    """The raster layers chosen under RASTERS; at least one, or the run stops."""
    rasters = [layer for layer in algorithm.parameterAsLayerList(parameters, "RASTERS", context)
               if isinstance(layer, QgsRasterLayer)]
    if not rasters:
        raise QgsProcessingException(f"Choose at least one {what}.")
    return rasters


def _polygon_file(layer: QgsVectorLayer | None) -> tuple[str, str | None]:
    if layer is None:
        raise QgsProcessingException("Choose the polygon layer.")
    try:
        return polygon_source(layer)
    except LayerError as exc:
        raise QgsProcessingException(str(exc)) from exc


class GeoSSLAlgorithm(QgsProcessingAlgorithm):
    """Shared plumbing: ``prepare`` builds the job parameters on the main thread, ``process`` runs them."""

    KIND = ""
    NAME = ""
    TITLE = ""
    HELP = ""

    def __init__(self) -> None:
        super().__init__()
        self._params: dict[str, Any] = {}

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802 (QGIS API name)
        return self.TITLE

    def group(self) -> str:
        return GROUP

    def groupId(self) -> str:  # noqa: N802 (QGIS API name)
        return "fewlabel"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API name)
        return self.HELP + ("<p>Runs in the GeoSSL backend: the one the GeoSSL panel is connected to, or a local "
                            "one started for this run. Layers must be saved files.</p>")

    def createInstance(self) -> GeoSSLAlgorithm:  # noqa: N802 (QGIS API name)
        return type(self)()

    def prepareAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> bool:
        self._params = self.job_params(parameters, context)
        return True

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        with backend_connection(feedback) as connection:
            client = BlockingClient(connection, feedback)
            self.before_run(client, feedback)
            job = run_job(client, self.KIND, self._params, feedback)
        return self.outputs(job)

    def before_run(self, client: BlockingClient, feedback: QgsProcessingFeedback) -> None:
        """Tell the user something first, once the backend is reached (override)."""

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        raise NotImplementedError

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def _metric_outputs(algorithm: QgsProcessingAlgorithm) -> None:
    algorithm.addOutput(QgsProcessingOutputNumber("OA", "Overall accuracy"))
    algorithm.addOutput(QgsProcessingOutputNumber("KAPPA", "Cohen's kappa"))
    algorithm.addOutput(QgsProcessingOutputNumber("MIOU", "Mean IoU"))


def _metric_values(metrics: dict[str, Any] | None) -> dict[str, Any]:
    metrics = metrics or {}
    return {"OA": metrics.get("overall_accuracy"), "KAPPA": metrics.get("kappa"), "MIOU": metrics.get("miou")}


class SegmentAlgorithm(GeoSSLAlgorithm):
    KIND, NAME, TITLE = "predict", "segment", "Segment a raster"
    HELP = ("<p>Classify a whole raster with a GeoSSL model (<code>.pt</code> from fine-tuning). The map is a "
            "GeoTIFF with the model's class colours and names; the optional confidence raster holds the "
            "probability of the chosen class. <b>Smoother map</b> averages the model over the 8 flips and "
            "rotations of every tile: fewer speckles and seams, 8 times the computing time.</p>")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model", extension="pt"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster to classify"))
        tile = _integer("TILE", "Tile size (pixels; default: the raster's best fit, 512–768)", None, 32,
                        optional=True)
        tile.setFlags(tile.flags() | tile.FlagAdvanced)
        self.addParameter(tile)
        batch = _integer("BATCH", "Tiles per batch (default: sized to the tile)", None, 1, optional=True)
        batch.setFlags(batch.flags() | batch.FlagAdvanced)
        self.addParameter(batch)
        self.addParameter(QgsProcessingParameterBoolean("TTA", "Smoother map (8 flips/rotations, 8× slower)",
                                                        False))
        cog = QgsProcessingParameterBoolean("COG", "Cloud Optimized GeoTIFF (overviews: fast at any zoom)", False)
        cog.setFlags(cog.flags() | cog.FlagAdvanced)
        self.addParameter(cog)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classified map"))
        self.addParameter(QgsProcessingParameterRasterDestination("CONFIDENCE", "Confidence", optional=True,
                                                                  createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "POLYGONS", "Polygons (GeoPackage: class, name, mean confidence)", QgsProcessing.TypeVectorPolygon,
            optional=True, createByDefault=False))
        for name, label in (("MIN_AREA", "Polygons: merge regions smaller than (map units²)"),
                            ("SIMPLIFY", "Polygons: simplification tolerance (map units)")):
            number = QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Double, None,
                                                  optional=True, minValue=0.0)
            number.setFlags(number.flags() | number.FlagAdvanced)
            self.addParameter(number)

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.parameterAsFile(parameters, "MODEL", context),
            "raster": _raster_file(self.parameterAsRasterLayer(parameters, "INPUT", context), "raster to classify"),
            "out": self.parameterAsOutputLayer(parameters, "OUTPUT", context),
        }
        for name in ("TILE", "BATCH"):  # unset: the backend's plan for this raster
            if parameters.get(name) not in (None, ""):
                params[name.lower()] = self.parameterAsInt(parameters, name, context)
        for name in ("TTA", "COG"):  # unticked sends nothing: the backend's default
            if parameters.get(name) not in (None, "") and self.parameterAsBool(parameters, name, context):
                params[name.lower()] = True
        confidence = self.parameterAsOutputLayer(parameters, "CONFIDENCE", context) \
            if parameters.get("CONFIDENCE") not in (None, "") else ""
        if confidence:
            params["confidence"] = confidence
        polygons = self.parameterAsOutputLayer(parameters, "POLYGONS", context) \
            if parameters.get("POLYGONS") not in (None, "") else ""
        if polygons:
            if not polygons.lower().endswith(".gpkg"):
                raise QgsProcessingException(f"Save the polygons as a GeoPackage (.gpkg), not '{polygons}'.")
            params["vector"] = polygons
            for name, key in (("MIN_AREA", "min_area"), ("SIMPLIFY", "simplify")):
                if parameters.get(name) not in (None, "") and self.parameterAsDouble(parameters, name, context) > 0:
                    params[key] = self.parameterAsDouble(parameters, name, context)
        return params

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        result = job.get("result") or {}
        out = {"OUTPUT": result.get("classes_raster") or self._params["out"]}
        if self._params.get("confidence"):
            out["CONFIDENCE"] = result.get("confidence_raster") or self._params["confidence"]
        if self._params.get("vector"):
            out["POLYGONS"] = result.get("vector") or self._params["vector"]
        return out


class ExportOnnxAlgorithm(GeoSSLAlgorithm):
    KIND, NAME, TITLE = "export", "export_onnx", "Export model to ONNX"
    HELP = ("<p>Write a fine-tuned GeoSSL model (<code>.pt</code>) as an ONNX file that the <i>Deepness</i> plugin "
            "loads as a Segmentor: fixed tile size, class probabilities out, and the band normalisation, class "
            "names, pixel size and tile overlap in its metadata, so Deepness needs no further settings.</p>")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model", extension="pt"))
        tile = _integer("TILE", "Tile size (pixels; default: the model's training tile)", None, 32, optional=True)
        tile.setFlags(tile.flags() | tile.FlagAdvanced)
        self.addParameter(tile)
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "ONNX model", "ONNX model (*.onnx)"))

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.parameterAsFile(parameters, "MODEL", context),
                                  "out": self.parameterAsFileOutput(parameters, "OUTPUT", context)}
        if parameters.get("TILE") not in (None, ""):
            params["tile"] = self.parameterAsInt(parameters, "TILE", context)
        return params

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        return {"OUTPUT": (job.get("result") or {}).get("onnx") or self._params["out"]}


class _PolygonTraining:
    """Polygon + class field parameters shared by fine-tune and evaluate."""

    @staticmethod
    def add_polygon_parameters(algorithm: QgsProcessingAlgorithm, label: str) -> None:
        algorithm.addParameter(QgsProcessingParameterVectorLayer("POLYGONS", label,
                                                                 [QgsProcessing.TypeVectorPolygon]))
        algorithm.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field", parentLayerParameterName="POLYGONS"))

    @staticmethod
    def polygon_params(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any],
                       context: QgsProcessingContext) -> tuple[dict[str, Any], QgsVectorLayer]:
        layer = algorithm.parameterAsVectorLayer(parameters, "POLYGONS", context)
        path, sublayer = _polygon_file(layer)
        fields = algorithm.parameterAsFields(parameters, "CLASS_FIELD", context)
        if not fields:
            raise QgsProcessingException("Choose the class field.")
        params: dict[str, Any] = {"labels": path, "class_field": fields[0]}
        if sublayer:
            params["layer"] = sublayer
        return params, layer


def _finetune_recipe_values(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any],
                            context: QgsProcessingContext) -> dict[str, Any]:
    """The budget, tile and batch the user set; 0 (or nothing) leaves each to the backend's recipe."""
    def number(name: str) -> float:
        return algorithm.parameterAsDouble(parameters, name, context) if parameters.get(name) not in (None, "") \
            else 0.0

    values: dict[str, Any] = {}
    minutes, steps = number("MINUTES"), int(number("STEPS"))
    if minutes > 0 and steps > 0:
        raise QgsProcessingException("Give the training budget either in minutes or in steps, not both "
                                     "(set the other to 0).")
    if steps > 0:
        values["steps"] = steps
    elif minutes > 0:
        values["minutes"] = minutes
    for name in ("TILE", "BATCH"):
        value = int(number(name))
        if value > 0:
            values[name.lower()] = value
    return values


class FinetuneAlgorithm(GeoSSLAlgorithm):
    KIND, NAME, TITLE = "finetune", "finetune", "Fine-tune a model from polygons"
    HELP = ("<p>Train a DeepLabV3+ segmentation model from a few polygons with a class field. Pixels outside "
            "the polygons are ignored (not background). If the polygon layer is styled <i>Categorized</i> by the "
            "class field, its colours become the map's colours.</p>"
            "<p><b>Budget</b>: 0 minutes and 0 steps train for the backend's default time (a few minutes; the "
            "GeoSSL panel shows it). A number of minutes: the backend measures a few steps, then trains the steps "
            "that fit; the model records them, so <i>Training steps</i> set to that number repeats the run. "
            "<b>Tile</b> and <b>Batch</b> at 0 use the backend's recipe, like everything else about training."
            "</p>" + INIT_HELP)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers("RASTERS", "Training rasters",
                                                               QgsProcessing.TypeRaster))
        _PolygonTraining.add_polygon_parameters(self, "Training polygons")
        self.addParameter(QgsProcessingParameterEnum("ENCODER", "Encoder", list(ENCODERS), defaultValue=0))
        _add_start_parameters(self, "Start from a weight file (optional): GeoSSL pretrained encoder, or a "
                                    "torchvision/timm/torchgeo ResNet state dict")
        self.addParameter(QgsProcessingParameterFile("INIT_MODEL", "Continue from a fine-tuned model (optional; "
                                                     "its encoder and classes are kept)", extension="pt",
                                                     optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "MINUTES", "Training budget in minutes (0: the backend's default)", QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0))
        self.addParameter(_integer("STEPS", "Training steps instead (0: the minutes above)", 0, 0))
        self.addParameter(_integer("TILE", "Tile size (pixels, multiple of 16; 0: the backend's default)", 0, 0))
        self.addParameter(_integer("BATCH", "Batch size (0: the backend's default)", 0, 0))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Model file", "GeoSSL model (*.pt)"))
        self.addOutput(QgsProcessingOutputNumber("STEPS_DONE", "Steps trained"))
        _metric_outputs(self)

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        rasters = _raster_layers(self, parameters, context, "training raster")
        params, layer = _PolygonTraining.polygon_params(self, parameters, context)
        params.update(
            rasters=[_raster_file(r, "training raster") for r in rasters],
            encoder=ENCODERS[self.parameterAsEnum(parameters, "ENCODER", context)],
            **_finetune_recipe_values(self, parameters, context),
            out=self.parameterAsFileOutput(parameters, "OUTPUT", context),
        )
        params.update(_start_values(self, parameters, context))
        init_model = self.parameterAsFile(parameters, "INIT_MODEL", context)
        if init_model:  # a warm start keeps the model's encoder: the Encoder choice does not apply
            params["init_model"] = init_model
            params.pop("encoder", None)
        colours = class_colours(layer, params["class_field"])
        if colours:
            params["colours"] = colours
        return params

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        result = job.get("result") or {}
        return {"OUTPUT": result.get("model") or self._params["out"], "STEPS_DONE": result.get("steps"),
                **_metric_values(result.get("validation"))}


class EvaluateAlgorithm(GeoSSLAlgorithm):
    KIND, NAME, TITLE = "evaluate", "evaluate", "Evaluate a classified map"
    HELP = ("<p>Accuracy of a classified map against reference polygons: overall accuracy, Cohen's kappa, "
            "per-class precision/recall/F1/IoU, mean IoU and the confusion matrix (in the JSON file).</p>")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("PREDICTION", "Classified map"))
        _PolygonTraining.add_polygon_parameters(self, "Reference polygons")
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Metrics (JSON)", "JSON (*.json)",
                                                                optional=True, createByDefault=False))
        _metric_outputs(self)

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        params, _layer = _PolygonTraining.polygon_params(self, parameters, context)
        params["prediction"] = _raster_file(self.parameterAsRasterLayer(parameters, "PREDICTION", context),
                                            "classified map")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context) \
            if parameters.get("OUTPUT") not in (None, "") else ""
        if out:
            params["out"] = out
        return params

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        outputs = super().processAlgorithm(parameters, context, feedback)
        feedback.pushInfo("OA {OA:.4f}  Kappa {KAPPA:.4f}  mIoU {MIOU:.4f}".format(
            **{k: v if isinstance(v, float) else float("nan") for k, v in outputs.items() if k != "OUTPUT"}))
        return outputs

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        result = job.get("result") or {}
        out = _metric_values(result)
        if self._params.get("out"):
            out["OUTPUT"] = result.get("metrics_file") or self._params["out"]
        return out


class PretrainAlgorithm(GeoSSLAlgorithm):
    KIND, NAME, TITLE = "pretrain", "pretrain", "Pretrain an encoder (self-supervised)"
    _bands: int | None = None  # of the first raster: picks the measured imagery the gain is quoted for
    HELP = ("<p>Learn features from your own unlabeled rasters (GLCNet, SimCLR, BYOL, MoCo…; the backend lists its methods "
            "in the GeoSSL panel). Fine-tune from the result with the <i>Start from a weight file</i> input. "
            "Pretraining may itself continue from weights you have.</p>"
            "<p>Budget: a number of steps, or wall-time minutes (the backend measures a few steps and fixes the "
            "steps that fit). The log first says what that budget bought in our measurements, and warns where "
            "pretraining did not pay.</p>" + INIT_HELP)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers("RASTERS", "Unlabeled rasters",
                                                               QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterString("METHOD", "Method (e.g. glcnet, simclr, byol, moco)", "glcnet"))
        self.addParameter(QgsProcessingParameterEnum("ENCODER", "Encoder", list(ENCODERS), defaultValue=0))
        _add_start_parameters(self, "Continue from a weight file (optional): a GeoSSL model's encoder, or a "
                                    "torchvision/timm/torchgeo ResNet state dict")
        _add_training_parameters(self, steps=1000, tile=256, min_tile=64, batch=32, min_batch=2)
        self.addParameter(QgsProcessingParameterNumber(
            "MINUTES", "Wall-time budget in minutes (0: train the steps above instead)",
            QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        resume = QgsProcessingParameterBoolean("RESUME", "Resume an interrupted run with the same output", False)
        resume.setFlags(resume.flags() | resume.FlagAdvanced)
        self.addParameter(resume)
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Pretrained encoder",
                                                                "GeoSSL checkpoint (*.pt)"))

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        rasters = _raster_layers(self, parameters, context, "raster")
        params = {
            "rasters": [_raster_file(r, "raster") for r in rasters],
            "method": self.parameterAsString(parameters, "METHOD", context).strip(),
            "encoder": ENCODERS[self.parameterAsEnum(parameters, "ENCODER", context)],
            **_training_values(self, parameters, context),
            "resume": self.parameterAsBool(parameters, "RESUME", context),
            "out": self.parameterAsFileOutput(parameters, "OUTPUT", context),
            **_start_values(self, parameters, context),
        }
        minutes = self.parameterAsDouble(parameters, "MINUTES", context) if parameters.get("MINUTES") else 0.0
        if minutes > 0:  # the backend plans the steps that fit
            params.pop("steps")
            params["minutes"] = minutes
        self._bands = rasters[0].bandCount()
        return params

    def before_run(self, client: BlockingClient, feedback: QgsProcessingFeedback) -> None:
        """What this budget bought in the backend's measurements, as the panel says it."""
        p = self._params
        try:
            estimate = client.get(gain_path(p["method"], p.get("minutes"), p.get("steps"), self._bands))
        except ApiError:  # an older backend measured nothing: the run goes on
            return
        if isinstance(estimate, dict):
            text, level = gain_sentence(estimate)
            (feedback.pushWarning if level == WARN else feedback.pushInfo)(text)

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        result = job.get("result") or {}
        return {"OUTPUT": result.get("model") or self._params["out"]}


# SCORE choices and the ``score`` each sends (SuggestParams)
SUGGEST_SCORES = (("Uncertain ground a polygon can cover (drawable area)", "drawable"),
                  ("Mean uncertainty of the square (favours class edges)", "uncertainty"))


class SuggestAlgorithm(GeoSSLAlgorithm):
    KIND, NAME, TITLE = "suggest", "suggest", "Suggest where to label next"
    HELP = ("<p>The places a fine-tuned model is least sure about: K squares where its two most likely classes "
            "are closest, spread apart and across predicted classes, never on nodata or on your polygons. "
            "<b>Rank by</b>: by default the uncertainty inside the polygon you can draw there (the model's main "
            "class in the square), so large unsure areas of one class come before class edges; or the square's "
            "mean uncertainty. Each has a rank, the reason (e.g. <i>water vs road, margin 0.04, ~1,800 m² "
            "drawable as water</i>) and the expected drawable area. Draw a polygon in each, then continue "
            "training with <i>Fine-tune</i> and the model as <i>Continue from</i>.</p>")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model", extension="pt"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster"))
        self.addParameter(QgsProcessingParameterVectorLayer("POLYGONS", "Existing polygons (not suggested again)",
                                                            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field", parentLayerParameterName="POLYGONS",
                                                      optional=True))
        self.addParameter(_integer("K", "Number of suggestions", 10, 1))
        self.addParameter(_integer("WINDOW", "Square size (pixels, multiple of 4)", 64, 8))
        self.addParameter(QgsProcessingParameterEnum("SCORE", "Rank by", [label for label, _ in SUGGEST_SCORES],
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Suggestions", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("COUNT", "Suggestions written"))

    def job_params(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.parameterAsFile(parameters, "MODEL", context),
            "raster": _raster_file(self.parameterAsRasterLayer(parameters, "INPUT", context), "raster"),
            "k": self.parameterAsInt(parameters, "K", context),
            "window": self.parameterAsInt(parameters, "WINDOW", context),
            "score": SUGGEST_SCORES[self.parameterAsEnum(parameters, "SCORE", context)][1],
            "out": self.parameterAsFileOutput(parameters, "OUTPUT", context),
        }
        if self.parameterAsVectorLayer(parameters, "POLYGONS", context) is not None:
            polygons, _layer = _PolygonTraining.polygon_params(self, parameters, context)
            params.update(polygons)
        return params

    def outputs(self, job: dict[str, Any]) -> dict[str, Any]:
        result = job.get("result") or {}
        return {"OUTPUT": result.get("suggestions") or self._params["out"], "COUNT": result.get("count")}


ALGORITHMS = (FinetuneAlgorithm, SegmentAlgorithm, EvaluateAlgorithm, PretrainAlgorithm, SuggestAlgorithm,
              ExportOnnxAlgorithm)
