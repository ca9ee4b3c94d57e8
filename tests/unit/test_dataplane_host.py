"""``kilo.dataplane.host.underlay_mtu`` against a fake pyroute2 ``IPRoute``: the default
route's interface of either family (Kilo's first default route), IPv4's first."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest

from kilo.dataplane import host


class _Msg(dict[str, Any]):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class _FakeIPRoute:
    routes: ClassVar[dict[int, list[_Msg]]] = {}
    mtus: ClassVar[dict[int, int]] = {}

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __enter__(self) -> _FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_routes(self, family: int, table: int) -> list[_Msg]:
        assert table == host.MAIN_TABLE
        return self.routes.get(family, [])

    def get_links(self, index: int) -> list[_Msg]:
        return [_Msg({"IFLA_MTU": self.mtus[index]})] if index in self.mtus else []


def _route(dst_len: int, oif: int | None) -> _Msg:
    return _Msg({"RTA_OIF": oif}, dst_len=dst_len)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[_FakeIPRoute]:
    monkeypatch.setattr(host, "IPRoute", _FakeIPRoute)
    _FakeIPRoute.routes = {}
    _FakeIPRoute.mtus = {2: 1500, 3: 9000}
    return _FakeIPRoute


def test_the_ipv4_default_routes_interface(fake: type[_FakeIPRoute]) -> None:
    fake.routes = {
        socket.AF_INET: [_route(24, 3), _route(0, 2)],
        socket.AF_INET6: [_route(0, 3)],
    }
    assert host.underlay_mtu("ns") == 1500


def test_an_ipv6_only_host_takes_the_ipv6_default_route(fake: type[_FakeIPRoute]) -> None:
    fake.routes = {socket.AF_INET: [_route(24, 2)], socket.AF_INET6: [_route(64, 2), _route(0, 3)]}
    assert host.underlay_mtu("ns") == 9000


def test_no_default_route_no_mtu(fake: type[_FakeIPRoute]) -> None:
    fake.routes = {socket.AF_INET: [_route(24, 2)], socket.AF_INET6: [_route(0, None)]}
    assert host.underlay_mtu() is None
