"""The V2 binary tensor data extension, against a real server process, with NVIDIA's `tritonclient` itself and
with hand-built bodies for what a well-behaved client never sends."""

from __future__ import annotations

import http.client
import json
import struct
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

import serving.signature
from serving.signature import coerce_columns
from tests.serving import test_server_support as support
from tests.serving.test_server_support import Bundle, EventSink, ServerProcess, start_server, version, wait_until

bundles = support.bundles
sink = support.sink

NUMBERS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MODEL = "iris"
# Versions of one deployment: two iris models (four numbers and a categorical column) and a model of three numbers.
VERSIONS = ("sk", "xgb")
INFER = f"/v2/models/{MODEL}/infer"
CHURN_INFER = f"/v2/models/{MODEL}/versions/churn/infer"
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, sklearn_model, xgboost_model, bundles: dict[str, Bundle], sink: EventSink
) -> Iterator[ServerProcess]:
    spec = {
        "deployment_id": 7,
        "name": MODEL,
        "token": "tok",
        "console_url": sink.url,
        "versions": [
            version("sk", Bundle(str(sklearn_model[0]), sklearn_model[1]), 100),
            version("xgb", Bundle(str(xgboost_model[0]), xgboost_model[1]), 0),
            version("churn", bundles["xgb"], 0),
        ],
        "max_rows": 2000,
        "max_body_bytes": 1_000_000,
    }
    process = start_server(tmp_path_factory.mktemp("binary"), spec, workers=1)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def frame(iris) -> pd.DataFrame:
    rows, _ = iris
    # Every class and both sizes, in a shuffled order.
    return rows.sample(40, random_state=1).reset_index(drop=True)


def triton_inputs(frame: pd.DataFrame, *, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name in NUMBERS:
        tensor = triton.InferInput(name, [len(frame)], "FP64")
        inputs.append(tensor.set_data_from_numpy(frame[name].to_numpy(np.float64), binary_data=binary))
    size = triton.InferInput("size", [len(frame)], "BYTES")
    inputs.append(size.set_data_from_numpy(frame["size"].to_numpy(object), binary_data=binary))
    return inputs


def json_answer(server: ServerProcess, frame: pd.DataFrame, model_version: str) -> tuple[list, np.ndarray]:
    """Labels and probabilities from the plain JSON protocol: what every binary mode must equal."""
    request = {
        "inputs": [
            {"name": name, "shape": [len(frame)], "datatype": "FP64", "data": frame[name].tolist()} for name in NUMBERS
        ]
        + [{"name": "size", "shape": [len(frame)], "datatype": "BYTES", "data": frame["size"].tolist()}]
    }
    status, headers, body = server.post(f"/v2/models/{MODEL}/versions/{model_version}/infer", request)
    assert status == 200 and "inference-header-content-length" not in headers, body
    predict, proba = body["outputs"]
    return predict["data"], np.asarray(proba["data"]).reshape(proba["shape"])


def labels(array: np.ndarray) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else value for value in array.tolist()]


@pytest.mark.parametrize("model_version", VERSIONS)
@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (True, False), (False, True)], ids=["bin-bin", "bin-json", "json-bin"]
)
def test_tritonclient_answers_equal_the_json_protocol(
    server: ServerProcess,
    client: triton.InferenceServerClient,
    frame: pd.DataFrame,
    model_version: str,
    binary_in: bool,
    binary_out: bool,
) -> None:
    expected_labels, expected_proba = json_answer(server, frame, model_version)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in ("predict", "predict_proba")]
    result = client.infer(MODEL, triton_inputs(frame, binary=binary_in), model_version=model_version, outputs=outputs)
    response = result.get_response()
    assert response["model_version"] == model_version
    for output in response["outputs"]:
        assert ("binary_data_size" in output.get("parameters", {})) is binary_out
        assert ("data" in output) is not binary_out
    assert labels(result.as_numpy("predict")) == expected_labels
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (len(frame), 3) and proba.dtype == np.float64
    np.testing.assert_array_equal(proba, expected_proba)


