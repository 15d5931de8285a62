"""The Open Inference Protocol (v2 REST, as KServe and Triton speak it): tensors in and out, and the
model signatures requests are checked against. Pure: numpy only, no HTTP server.

- JSON tensors: `{"name", "datatype", "shape", "data"}` with `data` a flat (row-major) or nested
  list; BYTES as strings.
- Triton's binary tensor extension: the body is a JSON header of `Inference-Header-Content-Length`
  bytes, then each input with `parameters.binary_data_size` as raw little-endian bytes, in the order
  of `inputs` (BYTES elements as a 4-byte little-endian length and the bytes). An output is sent
  binary when the request asks (`outputs[].parameters.binary_data` or
  `parameters.binary_data_output`).
- Every malformed request is an `OipError` with the HTTP status to answer (400), raised before the
  request is admitted anywhere.

Signatures are declared per item, without the batch dimension (-1 = any size); over the protocol
every shape carries the batch dimension first.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

# OIP datatype -> numpy dtype (explicitly little-endian, as the binary extension is)
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
# numpy kinds a JSON list may hold for each datatype kind (no silent float -> int truncation)
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf", "O": "OU"}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items() if name != "BYTES"}
HEADER_LENGTH = "Inference-Header-Content-Length"


class OipError(Exception):
    """A request the protocol refuses: `status` is the HTTP status, the message goes in `error`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def datatype_of(arr: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object arrays are BYTES)."""
    if arr.dtype.kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if name is None:
        raise OipError(f"no OIP datatype for numpy {arr.dtype}", 500)
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One declared tensor: name, datatype and per-item shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a batched shape (items first) fits this per-item shape."""
        return len(shape) == len(self.shape) + 1 and all(d == -1 or d == s for d, s in zip(self.shape, shape[1:]))


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives over the protocol (after/before its pre/post hooks)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def metadata(self, model: str) -> dict:
        return {"name": model, "versions": ["1"], "platform": "parvagpu",
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs]}

    def check(self, tensors: dict[str, np.ndarray]) -> int:
        """The number of items in a request whose tensors match this signature; OipError if not."""
        want = {t.name: t for t in self.inputs}
        missing = [n for n in want if n not in tensors]
        extra = sorted(set(tensors) - set(want))
        if missing or extra:
            raise OipError(f"inputs must be {sorted(want)}: missing {missing}, unexpected {extra}")
        items = set()
        for name, spec in want.items():
            arr = tensors[name]
            got = datatype_of(arr)
            if got != spec.datatype:
                raise OipError(f"input {name!r}: datatype {got}, the model takes {spec.datatype}")
            if not spec.fits(arr.shape):
                raise OipError(f"input {name!r}: shape {list(arr.shape)}, the model takes {[-1, *spec.shape]}")
            items.add(arr.shape[0])
        if len(items) != 1 or 0 in items:
            raise OipError(f"inputs must have the same number (>= 1) of items, got {sorted(items)}")
        return items.pop()

    def check_outputs(self, names: tuple[str, ...] | None) -> tuple[str, ...]:
        """The outputs to return: those requested (each declared) or all declared ones."""
        declared = tuple(t.name for t in self.outputs)
        if names is None:
            return declared
        unknown = sorted(set(names) - set(declared))
        if unknown:
            raise OipError(f"unknown outputs {unknown}; the model gives {list(declared)}")
        return names


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: tuple[str, ...] | None = None  # requested output names, in order; None = all
    binary: frozenset[str] = frozenset()  # outputs to send as binary data
    binary_all: bool = False  # binary_data_output: every output binary


