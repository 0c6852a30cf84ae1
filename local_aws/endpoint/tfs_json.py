"""TF Serving's REST JSON <-> NumPy tensors, following tensorflow_serving/util/json_tensor.cc.

Clients written against TF Serving (the container's handlers, anyone calling ``:predict``) must get
the same answers from ``carvana serve``: the row format (``"instances"`` -> ``"predictions"``) and
the columnar format (``"inputs"`` -> ``"outputs"``), ``{"b64": ...}`` for binary strings in and for
output tensors whose name ends in ``_bytes`` out, and TF Serving's error messages for malformed
requests. Pure NumPy: the model side hands in input specs and gets arrays back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.wire import WireError, b64decode, b64encode

BYTES_SUFFIX = "_bytes"


@dataclass(frozen=True)
class InputSpec:
    """One named input of a signature: NumPy dtype (``object`` for tf.string) and shape (None = any)."""

    dtype: np.dtype
    shape: tuple[int | None, ...]

    @property
    def is_string(self) -> bool:
        return self.dtype == np.dtype(object)


@dataclass(frozen=True)
class PredictRequest:
    """A parsed ``:predict`` body: which signature, its input arrays, and which format answers."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


def _short(value: Any, limit: int = 200) -> str:
    """JSON text of a value for an error message, cut short (a request may hold a whole photo)."""
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "..."


def _type_name(value: Any) -> str:
    names = {dict: "Object", list: "Array", str: "String", bool: "True" if value else "False"}
    if value is None:
        return "Null"
    return names.get(type(value), "Number")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_b64(value: dict[str, str]) -> bytes:
    try:
        return b64decode(value["b64"], "b64")
    except WireError:
        raise WireError("Unable to base64 decode") from None  # TF Serving's own words


