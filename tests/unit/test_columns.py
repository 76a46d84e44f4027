"""server.core.columns: flow records as one Arrow table, the form the spool hands the sinks."""

from __future__ import annotations

import pyarrow as pa
import pytest

from server.core.columns import SCHEMA, concat, records_of, table_of, table_of_columns, without_repeats
from server.core.model import Action, Direction, FlowRecord, LogStatus, ResourceType, record_columns
from server.core.records import with_id


def _records(n: int) -> list[FlowRecord]:
    return [
        with_id(
            FlowRecord(
                "",
                1,
                "acct",
                "fl-abcdefgh",
                "bj",
                "proj",
                "web",
                ResourceType.EIP,
                "eip-1",
                "vpc-1",
                f"10.0.0.{i % 250 + 1}" if i % 7 else "",
                "2001:db8::1" if i % 7 else "",
                1024 + i,
                443,
                6,
                i,
                2**64 - 1 - i,
                1_700_000_000_000 + i,
                1_700_000_060_000 + i,
                Action.REJECT if i % 3 else Action.ACCEPT,
                LogStatus.OK if i % 7 else LogStatus.NODATA,
                Direction.EGRESS,
                i % 0x1000,
            )
        )
        for i in range(n)
    ]


def test_records_round_trip_through_a_table_every_field_and_extreme():
    recs = _records(300)
    table = table_of(recs)
    assert table.schema == SCHEMA and table.num_rows == 300
    assert records_of(table) == recs
    assert table_of_columns(record_columns(recs)).equals(table)
    assert records_of(concat([table_of(recs[:100]), table_of(recs[100:])])) == recs
    assert table_of([]).num_rows == 0 and records_of(concat([])) == []


def test_a_value_the_schema_cannot_hold_is_an_error():
    bad = _records(2)
    bad[1] = bad[1]._replace(src_port=2**40)
    with pytest.raises(ValueError, match="src_port"):
        table_of(bad)


def test_without_repeats_keeps_the_first_or_last_row_of_each_key_in_order():
    t = pa.table({"k": ["a", "b", "a", "c", "b", "a"], "s": ["x", "x", "x", "y", "x", "x"], "v": [0, 1, 2, 3, 4, 5]})
    assert without_repeats(t, ["k"]).column("v").to_pylist() == [0, 1, 3]
    assert without_repeats(t, ["k"], keep="last").column("v").to_pylist() == [3, 4, 5]
    assert without_repeats(t, ["k", "s"]).column("v").to_pylist() == [0, 1, 3]
    assert without_repeats(t.slice(0, 1), ["k"]).equals(t.slice(0, 1))
    with pytest.raises(ValueError):
        without_repeats(t, ["k"], keep="any")


def test_a_value_outside_the_table_types_goes_to_the_sink_as_records():
    """A port above 2**31 is legal in the proto and in the archive (uint32), not in the table:
    the hand-over then gives the target rows, and its own rules decide."""
    from server.pipeline.fanout import batch_writer
    from server.pipeline.spool import BatchKey, SpoolBatch

    odd = _records(3)
    odd[2] = odd[2]._replace(src_port=3_000_000_000)
    with pytest.raises(ValueError, match="src_port"):
        table_of(odd)
    got: dict[str, object] = {}
    write = batch_writer(lambda records: got.setdefault("rows", records), lambda t: got.setdefault("table", t))
    key = BatchKey("acct", "bj", "proj", "web")
    write([SpoolBatch(1, 0, key, odd[:2], 0), SpoolBatch(2, 0, key, odd[2:], 0)])
    assert got == {"rows": odd}
    got.clear()
    write([SpoolBatch(1, 0, key, odd[:2], 0)])
    assert list(got) == ["table"] and records_of(got["table"]) == odd[:2]
