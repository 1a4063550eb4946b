"""A TCP proxy that makes 127.0.0.1 look like a real link, for `make bench`'s real-link rows.

Every byte is held for $DELAY_MS milliseconds in each direction (so the round trip is
2 x DELAY_MS), a new connection first waits one round trip (the TCP handshake a real link
would cost), each connection keeps at most $WINDOW_KIB KiB unacknowledged per direction (a
chunk counts from when it arrives until one round trip later, when a real sender would
see its ACK: like a TCP window, one connection alone moves at most WINDOW / RTT), and with $MBIT set each
direction of the whole link is capped at that many megabits per second, shared by all
connections. It forwards to 127.0.0.1:$UPSTREAM_PORT and listens on 127.0.0.1:$PORT. It
works below HTTP, so SigV4 signatures and keep-alive pass through untouched.

Run: UPSTREAM_PORT=8080 PORT=9090 DELAY_MS=25 [WINDOW_KIB=4096] [MBIT=100] python3 latency_proxy.py
"""
import asyncio
import os

UPSTREAM = int(os.environ["UPSTREAM_PORT"])
PORT = int(os.environ["PORT"])
DELAY = float(os.environ.get("DELAY_MS", "25")) / 1000
WINDOW = int(os.environ.get("WINDOW_KIB", "4096")) * 1024
MBIT = float(os.environ.get("MBIT", "0"))
CHUNK = 64 * 1024


class Link:
    """One direction of the link: a byte budget at MBIT megabits per second, shared by all connections."""

    def __init__(self, mbit):
        self.rate = mbit * 1e6 / 8
        self.free_at = 0.0

    async def send(self, n):
        if not self.rate:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self.free_at)
        self.free_at = start + n / self.rate
        await asyncio.sleep(self.free_at - loop.time())


async def pipe(reader, writer, link):
    """Copies reader to writer, each chunk leaving DELAY seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    room = asyncio.Event()
    unacked = 0

    def acked(n):
        nonlocal unacked
        unacked -= n
        room.set()

    async def take():
        nonlocal unacked
        try:
            while True:
                data = await reader.read(CHUNK)
                while unacked >= WINDOW:
                    room.clear()
                    await room.wait()
                unacked += len(data)
                queue.put_nowait((loop.time() + DELAY, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), b""))

    async def give():
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await link.send(len(data))
                writer.write(data)
                await writer.drain()
                # The sender hears of it one way later: the window opens a round trip after arrival.
                loop.call_later(DELAY, acked, len(data))
        except (ConnectionError, OSError):
            return

    await asyncio.gather(take(), give())


async def main():
    up, down = Link(MBIT), Link(MBIT)

    async def handle(client_r, client_w):
        try:
            # The handshake a real link costs before the client's first byte can leave.
            await asyncio.sleep(2 * DELAY)
            server_r, server_w = await asyncio.open_connection("127.0.0.1", UPSTREAM)
            await asyncio.gather(pipe(client_r, server_w, up), pipe(server_r, client_w, down))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (client_w, locals().get("server_w")):
                if w is not None:
                    w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
