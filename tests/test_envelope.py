"""The request envelope and the serialisable batch (ladle.envelope)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ladle.envelope import Batch, BatchItem, InferenceRequest, Priority, TraceContext, new_request_id

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("high", Priority.HIGH),
        ("  Normal ", Priority.NORMAL),
        ("LOW", Priority.LOW),
        ("0", Priority.HIGH),
        (2, Priority.LOW),
        (Priority.NORMAL, Priority.NORMAL),
    ],
)
def test_priority_parse_accepts_names_and_numbers(value: object, expected: Priority) -> None:
    assert Priority.parse(value) is expected


@pytest.mark.parametrize("value", ["urgent", "", "3", 7, -1, True, None, 1.0])
def test_priority_parse_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match=r"(?i)priority"):
        Priority.parse(value)


def test_priority_orders_high_first() -> None:
    assert sorted([Priority.LOW, Priority.HIGH, Priority.NORMAL]) == [
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]


def test_traceparent_round_trip() -> None:
    header = f"00-{TRACE_ID}-{SPAN_ID}-01"
    trace = TraceContext.from_traceparent(header, "vendor=1")
    assert trace == TraceContext(TRACE_ID, SPAN_ID, True, "vendor=1")
    assert trace.traceparent() == header
    unsampled = TraceContext.from_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-00")
    assert unsampled is not None and not unsampled.sampled


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"00-{TRACE_ID}-{SPAN_ID}",  # flags missing
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # short trace id
        f"00-{TRACE_ID}-{SPAN_ID}0-01",  # long span id
        f"00-{'z' * 32}-{SPAN_ID}-01",  # not hex
        f"00-{TRACE_ID}-{SPAN_ID}-zz",
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id is invalid per W3C
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id is invalid per W3C
    ],
)
def test_traceparent_refuses_malformed_headers(header: str) -> None:
    assert TraceContext.from_traceparent(header) is None


def test_request_ids_are_unique() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_request_counts_rows_and_expires_at_its_deadline() -> None:
    request = InferenceRequest("m", {"x": np.zeros((3, 2), np.float32)}, deadline=100.0)
    assert request.rows == 3
    assert request.id
    assert not request.expired(99.9)
    assert request.expired(100.0)
    assert not InferenceRequest("m", {"x": np.zeros((1, 2))}).expired(1e12)


def test_shape_key_groups_compatible_requests() -> None:
    a = InferenceRequest("m", {"x": np.zeros((1, 4), np.float32)})
    b = InferenceRequest("m", {"x": np.zeros((5, 4), np.float32)})
    c = InferenceRequest("m", {"x": np.zeros((1, 3), np.float32)})
    d = InferenceRequest("m", {"x": np.zeros((1, 4), np.float64)})
    assert a.shape_key() == b.shape_key()
    assert a.shape_key() != c.shape_key()
    assert a.shape_key() != d.shape_key()


def _requests() -> list[InferenceRequest]:
    rows = [2, 1, 3]
    start = 0
    requests = []
    for index, count in enumerate(rows):
        x = np.arange(start, start + count, dtype=np.float32).reshape(count, 1) * np.ones((1, 2), np.float32)
        requests.append(
            InferenceRequest(
                "m", {"x": x, "y": np.full((count,), index)}, parameters={"i": index}, deadline=5.0
            )
        )
        start += count
    return requests


def test_batch_from_requests_concatenates_in_order() -> None:
    requests = _requests()
    batch = Batch.from_requests(requests)
    assert batch.rows == 6
    assert [item.request_id for item in batch.items] == [r.id for r in requests]
    assert [item.rows for item in batch.items] == [2, 1, 3]
    assert [item.parameters for item in batch.items] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert all(item.deadline == 5.0 for item in batch.items)
    np.testing.assert_array_equal(batch.inputs["x"][:, 0], np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(batch.inputs["y"], [0, 0, 1, 2, 2, 2])


def test_batch_split_returns_each_request_its_own_rows() -> None:
    requests = _requests()
    batch = Batch.from_requests(requests)
    outputs = {"double": batch.inputs["x"] * 2, "tag": batch.inputs["y"]}
    parts = batch.split(outputs)
    assert len(parts) == 3
    for request, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["double"], request.inputs["x"] * 2)
        np.testing.assert_array_equal(part["tag"], request.inputs["y"])


def test_batch_select_round_trips_each_item() -> None:
    requests = _requests()
    batch = Batch.from_requests(requests)
    for index, request in enumerate(requests):
        single = batch.select(index)
        assert single.items == [batch.items[index]]
        assert single.rows == request.rows
        for name, array in request.inputs.items():
            np.testing.assert_array_equal(single.inputs[name], array)


def test_single_request_batch_uses_its_arrays_as_they_are() -> None:
    request = InferenceRequest("m", {"x": np.ones((4, 2), np.float32)})
    batch = Batch.from_requests([request])
    assert batch.inputs["x"] is request.inputs["x"]
    outputs = {"out": np.zeros(4)}
    assert batch.split(outputs) == [outputs]


def test_batch_of_one_and_pickling() -> None:
    batch = Batch.of({"x": np.ones((2, 3), np.float32)}, {"p": 1})
    assert batch.rows == 2
    assert batch.items[0].parameters == {"p": 1}
    clone = pickle.loads(pickle.dumps(batch))  # a batch crosses process boundaries
    assert clone.items == batch.items
    np.testing.assert_array_equal(clone.inputs["x"], batch.inputs["x"])
    assert isinstance(clone.items[0], BatchItem)


def test_cancel_signal() -> None:
    request = InferenceRequest("m", {"x": np.zeros((1, 1))})
    assert not request.cancel.cancelled
    request.cancel.cancel("client went away")
    assert request.cancel.cancelled
    assert request.cancel.reason == "client went away"


def test_a_padded_batch_is_split_back_to_each_requests_own_lengths() -> None:
    from ladle import Batch, BatchItem

    items = [BatchItem("a", 1, extents=(2,)), BatchItem("b", 2, extents=(4,))]
    batch = Batch({"x": np.zeros((3, 4), np.float32)}, items)
    outputs = {
        "tokens": np.arange(3 * 4 * 5).reshape(3, 4, 5),  # [rows, padded seq, classes]
        "score": np.arange(3.0),  # one value per row
        "other": np.zeros((3, 7)),  # an axis that is not the padded one stays as it is
    }
    first, second = batch.split(outputs)
    assert first["tokens"].shape == (1, 2, 5) and second["tokens"].shape == (2, 4, 5)
    np.testing.assert_array_equal(first["tokens"], outputs["tokens"][:1, :2])
    assert first["score"].shape == (1,) and first["other"].shape == (1, 7)
