"""EndpointSlices to endpoint snapshots: conditions, ports by name or number, zones and hints, Pod subsets,
addresses listed in two slices, and slices that name hosts rather than Pods."""

from __future__ import annotations

from typing import Any

import msgspec
from lightkube.resources.discovery_v1 import EndpointSlice

from proxy.discovery.kubernetes import endpoint_set, slice_port
from proxy.discovery.snapshot import DiscoveredEndpoint


def make_slice(name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
               address_type: str = "IPv4") -> Any:
    raw = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": name},
           "addressType": address_type, "endpoints": endpoints,
           "ports": ports if ports is not None else [{"name": "http", "port": 8080}]}
    return msgspec.json.decode(msgspec.json.encode(raw), type=EndpointSlice)


def ep(ip: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions}


def test_ready_endpoints_are_in_and_not_ready_ones_are_out() -> None:
    slices = {"s": make_slice("s", [ep("10.0.0.1", ready=True), ep("10.0.0.2", ready=False),
                                    {"addresses": ["10.0.0.3"], "conditions": {}}])}
    # An unset `ready` means ready (the EndpointSlice API: "nil should be interpreted as ready").
    assert endpoint_set(slices, "http", None) == (DiscoveredEndpoint("10.0.0.1", 8080),
                                                  DiscoveredEndpoint("10.0.0.3", 8080))


def test_serving_terminating_endpoints_stay_as_terminating_and_unserving_ones_go() -> None:
    slices = {"s": make_slice("s", [ep("10.0.0.1", ready=False, serving=True, terminating=True),
                                    ep("10.0.0.2", ready=False, serving=False, terminating=True)])}
    [only] = endpoint_set(slices, "http", None)
    assert (only.host, only.terminating) == ("10.0.0.1", True)


def test_the_port_is_chosen_by_name_or_by_number() -> None:
    ports = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
    slice_ = make_slice("s", [ep("10.0.0.1", ready=True)], ports)
    assert slice_port(slice_, "metrics") == 9090 and slice_port(slice_, 8080) == 8080
    assert slice_port(slice_, "grpc") is None and slice_port(slice_, 80) is None
    assert endpoint_set({"s": slice_}, "grpc", None) == ()
    assert [e.port for e in endpoint_set({"s": slice_}, 9090, None)] == [9090]


def test_zone_hints_and_pod_come_through() -> None:
    slices = {"s": make_slice("s", [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "zone": "z1",
                                     "hints": {"forZones": [{"name": "z1"}, {"name": "z2"}]},
                                     "targetRef": {"kind": "Pod", "name": "web-0"}}])}
    assert endpoint_set(slices, "http", None) == (
        DiscoveredEndpoint("10.0.0.1", 8080, "z1", ("z1", "z2"), False, 1, "web-0"),)


def test_a_subset_keeps_only_endpoints_of_the_selected_pods() -> None:
    slices = {"s": make_slice("s", [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "a"}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "b"}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": True}}])}
    assert [e.host for e in endpoint_set(slices, "http", {"b"})] == ["10.0.0.2"]
    assert [e.host for e in endpoint_set(slices, "http", set())] == []


def test_an_address_in_two_slices_counts_once_and_ready_wins() -> None:
    slices = {"a": make_slice("a", [ep("10.0.0.1", ready=False, serving=True, terminating=True)]),
              "b": make_slice("b", [ep("10.0.0.1", ready=True)])}
    assert endpoint_set(slices, "http", None) == (DiscoveredEndpoint("10.0.0.1", 8080),)


def test_fqdn_slices_are_skipped_and_the_result_is_sorted() -> None:
    slices = {"f": make_slice("f", [ep("example.com", ready=True)], address_type="FQDN"),
              "v6": make_slice("v6", [ep("fd00::2", ready=True), ep("fd00::1", ready=True)], address_type="IPv6")}
    assert [e.host for e in endpoint_set(slices, "http", None)] == ["fd00::1", "fd00::2"]
