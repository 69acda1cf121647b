"""Request parsing and response building, as pure functions. Every malformed request raises
ApiError with a message saying what to send instead; the app turns it into a JSON error
response ({"error": ...}, as the Open Inference Protocol specifies)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

import jaxcifar
from jaxcifar import predict
from jaxcifar.image_files import READ_ERRORS, describe_error, read_image
from jaxcifar.serve.model import ServedModel

OUTPUTS = ("logits", "probabilities")
EXAMPLE = '{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [...]}]}'


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def server_metadata() -> dict[str, Any]:
    """The Open Inference Protocol's server metadata (GET /v2): this server implements none of
    the protocol's optional extensions."""
    return {"name": "jaxcifar", "version": jaxcifar.__version__, "extensions": []}


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(400, f"Empty request body; send a JSON inference request like {EXAMPLE}.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"Malformed JSON: {e}.") from None


def parse_infer_request(doc: Any, image_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[str, ...], Any]:
    """(uint8 images (b, *image_shape), requested output names, request id or None) of an
    Open Inference Protocol request whose one input "images" holds data flat or nested."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise ApiError(400, f"Expected one input tensor, named 'images': {EXAMPLE}.")
    return parse_images(doc["inputs"][0], image_shape), parse_outputs(doc.get("outputs")), doc.get("id")


def parse_images(tensor: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(tensor, dict) or tensor.get("name") != "images":
        raise ApiError(400, f"The model's one input is named 'images': {EXAMPLE}.")
    if tensor.get("datatype") != "UINT8":
        raise ApiError(400, f"Input 'images' must have datatype UINT8 (pixels 0..255), got {tensor.get('datatype')!r}. "
                            "Floats are refused, not cast, because their scale is ambiguous.")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(s) is int for s in shape)
            or tuple(shape[1:]) != image_shape or shape[0] < 1):
        h, w, c = image_shape
        raise ApiError(400, f"Input 'images' must have shape [b, {h}, {w}, {c}] (NHWC RGB, b >= 1), got {shape}. "
                            f"Resize other sizes to {h}x{w} first, or upload files to /v1/predict.")
    try:
        values = np.asarray(tensor.get("data"))
    except ValueError:
        raise ApiError(400, "Input 'images' data is ragged: nested lists must all have the same length.") from None
    expected = math.prod(shape)
    if values.size != expected:
        raise ApiError(400, f"Input 'images' has {values.size} values; shape {shape} needs {expected}.")
    if values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
        raise ApiError(400, "Input 'images' data must be integers within 0..255 (UINT8).")
    return values.reshape(shape).astype(np.uint8)


def parse_outputs(outputs: Any) -> tuple[str, ...]:
    """The requested output names; all of them when the request names none."""
    if outputs is None:
        return OUTPUTS
    names = [o.get("name") if isinstance(o, dict) else None for o in outputs] if isinstance(outputs, list) else [None]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise ApiError(400, f"Requested outputs must be among {list(OUTPUTS)}, as [{{\"name\": \"logits\"}}]; "
                            f"got {outputs!r}.")
    return tuple(names)


def infer_response(model: ServedModel, tensors: dict[str, np.ndarray], names: tuple[str, ...],
                   request_id: Any) -> dict[str, Any]:
    response = {"model_name": model.name, "model_version": model.version,
                "outputs": [{"name": n, "datatype": "FP32", "shape": list(tensors[n].shape),
                             "data": tensors[n].ravel().tolist()} for n in names]}
    return response if request_id is None else {"id": request_id, **response}


def parse_top_k(text: str | None, num_classes: int) -> int:
    try:
        k = int(text) if text is not None else 5
    except ValueError:
        raise ApiError(400, f"top_k must be an integer, got {text!r}.") from None
    if not 1 <= k <= num_classes:
        raise ApiError(400, f"top_k must be within 1..{num_classes}, got {k}.")
    return k


def decode_uploads(files: list[tuple[str, bytes]], size: int) -> np.ndarray:
    """uint8 (n, size, size, 3) of uploaded image files, converted exactly as `jaxcifar.predict`
    converts files (its loader, `image_files.read_image`, given the bytes). All must be readable images: a client
    cannot act on a partial answer without matching results to files, so one bad file
    fails the request, naming every bad file."""
    images, errors = [], []
    for name, data in files:
        try:
            images.append(read_image(io.BytesIO(data), size))
        except READ_ERRORS as e:
            errors.append(f"{name}: {describe_error(e)}")
    if errors:
        raise ApiError(400, "Unreadable upload(s): " + "; ".join(errors) + ".")
    return np.stack(images)


def predict_response(model: ServedModel, names: list[str], probabilities: np.ndarray, k: int) -> dict[str, Any]:
    return {"model_name": model.name, "model_version": model.version,
            "results": [{"file": name, "predictions": predict.top_k(p, model.class_names, k)}
                        for name, p in zip(names, probabilities)]}