def test_tritonclient_defaults_get_every_output_in_binary(
    server: ServerProcess, client: triton.InferenceServerClient, frame: pd.DataFrame
) -> None:
    # No outputs named: tritonclient asks for all of them with `binary_data_output`.
    result = client.infer(MODEL, triton_inputs(frame, binary=True), model_version="sk")
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict", "predict_proba"]
    expected_labels, expected_proba = json_answer(server, frame, "sk")
    assert labels(result.as_numpy("predict")) == expected_labels
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected_proba)


def test_binary_and_json_inputs_mix(
    server: ServerProcess, client: triton.InferenceServerClient, frame: pd.DataFrame
) -> None:
    binary, as_json = triton_inputs(frame, binary=True), triton_inputs(frame, binary=False)
    mixed = [binary[0], as_json[1], binary[2], as_json[3], binary[4]]
    result = client.infer(MODEL, mixed, model_version="sk")
    expected_labels, expected_proba = json_answer(server, frame, "sk")
    assert labels(result.as_numpy("predict")) == expected_labels
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected_proba)


def test_only_the_requested_outputs_come_back(client: triton.InferenceServerClient, frame: pd.DataFrame) -> None:
    outputs = [triton.InferRequestedOutput("predict_proba", binary_data=True)]
    result = client.infer(MODEL, triton_inputs(frame, binary=True), model_version="sk", outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict_proba"]
    assert result.as_numpy("predict") is None
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        client.infer(MODEL, triton_inputs(frame, binary=True), outputs=[triton.InferRequestedOutput("nope")])


@pytest.mark.parametrize(
    "datatype", ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32"]
)
def test_every_numeric_datatype_reads_as_its_values(
    server: ServerProcess, client: triton.InferenceServerClient, frame: pd.DataFrame, datatype: str
) -> None:
    # Small whole numbers (0 and 1 for BOOL) are exact in every type: the answers must be those of the same
    # numbers sent as JSON.
    whole = frame.copy()
    for name in NUMBERS:
        whole[name] = (whole[name] > whole[name].median()) if datatype == "BOOL" else whole[name].round()
    expected_labels, expected_proba = json_answer(server, whole.astype({n: np.float64 for n in NUMBERS}), "xgb")
    dtype = triton_to_np_dtype(datatype)
    inputs = []
    for name in NUMBERS:
        tensor = triton.InferInput(name, [len(whole)], datatype)
        inputs.append(tensor.set_data_from_numpy(whole[name].to_numpy().astype(dtype)))
    size = triton.InferInput("size", [len(whole)], "BYTES")
    inputs.append(size.set_data_from_numpy(whole["size"].to_numpy(object)))
    result = client.infer(MODEL, inputs, model_version="xgb")
    assert labels(result.as_numpy("predict")) == expected_labels
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected_proba)


def test_one_two_dimensional_binary_tensor_and_its_events(
    server: ServerProcess, client: triton.InferenceServerClient, sink: EventSink
) -> None:
    matrix = np.array([[0.5, -1.0, 3], [1.5, 2.0, 0], [-0.25, 0.75, 9]], dtype=np.float64)
    tensor = triton.InferInput("features", list(matrix.shape), "FP64").set_data_from_numpy(matrix)
    request_id = f"bin-{uuid.uuid4()}"
    result = client.infer(MODEL, [tensor], model_version="churn", headers={"X-Request-Id": request_id})
    json_request = {
        "inputs": [
            {"name": name, "shape": [3], "datatype": "FP64", "data": matrix[:, i].tolist()}
            for i, name in enumerate(support.FEATURES)
        ]
    }
    status, _, body = server.post(CHURN_INFER, json_request)
    assert status == 200
    assert labels(result.as_numpy("predict")) == body["outputs"][0]["data"]
    # The event carries the inputs by column, as numbers, as a JSON request's event does.
    events = sink.wait_for(lambda evs: any(e["request_id"] == request_id for e in evs))
    (mine,) = [e for e in events if e["request_id"] == request_id]
    assert mine["status"] == 200 and mine["version_id"] == "churn"
    assert mine["inputs"] == {name: matrix[:, i].tolist() for i, name in enumerate(support.FEATURES)}