# --- decoding a request ------------------------------------------------------------------------


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """A request body (with the `Inference-Header-Content-Length` header's value, if any)."""
    head, rest = _split_body(body, header_length)
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise OipError("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OipError("request must be a JSON object")
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise OipError("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in specs:
        name, arr, offset = _decode_input(t, rest, offset)
        if name in inputs:
            raise OipError(f"input {name!r} given twice")
        inputs[name] = arr
    if offset != len(rest):
        raise OipError(f"{len(rest) - offset} bytes of binary data beyond the inputs")
    outputs, binary = _requested_outputs(doc.get("outputs"))
    params = doc.get("parameters") or {}
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise OipError("'id' must be a string")
    return InferRequest(inputs, rid, outputs, binary, bool(isinstance(params, dict) and params.get("binary_data_output")))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise OipError(f"{HEADER_LENGTH} is not an integer: {header_length!r}") from None
    if not 0 < n <= len(body):
        raise OipError(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
    return body[:n], body[n:]


def _decode_input(t: Any, rest: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise OipError("each input needs a 'name'")
    name = t["name"]
    datatype, shape = t.get("datatype"), t.get("shape")
    if datatype not in DTYPES:
        raise OipError(f"input {name!r}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OipError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(rest):
            raise OipError(f"input {name!r}: binary_data_size {size!r} does not fit the body")
        arr = from_binary(rest[offset:offset + size], datatype, tuple(shape), name)
        return name, arr, offset + size
    if "data" not in t:
        raise OipError(f"input {name!r}: no 'data' and no binary_data_size")
    return name, from_json(t["data"], datatype, tuple(shape), name), offset


def from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str = "tensor") -> np.ndarray:
    """A JSON `data` list (flat or nested) as an array of `shape`."""
    dt = DTYPES[datatype]
    try:
        raw = np.asarray(data)
    except ValueError:
        raise OipError(f"input {name!r}: data is not a regular (non-ragged) list") from None
    if raw.size and raw.dtype.kind not in _JSON_KINDS[dt.kind]:
        raise OipError(f"input {name!r}: data holds {raw.dtype.kind!r} values, not {datatype}")
    if raw.size != math.prod(shape):
        raise OipError(f"input {name!r}: {raw.size} values for shape {list(shape)}")
    if datatype == "BYTES":
        values = raw.reshape(-1).tolist()
        if not all(isinstance(v, str) for v in values):
            raise OipError(f"input {name!r}: BYTES data must be strings")
        flat = [v.encode() for v in values]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    if raw.size and dt.kind in "iu":
        info = np.iinfo(dt)
        if raw.min() < info.min or raw.max() > info.max:
            raise OipError(f"input {name!r}: values out of range for {datatype}")
    return np.asarray(raw, dtype=dt).reshape(shape)


def from_binary(chunk: bytes, datatype: str, shape: tuple[int, ...], name: str = "tensor") -> np.ndarray:
    """Raw little-endian bytes (BYTES: length-prefixed elements) as an array of `shape`."""
    n = math.prod(shape)
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise OipError(f"input {name!r}: truncated BYTES element length")
            (k,) = struct.unpack_from("<I", chunk, pos)
            if pos + 4 + k > len(chunk):
                raise OipError(f"input {name!r}: truncated BYTES element")
            items.append(chunk[pos + 4:pos + 4 + k])
            pos += 4 + k
        if len(items) != n:
            raise OipError(f"input {name!r}: {len(items)} BYTES elements for shape {list(shape)}")
        out = np.empty(n, dtype=object)
        out[:] = items
        return out.reshape(shape)
    dt = DTYPES[datatype]
    if len(chunk) != n * dt.itemsize:
        raise OipError(f"input {name!r}: {len(chunk)} bytes for shape {list(shape)} of {datatype}")
    return np.frombuffer(chunk, dtype=dt).reshape(shape)


def _requested_outputs(outs: Any) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    if outs is None:
        return None, frozenset()
    if not isinstance(outs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outs):
        raise OipError("'outputs' must be a list of {name, parameters}")
    binary = frozenset(o["name"] for o in outs if (o.get("parameters") or {}).get("binary_data"))
    return tuple(o["name"] for o in outs), binary


# --- encoding ----------------------------------------------------------------------------------


def to_binary(arr: np.ndarray) -> bytes:
    """Raw little-endian bytes of a tensor (BYTES: each element length-prefixed)."""
    if datatype_of(arr) == "BYTES":
        parts = []
        for v in arr.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=DTYPES[datatype_of(arr)]).tobytes()


def to_json_data(arr: np.ndarray) -> list:
    """A tensor's `data` as a flat list (BYTES decoded as UTF-8 strings)."""
    flat = arr.reshape(-1).tolist()
    if datatype_of(arr) == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat


def encode_tensors(key: str, tensors: list[tuple[str, np.ndarray, bool]], doc: dict) -> tuple[bytes, int | None]:
    """`doc` with `key` holding each (name, array, binary?) tensor; the body and, when any tensor
    is binary, the JSON header's length (for `Inference-Header-Content-Length`)."""
    entries, chunks = [], []
    for name, arr, binary in tensors:
        e: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if binary:
            raw = to_binary(arr)
            e["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            e["data"] = to_json_data(arr)
        entries.append(e)
    head = json.dumps({**doc, key: entries}).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def encode_response(model: str, req: InferRequest, outputs: dict[str, np.ndarray], names: tuple[str, ...],
                    parameters: dict | None = None) -> tuple[bytes, int | None]:
    """The response body for `req` with `outputs` (those named, in order)."""
    doc: dict[str, Any] = {"model_name": model, "model_version": "1"}
    if req.id is not None:
        doc["id"] = req.id
    if parameters:
        doc["parameters"] = parameters
    tensors = [(n, outputs[n], req.binary_all or n in req.binary) for n in names]
    return encode_tensors("outputs", tensors, doc)


def encode_request(inputs: dict[str, np.ndarray], binary: bool = True, rid: str | None = None,
                   binary_outputs: bool = True) -> tuple[bytes, int | None]:
    """A request body (the load generator's side of the protocol)."""
    doc: dict[str, Any] = {"parameters": {"binary_data_output": binary_outputs}}
    if rid is not None:
        doc["id"] = rid
    return encode_tensors("inputs", [(n, a, binary) for n, a in inputs.items()], doc)


def decode_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The output tensors of a response body."""
    head, rest = _split_body(body, header_length)
    doc = json.loads(head)
    out, offset = {}, 0
    for t in doc.get("outputs", []):
        name, arr, offset = _decode_input(t, rest, offset)
        out[name] = arr
    return out
