#!/usr/bin/env python3
"""Minimal HTTP/3 GET with aioquic (pip install aioquic): h3get.py HOST PORT [PATH].
Prints the headers, a blank line, then the body. Used by tests/http3.rs (another HTTP/3 stack
than quinn + h3). The certificate is not verified (verify_mode=CERT_NONE)."""
import asyncio, ssl, sys
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}  # stream_id -> (future, headers, body)

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            for fut, _, _ in self.waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"closed: {event.error_code:#x} {event.reason_phrase}"))
        for ev in self.h3.handle_event(event):
            entry = self.waiters.get(ev.stream_id)
            if entry is None:
                continue
            fut, headers, body = entry
            if isinstance(ev, HeadersReceived):
                headers.extend(ev.headers)
            elif isinstance(ev, DataReceived):
                body.extend(ev.data)
            if getattr(ev, "stream_ended", False) and not fut.done():
                fut.set_result((headers, bytes(body)))

    async def get(self, authority, path):
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", authority.encode()), (b":path", path.encode()),
                                   (b"user-agent", b"h3get/aioquic")], end_stream=True)
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = (fut, [], bytearray())
        self.transmit()
        return await asyncio.wait_for(fut, 10)


async def main(host, port, path):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE,
                            server_name="localhost")
    async with connect(host, port, configuration=cfg, create_protocol=H3Client) as client:
        headers, body = await client.get(f"localhost:{port}", path)
        for k, v in headers:
            print(f"{k.decode()}: {v.decode()}")
        print()
        sys.stdout.write(body.decode(errors="replace") + "\n")
        client.close(error_code=0x100)  # H3_NO_ERROR


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "/"))
