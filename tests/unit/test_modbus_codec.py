import struct

import pytest

from wire.modbus import ModbusDecodeError, RegisterSpec, decode, encode, plan_reads

F = 123.456


@pytest.mark.parametrize(
    ("dtype", "order", "regs", "value"),
    [
        ("float32", "ABCD", [0x42F6, 0xE979], 123.456),
        ("float32", "CDAB", [0xE979, 0x42F6], 123.456),
        ("float32", "BADC", [0xF642, 0x79E9], 123.456),
        ("float32", "DCBA", [0x79E9, 0xF642], 123.456),
        ("int16", "ABCD", [0xFFFE], -2.0),
        ("uint16", "ABCD", [0xFFFE], 65534.0),
        ("int32", "ABCD", [0xFFFF, 0xFFFE], -2.0),
        ("int32", "CDAB", [0xFFFE, 0xFFFF], -2.0),
        ("uint32", "ABCD", [0x0001, 0x0000], 65536.0),
        (
            "float64",
            "ABCD",
            [int.from_bytes(struct.pack(">d", 1.5)[i : i + 2], "big") for i in range(0, 8, 2)],
            1.5,
        ),
        ("bool", "ABCD", [1], 1.0),
    ],
)
def test_decode_table(dtype, order, regs, value):
    spec = RegisterSpec("t", 0, dtype=dtype, order=order)
    assert decode(regs, spec) == pytest.approx(value, rel=1e-6)
    assert decode(encode(value, spec), spec) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize("dtype", ["int32", "uint32", "float32", "float64"])
def test_roundtrip_every_order(order, dtype):
    spec = RegisterSpec("t", 0, dtype=dtype, order=order, scale=0.01, offset=-5)
    assert decode(encode(1234.5, spec), spec) == pytest.approx(1234.5, rel=1e-6)


def test_scale_and_offset():
    spec = RegisterSpec("temp", 0, dtype="int16", scale=0.1, offset=-40)
    assert decode([650], spec) == pytest.approx(25.0)


@pytest.mark.parametrize("regs", [[0x7FC0, 0x0000], [0x7F80, 0x0000]])
def test_nan_and_inf_are_decode_errors(regs):
    with pytest.raises(ModbusDecodeError, match="decode to"):
        decode(regs, RegisterSpec("t", 0, dtype="float32"))


def test_wrong_register_count_is_an_error():
    with pytest.raises(ModbusDecodeError, match="expected 2"):
        decode([1], RegisterSpec("t", 0, dtype="float32"))


def test_plan_reads_coalesces_and_splits():
    specs = (
        RegisterSpec("a", 0, dtype="float32"),
        RegisterSpec("b", 2),
        RegisterSpec("c", 10),  # gap 7 <= 8: same request
        RegisterSpec("d", 40),  # far: new request
        RegisterSpec("e", 0, table="input"),
        RegisterSpec("f", 3, table="coil"),
        RegisterSpec("g", 200, dtype="float64"),
        RegisterSpec("h", 320),  # would exceed 125 registers from 200 with a gap
    )
    blocks = [(b.table, b.start, b.count, [s.tag for s in b.specs]) for b in plan_reads(specs)]
    assert blocks == [
        ("holding", 0, 11, ["a", "b", "c"]),
        ("holding", 40, 1, ["d"]),
        ("holding", 200, 4, ["g"]),
        ("holding", 320, 1, ["h"]),
        ("input", 0, 1, ["e"]),
        ("coil", 3, 1, ["f"]),
    ]


def test_plan_reads_respects_the_request_limit():
    specs = tuple(RegisterSpec(f"r{i}", i) for i in range(300))
    blocks = plan_reads(specs)
    assert [b.count for b in blocks] == [125, 125, 50]


def test_coils_and_discrete_inputs_are_bools():
    assert decode([True], RegisterSpec("run", 0, table="coil")) == 1.0
    assert decode([0], RegisterSpec("brk", 0, table="discrete", dtype="bool")) == 0.0
