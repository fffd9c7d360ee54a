"""The composition root: refusal of features that do not exist yet (against the shipped examples), and the
ports a worker pins."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.app import unsupported_keys, with_ports
from proxy.config.load import load_config
from tests.pki import tls_examples

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("name", ["minimal.yaml", "routing.yaml", "resilience.yaml", "kubernetes.yaml"])
def test_runnable_examples_use_only_built_features(name: str) -> None:
    assert unsupported_keys(load_config(CONFIG / name).config) == []


def test_runnable_tls_examples_use_only_built_features(tmp_path: Path) -> None:
    for path in tls_examples(tmp_path, "demo.yaml", "mesh-a.yaml", "mesh-b.yaml"):
        assert unsupported_keys(load_config(path).config) == [], path.name


def test_the_full_contract_names_what_is_not_built_yet(tmp_path: Path) -> None:
    text = (CONFIG / "full.yaml").read_text().replace("../certs/dev/", "certs/dev/")
    (tmp_path / "certs" / "dev").mkdir(parents=True)
    for name in ("payment-service.pem", "payment-service-key.pem", "ca.pem"):
        (tmp_path / "certs" / "dev" / name).write_text("dummy\n")
    (tmp_path / "full.yaml").write_text(text)
    missing = unsupported_keys(load_config(tmp_path / "full.yaml").config)
    assert "listeners[0].tls" not in missing  # TLS termination exists (issue 16)
    assert not any(key.endswith(".http2") for key in missing)  # HTTP/2 towards clients runs (issue 19)
    assert not any(key.endswith(".protocol") for key in missing)  # and towards upstreams (issue 19)
    assert not any(".authz" in key or ".api_key" in key for key in missing)  # route authorization runs
    assert not any(".discovery" in key for key in missing)  # Kubernetes and DNS discovery run (issue 17)
    assert not any(key.endswith(".load_balancer") for key in missing)  # every balancer is built (issue 17)
    assert "clusters[3].discovery.dns" not in missing  # DNS discovery runs (issue 17)
    assert "tracing.otlp" not in missing and "access_log" not in missing  # span export and access log run (18)
    assert not [key for key in missing if key.startswith("clusters") and key.endswith(".tls")]  # origination is built
    assert not any(key.endswith((".retries", ".circuit_breaker", ".limits", ".rate_limit", ".fault",
                                 ".outlier_detection")) for key in missing)


def test_with_ports_pins_only_listeners_still_configured_with_port_zero(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "listeners:\n"
        "  - {name: zero, address: '127.0.0.1:0', routes: []}\n"
        "  - {name: fixed, address: '127.0.0.1:8080', routes: []}\n"
        "  - {name: other, address: '127.0.0.1:0', routes: []}\n")
    loaded = load_config(tmp_path / "c.yaml")
    pinned = with_ports(loaded, {"zero": 40001, "fixed": 40002})
    assert [listener.address.port for listener in pinned.config.listeners] == [40001, 8080, 0]
    assert pinned.version_hash == loaded.version_hash
    assert with_ports(loaded, {}) is loaded
