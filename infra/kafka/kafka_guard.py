#!/usr/bin/env python3
"""Apache Kafka's encoding of ApiVersions for Tansu: a Kafka-protocol reverse proxy that passes every
frame through unchanged, except that in ApiVersions responses (v3+) it omits the top-level tagged
fields that hold their default values, as Apache Kafka's serializer does (KIP-482: a tagged field at
its default is not written).

Why: Tansu 0.6 always writes all four tagged fields of ApiVersionsResponse v3, FinalizedFeaturesEpoch
= -1 among them (eight 0xff bytes). librdkafka before 2.2 (fixed by its PR 4278; kcat on Debian 12
has 2.0.2) skips one byte too few per tagged field, so it reads the 0xff bytes as a length and fails
every connection with "ApiVersionRequest failed: Read underflow". Apache Kafka omits those
fields at their defaults. No client setting avoids it:
`api.version.request=false` is honoured only with `broker.version.fallback` < 0.10, whose legacy
message format Tansu rejects. Stdlib only.

    python infra/kafka/kafka_guard.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct

API_VERSIONS = 18
# ApiVersionsResponse top-level tagged fields and the encoding of their default values:
# SupportedFeatures (empty compact array), FinalizedFeaturesEpoch (-1), FinalizedFeatures (empty),
# ZkMigrationReady (false).
DEFAULTS = {0: b"\x01", 1: b"\xff" * 8, 2: b"\x01", 3: b"\x00"}


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _write_uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip_tags(data: bytes, at: int) -> int:
    count, at = _uvarint(data, at)
    for _ in range(count):
        _, at = _uvarint(data, at)
        size, at = _uvarint(data, at)
        at += size
    return at


def strip_default_tags(frame: bytes) -> bytes:
    """An ApiVersionsResponse v3+ frame (correlation id, then the body; ApiVersions responses
    always use header v0) with the top-level tagged fields at their defaults left out. A frame that
    does not parse as one is returned unchanged."""
    try:
        at = 4 + 2  # correlation id, error code
        count, at = _uvarint(frame, at)
        for _ in range(max(count - 1, 0)):
            at = _skip_tags(frame, at + 6)  # api key, min version, max version; then their tags
        at += 4  # throttle time
        head, (tags, pos) = frame[:at], _uvarint(frame, at)
        kept = []
        for _ in range(tags):
            tag, pos = _uvarint(frame, pos)
            size, pos = _uvarint(frame, pos)
            value, pos = frame[pos : pos + size], pos + size
            if len(value) != size:
                return frame
            if DEFAULTS.get(tag) != value:
                kept.append(_write_uvarint(tag) + _write_uvarint(size) + value)
        if pos != len(frame):
            return frame
    except IndexError:
        return frame
    return head + _write_uvarint(len(kept)) + b"".join(kept)


async def _frames(reader: asyncio.StreamReader):
    while True:
        try:
            size = await reader.readexactly(4)
            yield await reader.readexactly(struct.unpack(">i", size)[0])
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):  # closed, or a negative size
            return


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rewrite) -> None:
    """Frames from `reader` to `writer`, each through `rewrite`; closes `writer` when `reader` ends."""
    try:
        with contextlib.suppress(ConnectionError, OSError):
            async for frame in _frames(reader):
                frame = rewrite(frame)
                writer.write(struct.pack(">i", len(frame)) + frame)
                await writer.drain()
    finally:
        await _close(writer)


async def _serve(client_r, client_w, upstream: tuple[str, int]) -> None:
    try:
        broker_r, broker_w = await asyncio.open_connection(*upstream)
    except OSError:
        await _close(client_w)
        return
    pending: set[int] = set()  # correlation ids of ApiVersions v3+ requests on this connection

    def request(frame: bytes) -> bytes:
        if len(frame) >= 8:
            key, version, correlation = struct.unpack(">hhi", frame[:8])
            if key == API_VERSIONS and version >= 3:
                pending.add(correlation)
        return frame

    def response(frame: bytes) -> bytes:
        if pending and len(frame) >= 4:
            correlation = struct.unpack(">i", frame[:4])[0]
            if correlation in pending:
                pending.discard(correlation)
                return strip_default_tags(frame)
        return frame

    await asyncio.gather(_pipe(client_r, broker_w, request), _pipe(broker_r, client_w, response))


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, upstream), *listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT clients connect to")
    parser.add_argument("--upstream", required=True, help="Tansu's HOST:PORT")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    asyncio.run(serve((host, int(port)), (up_host, int(up_port))))


if __name__ == "__main__":
    main()
