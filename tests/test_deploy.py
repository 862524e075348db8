"""Deployment files: docker/compose.yaml, docker/Dockerfile, docker/slurm/worker.sbatch, docs/distributed.md.

No Docker engine or Slurm runs here, so the files are checked for structure, and every ``skiptune``
command they run goes through the real CLI parser (parse only, nothing executes). The Slurm script's
device mapping and signal handling run for real, with stand-ins for ``skiptune`` and ``scontrol``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
SBATCH = DOCKER / "slurm" / "worker.sbatch"
DOCS = REPO / "docs" / "distributed.md"

# Services whose container runs the image's ENTRYPOINT ["skiptune"] with `command` as its arguments.
SKIPTUNE_SERVICES = ("study", "worker", "worker-all-gpus", "proxy")


# ------------------------------------------------------------------ compose-style ${...} interpolation


class MissingVariable(Exception):
    pass


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, the :- - :? ? :+ + forms, nested."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif m := _NAME.match(text, i + 1):
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth, i = 1, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed '${{' in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    m = _BRACED.fullmatch(body)
    if not m:
        raise ValueError(f"bad interpolation '${{{body}}}'")
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    value = env.get(name)
    if op is None:
        return value or ""
    present = value is not None and (value != "" or not op.startswith(":"))
    if op.endswith("-"):
        return value if present and value is not None else interpolate(arg, env)
    if op.endswith("?"):
        if present and value is not None:
            return value
        raise MissingVariable(f"{name}: {interpolate(arg, env)}")
    return interpolate(arg, env) if present else ""


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def test_interpolation_helper() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("x${A}y$A-$$A", env) == "xaya-$A"
    assert interpolate("${B:-${A}/${C:-c}}", env) == "a/c"
    assert interpolate("${E:-d}|${E-d}|${A:+p}|${B:+p}", env) == "d||p|"
    with pytest.raises(MissingVariable, match="B: need a"):
        interpolate("${B:?need ${A}}", env)


# ------------------------------------------------------------------------------------------ fixtures


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: line {line!r} is not KEY=VALUE"
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """The compose file as ``docker compose`` would see it with docker/.env copied from .env.example."""
    return interpolate_tree(raw_compose, env_example)


@pytest.fixture(scope="module")
def cli() -> argparse.ArgumentParser:
    from skiptune.cli import build_parser

    return build_parser()


def parse_cli(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    verbs = _verbs(parser)
    assert argv and argv[0] in verbs, (
        f"{where} runs `skiptune {argv[0] if argv else ''}`, but the CLI has no such verb "
        f"(available: {', '.join(sorted(verbs))})"
    )
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `skiptune {shlex.join(argv)}` is rejected by the CLI parser (exit {exc.code})")


def _verbs(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


# --------------------------------------------------------------------------------------- compose.yaml


def test_compose_is_accepted_by_docker_compose(tmp_path: Path) -> None:
    """``docker compose config`` where the plugin exists (it validates against the compose schema)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    for profile_args in ([], ["--profile", "proxy", "--profile", "multi-gpu"]):
        result = subprocess.run(
            [docker, "compose", "-f", str(tmp_path / "compose.yaml"), *profile_args, "config", "--quiet"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr


def test_compose_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "study", "worker", "dashboard", "proxy"} <= set(services)
    assert services["proxy"].get("profiles") == ["proxy"]
    for name in ("postgres", "study", "worker", "dashboard"):
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"
    assert "pgdata" in compose["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])


def test_compose_postgres_healthcheck_and_ordering(compose: dict[str, Any]) -> None:
    services = compose["services"]
    test = services["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "pg_isready" in test[1]
    # $$ in the file: the container's shell expands these, not compose.
    assert "${POSTGRES_USER}" in test[1]
    for name in ("study", "worker", "dashboard", "proxy"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert services["worker"]["depends_on"]["study"]["condition"] == "service_completed_successfully"
    assert services["study"]["restart"] == "no"


def test_compose_worker_reserves_one_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "container_name" not in compose["services"]["worker"], "a fixed name breaks --scale"
    assert not compose["services"]["worker"].get("ports"), "published ports break --scale"


def test_compose_secrets_come_from_env_file(raw_compose: dict[str, Any], env_example: dict[str, str]) -> None:
    for name, service in raw_compose["services"].items():
        assert service.get("env_file") == ".env", f"service {name} must read docker/.env"
    text = COMPOSE.read_text()
    assert env_example["POSTGRES_PASSWORD"] not in text
    for s in _strings(raw_compose):
        for password in re.findall(r"://[^:/@\s]+:([^@\s]*)@", s):
            assert password.startswith("${"), f"literal password in URL {s!r}"
    for name, service in raw_compose["services"].items():
        environment = service.get("environment") or {}
        items = (
            environment.items()
            if isinstance(environment, dict)
            else (e.partition("=")[::2] for e in environment)
        )
        for key, value in items:
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"service {name}: literal {key}"


def test_env_file_is_kept_out_of_git_and_image() -> None:
    assert _dockerignored("docker/.env")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert result.returncode == 0, "add docker/.env to .gitignore: it holds the database password"


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for x in node:
            yield from _strings(x)
    elif isinstance(node, dict):
        for x in node.values():
            yield from _strings(x)


def test_compose_storage_urls(
    compose: dict[str, Any], raw_compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    services = compose["services"]
    e = env_example
    url = f"postgresql+psycopg://{e['POSTGRES_USER']}:{e['POSTGRES_PASSWORD']}@{e['POSTGRES_HOST']}:{e['POSTGRES_PORT']}/{e['POSTGRES_DB']}"
    for name in ("study", "worker", "worker-all-gpus"):
        assert services[name]["environment"]["SKIPTUNE_STORAGE"] == url, name
    assert services["dashboard"]["command"][-1] == url
    assert services["proxy"]["command"][services["proxy"]["command"].index("--storage") + 1] == url
    # Workers on other hosts may go through the gRPC proxy instead.
    proxied = interpolate_tree(raw_compose, {**e, "SKIPTUNE_WORKER_STORAGE": "grpc://proxy-host:13000"})
    assert proxied["services"]["worker"]["environment"]["SKIPTUNE_STORAGE"] == "grpc://proxy-host:13000"
    assert proxied["services"]["study"]["environment"]["SKIPTUNE_STORAGE"] == url


def test_compose_required_variables_are_in_env_example(raw_compose: dict[str, Any]) -> None:
    env = read_env_file(ENV_EXAMPLE)
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate_tree(raw_compose, env)
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    assert required <= set(env) | {"POSTGRES_PASSWORD"}, required - set(env)


def test_compose_dashboard(compose: dict[str, Any]) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["entrypoint"] == ["optuna-dashboard"]
    command = dashboard["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8080"
    assert any(p.endswith(":8080") for p in dashboard["ports"])


@pytest.mark.parametrize("service", SKIPTUNE_SERVICES)
def test_compose_commands_parse(service: str, compose: dict[str, Any], cli: argparse.ArgumentParser) -> None:
    argv = [str(a) for a in compose["services"][service]["command"]]
    args = parse_cli(cli, argv, f"compose service {service!r}")
    assert args.verb == argv[0]


# ------------------------------------------------------------------------------------------ Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_installs_declared_extras_only() -> None:
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    runs = " ".join(rest for op, rest in _dockerfile_instructions() if op == "RUN")
    installs = re.findall(r"""pip install[^&;|]*?["']?\.\[([^\]]*)\]""", runs)
    assert installs, "the Dockerfile must pip install the build context with extras"
    for extras in installs:
        wanted = {x.strip() for x in extras.split(",")}
        assert "postgres" in wanted
        assert wanted <= declared, f"extras {sorted(wanted - declared)} are not declared in pyproject.toml"


def test_dockerfile_runtime_shape() -> None:
    instructions = _dockerfile_instructions()
    ops = dict(reversed(instructions))  # first occurrence of each
    last = {op: rest for op, rest in instructions}  # last occurrence of each
    base_arg = next(rest for op, rest in instructions if op == "ARG" and rest.startswith("BASE_IMAGE="))
    assert base_arg.startswith("BASE_IMAGE=pytorch/pytorch:") and "cuda" in base_arg and "runtime" in base_arg
    assert ops["FROM"] == "${BASE_IMAGE}"
    assert last["ENTRYPOINT"] == '["skiptune"]'
    assert last["USER"] not in ("root", "0")
    assert last["WORKDIR"] == "/data"
    # Files the build copies must exist (pyproject's readme included: setuptools needs it).
    for op, rest in instructions:
        if op == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which is missing"
    for op, rest in instructions:
        assert not (op in ("ENV", "ARG") and "SKIPTUNE_STORAGE" in rest), "the storage URL comes from the run"


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [p.strip() for p in lines if p.strip() and not p.startswith("#")]


def _dockerignored(path: str) -> bool:
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pat)
        or fnmatch.fnmatch(prefix, pat.removeprefix("**/"))
        or fnmatch.fnmatch(parts[-1], pat.removeprefix("**/"))
        for pat in _dockerignore_patterns()
        for prefix in prefixes
    )


def test_dockerignore() -> None:
    for path in (
        ".venv",
        ".git",
        ".data",
        ".whl",
        ".mypy_cache",
        "skiptune/__pycache__",
        "docker/.env",
        "x.egg-info",
    ):
        assert _dockerignored(path), f".dockerignore must exclude {path}"
    for path in ("pyproject.toml", "README.md", "skiptune/cli/__init__.py", "docker/Dockerfile"):
        assert not _dockerignored(path), f".dockerignore must keep {path}"


# ---------------------------------------------------------------------------------------- Slurm script


def run_sbatch(env: Mapping[str, str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SKIPTUNE_", "CUDA_"))}
    return subprocess.run(
        ["bash", str(SBATCH)], env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=30
    )


WORKER_ENV = {
    "SKIPTUNE_STORAGE": "postgresql+psycopg://u:pw@db:5432/skiptune",
    "SKIPTUNE_MODEL": "/m/net 1.pkl",
}


def test_sbatch_syntax_and_headers() -> None:
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    headers = re.findall(r"^#SBATCH\s+(\S+)", SBATCH.read_text(), re.MULTILINE)
    names = {h.split("=")[0] for h in headers}
    assert {"--array", "--time", "--requeue", "--signal", "--output"} <= names
    assert names & {"--gres", "--gpus", "--gpus-per-node", "--gpus-per-task"}
    assert os.access(SBATCH, os.X_OK)


@pytest.mark.parametrize(
    ("gpu_env", "devices"),
    [
        ({"CUDA_VISIBLE_DEVICES": "6"}, "0"),
        ({"CUDA_VISIBLE_DEVICES": "4,7,1", "SLURM_GPUS_ON_NODE": "3"}, "0,1,2"),
        ({"SLURM_GPUS_ON_NODE": "2"}, "0,1"),
    ],
)
def test_sbatch_worker_command_parses(
    gpu_env: dict[str, str], devices: str, tmp_path: Path, cli: argparse.ArgumentParser
) -> None:
    env = {**WORKER_ENV, **gpu_env, "SKIPTUNE_DRY_RUN": "1", "SKIPTUNE_MAX_TRIALS": "5"}
    result = run_sbatch(env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[0] == "skiptune"
    assert argv[argv.index("--devices") + 1] == devices
    assert argv[argv.index("--model") + 1] == "/m/net 1.pkl"
    assert "pw" not in result.stdout, "the password must stay in the environment"
    args = parse_cli(cli, argv[1:], "docker/slurm/worker.sbatch")
    assert args.verb == "worker"


def test_sbatch_launcher_prefix(tmp_path: Path) -> None:
    env = {
        **WORKER_ENV,
        "CUDA_VISIBLE_DEVICES": "0",
        "SKIPTUNE_DRY_RUN": "1",
        "SKIPTUNE_LAUNCHER": "apptainer exec --nv /s/skiptune.sif",
    }
    argv = shlex.split(run_sbatch(env, cwd=tmp_path).stdout)
    assert argv[:5] == ["apptainer", "exec", "--nv", "/s/skiptune.sif", "skiptune"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKIPTUNE_MODEL": "m", "CUDA_VISIBLE_DEVICES": "0"}, "SKIPTUNE_STORAGE is not set"),
        ({**WORKER_ENV, "SKIPTUNE_STORAGE": "sqlite:///x.db", "CUDA_VISIBLE_DEVICES": "0"}, "SQLite"),
        ({"SKIPTUNE_STORAGE": WORKER_ENV["SKIPTUNE_STORAGE"], "CUDA_VISIBLE_DEVICES": "0"}, "SKIPTUNE_MODEL"),
        (WORKER_ENV, "no GPU"),
        ({**WORKER_ENV, "CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "no GPU"),
    ],
)
def test_sbatch_refuses_bad_setups(env: dict[str, str], message: str, tmp_path: Path) -> None:
    result = run_sbatch({**env, "SKIPTUNE_DRY_RUN": "1"}, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


FAKE_WORKER = """#!/usr/bin/env bash
echo "$@" > "$FAKE_DIR/args"
trap 'echo term > "$FAKE_DIR/term"; exit "${FAKE_RC:-0}"' TERM
touch "$FAKE_DIR/started"
while :; do sleep 0.05; done
"""


@pytest.mark.parametrize(("sig", "requeued"), [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_sbatch_stops_worker_and_requeues_on_time_limit(
    sig: signal.Signals, requeued: bool, tmp_path: Path
) -> None:
    """USR1 (sent before the time limit) stops the worker and requeues the task; TERM only stops it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "skiptune").write_text(FAKE_WORKER)
    (bindir / "scontrol").write_text('#!/usr/bin/env bash\necho "$@" > "$FAKE_DIR/scontrol"\n')
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SKIPTUNE_", "CUDA_"))}
    env.update(
        WORKER_ENV,
        CUDA_VISIBLE_DEVICES="0,1",
        SLURM_JOB_ID="4242",
        FAKE_DIR=str(tmp_path),
        FAKE_RC="3",
        PATH=f"{bindir}{os.pathsep}{env['PATH']}",
    )
    proc = subprocess.Popen(
        ["bash", str(SBATCH)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (tmp_path / "term").exists(), "the worker must receive SIGTERM"
    assert proc.returncode == 3, (out, err)  # the worker's own exit code
    assert "--devices 0,1" in (tmp_path / "args").read_text()
    scontrol = tmp_path / "scontrol"
    assert scontrol.exists() == requeued
    if requeued:
        assert scontrol.read_text().split() == ["requeue", "4242"]


CRASHY_WORKER = """#!/usr/bin/env bash
n=$(cat "$FAKE_DIR/count" 2>/dev/null || echo 0)
echo $((n + 1)) > "$FAKE_DIR/count"
read -r -a codes <<< "$FAKE_EXITS"
exit "${codes[$n]}"
"""


@pytest.mark.parametrize(
    ("exits", "restarts", "runs", "rc"),
    [("1 2 0", "5", 3, 0), ("0 1", "5", 1, 0), ("1 1 1 1", "2", 3, 1)],
)
def test_sbatch_restarts_crashed_worker(
    exits: str, restarts: str, runs: int, rc: int, tmp_path: Path
) -> None:
    """A non-zero exit is retried SKIPTUNE_RESTARTS times; exit 0 (done or stopped) is final."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "skiptune").write_text(CRASHY_WORKER)
    (bindir / "skiptune").chmod(0o755)
    env = {
        **WORKER_ENV,
        "CUDA_VISIBLE_DEVICES": "0",
        "FAKE_DIR": str(tmp_path),
        "FAKE_EXITS": exits,
        "SKIPTUNE_RESTARTS": restarts,
        "SKIPTUNE_RESTART_DELAY": "0",
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
    }
    result = run_sbatch(env, cwd=tmp_path)
    assert result.returncode == rc, result.stderr
    assert int((tmp_path / "count").read_text()) == runs


# ---------------------------------------------------------------------------------- docs/distributed.md


def _doc_commands() -> list[list[str]]:
    """Every ``skiptune ...`` line of the shell blocks in docs/distributed.md, split like a shell would."""
    text = DOCS.read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            words = shlex.split(line) if line else []
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words.pop(0)  # VAR=value prefixes
            if words[:1] == ["skiptune"]:
                commands.append(words[1:])
    return commands


def test_docs_commands_parse(cli: argparse.ArgumentParser) -> None:
    commands = _doc_commands()
    verbs = {argv[0] for argv in commands if argv}
    assert {"study", "worker", "best", "table", "report", "proxy"} <= verbs, verbs
    for argv in commands:
        parse_cli(cli, argv, "docs/distributed.md")


def test_compose_publishes_every_port_on_loopback_by_default(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"postgres", "dashboard", "proxy"}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    proxy = [str(a) for a in compose["services"]["proxy"]["command"]]
    assert "--tls-cert" in proxy and "--tls-key" in proxy  # it listens on 0.0.0.0 inside its container
    assert "SKIPTUNE_PROXY_TOKEN" in read_env_file(ENV_EXAMPLE)
