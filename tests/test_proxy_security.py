"""Only the fleet gets in: ``skiptune proxy`` on loopback by default, TLS + token anywhere else.

Real processes and real TLS: a throwaway CA and a server certificate for 127.0.0.1 made by the
``openssl`` CLI in a temporary folder (no key is ever committed), a proxy subprocess, and clients
made the way workers make them (``open_storage("grpcs://...")``, the CLI) or by hand (a plain-text
grpc channel).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from test_grpc_proxy import START_TIMEOUT_S, Proxy, _free_port

from skiptune.cli import main as cli
from skiptune.cli.proxy_cmd import add_arguments
from skiptune.errors import SkiptuneError
from skiptune.search.records import read_many
from skiptune.storage import open_storage
from skiptune.storage.proxy_client import CA_ENV, TOKEN_ENV

if TYPE_CHECKING:
    from storage_fixtures import SearchAssets

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (extra `grpc`): the proxy cannot run")

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
TOKEN = "fleet-" + os.urandom(12).hex()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a certificate it signed for 127.0.0.1/localhost, with their keys (EC P-256)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=skiptune test CA",
        cwd=d,
    )
    _openssl("req", *ec, "-keyout", "proxy.key", "-out", "proxy.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "proxy.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "proxy.crt", "-days", "2", "-extfile", "san.ext", cwd=d,
    )  # fmt: skip
    return {name: d / f"{name}" for name in ("ca.crt", "proxy.crt", "proxy.key")}


@contextmanager
def tls_proxy(
    db_url: str, files: dict[str, Path], log: Path, *, token: str | None = TOKEN
) -> Iterator[Proxy]:
    port = _free_port()
    command = [
        sys.executable, "-m", "skiptune", "proxy", "--storage", db_url, "--port", str(port),
        "--tls-cert", str(files["proxy.crt"]), "--tls-key", str(files["proxy.key"]),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    proxy = Proxy(process, port, log)
    try:
        proxy.wait_accepting()
        yield proxy
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture
def client_env(tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv(CA_ENV, str(tls_files["ca.crt"]))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return monkeypatch


def test_the_default_bind_is_loopback(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"
    port = _free_port()
    with (tmp_path / "p.log").open("wb") as out:  # started without --host
        process = subprocess.Popen(
            [sys.executable, "-m", "skiptune", "proxy", "--storage", f"sqlite:///{tmp_path / 'd.db'}",
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    proxy = Proxy(process, port, tmp_path / "p.log")
    try:
        proxy.wait_accepting()
        assert f"on 127.0.0.1:{port} (plain text, loopback only" in proxy.log()
        outside = _non_loopback_address()
        if outside is not None:  # the same port on this machine's own network address: nobody listens
            with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
                pass
        assert proxy.terminate() == 0
    finally:
        if process.poll() is None:
            process.kill()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else str(address)


@pytest.mark.parametrize(
    ("extra", "env_token", "expected"),
    [
        (["--host", "0.0.0.0"], None, "needs --tls-cert/--tls-key and a token ($SKIPTUNE_PROXY_TOKEN)"),
        (["--host", "0.0.0.0", "--tls-cert", "C", "--tls-key", "K"], None, "needs a token"),
        (["--tls-cert", "C"], None, "--tls-cert and --tls-key go together"),
        ([], "secret-token-xyz", "a proxy token needs TLS"),
        (["--tls-cert", "C", "--tls-key", "K", "--token-file", "EMPTY"], None, "is empty"),
        (["--tls-cert", "K", "--tls-key", "C"], None, "are no certificate and its unencrypted key"),
    ],
)
def test_an_exposed_proxy_without_tls_or_token_is_refused(
    tls_files: dict[str, Path], tmp_path: Path, extra: list[str], env_token: str | None, expected: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    files = {"C": str(tls_files["proxy.crt"]), "K": str(tls_files["proxy.key"])}
    files["EMPTY"] = str(tmp_path / "empty")
    command = [sys.executable, "-m", "skiptune", "proxy", "--storage", f"sqlite:///{tmp_path / 'd.db'}",
               "--port", str(_free_port()), *[files.get(a, a) for a in extra]]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if env_token:
        env[TOKEN_ENV] = env_token
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], run.stderr
    assert "secret-token-xyz" not in run.stdout + run.stderr


def test_fleet_with_the_token_gets_in_and_nobody_else(
    tls_files: dict[str, Path],
    client_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db_url = f"sqlite:///{tmp_path / 'd.db'}"
    with tls_proxy(db_url, tls_files, tmp_path / "proxy.log") as proxy:
        url = f"grpcs://127.0.0.1:{proxy.port}"
        assert f"on 127.0.0.1:{proxy.port} (TLS, token required" in proxy.log()
        study = optuna.create_study(study_name="in", storage=open_storage(url))  # the fleet's way in
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        fleet = open_storage(url)  # a worker's per-turn read (skiptune's own call) passes the token check too
        sid = fleet.get_study_id_from_name("in")
        assert len(read_many(fleet, [sid])[sid]) == 2 and getattr(fleet, "_many_reads", False)
        # without the token, and with a wrong one: one line that says what to set
        for token, why in ((None, "is not set"), ("wrong-" + TOKEN, "is set but is not the proxy.s token")):
            if token is None:
                client_env.delenv(TOKEN_ENV)
            else:
                client_env.setenv(TOKEN_ENV, token)
            with pytest.raises(SkiptuneError, match=f"refused this process: \\$SKIPTUNE_PROXY_TOKEN {why}"):
                open_storage(url)
            assert cli(["study", "list", "--storage", url]) != 0
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "SKIPTUNE_PROXY_TOKEN" in err[0] and "Traceback" not in err[0], err
        # plain text against the TLS port: the handshake fails, no call reaches the service
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            stub = channel.unary_unary("/optuna.StorageService/GetAllStudies")
            with pytest.raises(grpc.RpcError) as refused:
                stub(b"", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proxy.terminate() == 0
    direct = optuna.load_study(study_name="in", storage=db_url)
    assert len(direct.trials) == 2  # only the fleet wrote
    log = proxy.log()
    assert "refused" in log and TOKEN not in log and "Traceback" not in log, log


def test_worker_without_the_token_is_refused_in_one_line(
    search_assets: SearchAssets, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'd.db'}"
    assert cli([*search_assets.study_args(nfes="2,3", trials=1, storage=db_url), "--no-validate"]) == 0
    with tls_proxy(db_url, tls_files, tmp_path / "proxy.log") as proxy:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        env[CA_ENV] = str(tls_files["ca.crt"])
        command = [
            sys.executable, "-m", "skiptune", "worker", "--model", str(search_assets.model), "--nfe", "2,3",
            "--device", "cpu", "--storage", f"grpcs://127.0.0.1:{proxy.port}",
        ]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert proxy.terminate() == 0
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, run.stderr
    assert "refused this process: $SKIPTUNE_PROXY_TOKEN is not set" in errors[0]
