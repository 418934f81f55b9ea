"""Translate protocol messages (``protocols.channel.Message``) to and from protobuf ``Payload``s."""

from __future__ import annotations

import math

import numpy as np

from proto import fedprofile_v1_pb2 as pb
from protocols.channel import ALLOWED_DTYPES, Message, check_message
from protocols.errors import ProtocolError

MAX_DIMENSIONS = 8  # no message of either protocol carries an array of more dimensions


class CodecError(ProtocolError):
    """A payload from the peer does not decode to a valid message."""


def array_to_pb(value: np.ndarray) -> pb.Array:
    arr = np.asarray(value, order="C")  # not ascontiguousarray, which makes a 0-d array 1-d
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return pb.Array(dtype=arr.dtype.str, shape=list(arr.shape), data=arr.tobytes())


def array_from_pb(msg: pb.Array, *, where: str) -> np.ndarray:
    if msg.dtype not in ALLOWED_DTYPES:
        raise CodecError(f"{where}: dtype {msg.dtype!r} is not allowed")
    dtype = np.dtype(msg.dtype)
    shape = tuple(int(s) for s in msg.shape)
    if len(shape) > MAX_DIMENSIONS:
        raise CodecError(f"{where}: {len(shape)} dimensions; at most {MAX_DIMENSIONS} are allowed")
    if any(s < 0 for s in shape):
        raise CodecError(f"{where}: negative dimension in shape {shape}")
    count = math.prod(shape)  # Python integers: a hostile shape cannot overflow into a size that fits the data
    if count * dtype.itemsize != len(msg.data):
        raise CodecError(f"{where}: {len(msg.data)} bytes do not fit shape {shape} of {dtype}")
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape).copy()


def to_payload(message: Message) -> pb.Payload:
    check_message(message)
    payload = pb.Payload()
    for name, value in message.items():
        slot = payload.fields[name]
        if isinstance(value, np.ndarray):
            slot.array_value.CopyFrom(array_to_pb(value))
        elif isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, bytes):
            slot.bytes_value = value
        elif isinstance(value, str):
            slot.string_value = value
        elif isinstance(value, int):
            slot.int_value = value
        else:
            slot.float_value = float(value)
    return payload


def from_payload(payload: pb.Payload, *, where: str = "payload") -> Message:
    message: Message = {}
    for name, value in payload.fields.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise CodecError(f"{where}: field {name!r} carries no value")
        if kind == "array_value":
            message[name] = array_from_pb(value.array_value, where=f"{where} field {name!r}")
        else:
            message[name] = getattr(value, kind)
    return message
