"""ONNX export of a trained trial, verified with onnxruntime as the TFLite export is: convert
with tf2onnx, run the ONNX model over the test split next to the Keras model, measure its
latency and size, write what was measured.

``model.onnx`` takes float32 images ``[batch, S, S, 3]`` (RGB, 0..255; any batch size) at the
trial's size ``S`` and returns class probabilities (two columns for two classes), calibrated
inside the graph by the temperature the SavedModel export holds; ``automl predict`` resizes
images to ``S`` outside the graph, as training did.
It is converted by ``tf2onnx.convert.from_keras``: Keras' own ``model.export(format="onnx")``
and tf2onnx's ``from_function`` turn the captured tensors of EfficientNet's Normalization layer
into extra graph inputs (the file then fails in onnxruntime), so a converted graph must have
exactly one input.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.errors import ConfigError
from automl.report.converted import ConvertedModel, check, default_threads, write_export

ONNX_NOTE = ("model.onnx: images [batch, S, S, 3] float32 RGB 0..255 at the trial's size S "
             "-> probabilities, calibrated (softmax(log p / temperature))")
INSTALL = "pip install 'automl[onnx]'"
CONVERT_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")


def require(packages: tuple[str, ...] = CONVERT_PACKAGES, what: str = "--format onnx") -> None:
    """ConfigError saying how to install them unless ``packages`` are installed (``what``
    needs them)."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}")


@dataclass(frozen=True)
class OnnxReport:
    """What an ONNX export wrote and measured (also written to ``automl.json``)."""

    out: str
    trial: int
    converter: str               # tf2onnx version and ONNX opset
    runtime: str
    threads: int
    size_mb: float
    latency_ms: float            # batch 1, with ``threads`` intra-op threads
    keras_test_accuracy: float | None
    onnx_test_accuracy: float | None
    max_abs_diff: float          # ONNX against calibrated Keras probabilities (check images)
    convert_seconds: float
    calibration: Any = None      # automl.report.calibrate.Calibration in the graph, or None


class OnnxModel(ConvertedModel):
    """An ONNX model in an onnxruntime CPU session."""

    batch = 64

    def __init__(self, content: bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(content, options,
                                             providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"export check failed: the ONNX model has {len(inputs)} inputs "
                              f"({', '.join(i.name for i in inputs)}), expected one image input;"
                              " nothing was written.")
        self._input = inputs[0].name
        self.size = int(inputs[0].shape[1])
        self.threads = threads
        self.name = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"

    def _call(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: images})[0])


def to_onnx(inference: Any, size: int, binary: bool,
            temperature: float | None = None) -> tuple[bytes, str]:
    """The inference model as ONNX (input ``image`` [batch, S, S, 3]) and the converter used.

    Its output is :func:`automl.trial.serving.probabilities` (two columns for a binary model,
    calibrated by ``temperature`` when given), as a last Keras layer of a model around
    ``inference``: still one graph input.
    """
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError as exc:
        raise ConfigError(f"--format onnx: tf2onnx does not import here ({exc}); {INSTALL}") \
            from None
    from automl.trial.layers import with_probabilities

    model = with_probabilities(inference, binary, temperature)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=(
            tf.TensorSpec([None, size, size, 3], tf.float32, name="image"),))
    except Exception as exc:  # the converter's errors are many and unexported
        raise ConfigError(f"ONNX conversion failed (tf2onnx {tf2onnx.__version__}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                          "; nothing was written.") from exc
    _name_batch(proto)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), f"tf2onnx {tf2onnx.__version__}, opset {opset}"


def _name_batch(proto: Any) -> None:
    """Call the free first dimension of the graph's inputs and outputs ``batch``."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def export_onnx(tm: Any, row: Any, class_names: list[str], out: Path,
                check_images: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None,
                fit: Any = None, threads: int | None = None) -> OnnxReport:
    """Write ``out`` (model.onnx, labels.txt, automl.json) after verifying the conversion.

    ``fit`` (a :class:`~automl.report.calibrate.Calibration`, or None): its temperature goes
    inside the graph and its T, NLL and ECE into automl.json. onnxruntime runs the ONNX model
    over ``check_images`` and the test split (images at the trial's size, labels) next to the
    Keras model, calibrated alike; probabilities must match within 1e-4, else nothing is
    written. Latency: batch-1 calls with ``threads`` intra-op threads.
    """
    require()
    size = int(row["image_size"])
    binary = len(class_names) == 2
    threads = threads or default_threads()
    temperature = None if fit is None else fit.temperature
    start = time.perf_counter()
    content, converter = to_onnx(tm.inference, size, binary, temperature)
    seconds = time.perf_counter() - start
    model = OnnxModel(content, threads)
    checked = check(model, tm.inference, binary, check_images, test, "ONNX", exact=True,
                    temperature=temperature)
    report = OnnxReport(str(out), int(row["trial"]), converter, model.name, threads,
                        len(content) / 1e6, checked.latency_ms, checked.keras_test_accuracy,
                        checked.test_accuracy, checked.max_abs_diff, seconds, fit)
    write_export(Path(out), {"model.onnx": content}, class_names, row, "onnx", ONNX_NOTE,
                 report)
    return report
