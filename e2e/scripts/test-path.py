#!/usr/bin/env python3
"""The test path of the local cluster: a transparent TCP relay inside one node's network namespace.

e2e/cluster starts one per node and redirects the host's TCP connections to that node's pods
(nat PREROUTING: source the control-plane host, destination the node's pod range) to it. The relay
reads each connection's original destination (SO_ORIGINAL_DST) and opens it again from the node
itself, so the pod's policy engine sees a client on the pod's own node: kube-router admits those
(as every engine does, for kubelet's probes) while it refuses the host's own address like any
other source no policy names. So the suites that drive traffic from the host (the operator's
integration tests run the operator as a host process; Prometheus scrapes from the host) keep
reaching pods with NetworkPolicy enforced, and nothing in the cluster's policies admits the host.
Pods reaching pods, and the chart's router and operator, are never relayed.

A refused or unreachable destination resets the host's connection (the handshake with the relay
has already completed, so the host sees a reset instead of a refused connect). Nothing here
needs the API server: the path keeps working while it is stopped.

    test-path.py LISTEN_ADDRESS PORT [NODE_DIR]    (NODE_DIR: named in its log; e2e/cluster passes
                                                    it so its command line names the cluster)
"""

import asyncio
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
CONNECT_TIMEOUT = 5.0  # seconds for the relay's own connect to the pod
MAX_CONNECTIONS = 2048  # at once; more wait for a slot (the listen backlog bounds the rest)
CHUNK = 64 * 1024


def log(message: str) -> None:
    print(f"test-path: {message}", file=sys.stderr, flush=True)


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), so the host sees its connection refused, not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side; a reset on either side aborts both."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def relay(slots: asyncio.Semaphore, down_r, down_w) -> None:
    async with slots:
        try:
            host, port = original_destination(down_w.get_extra_info("socket"))
        except OSError as err:
            log(f"no original destination: {err}")
            reset(down_w)
            return
        if (host, port) == down_w.get_extra_info("sockname")[:2]:
            # Not redirected: a client of the relay's own address (a health check). No loop.
            reset(down_w)
            return
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            reset(down_w)
            return
        try:
            await asyncio.gather(pump(down_r, up_w), pump(up_r, down_w))
        finally:
            for w in (up_w, down_w):
                w.close()


async def main(address: str, port: int, node: str) -> None:
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    server = await asyncio.start_server(
        lambda r, w: relay(slots, r, w), address, port, backlog=1024, reuse_address=True
    )
    log(f"relaying on {address}:{port} for {node}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: test-path.py LISTEN_ADDRESS PORT [NODE_DIR]")
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2]), (sys.argv[3:] or ["this node"])[0]))
    except KeyboardInterrupt:
        pass
