"""The decoder: datagram bytes + the exporters' template caches -> flows. No I/O.

One port takes NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011); the first two bytes (the
version) tell them apart. Templates and options templates are kept per (exporter, version,
observation domain / source id): a session. A template refresh replaces the template (identical
refreshes reuse the compiled layout); IPFIX withdrawals (field count 0; template id 2 or 3: all)
forget it. Data sets that come before their template are held (Limits.hold_seconds, bounded in
count and bytes) and decoded when it arrives. Options data records set the session's sampling
interval (per sampler id when they name one) and its systemInitTimeMilliseconds.

Every malformed or hostile input is counted and dropped: decode() never raises for bad bytes,
and every structure it keeps is capped (server.sources.flows.Limits).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Hashable

from server.sources.flows import ACCEPT, Counters, Limits
from server.sources.layout import VARIABLE, Field, Layout, _n4

try:  # the compiled extract (server/native/_fastingest.c); without it, each Layout's Python one
    from server.native.fastpath import compiled as _native
except ImportError:  # pragma: no cover - the stubs are missing: only the pure decoder is used
    _native = None
_I64 = 2**63

_V5_HEADER = struct.Struct("!HHIIIIBBH")
_V5_RECORD = struct.Struct("!4s4s4x2x2xIIIIHHxBBx2x2x1x1x2x")
_V9_HEADER = struct.Struct("!HHIIII")
_IPFIX_HEADER = struct.Struct("!HHIII")
_SET_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

# Options record IEs read: sampling interval(s), sampler ids, system init time.
_SAMPLING_IES = (34, 50, 305)


class _Template:
    __slots__ = ("layout", "scope_count", "options")

    def __init__(self, layout: Layout, scope_count: int, options: bool) -> None:
        self.layout = layout
        self.scope_count = scope_count
        self.options = options


class _Held:
    __slots__ = ("tid", "body", "export_ms", "uptime", "until")

    def __init__(self, tid: int, body: bytes, export_ms: int, uptime: int, until: float) -> None:
        self.tid = tid
        self.body = body
        self.export_ms = export_ms
        self.uptime = uptime
        self.until = until


class Session:
    """Templates, held data sets and sampling state of one (exporter, version, domain)."""

    __slots__ = ("templates", "held", "sampling", "samplers", "init_ms", "withdrawn")

    def __init__(self) -> None:
        self.templates: OrderedDict[int, _Template] = OrderedDict()
        # Template ids withdrawn and not defined again: their data sets are not held (a later
        # template with the same id describes other records).
        self.withdrawn: set[int] = set()
        self.held: list[_Held] = []
        self.sampling = 0  # interval from options naming no sampler (or the v5 header)
        self.samplers: dict[int, int] = {}
        self.init_ms = 0  # systemInitTimeMilliseconds (IPFIX), 0 = unknown


class _Malformed(Exception):
    pass


class Decoder:
    """Decodes datagrams of any number of exporters; `counters` says what happened."""

    def __init__(self, limits: Limits | None = None, native: bool = True) -> None:
        self.limits = limits or Limits()
        # native=False: always the generated Python extract (what the compiled one is tested against)
        # (getattr: a module built from an older _fastingest.c has none; then the Python one serves)
        self._extract_c = getattr(_native, "extract", None) if native else None
        self.counters = Counters()
        self.sessions: OrderedDict[tuple, Session] = OrderedDict()
        self._layouts: OrderedDict[tuple, Layout] = OrderedDict()
        self.held_bytes = 0
        self._next_expiry = 0.0

    # -- entry ---------------------------------------------------------------------------------

    def decode(self, data: bytes, exporter: Hashable, now: float) -> list[tuple]:
        """The flows of one datagram (tuples in server.sources.flows.Flow field order), plus those
        of held data sets its templates unlocked. `now`: a monotonic clock in seconds (for the
        hold). Never raises for bad input."""
        c = self.counters
        c.datagrams += 1
        if self.held_bytes and now >= self._next_expiry:
            self._next_expiry = now + min(1.0, self.limits.hold_seconds / 4)
            self._expire(now)
        if len(data) < 4:
            c.malformed += 1
            return []
        version = (data[0] << 8) | data[1]
        out: list[tuple] = []
        try:
            if version == 10:
                self._ipfix(memoryview(data), exporter, now, out)
            elif version == 9:
                self._v9(memoryview(data), exporter, now, out)
            elif version == 5:
                self._v5(data, out)
            else:
                c.unsupported_version += 1
                return []
        except (_Malformed, struct.error, ValueError, IndexError):
            c.malformed += 1
            c.flows += len(out)
            return out
        c.decoded += 1
        c.flows += len(out)
        return out

    # -- NetFlow v5 ------------------------------------------------------------------------------

    def _v5(self, data: bytes, out: list) -> None:
        if len(data) < 24:
            raise _Malformed
        _, count, uptime, secs, nsecs, _, _, _, sampling = _V5_HEADER.unpack_from(data)
        interval = sampling & 0x3FFF
        now_ms = secs * 1000 + nsecs // 1_000_000
        n = min(count, (len(data) - 24) // 48)
        ntop = _n4
        for src, dst, pkts, octets, first, last, sport, dport, flags, proto in _V5_RECORD.iter_unpack(
            memoryview(data)[24 : 24 + 48 * n]
        ):
            if proto == 1:  # type/code in the destination port: flowlog keeps no ports for ICMP
                sport = dport = 0
            out.append(
                (
                    ntop(src),
                    ntop(dst),
                    sport,
                    dport,
                    proto,
                    pkts,
                    octets,
                    now_ms - (((uptime - first + 0x80000000) & 0xFFFFFFFF) - 0x80000000),
                    now_ms - (((uptime - last + 0x80000000) & 0xFFFFFFFF) - 0x80000000),
                    flags,
                    ACCEPT,
                    interval,
                )
            )
        if n < count:
            raise _Malformed

    # -- sessions ----------------------------------------------------------------------------------

    def _session(self, key: tuple) -> Session:
        s = self.sessions.get(key)
        if s is None:
            s = self.sessions[key] = Session()
            if len(self.sessions) > self.limits.max_sessions:
                _, old = self.sessions.popitem(last=False)
                self._drop_held(old, old.held)
                self.counters.sessions_evicted += 1
        else:
            self.sessions.move_to_end(key)
        return s

    def _layout(self, fields: tuple[Field, ...], ipfix: bool) -> Layout:
        key = (ipfix, fields)
        layout = self._layouts.get(key)
        if layout is None:
            layout = Layout(fields, ipfix)
            self._layouts[key] = layout
            if len(self._layouts) > self.limits.max_compiled_layouts:
                self._layouts.popitem(last=False)
        else:
            self._layouts.move_to_end(key)
        return layout

    def _learn(
        self, s: Session, tid: int, fields: tuple[Field, ...], scope_count: int, options: bool, ipfix: bool
    ) -> bool:
        c = self.counters
        if len(fields) > self.limits.max_template_fields or tid < 256:
            c.templates_refused += 1
            return False
        if not any(f.length == VARIABLE for f in fields) and sum(f.length for f in fields) == 0:
            c.templates_refused += 1  # records of no bytes: a data set would be endless records
            return False
        try:
            layout = self._layout(fields, ipfix)
        except (struct.error, ValueError, SyntaxError, MemoryError, RecursionError):
            c.templates_refused += 1
            return False
        s.templates[tid] = _Template(layout, scope_count, options)
        s.withdrawn.discard(tid)
        s.templates.move_to_end(tid)
        c.templates += 1
        while len(s.templates) > self.limits.max_templates_per_session:
            s.templates.popitem(last=False)
            c.templates_evicted += 1
        return True

    def _withdraw(self, s: Session, tid: int, options: bool) -> None:
        c = self.counters
        if len(s.withdrawn) >= self.limits.max_templates_per_session:
            s.withdrawn.clear()
        if tid in (2, 3):  # all (options) templates of the session
            for k in [k for k, t in s.templates.items() if t.options == options]:
                del s.templates[k]
                s.withdrawn.add(k)
                c.templates_withdrawn += 1
        elif s.templates.pop(tid, None) is not None:
            s.withdrawn.add(tid)
            c.templates_withdrawn += 1

    # -- held data sets --------------------------------------------------------------------------

    def _hold(self, s: Session, tid: int, body: memoryview, export_ms: int, uptime: int, now: float) -> None:
        lim = self.limits
        c = self.counters
        c.template_misses += 1
        if len(body) > lim.max_held_bytes:
            c.undecodable += 1
            return
        while s.held and len(s.held) >= lim.max_held_sets_per_session:
            self._drop_held(s, [s.held[0]])
        while self.held_bytes + len(body) > lim.max_held_bytes:
            victim = next((x for x in self.sessions.values() if x.held), None)
            if victim is None:
                break
            self._drop_held(victim, [victim.held[0]])
        s.held.append(_Held(tid, bytes(body), export_ms, uptime, now + lim.hold_seconds))
        self.held_bytes += len(body)

    def _drop_held(self, s: Session, which: list[_Held]) -> None:
        for h in list(which):
            s.held.remove(h)
            self.held_bytes -= len(h.body)
            self.counters.undecodable += 1

    def _expire(self, now: float) -> None:
        for s in self.sessions.values():
            if s.held and s.held[0].until <= now:
                self._drop_held(s, [h for h in s.held if h.until <= now])

    def _release(self, s: Session, tids: set[int], out: list) -> None:
        """Decode the held data sets whose template just arrived."""
        ready = [h for h in s.held if h.tid in tids]
        for h in ready:
            s.held.remove(h)
            self.held_bytes -= len(h.body)
            t = s.templates.get(h.tid)
            if t is None:
                self.counters.undecodable += 1
                continue
            try:
                self._data(s, t, memoryview(h.body), h.export_ms, h.uptime, out)
            except (struct.error, ValueError, IndexError):
                self.counters.undecodable += 1
                continue
            self.counters.held_decoded += 1

    # -- data and options records ----------------------------------------------------------------

    def _data(self, s: Session, t: _Template, body: memoryview, export_ms: int, uptime: int, out: list) -> None:
        layout = t.layout
        if t.options:
            self._options(s, layout, layout.records(body))
            return
        if layout.extract is None:
            return
        c = self._extract_c
        if c is not None and layout.native is not None and -_I64 < s.init_ms < _I64 and -_I64 < s.sampling < _I64:
            got = c(body, layout.native, export_ms, uptime, s.init_ms, s.sampling)
            if got is not None:
                out.extend(got)
                return
        out.extend(layout.extract(layout.records(body), export_ms, uptime, s.init_ms, s.sampling, s.samplers))

    def _options(self, s: Session, layout: Layout, rows) -> None:
        slots = layout.slots
        for row in rows:
            self.counters.option_records += 1
            interval = None
            for ie in _SAMPLING_IES:
                if ie in slots and isinstance(row[slots[ie]], int):
                    interval = row[slots[ie]]
                    if ie == 305 and 306 in slots and interval and isinstance(row[slots[306]], int):
                        interval = (interval + row[slots[306]]) // interval
                    break
            if interval is not None:
                sampler = next(
                    (row[slots[ie]] for ie in (302, 48) if ie in slots and isinstance(row[slots[ie]], int)), None
                )
                if sampler is None:
                    s.sampling = interval
                elif sampler in s.samplers or len(s.samplers) < self.limits.max_samplers_per_session:
                    s.samplers[sampler] = interval
            if 160 in slots and isinstance(row[slots[160]], int):
                s.init_ms = row[slots[160]]

    # -- NetFlow v9 ---------------------------------------------------------------------------------

    def _v9(self, data: memoryview, exporter: Hashable, now: float, out: list) -> None:
        if len(data) < 20:
            raise _Malformed
        _, _, uptime, secs, _, source_id = _V9_HEADER.unpack_from(data)
        s = self._session((exporter, 9, source_id))
        export_ms = secs * 1000
        off, end = 20, len(data)
        learned: set[int] = set()
        broken = False
        while end - off >= 4:
            set_id, length = _SET_HEADER.unpack_from(data, off)
            if length < 4 or off + length > end:
                broken = True
                break
            body = data[off + 4 : off + length]
            off += length
            if set_id == 0:
                broken |= self._v9_templates(s, body, learned)
            elif set_id == 1:
                broken |= self._v9_options(s, body, learned)
            elif set_id >= 256:
                self._set(s, set_id, body, export_ms, uptime, now, out)
        if learned and s.held:
            self._release(s, learned, out)
        if broken:
            raise _Malformed

    def _v9_templates(self, s: Session, body: memoryview, learned: set[int]) -> bool:
        off, end = 0, len(body)
        while end - off >= 4:
            tid, count = _SET_HEADER.unpack_from(body, off)
            off += 4
            if count * 4 > end - off:
                return True
            if count == 0:
                continue
            fields = tuple(Field(ie, n, 0) for ie, n in struct.iter_unpack("!HH", body[off : off + 4 * count]))
            off += 4 * count
            if any(f.length == VARIABLE for f in fields):  # v9 has no variable-length fields
                self.counters.templates_refused += 1
                continue
            if self._learn(s, tid, fields, 0, False, False):
                learned.add(tid)
        return False

    def _v9_options(self, s: Session, body: memoryview, learned: set[int]) -> bool:
        off, end = 0, len(body)
        while end - off >= 6:
            tid, scope_len, opt_len = struct.unpack_from("!HHH", body, off)
            off += 6
            if scope_len % 4 or opt_len % 4 or scope_len + opt_len > end - off:
                return True
            # Scope field types (1 system, 2 interface, ...) are not IEs: enterprise -1 keeps them unread.
            scope = tuple(Field(ie, n, -1) for ie, n in struct.iter_unpack("!HH", body[off : off + scope_len]))
            off += scope_len
            opts = tuple(Field(ie, n, 0) for ie, n in struct.iter_unpack("!HH", body[off : off + opt_len]))
            off += opt_len
            if any(f.length == VARIABLE for f in scope + opts):
                self.counters.templates_refused += 1
                continue
            if self._learn(s, tid, scope + opts, len(scope), True, False):
                learned.add(tid)
            if end - off < 6:  # the rest is padding
                break
        return False

    def _set(self, s: Session, tid: int, body: memoryview, export_ms: int, uptime: int, now: float, out: list) -> None:
        t = s.templates.get(tid)
        if t is None:
            if tid in s.withdrawn:
                self.counters.undecodable += 1
            else:
                self._hold(s, tid, body, export_ms, uptime, now)
            return
        s.templates.move_to_end(tid)
        self._data(s, t, body, export_ms, uptime, out)

    # -- IPFIX ------------------------------------------------------------------------------------------

    def _ipfix(self, data: memoryview, exporter: Hashable, now: float, out: list) -> None:
        if len(data) < 16:
            raise _Malformed
        _, length, secs, _, domain = _IPFIX_HEADER.unpack_from(data)
        broken = length != len(data)
        end = min(length, len(data))
        s = self._session((exporter, 10, domain))
        export_ms = secs * 1000
        off = 16
        learned: set[int] = set()
        while end - off >= 4:
            set_id, slen = _SET_HEADER.unpack_from(data, off)
            if slen < 4 or off + slen > end:
                broken = True
                break
            body = data[off + 4 : off + slen]
            off += slen
            if set_id == 2 or set_id == 3:
                broken |= self._ipfix_templates(s, body, set_id == 3, learned)
            elif set_id >= 256:
                self._set(s, set_id, body, export_ms, 0, now, out)
        if learned and s.held:
            self._release(s, learned, out)
        if broken:
            raise _Malformed

    def _ipfix_templates(self, s: Session, body: memoryview, options: bool, learned: set[int]) -> bool:
        off, end = 0, len(body)
        head = 6 if options else 4
        while end - off >= 4:
            tid, count = _SET_HEADER.unpack_from(body, off)
            if count == 0:  # withdrawal
                self._withdraw(s, tid, options)
                off += 4
                continue
            if end - off < head:
                return True
            scope_count = _U16.unpack_from(body, off + 4)[0] if options else 0
            off += head
            if options and (scope_count == 0 or scope_count > count):
                return True
            fields = []
            for _ in range(min(count, self.limits.max_template_fields + 1)):
                if end - off < 4:
                    return True
                ie, n = _SET_HEADER.unpack_from(body, off)
                off += 4
                enterprise = 0
                if ie & 0x8000:
                    if end - off < 4:
                        return True
                    enterprise = _U32.unpack_from(body, off)[0] or 0xFFFFFFFF
                    off += 4
                fields.append(Field(ie & 0x7FFF, n, enterprise))
            if count > self.limits.max_template_fields:
                self.counters.templates_refused += 1
                return True  # the rest of the set cannot be found without reading every field
            if self._learn(s, tid, tuple(fields), scope_count, options, True):
                learned.add(tid)
        return False
