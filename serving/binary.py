"""The binary tensor data extension of the Open Inference Protocol (KServe V2), in both directions.

A request with an `Inference-Header-Content-Length` header carries that many bytes of JSON, then the raw data
of each input whose parameters hold `binary_data_size`, in the order of `inputs`: little-endian, row major, no
padding; BOOL one byte (0 or 1) per element; BYTES a 4-byte little-endian length before each element. NVIDIA's
`tritonclient` sends every input this way by default. Outputs go back the same way when the request asks for it
(`parameters.binary_data_output`, or `parameters.binary_data` on a requested output): the answer is then the
JSON header, whose length is in the same response header, followed by the outputs' bytes.

Numeric inputs become numpy arrays in one `np.frombuffer` each (no per-value parsing); text (BYTES) inputs
become lists of str, which is what the JSON path gives for them too.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np

from serving.events import VALUE_BYTES
from serving.signature import InputError

HEADER = "Inference-Header-Content-Length"
# The WSGI environ key of the request header.
HEADER_ENVIRON = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"
CONTENT_TYPE = "application/octet-stream"
NUMERIC_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it, given the value of the `Inference-Header-Content-Length`."""
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not (header_length.isascii() and header_length.isdigit()):
        raise InputError(HEADER, f"{header_length!r} is not a number of bytes")
    size = int(header_length)
    if size == 0 or size > len(body):
        raise InputError(HEADER, f"the JSON header cannot be {size} bytes of a {len(body)}-byte body")
    return body[:size], memoryview(body)[size:]


def decode_inputs(payload: Mapping, data: memoryview | None) -> int:
    """Put each binary input's values in its tensor's `data` (in place); return their estimated size as JSON.

    `data` is what follows the JSON header, None for a request without the header (where no input may be
    binary). Every byte of `data` must belong to exactly one input. Errors name the input (or "body" for bytes
    that belong to none) and are raised before any model sees the request.
    """
    tensors = payload.get("inputs")
    offset = 0
    json_size = 0
    for index, tensor in enumerate(tensors if isinstance(tensors, list) else []):
        parameters = tensor.get("parameters") if isinstance(tensor, Mapping) else None
        if not isinstance(parameters, Mapping) or "binary_data_size" not in parameters:
            continue
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InputError("inputs", f"input {index} needs a name")
        size, datatype, shape = parameters["binary_data_size"], tensor.get("datatype"), tensor.get("shape")
        if data is None:
            raise InputError(name, f"binary_data_size needs the {HEADER} header")
        if type(size) is not int or size < 0:
            raise InputError(name, f"binary_data_size must be a number of bytes, not {size!r}")
        if "data" in tensor:
            raise InputError(name, "give either data or binary_data_size, not both")
        if datatype != "BYTES" and datatype not in NUMERIC_DTYPES:
            raise InputError(name, f"unknown datatype {datatype!r}")
        if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
            raise InputError(name, f"bad shape {shape!r}")
        if offset + size > len(data):
            raise InputError(
                name, f"binary_data_size is {size} bytes but only {len(data) - offset} bytes of the body are left"
            )
        chunk = data[offset : offset + size]
        offset += size
        count = math.prod(shape)
        if datatype == "BYTES":
            tensor["data"] = _decode_bytes(name, chunk, count)
            json_size += size + 3 * count
        else:
            tensor["data"] = _decode_numbers(name, chunk, NUMERIC_DTYPES[datatype], count, shape)
            json_size += VALUE_BYTES * count
    if data is not None and offset != len(data):
        raise InputError("body", f"{len(data) - offset} bytes after the JSON header belong to no input")
    return json_size


def _decode_numbers(name: str, chunk: memoryview, dtype: np.dtype, count: int, shape: list[int]) -> np.ndarray:
    if len(chunk) != count * dtype.itemsize:
        raise InputError(
            name,
            f"shape {shape} takes {count * dtype.itemsize} bytes of {dtype.name}, binary_data_size is {len(chunk)}",
        )
    if dtype.kind == "b":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if (raw > 1).any():
            raise InputError(name, f"row {int(np.flatnonzero(raw > 1)[0])}: a BOOL byte must be 0 or 1")
    # A copy: the data sits at any offset after a JSON header of any length (unaligned for wider types), and the
    # array must not keep the whole request body alive in the event buffer.
    return np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("="))


def _decode_bytes(name: str, chunk: memoryview, count: int) -> list[str]:
    values: list[str] = []
    position, end = 0, len(chunk)
    while position < end:
        if position + 4 > end:
            raise InputError(name, f"element {len(values)}: its 4-byte length runs past binary_data_size")
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > end:
            raise InputError(name, f"element {len(values)}: {length} bytes run past binary_data_size")
        try:
            values.append(str(chunk[position : position + length], "utf-8"))
        except UnicodeDecodeError:
            raise InputError(name, f"element {len(values)} is not UTF-8 text") from None
        position += length
    if len(values) != count:
        raise InputError(name, f"the shape holds {count} elements, binary_data_size holds {len(values)}")
    return values


def wanted_outputs(payload: Mapping, available: list[str]) -> dict[str, bool]:
    """The outputs to return, in order, each with whether it goes back as binary data.

    No `outputs` in the request means every output, binary when `parameters.binary_data_output` is true.
    """
    parameters = payload.get("parameters")
    default = isinstance(parameters, Mapping) and parameters.get("binary_data_output") is True
    requested = payload.get("outputs")
    if requested is None:
        return dict.fromkeys(available, default)
    if not isinstance(requested, list) or not requested:
        raise InputError("outputs", "must be a non-empty list of {'name': ...} objects")
    wanted: dict[str, bool] = {}
    for output in requested:
        name = output.get("name") if isinstance(output, Mapping) else None
        if name not in available:
            raise InputError("outputs", f"unknown output {name!r}; this model has {', '.join(available)}")
        options = output.get("parameters")
        binary = options.get("binary_data", default) if isinstance(options, Mapping) else default
        if not isinstance(binary, bool):
            raise InputError("outputs", f"{name}: binary_data must be true or false")
        wanted[name] = binary
    return wanted


def encode_output(datatype: str, values: list) -> bytes:
    """An output tensor's values as binary data, row major: a flat list, or (numbers only) one list per row."""
    if datatype == "BYTES":
        # The values are a classifier's labels, a few distinct ones repeated: each is encoded once.
        encoded = {}
        for value in set(values):
            text = str(value).encode()
            encoded[value] = _LENGTH.pack(len(text)) + text
        return b"".join(map(encoded.__getitem__, values))
    return np.asarray(values, dtype=NUMERIC_DTYPES[datatype]).tobytes()