def _shape_of(value: Any) -> tuple[int, ...]:
    """Dense shape of nested lists, read along the first element as TF Serving does."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _leaf(value: Any, spec: InputSpec, tf_dtype: str) -> Any:
    if spec.is_string:
        if _is_b64(value):
            return _decode_b64(value)
        if isinstance(value, str):
            return value.encode("utf-8")
    elif spec.dtype.kind == "b":
        if isinstance(value, bool):
            return value
    elif spec.dtype.kind in "iu":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise WireError(
        f"JSON Value: {_short(value)} Type: {_type_name(value)} is not of expected type: {tf_dtype}"
    )


def _tf_dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype == np.dtype(object) else str(dtype)


def to_tensor(value: Any, spec: InputSpec) -> np.ndarray:
    """One JSON value (scalar or nested lists) as an array of the spec's dtype."""
    shape = _shape_of(value)
    tf_dtype = _tf_dtype_name(spec.dtype)
    flat: list[Any] = []

    def walk(item: Any, level: int) -> None:
        if not isinstance(item, list):
            if level != len(shape):
                raise WireError(
                    f"JSON Value: {_short(item)} found at incorrect level: {level + 1} in the JSON DOM. "
                    f"Expected at level: {len(shape)}"
                )
            flat.append(_leaf(item, spec, tf_dtype))
            return
        if level >= len(shape):
            raise WireError(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(item) != shape[level]:
            raise WireError(
                f"Encountered list at unexpected size: {len(item)} at level: {level} "
                f"expected size: {shape[level]}"
            )
        for child in item:
            walk(child, level + 1)

    walk(value, 0)
    array = np.empty(len(flat), dtype=spec.dtype)
    try:
        array[:] = flat
    except (OverflowError, ValueError) as err:
        raise WireError(f"JSON Value out of range for type {tf_dtype}: {err}") from None
    return array.reshape(shape)


def _parse_document(body: bytes) -> dict[str, Any]:
    if not body:
        raise WireError("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except UnicodeDecodeError as err:
        raise WireError(f"JSON Parse error: Invalid encoding in string. at offset: {err.start}") from None
    except json.JSONDecodeError as err:
        raise WireError(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    if not isinstance(document, dict):
        raise WireError(f"JSON Value: {_short(document)} Is not object")
    return document


def _rows(instances: list[Any], specs: Mapping[str, InputSpec]) -> dict[str, np.ndarray]:
    """``"instances"``: a list of values (one input) or of objects keyed by input name."""
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named and len(specs) > 1:
        raise WireError(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    columns: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    for index, item in enumerate(instances):
        is_object = isinstance(item, dict) and not _is_b64(item)
        if named != is_object:
            kind = "object but got list" if named else "value/list but got object"
            raise WireError(f"Expecting {kind} at item {index} of input list")
        values = item if named else {next(iter(specs)): item}
        for name, value in values.items():
            if name not in specs:
                raise WireError(
                    f"Failed to process element: {index} key: {name} of 'instances' list. Error: "
                    f"Invalid argument: JSON object: does not have named input: {name}"
                )
            try:
                tensor = to_tensor(value, specs[name])
            except WireError as err:
                where = f"{index} key: {name}" if named else f"{index}"
                raise WireError(
                    f"Failed to process element: {where} of 'instances' list. Error: Invalid argument: {err}"
                ) from None
            if columns[name] and columns[name][0].shape != tensor.shape:
                raise WireError(
                    f"Expecting shape {list(columns[name][0].shape)} but got: {list(tensor.shape)}"
                )
            columns[name].append(tensor)
        if named and set(values) != set(specs):
            raise WireError(
                f"Failed to process element: {index} of 'instances' list. JSON object: {_short(item)} "
                f"must only have keys: {','.join(sorted(specs))}"
            )
    return {name: np.stack(tensors) for name, tensors in columns.items()}


def _columns(inputs: Any, specs: Mapping[str, InputSpec]) -> dict[str, np.ndarray]:
    """``"inputs"``: one value (one input) or an object keyed by input name."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) > 1:
            raise WireError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        name = next(iter(specs))
        return {name: to_tensor(inputs, specs[name])}
    tensors = {}
    for name, spec in specs.items():
        if name not in inputs:
            raise WireError(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = to_tensor(inputs[name], spec)
    return tensors


def parse_predict_request(
    body: bytes, input_specs: Callable[[str], Mapping[str, InputSpec]]
) -> PredictRequest:
    """Parse a ``:predict`` body; ``input_specs(signature_name)`` raises WireError when unknown."""
    document = _parse_document(body)
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise WireError(
            f"JSON Value: {_short(document)} not formatted correctly. 'signature_name' key must be a "
            "string value."
        )
    specs = input_specs(signature_name)
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise WireError(
            f"JSON Value: {_short(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise WireError(f"JSON Value: {_short(document)} Excepting 'instances' to be an list/array")
        if not instances:
            raise WireError(f"JSON Value: {_short(document)} No values in 'instances' array")
        return PredictRequest(signature_name, _rows(instances, specs), row_format=True)
    if has_inputs:
        return PredictRequest(signature_name, _columns(document["inputs"], specs), row_format=False)
    raise WireError("Missing 'inputs' or 'instances' key")


def _leaf_json(value: Any, as_b64: bool) -> str:
    if isinstance(value, bytes):
        if as_b64:
            return '{"b64": "' + b64encode(value) + '"}'
        return json.dumps(value.decode("utf-8", errors="replace"))
    if isinstance(value, np.bool_ | bool):
        return "true" if value else "false"
    return str(value)


def _float_text(array: np.ndarray) -> np.ndarray:
    """Shortest round-trip text per float (0.2, not 0.2000000029802), ".0" on whole numbers, like TF."""
    text = array.astype(str)
    text = np.where(np.isnan(array), "NaN", text)
    text = np.where(np.isposinf(array), "Infinity", text)
    return np.where(np.isneginf(array), "-Infinity", text)


def tensor_json(array: np.ndarray, as_b64: bool = False) -> str:
    """JSON text of a whole tensor (nested lists), built as text so floats keep their short form."""
    if array.dtype.kind == "f":
        leaves = _float_text(array)
    elif array.dtype == np.dtype(object):
        leaves = np.frompyfunc(lambda v: _leaf_json(v, as_b64), 1, 1)(array) if array.size else array
    elif array.dtype.kind == "b":
        leaves = np.where(array, "true", "false")
    else:
        leaves = array.astype(str)

    def nest(part: np.ndarray) -> str:
        if part.ndim == 0:
            return str(part.item() if isinstance(part, np.ndarray) else part)
        if part.ndim == 1:
            return "[" + ",".join(part.tolist()) + "]"
        return "[" + ",".join(nest(sub) for sub in part) + "]"

    return nest(np.asarray(leaves, dtype=object))


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar), as TF Serving writes them."""
    if not outputs:
        raise WireError("Cannot convert empty tensor map to JSON")
    single = len(outputs) == 1
    if not row_format:
        parts = {name: tensor_json(t, name.endswith(BYTES_SUFFIX)) for name, t in outputs.items()}
        inner = (
            next(iter(parts.values()))
            if single
            else ("{" + ",".join(f"{json.dumps(n)}: {v}" for n, v in parts.items()) + "}")
        )
        return ('{"outputs": ' + inner + "}").encode("utf-8")
    batch = None
    for name, tensor in outputs.items():
        if tensor.ndim == 0:
            raise WireError(f"Tensor name: {name} has no shape information ")
        if tensor.shape[0] < 1:
            raise WireError(f"Tensor name: {name} has invalid batch size: {tensor.shape[0]}")
        if batch is not None and tensor.shape[0] != batch:
            raise WireError(
                f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} expecting: {batch}"
            )
        batch = tensor.shape[0]
    rows = []
    for index in range(batch or 0):
        values = {
            name: tensor_json(np.asarray(t[index], dtype=t.dtype), name.endswith(BYTES_SUFFIX))
            for name, t in outputs.items()
        }
        if single:
            rows.append(next(iter(values.values())))
        else:
            rows.append("{" + ", ".join(f"{json.dumps(n)}: {v}" for n, v in values.items()) + "}")
    return ('{"predictions": [' + ", ".join(rows) + "]}").encode("utf-8")
