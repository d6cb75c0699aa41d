"""compose.yaml: the services the README promises, valid Compose, and only options the CLI has."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from consumer import supervisor
from consumer.ops.cli import cli

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL_KEYS = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "annotations", "attach", "build", "blkio_config", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_shares", "cpu_period",
    "cpu_quota", "cpu_rt_runtime", "cpu_rt_period", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "privileged", "profiles", "pull_policy", "read_only", "restart", "runtime", "scale",
    "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts", "volumes",
    "volumes_from", "working_dir",
}
RESTART_POLICIES = {"no", "always", "on-failure", "unless-stopped"}
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def seconds(duration: str) -> int:
    match = DURATION.match(str(duration))
    assert match and any(match.groups()), f"{duration!r} is not a Compose duration"
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


def simstream_command(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command a ``simstream ...`` command line runs, and the arguments left for it."""
    assert argv[0] == "simstream", argv
    command, rest = cli, argv[1:]
    while isinstance(command, click.Group):
        assert rest and rest[0] in command.commands, f"simstream has no subcommand {rest[:1]} ({argv})"
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def option_names(command: click.Command) -> set[str]:
    return {name for param in command.params if isinstance(param, click.Option) for name in param.opts}


def envvars(command: click.Command) -> set[str]:
    found = set()
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            found |= {param.envvar} if isinstance(param.envvar, str) else set(param.envvar)
    return found


def all_commands(command: click.Command = cli):
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from all_commands(sub)


def variables_used(service: dict) -> set[str]:
    """SIMSTREAM_* names the service sets, and those it interpolates (``${SIMSTREAM_X:-...}``)."""
    environment = service.get("environment") or {}
    names = set(environment) if isinstance(environment, dict) else {item.split("=")[0] for item in environment}
    names |= set(re.findall(r"\$\{?(SIMSTREAM_[A-Z_]+)", yaml.safe_dump(service)))
    return {name for name in names if name.startswith("SIMSTREAM_")}


def test_the_services_the_readme_promises_are_there(compose):
    services = compose["services"]
    redis, consumer = services["redis"], services["consumer"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"]
    assert consumer["command"][:2] == ["simstream", "consume"]
    assert consumer["deploy"]["replicas"] == 3
    assert consumer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "profiles" not in redis and "profiles" not in consumer
    assert services["postgres"]["profiles"] == ["postgres"] and services["demo"]["profiles"] == ["demo"]


def test_consumers_get_longer_to_stop_than_their_supervisor_waits_for_them(compose):
    grace_s = seconds(compose["services"]["consumer"]["stop_grace_period"])
    assert grace_s > supervisor._STOP_GRACE_S  # else Compose SIGKILLs a consumer still committing


def test_every_simstream_option_and_variable_used_exists_in_the_cli(compose):
    every_envvar = set().union(*(envvars(command) for command in all_commands()))
    checked = 0
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] == ["simstream"]:
            click_command, args = simstream_command(command)
            used = {arg.split("=")[0] for arg in args if arg.startswith("-")}
            assert used <= option_names(click_command), f"{name}: unknown options {used - option_names(click_command)}"
            known = envvars(click_command)
            checked += 1
        else:
            known = every_envvar
        unknown = variables_used(service) - known
        assert not unknown, f"{name} uses {sorted(unknown)}, which the simstream CLI does not read"
    assert checked >= 1


def test_the_file_is_structurally_valid_compose(compose):
    assert set(compose) - TOP_LEVEL_KEYS <= {key for key in compose if key.startswith("x-")}
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        assert "image" in service or "build" in service, name
        assert set(service.get("depends_on") or {}) <= set(services), name
        assert all(isinstance(p, str) for p in service.get("profiles", [])), name
        assert service.get("restart", "no") in RESTART_POLICIES, name
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in volumes, f"{name}: volume {source} is not declared"
        if "build" in service:
            build = service["build"] if isinstance(service["build"], dict) else {"context": service["build"]}
            context = ROOT / build["context"]
            dockerfile = build.get("dockerfile_inline") or (context / build.get("dockerfile", "Dockerfile")).read_text()
            assert dockerfile.lstrip().startswith("FROM "), name
            for line in dockerfile.splitlines():  # every file the image copies is in the build context
                if line.startswith("COPY "):
                    assert all((context / source).exists() for source in line.split()[1:-1]), (name, line)
        if "stop_grace_period" in service:
            seconds(service["stop_grace_period"])
