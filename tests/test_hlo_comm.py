"""The HLO collective counter (scaling.estimate.hlo_comm) against a hand-written module whose
bytes are counted by hand below."""

from __future__ import annotations

import pytest

from scaling.estimate.hlo_comm import collectives, comm_bytes_by_kind, group_size

# ruff: noqa: E501 (HLO lines are long)

# ENTRY runs a 3-trip while loop whose body all-reduces bf16[4,4] over groups of 4 (iota
# form); outside it an all-gather f32[8,16] over pairs (explicit groups), an all-reduce
# f32[16] that is only dynamic-sliced to its quarter (mesh form, a reduce-scatter), an
# all-to-all f32[2,8] over all 8 partitions and a collective-permute f32[10].
HLO = """HloModule jit_step, num_partitions=8

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%body (p: (s32[], bf16[4,4])) -> (s32[], bf16[4,4]) {
  %p = (s32[], bf16[4,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = bf16[4,4]{1,0} get-tuple-element(%p), index=1
  %ar = bf16[4,4]{1,0} all-reduce(%x), channel_id=1, replica_groups=[2,4]<=[8], to_apply=%add
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], bf16[4,4]{1,0}) tuple(%next, %ar)
}

%cond (q: (s32[], bf16[4,4])) -> pred[] {
  %q = (s32[], bf16[4,4]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %three = s32[] constant(3)
  ROOT %lt = pred[] compare(%j, %three), direction=LT
}

ENTRY %main (w: bf16[4,4], g: f32[4,16], h: f32[16], e: f32[2,8], c: f32[10]) -> f32[4] {
  %w = bf16[4,4]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[4,4]{1,0}) tuple(%zero, %w)
  %loop = (s32[], bf16[4,4]{1,0}) while(%init), condition=%cond, body=%body
  %g = f32[4,16]{1,0} parameter(1)
  %ag = f32[8,16]{1,0} all-gather(%g), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %h = f32[16]{0} parameter(2)
  %rs = f32[16]{0} all-reduce(%h), channel_id=3, replica_groups=mesh['a'=2,'b'=4] {'b'}, to_apply=%add
  %k = s32[] constant(4)
  %slice = f32[4]{0} dynamic-slice(%rs, %k), dynamic_slice_sizes={4}
  %e = f32[2,8]{1,0} parameter(3)
  %a2a = f32[2,8]{1,0} all-to-all(%e), channel_id=4, replica_groups={}, dimensions={1}
  %c = f32[10]{0} parameter(4)
  %cp = f32[10]{0} collective-permute(%c), channel_id=5, source_target_pairs={{0,1},{1,0}}
  ROOT %out = f32[4]{0} add(%slice, %slice)
}
"""


def test_collectives_are_counted_per_execution_with_ring_bytes():
    found = {c.kind: c for c in collectives(HLO)}
    assert set(found) == {
        "all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"
    }  # fmt: skip
    loop = found["all-reduce"]
    assert (loop.result_bytes, loop.dtypes, loop.group_size, loop.executions) == (
        4 * 4 * 2, ("bf16",), 4, 3,
    )  # fmt: skip
    assert found["reduce-scatter"].group_size == 4 and found["reduce-scatter"].result_bytes == 16
    by_kind = comm_bytes_by_kind(HLO)
    assert by_kind["all_reduce"] == pytest.approx(3 * 2 * 32 * 3 / 4)  # 3 trips, 2V(n-1)/n
    assert by_kind["all_gather"] == pytest.approx(8 * 16 * 4 * 1 / 2)  # V(n-1)/n, pairs
    assert by_kind["reduce_scatter"] == pytest.approx(16 * 4 * 3 / 4)  # V = the full 64 B
    assert by_kind["all_to_all"] == pytest.approx(2 * 8 * 4 * 7 / 8)  # all 8 partitions
    assert by_kind["collective_permute"] == 40
    assert by_kind["total"] == pytest.approx(sum(v for k, v in by_kind.items() if k != "total"))


def test_known_trip_count_and_group_formats():
    text = HLO.replace(
        "condition=%cond, body=%body",
        'condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}',
    )
    assert comm_bytes_by_kind(text)["all_reduce"] == pytest.approx(12 * 2 * 32 * 3 / 4)
    line = "x = f32[4] all-reduce(%y), replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_0','axis_1'}"  # noqa: E501
    assert group_size(line, 8) == 8
    with pytest.raises(ValueError, match="unrecognised replica_groups"):
        group_size("x = f32[4] all-reduce(%y), replica_groups=weird", 8)
