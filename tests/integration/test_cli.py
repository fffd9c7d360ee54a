"""The `sidecar` command as users run it: validate, run (bind, serve, refuse unsupported keys, drain on
SIGTERM), certs; real subprocesses, real sockets."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proxy.app import unsupported_keys
from proxy.config.load import load_config
from tests.conftest import free_port
from tests.pki import tls_examples

REPO = Path(__file__).resolve().parents[2]


def sidecar(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_validate_accepts_examples() -> None:
    for name in ("minimal.yaml", "routing.yaml", "resilience.yaml", "kubernetes.yaml"):
        result = sidecar("validate", "-c", f"config/{name}")
        assert result.returncode == 0, result.stderr
        assert "valid" in result.stdout


def test_validate_accepts_the_tls_examples_once_their_certs_exist(tmp_path: Path) -> None:
    # They name ../certs/dev/... (git-ignored): made here as certs/README.md says, beside copies of the files.
    for path in tls_examples(tmp_path, "demo.yaml", "full.yaml", "mesh-a.yaml", "mesh-b.yaml"):
        result = sidecar("validate", "-c", str(path))
        assert result.returncode == 0, result.stderr
        assert "valid" in result.stdout


def test_validate_reports_every_problem_with_file_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listeners:\n"
        "  - name: outbound\n"
        "    address: 127.0.0.1:0\n"
        "    routes:\n"
        "      - name: r\n"
        "        match: {prefix: /}\n"
        "        cluster: nope\n"
        "        timeout: 5\n"
        "        bogus: 1\n"
        "clusters:\n"
        "  - name: c\n"
        "    endpoints: [\"127.0.0.1:99999\"]\n")
    result = sidecar("validate", "-c", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert f"{path}:7: listeners[0].routes[0].cluster: no cluster named 'nope'" in lines
    assert any(line.startswith(f"{path}:8: listeners[0].routes[0].timeout: ") for line in lines)
    assert f"{path}:9: listeners[0].routes[0].bogus: unknown key" in lines
    assert any(line.startswith(f"{path}:12: clusters[0].endpoints[0]: bad port") for line in lines)
    assert lines[-1].endswith("invalid config: 4 problems")


def test_validate_refuses_an_alias_bomb_quickly_and_in_little_memory(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nlisteners: []\n")  # 382 bytes, 43 million nodes expanded

    def at_most_512_mib() -> None:  # address space: the old loader needed gigabytes for this file
        resource.setrlimit(resource.RLIMIT_AS, (512 * 1024 * 1024, 512 * 1024 * 1024))

    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "proxy", "validate", "-c", str(path)], capture_output=True,
                            text=True, timeout=30, cwd=REPO, preexec_fn=at_most_512_mib)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}:6: alias *a4 expands the config past the limit of 100000 YAML nodes copied in by aliases "
        "(nested aliases multiply)",
        f"{path}: invalid config: 1 problem"]
    assert elapsed < 2.0  # interpreter start included; the refusal itself takes milliseconds


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_missing_config_file_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "missing.yaml"
    result = sidecar(command, "-c", str(path))
    assert result.returncode == 1
    reason = f"{path}: cannot read the config file: No such file or directory"
    expected = f"sidecar: cannot start: {reason}" if command == "run" else reason
    assert result.stderr.splitlines() == [expected]


def test_every_validated_key_runs(tmp_path: Path) -> None:
    # HTTP/2 towards upstreams (cluster `protocol`) was the last key `run` refused as not built yet.
    path = tmp_path / "later.yaml"
    path.write_text(
        "listeners:\n"
        "  - name: outbound\n"
        "    address: 127.0.0.1:0\n"
        "    routes:\n"
        "      - {name: r, match: {prefix: /}, cluster: c}\n"
        "clusters:\n"
        "  - name: c\n"
        "    endpoints: ['127.0.0.1:1']\n"
        "    protocol: http2\n")
    validated = sidecar("validate", "-c", str(path))
    assert validated.returncode == 0, validated.stderr
    assert unsupported_keys(load_config(path).config) == []


def test_run_serves_then_drains_on_sigterm(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert upstream.stdout is not None
        banner = upstream.stdout.readline()
        upstream_port = int(banner.split("port ")[1].split()[0])
        (tmp_path / "hello.txt").write_text("hello\n")
        path = tmp_path / "run.yaml"
        path.write_text(
            f"admin: {{address: 127.0.0.1:{admin}}}\n"
            "listeners:\n"
            f"  - name: outbound\n    address: 127.0.0.1:{port}\n"
            "    routes: [{name: all, match: {prefix: /}, cluster: files}]\n"
            f"clusters: [{{name: files, endpoints: [\"127.0.0.1:{upstream_port}\"]}}]\n")
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            assert f"outbound=127.0.0.1:{port}" in first and f"admin 127.0.0.1:{admin}" in first
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5) as response:
                assert response.read() == b"hello\n"
                assert response.headers["x-request-id"]
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5) as response:
                assert response.status == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as response:
                dump = json.loads(response.read())
                assert len(dump["version_hash"]) == 64
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        upstream.kill()


def test_cannot_start_when_port_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "taken.yaml"
        path.write_text(
            f"admin: {{address: 127.0.0.1:{free_port()}}}\n"
            f"listeners: [{{name: outbound, address: '127.0.0.1:{port}', "
            "routes: [{name: all, match: {prefix: /}, cluster: c}]}]\n"
            "clusters: [{name: c, endpoints: ['127.0.0.1:1']}]\n")
        result = sidecar("run", "-c", str(path))
    assert result.returncode == 1
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", [["-m", "proxy", "--help"]])
def test_python_dash_m_is_the_same_program(module: list[str]) -> None:
    result = subprocess.run([sys.executable, *module], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "run" in result.stdout and "validate" in result.stdout and "certs" in result.stdout


def test_certs_init_and_issue(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert sidecar("certs", "init", "--dir", str(ca_dir)).returncode == 0
    result = sidecar("certs", "issue", "--dir", str(ca_dir), "--id", "spiffe://cluster.local/ns/default/sa/web",
                     "--out", str(tmp_path / "web"))
    assert result.returncode == 0, result.stderr
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_dir / "ca.pem"), str(tmp_path / "web.pem")],
        capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (tmp_path / "web-key.pem").stat().st_mode & 0o777 == 0o600
    again = sidecar("certs", "init", "--dir", str(ca_dir))
    assert again.returncode == 1 and "Traceback" not in again.stderr


@pytest.mark.parametrize("discovery", ["{kubernetes: {service: web, port: http}}",
                                       "{dns: {name: nothing-here.invalid, port: 80}}"])
def test_run_logs_what_it_bound_before_discovery_complains(tmp_path: Path, discovery: str) -> None:
    # No kubeconfig anywhere, or a name that never resolves: discovery warns, but only after the first line.
    port, admin = free_port(), free_port()
    path = tmp_path / "discovery.yaml"
    path.write_text(
        f"admin: {{address: 127.0.0.1:{admin}}}\n"
        f"listeners: [{{name: outbound, address: '127.0.0.1:{port}', "
        "routes: [{name: all, match: {prefix: /}, cluster: c}]}]\n"
        f"clusters: [{{name: c, discovery: {discovery}}}]\n")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert f"outbound=127.0.0.1:{port}" in first, first
        second = proc.stderr.readline()
        assert "WARNING" in second and "discovery" in second, second
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5)
        assert refused.value.code == 503
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
