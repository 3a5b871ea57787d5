"""Safe defaults: loopback only, safe names and paths, no unsafe deserialisation, stated limits."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serving import config as tfs_config
from serving.limits import RequestLimits
from serving.server import build_parser

from conftest import copy_version, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("model", "pipelines", "serving", "bench") for p in (ROOT / folder).rglob("*.py")]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


# 127.0.0.1, ::1 and ::ffff:127.0.0.1 (gRPC's IPv6 socket for an IPv4 address), as the kernel writes them.
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_grpc_and_rest_listen_on_loopback_only_by_default(exported_lstm, tmp_path):
    copy_version(exported_lstm[1], tmp_path / "models" / "text", 1)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{tmp_path / "models" / "text"}" '
                      'model_platform: "tensorflow" } }')
    rest_port = free_port()
    process, target = start_server(config, "--rest_api_port", str(rest_port))
    try:
        grpc_port = int(target.rsplit(":", 1)[1])
        for port in (grpc_port, rest_port):
            addresses = listening_addresses(port)
            assert addresses and addresses <= LOOPBACK, (port, addresses)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert build_parser().parse_args([]).host == "127.0.0.1"


@pytest.mark.parametrize("name", ["../text", "a/b", "..", ".hidden", "x" * 129, "", "text name", "te\x00xt"])
def test_unsafe_model_names_are_refused(name):
    with pytest.raises(tfs_config.ConfigError):
        tfs_config.check_model_name(name)


def test_safe_model_names_pass():
    for name in ("text", "stock", "text-v2", "model_1.0", "A"):
        tfs_config.check_model_name(name)


def test_a_config_file_with_an_unsafe_name_stops_the_server_with_one_line(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "../../etc" base_path: "{tmp_path}" '
                      'model_platform: "tensorflow" } }')
    result = subprocess.run([sys.executable, "-m", "serving.server", "--model_config_file", str(config),
                             "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model name '../../etc' is not allowed" in result.stderr


def test_base_paths_must_stay_in_the_model_roots_even_through_symlinks(tmp_path):
    root = tmp_path / "saved_models"
    (root / "text").mkdir(parents=True)
    (root / "sneaky").symlink_to("/etc")
    config = tfs_config.ModelServerConfig()
    config.model_config_list.config.add(name="text", base_path=str(root / "text"))
    tfs_config.check_base_paths_within(config, [root], "reload request")
    config.model_config_list.config[0].base_path = str(root / "sneaky")
    with pytest.raises(tfs_config.ConfigError, match="resolves to /etc, outside the allowed model roots"):
        tfs_config.check_base_paths_within(config, [root], "reload request")


UNSAFE = [r"\bimport pickle\b", r"\bpickle\.load", r"allow_pickle\s*=\s*True", r"yaml\.load\(", r"\beval\(",
          r"\bexec\(", r"safe_mode\s*=\s*False", r"shell\s*=\s*True", r"marshal\.loads"]


def test_no_unsafe_deserialisation_or_evaluation_in_the_code():
    offenders = [f"{path.relative_to(ROOT)}: {pattern}" for path in SOURCES for pattern in UNSAFE
                 if re.search(pattern, path.read_text())]
    assert SOURCES and not offenders, offenders


def test_the_readme_states_the_limits_and_that_a_saved_model_is_code():
    readme = (ROOT / "README.md").read_text()
    assert "a SavedModel is code" in readme
    assert "`--max_request_rows`" in readme and RequestLimits.max_rows == 0  # no row limit unless asked
    for limit in (f"{RequestLimits.max_elements:,}", "16 MiB", "10,000"):
        assert limit in readme, limit
