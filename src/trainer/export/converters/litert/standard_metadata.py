"""Standard TFLite Metadata (tflite-support's metadata_schema.fbs, file identifier M001), which Android
Studio's ML Model Binding and the LiteRT support and task libraries read: the input is an RGB image of the
model's size whose normalization is mean 0 / std 1 (the model takes raw 0-255 pixels and normalizes inside),
the output's axis is labelled by labels.txt, packed into the .tflite as a zip appended to the flatbuffer.

Written with the flatbuffers builder, field by field in the schema's order, because neither litert-torch nor
ai-edge-litert ships the metadata schema's Python code and tflite-support does not install with them.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flatbuffers
from flatbuffers.table import Table

NAME = "TFLITE_METADATA"  # the model's metadata entry the support library looks for
IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # only fields of schema 1.0 are used
LABELS_FILE_TYPE = 2  # AssociatedFileType.TENSOR_AXIS_LABELS
IMAGE_PROPERTIES, FEATURE_PROPERTIES = 2, 1  # ContentProperties union members
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union member
RGB = 1  # ColorSpaceType


def _table(builder: flatbuffers.Builder, fields: list[tuple[str, int, Any]]) -> int:
    """One table from (kind, slot, value) fields: 'offset' (a built object), 'byte', 'uint'."""
    builder.StartObject(max((slot for _, slot, _ in fields), default=-1) + 1)
    for kind, slot, value in fields:
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "byte":
            builder.PrependUint8Slot(slot, value, 0)
        else:
            builder.PrependUint32Slot(slot, value, 0)
    return builder.EndObject()


def _offsets(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder: flatbuffers.Builder, values: Sequence[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def build(*, name: str, description: str, version: str, author: str, license: str, size: int) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier taking (1, size, size, 3) raw RGB pixels."""
    b = flatbuffers.Builder(1024)
    s = b.CreateString
    note = s("class names, one a line, in output order")
    labels = _table(b, [("offset", 0, s("labels.txt")), ("offset", 1, note), ("byte", 2, LABELS_FILE_TYPE)])
    image_size = _table(b, [("uint", 0, size), ("uint", 1, size)])
    image = _table(b, [("byte", 0, RGB), ("offset", 1, image_size)])
    normalization = _table(b, [("offset", 0, _floats(b, [0.0])), ("offset", 1, _floats(b, [1.0]))])
    unit = _table(b, [("byte", 0, NORMALIZATION_OPTIONS), ("offset", 1, normalization)])
    stats_in = _table(b, [("offset", 0, _floats(b, [255.0])), ("offset", 1, _floats(b, [0.0]))])
    image_input = _table(b, [
        ("offset", 0, s("image")),
        ("offset", 1, s("RGB pixels 0-255 as float32, NOT normalized: the model normalizes them itself")),
        ("offset", 3, _table(b, [("byte", 0, IMAGE_PROPERTIES), ("offset", 1, image)])),
        ("offset", 4, _offsets(b, [unit])),
        ("offset", 5, stats_in),
    ])  # fmt: skip
    feature = _table(b, [("byte", 0, FEATURE_PROPERTIES), ("offset", 1, _table(b, []))])
    logits = _table(b, [
        ("offset", 0, s("logits")),
        ("offset", 1, s("one score per class (logits: apply softmax for probabilities)")),
        ("offset", 3, feature),
        ("offset", 6, _offsets(b, [labels])),
    ])  # fmt: skip
    subgraph = _table(b, [("offset", 2, _offsets(b, [image_input])), ("offset", 3, _offsets(b, [logits]))])
    root = _table(b, [
        ("offset", 0, s(name)), ("offset", 1, s(description)), ("offset", 2, s(version)),
        ("offset", 3, _offsets(b, [subgraph])), ("offset", 4, s(author)), ("offset", 5, s(license)),
        ("offset", 7, s(MIN_PARSER_VERSION)),
    ])  # fmt: skip
    b.Finish(root, file_identifier=IDENTIFIER)
    return bytes(b.Output())


def labels_zip(classes: Sequence[str]) -> bytes:
    """labels.txt in a zip, to append to the .tflite (how tflite-support packs associated files)."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("labels.txt", "".join(f"{c}\n" for c in classes))
    return stream.getvalue()


class _Reader:
    """Field access on one table of a metadata flatbuffer, by slot."""

    def __init__(self, buf: bytearray, pos: int):
        self.table = Table(buf, pos)

    def _at(self, slot: int) -> int:
        return self.table.Offset(4 + 2 * slot)

    def string(self, slot: int) -> str | None:
        at = self._at(slot)
        return self.table.String(at + self.table.Pos).decode() if at else None

    def scalar(self, slot: int, flags: Any) -> int:
        at = self._at(slot)
        return self.table.Get(flags, at + self.table.Pos) if at else 0

    def child(self, slot: int) -> _Reader | None:
        at = self._at(slot)
        return _Reader(self.table.Bytes, self.table.Indirect(at + self.table.Pos)) if at else None

    def children(self, slot: int) -> list[_Reader]:
        at = self._at(slot)
        if not at:
            return []
        start = self.table.Vector(at)
        count = self.table.VectorLen(at)
        return [_Reader(self.table.Bytes, self.table.Indirect(start + 4 * i)) for i in range(count)]

    def floats(self, slot: int) -> list[float]:
        at = self._at(slot)
        if not at:
            return []
        start = self.table.Vector(at)
        flags, count = flatbuffers.number_types.Float32Flags, self.table.VectorLen(at)
        return [self.table.Get(flags, start + 4 * i) for i in range(count)]


def read(model_path: Path, buffer: bytes) -> dict[str, Any]:
    """What an app's metadata reader sees: names, input image properties and normalization, the output's
    labels file and its contents from the zip inside `model_path`."""
    if bytes(buffer[4:8]) != IDENTIFIER:
        raise ValueError(f"{model_path}: the {NAME} entry is not a TFLite ModelMetadata flatbuffer")
    buf = bytearray(buffer)
    root = _Reader(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    byte, uint = flatbuffers.number_types.Uint8Flags, flatbuffers.number_types.Uint32Flags
    (subgraph,) = root.children(3)
    (image,), (logits,) = subgraph.children(2), subgraph.children(3)
    content = image.child(3)
    properties, size = content.child(1), content.child(1).child(1)
    (unit,) = image.children(4)
    (labels,) = logits.children(6)
    with zipfile.ZipFile(model_path) as archive:
        label_lines = archive.read(labels.string(0)).decode().splitlines()
    return {
        "name": root.string(0),
        "version": root.string(2),
        "author": root.string(4),
        "license": root.string(5),
        "min_parser_version": root.string(7),
        "input": {
            "name": image.string(0),
            "content": content.scalar(0, byte),
            "color_space": properties.scalar(0, byte),
            "size": [size.scalar(0, uint), size.scalar(1, uint)],
            "normalization": {"mean": unit.child(1).floats(0), "std": unit.child(1).floats(1)},
        },
        "output": {
            "name": logits.string(0),
            "labels_file": labels.string(0),
            "labels_type": labels.scalar(2, byte),
        },
        "labels": label_lines,
    }
