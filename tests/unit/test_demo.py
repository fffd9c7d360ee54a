"""`sidecar demo`'s fitting of config/demo.yaml: its throwaway certificates, and ports that move when taken."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from proxy.config.load import ConfigError
from proxy.config.model import Address
from proxy.demo import DEMO_CONFIG, fit_config, load_demo_config, make_certs
from proxy.security.certs import spiffe_id_from_cert


@contextlib.contextmanager
def taken(port: int) -> Iterator[None]:
    """`port` on 127.0.0.1 is in use for the duration (by us, unless something else holds it already)."""
    with socket.socket() as sock:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield


def test_the_demo_config_loads_beside_its_throwaway_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    assert sorted(p.name for p in certs.glob("*.pem")) == [
        "ca-key.pem", "ca.pem", "campaign-service-key.pem", "campaign-service.pem", "intruder-key.pem",
        "intruder.pem", "payment-service-key.pem", "payment-service.pem"]
    served = x509.load_pem_x509_certificate((certs / "campaign-service.pem").read_bytes())
    assert spiffe_id_from_cert(served) == "spiffe://cluster.local/ns/default/sa/campaign-service"
    loaded = load_demo_config(DEMO_CONFIG, tmp_path)
    inbound = loaded.config.listeners[1].tls
    assert inbound is not None and Path(inbound.cert).samefile(certs / "campaign-service.pem")


def test_a_bad_demo_config_is_reported_against_the_file_given(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners:\n  - name: outbound\n    address: 127.0.0.1:0\n    bogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_demo_config(bad, tmp_path / "run")
    assert [str(p) for p in caught.value.problems] == [f"{bad}:4: listeners[0].bogus: unknown key"]


def test_a_taken_inbound_port_moves_and_the_mtls_hop_follows_it(tmp_path: Path) -> None:
    make_certs(tmp_path)
    loaded = load_demo_config(DEMO_CONFIG, tmp_path)
    with taken(15006):
        fitted = fit_config(loaded, {18081: 40001, 18082: 40002}).config
    inbound = next(listener for listener in fitted.listeners if listener.name == "inbound")
    assert inbound.address.port != 15006
    clusters = {cluster.name: [e.address for e in cluster.endpoints or ()] for cluster in fitted.clusters}
    assert clusters["campaign-mesh"] == [Address(host="127.0.0.1", port=inbound.address.port)]
    assert clusters["campaign-v1"] == [Address(host="127.0.0.1", port=40001)]
    assert clusters["campaign-v2"] == [Address(host="127.0.0.1", port=40002)]
