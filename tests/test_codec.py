"""The wire codec: every message the protocols may send survives protobuf exactly; bad payloads are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from party_common.codec import CodecError, array_from_pb, from_payload, to_payload
from proto import fedprofile_v1_pb2 as pb
from protocols.channel import INT64_MAX, INT64_MIN, check_message

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
values = st.one_of(st.binary(max_size=64), st.text(max_size=20), st.integers(INT64_MIN, INT64_MAX),
                   st.floats(allow_nan=False), st.booleans(), arrays)
messages = st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_messages_round_trip_exactly(message: dict) -> None:
    data = to_payload(message).SerializeToString()
    payload = pb.Payload()
    payload.ParseFromString(data)
    back = from_payload(payload)
    assert back.keys() == message.keys()
    for name, value in message.items():
        got = back[name]
        if isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
        else:
            assert type(got) is type(value) and got == value


def test_big_endian_arrays_arrive_little_endian() -> None:
    value = np.arange(5, dtype=">i4")
    got = from_payload(to_payload({"a": value}))["a"]
    assert isinstance(got, np.ndarray) and got.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(got, value)


def test_what_the_wire_cannot_carry_is_refused_before_sending() -> None:
    for bad in ({"a": 2**64}, {"a": np.array(["x"], dtype=object)}, {"a": [1, 2]}, {"": 1}, {"a": None}):
        with pytest.raises(TypeError):
            check_message(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            to_payload(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("array, message", [
    (pb.Array(dtype="|O", shape=[1], data=b"x"), "not allowed"),
    (pb.Array(dtype="<f8", shape=[2], data=b"\x00" * 8), "do not fit shape"),
    (pb.Array(dtype="<i8", shape=[-1], data=b""), "negative dimension"),
    # 2^32 x 2^32 elements would overflow a 64-bit count to 0, which "fits" no data at all.
    (pb.Array(dtype="<i8", shape=[2**32, 2**32], data=b""), "do not fit shape"),
    (pb.Array(dtype="<i8", shape=[1] * 9, data=b"\x00" * 8), "at most 8 are allowed"),
])
def test_malformed_arrays_from_the_peer_are_codec_errors(array: pb.Array, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        array_from_pb(array, where="test")


def test_a_field_without_a_value_is_refused() -> None:
    payload = pb.Payload()
    payload.fields["empty"].SetInParent()
    with pytest.raises(CodecError, match="carries no value"):
        from_payload(payload)