def test_events_of_binary_inputs_hold_the_values(
    client: triton.InferenceServerClient, frame: pd.DataFrame, sink: EventSink
) -> None:
    request_id = f"bin-{uuid.uuid4()}"
    client.infer(MODEL, triton_inputs(frame, binary=True), headers={"X-Request-Id": request_id})
    events = sink.wait_for(lambda evs: any(e["request_id"] == request_id for e in evs))
    (mine,) = [e for e in events if e["request_id"] == request_id]
    assert mine["inputs"] == {name: frame[name].tolist() for name in [*NUMBERS, "size"]}
    assert len(mine["outputs"]) == len(frame)


def test_a_binary_answer_is_octet_stream_after_its_json_header(server: ServerProcess) -> None:
    tensors, data = good_inputs(3)
    raw, headers = body({"inputs": tensors, "parameters": {"binary_data_output": True}}, data)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", f"/v2/models/{MODEL}/versions/sk/infer", body=raw, headers=headers)
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    assert response.status == 200 and response.getheader("Content-Type") == "application/octet-stream"
    length = int(response.getheader(HEADER))
    header = json.loads(content[:length])
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    assert sizes[1] == 3 * 3 * 8 and length + sum(sizes) == len(content)
    proba = np.frombuffer(content[length + sizes[0] :], dtype="<f8").reshape(3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    labels, position = [], length
    while position < length + sizes[0]:
        (size,) = struct.unpack_from("<I", content, position)
        labels.append(content[position + 4 : position + 4 + size].decode())
        position += 4 + size
    assert labels == [header["parameters"]["classes"][i] for i in proba.argmax(axis=1)]


def test_server_metadata_lists_the_extension(client: triton.InferenceServerClient) -> None:
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


# ------------------------------------------------------------------------------------------ bad binary bodies


def body(header: dict, *chunks: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return text + b"".join(chunks), {HEADER: str(length), "Content-Type": "application/octet-stream"}


def tensor(name: str, datatype: str, shape: list, size: int) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def good_inputs(rows: int = 2) -> tuple[list[dict], bytes]:
    numbers = np.arange(rows, dtype="<f8").tobytes()
    sizes = b"".join(struct.pack("<I", 3) + b"big" for _ in range(rows))
    tensors = [tensor(name, "FP64", [rows], len(numbers)) for name in NUMBERS]
    return [*tensors, tensor("size", "BYTES", [rows], len(sizes))], numbers * 4 + sizes


def bad_bodies() -> dict[str, tuple[bytes, dict, str, str]]:
    """Name -> (body, headers, the field the 400 names, a part of its message)."""
    tensors, data = good_inputs()
    two = np.zeros(2, "<f8").tobytes()
    return {
        "header-beyond-body": (*body({"inputs": tensors}, data, header_length=10_000), HEADER, "cannot be 10000"),
        "header-not-a-number": (
            json.dumps({"inputs": tensors}).encode() + data,
            {HEADER: "12x"},
            HEADER,
            "not a number",
        ),
        "header-a-superscript-digit": (
            json.dumps({"inputs": tensors}).encode() + data,
            {HEADER: "\xb2"},
            HEADER,
            "not a number",
        ),
        "size-past-the-end": (*body({"inputs": tensors}, data[:-5]), "size", "bytes of the body are left"),
        "size-not-shape-times-dtype": (
            *body({"inputs": [tensor("sepal_length", "FP64", [3], 16), *tensors[1:]]}, two, data[16:]),
            "sepal_length",
            "takes 24 bytes",
        ),
        "unknown-datatype": (
            *body({"inputs": [tensor("petal_width", "FP8", [2], 16), *tensors[:3], tensors[4]]}, two, data[16:]),
            "petal_width",
            "unknown datatype 'FP8'",
        ),
        "bytes-element-past-its-size": (
            *body({"inputs": [*tensors[:4], tensor("size", "BYTES", [1], 5)]}, data[:64], struct.pack("<I", 9) + b"b"),
            "size",
            "run past binary_data_size",
        ),
        "bytes-count-not-shape": (
            *body({"inputs": [*tensors[:4], tensor("size", "BYTES", [3], 14)]}, data),
            "size",
            "holds 3 elements",
        ),
        "bytes-not-utf8": (
            *body({"inputs": [*tensors[:4], tensor("size", "BYTES", [2], 12)]}, data[:64], (b"\2\0\0\0\xff\xfe") * 2),
            "size",
            "not UTF-8",
        ),
        "bool-byte-not-0-or-1": (
            *body({"inputs": [tensor("sepal_length", "BOOL", [2], 2), *tensors[1:]]}, b"\1\2", data[16:]),
            "sepal_length",
            "must be 0 or 1",
        ),
        "data-and-binary": (
            *body({"inputs": [{**tensors[0], "data": [1.0, 2.0]}, *tensors[1:]]}, data),
            "sepal_length",
            "not both",
        ),
        "binary-without-the-header": (
            json.dumps({"inputs": tensors}).encode(),
            {},
            "sepal_length",
            f"needs the {HEADER} header",
        ),
        "bytes-left-over": (*body({"inputs": tensors}, data, b"\0\0"), "body", "2 bytes after the JSON header"),
    }


BAD = bad_bodies()


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_binary_bodies_are_400s_counted_against_no_version(server: ServerProcess, case: str) -> None:
    raw, headers, field, message = BAD[case]
    errors = server.metric("model_server_request_errors_total", version="none", status="400")
    sk_errors = server.metric("model_server_request_errors_total", version="sk")
    for path in (INFER, f"/v2/models/{MODEL}/versions/sk/infer"):
        status, response_headers, answer = server.request("POST", path, raw=raw, headers=headers)
        assert status == 400, answer
        assert answer["field"] == field and message in answer["error"], answer
        assert "model_version" not in answer and "x-model-version" not in response_headers
    wait_until(lambda: server.metric("model_server_request_errors_total", version="none", status="400") == errors + 2)
    assert server.metric("model_server_request_errors_total", version="sk") == sk_errors
    tensors, data = good_inputs()
    raw, headers = body({"inputs": tensors}, data)
    assert server.request("POST", INFER, raw=raw, headers=headers)[0] == 200


def test_binary_data_on_the_mlflow_endpoint_is_refused(server: ServerProcess) -> None:
    tensors, data = good_inputs()
    raw, headers = body({"inputs": tensors}, data)
    status, _, answer = server.request("POST", "/invocations", raw=raw, headers=headers)
    assert status == 400 and answer["field"] == HEADER


# ------------------------------------------------------------------------------------------ the all-number path


def test_numeric_arrays_take_the_all_number_path(monkeypatch: pytest.MonkeyPatch) -> None:
    signature = {
        "inputs": [{"name": f"x{i}", "type": "number", "nullable": False} for i in range(3)],
        "outputs": {"type": "value"},
    }
    rng = np.random.default_rng(0)
    columns = {f"x{i}": rng.normal(size=100_000).astype(np.float32) for i in range(3)}

    def per_column(*_: object) -> None:
        raise AssertionError("the column by column path was taken")

    monkeypatch.setattr(serving.signature, "_coerce", per_column)
    out = coerce_columns(columns, signature)
    for name, values in columns.items():
        assert out[name].dtype == np.float64
        np.testing.assert_array_equal(out[name], values.astype(np.float64))
