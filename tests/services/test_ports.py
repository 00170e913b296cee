"""Nothing of the local stack is reachable from another machine (issue #15 item 5): every TCP socket
that any process of `molm3d serve` listens on (Ray's GCS, raylet, object manager, workers and agents,
Serve's HTTP and gRPC proxies, the replicas' gRPC servers, the metrics ports) is bound to loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from molm3d_services.stack import process_tree

LISTEN = "0A"  # TCP state in /proc/net/tcp*


def _address(field: str) -> tuple[str, int]:
    """/proc/net/tcp{,6} "HEXIP:HEXPORT" (the IP in host byte order, 32 bits at a time)."""
    hex_ip, hex_port = field.split(":")
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(hex_port, 16)


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(host, port, pid, program) of every listening TCP socket that one of `pids` holds."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone since
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in owner:
                pid = owner[fields[9]]
                try:
                    program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    program = "?"
                found.append((*_address(fields[1]), pid, Path(program).name))
    return found


def is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket bound to 127.0.0.1
    return (mapped or ip).is_loopback


def test_address_parsing() -> None:
    assert _address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _address("00000000000000000000000001000000:2328") == ("::1", 9000)
    assert _address("0000000000000000FFFF00000100007F:2328") == ("::ffff:127.0.0.1", 9000)
    assert _address("00000000000000000000000000000000:2328") == ("::", 9000)
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "::", "0.0.0.0", "10.0.0.2")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip


def test_every_port_of_the_local_stack_listens_on_loopback_only(served) -> None:
    sockets = listening_sockets(process_tree(served.proc.pid))
    ports = {port for _, port, _, _ in sockets}
    programs = {program for _, _, _, program in sockets}
    # the listing sees the whole stack: the public ports and Ray's own servers
    assert {served.grpc_port, served.http_port, served.metrics_port} <= ports, sorted(sockets)
    assert {"gcs_server", "raylet"} <= programs, sorted(sockets)
    exposed = sorted(s for s in sockets if not is_loopback(s[0]))
    assert not exposed, f"listening beyond loopback: {exposed}"
