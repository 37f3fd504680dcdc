"""The receive tables' identities (core.tables) name what the numbers used to say, and the ICMP listener is a
field of its own, not a table.

A table is one int (protocol, OVER_IPV6, ETHERNET) because the receive path probes a dictionary with it; these
tests pin that each mode's table is the one `table_of` names, that the sockets are shared as the kernel shares
them (gretap reads gre's socket; IPv4 and IPv6 never share), and that nothing but a receive table is a key of
`Dataplane.sockets`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from usertunnel.core import tables
from usertunnel.core.encap import Demux
from usertunnel.core.esp import IPPROTO_ESP
from usertunnel.core.params import Mode
from usertunnel.io.loop import Dataplane
from usertunnel.io.raw import socket_tables


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value.name)
def test_each_mode_s_table_is_the_one_table_of_names_and_says_its_protocol_and_family(mode: Mode) -> None:
    spec = mode.value
    table = spec.table
    assert table == tables.table_of(spec.ip_protocol, spec.outer, spec.ethernet)
    assert tables.protocol_of(table) == spec.ip_protocol
    assert tables.over_ipv6(table) == (spec.outer == 6)
    assert tables.socket_table(table) == tables.table_of(spec.ip_protocol, spec.outer)
    assert tables.socket_table(table) in socket_tables(spec.ip_protocol, spec.outer)
    assert table in socket_tables(spec.ip_protocol, spec.outer)


def test_gretap_reads_gre_s_socket_and_no_ipv4_table_shares_a_socket_with_an_ipv6_one() -> None:
    assert tables.socket_table(Mode.GRETAP.value.table) == Mode.GRE.value.table
    assert tables.socket_table(Mode.IP6GRETAP.value.table) == Mode.IP6GRE.value.table
    assert Mode.GRETAP.value.table != Mode.GRE.value.table  # the lookup keeps them apart (gre_tap_net)
    four = {tables.socket_table(m.value.table) for m in Mode if m.value.outer == 4}
    six = {tables.socket_table(m.value.table) for m in Mode if m.value.outer == 6}
    assert four and six and not four & six


def test_esp_s_sockets_are_tables_of_protocol_50_over_each_family() -> None:
    assert tables.table_of(IPPROTO_ESP) == tables.ESP
    assert tables.table_of(IPPROTO_ESP, outer=6) == tables.ESP6
    assert tables.protocol_of(tables.ESP6) == IPPROTO_ESP and tables.over_ipv6(tables.ESP6)
    assert not tables.over_ipv6(tables.ESP)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_icmp_listener_is_the_dataplane_s_icmp_field_and_closes_with_the_rest(
    loop: asyncio.AbstractEventLoop,
) -> None:
    dp = Dataplane(loop, Demux(), batched=False)
    icmp, other_end = socket.socketpair()
    receiver, receiver_end = socket.socketpair()
    dp.add_icmp(icmp)
    dp.add_socket(Mode.GRE.value.table, receiver)
    assert dp.icmp is icmp
    assert set(dp.sockets) == {Mode.GRE.value.table}  # only receive tables are keys (the listener was -1)
    dp.close()
    assert icmp.fileno() == -1 and receiver.fileno() == -1
    assert dp.icmp is None and not dp.sockets
    other_end.close()
    receiver_end.close()
