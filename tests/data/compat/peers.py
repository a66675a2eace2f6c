"""Servers and clients of the compatibility suite (tests/compat.rs) that no Debian package
ships as a command: an HTTP/1.1 server and client that exercise what keep-alive pools, uploads
and long-polls do, an SMTP-style greeting server with smtplib as its client, TCP half-close in
both directions, Redis pub/sub held open, WebSockets (the `websockets` package) and gRPC
streams (grpcio). Each client prints one line per exchange; the suite compares what it prints
through the mesh with what it prints unmeshed, so nothing printed may depend on timing.

    peers.py serve                  every server, on the ports in PORTS
    peers.py CLIENT HOST [ARGS]     one client (see CLIENTS)
"""

import hashlib
import http.client
import http.server
import socket
import socketserver
import sys
import threading
import time
from concurrent import futures
from urllib.parse import parse_qs, urlparse

PORTS = {"http11": 8001, "greeting": 2525, "halfclose": 7000, "ws": 8765, "grpc": 50051}
MIB = 1 << 20


# HTTP/1.1 ------------------------------------------------------------------------------------


class Http11(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` answered

    def log_message(self, *args):
        pass

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/poll":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
            return self.reply(b"polled\n")
        self.reply(b"hello\n")

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    break
                body += chunk
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(f"{len(body)} {hashlib.sha256(body).hexdigest()[:16]}\n".encode())


def read_response(f):
    """One response from a buffered reader: (status line, body), 1xx answers included."""
    status = f.readline().decode().strip()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, f.read(length).decode()


def http11(host):
    port = PORTS["http11"]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    statuses = []
    for _ in range(3):
        conn.request("GET", "/small")
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
        sock = conn.sock if len(statuses) == 1 else sock
        time.sleep(0.5)
    print("keep-alive", *statuses, "one connection" if conn.sock is sock else "reconnected")

    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    f = s.makefile("rb")
    print("pipelined", [read_response(f) for _ in range(3)])
    s.close()

    chunks = (bytes([i % 251]) * 1024 for i in range(1024))
    conn.request("POST", "/upload", body=chunks, encode_chunked=True)
    print("chunked upload", conn.getresponse().read().decode().strip())

    s = socket.create_connection((host, port), timeout=10)
    body = b"x" * 100000
    s.sendall(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    f = s.makefile("rb")
    interim = read_response(f)
    s.sendall(body)
    print("expect 100-continue", interim, read_response(f))
    s.close()


def idle(host, *waits):
    """Requests on one kept-alive connection, idle for each of `waits` seconds between."""
    conn = http.client.HTTPConnection(host, PORTS["http11"], timeout=30)
    seen = []
    for wait in [0.0] + [float(w) for w in waits]:
        time.sleep(wait)
        sock = conn.sock
        try:
            conn.request("GET", "/small")
            r = conn.getresponse()
            r.read()
            reused = sock is None or conn.sock is sock
            seen.append(f"{r.status}{'' if reused else ' (reconnected)'}")
        except (OSError, http.client.HTTPException) as e:
            seen.append(type(e).__name__)
            conn.close()
    print("idle", waits, seen)


def poll(host, secs):
    conn = http.client.HTTPConnection(host, PORTS["http11"], timeout=float(secs) + 30)
    conn.request("GET", f"/poll?s={secs}")
    r = conn.getresponse()
    print("long-poll", secs, r.status, r.read().decode().strip())


# A server that speaks first (SMTP) -----------------------------------------------------------


class Greeting(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 compat ESMTP ready\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250-compat\r\n250 SIZE 10000000\r\n")
            elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                self.wfile.write(b"250 OK\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                size = 0
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    size += len(data)
                self.wfile.write(f"250 queued {size} bytes\r\n".encode())
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"500 what\r\n")


def smtp(host):
    import smtplib

    started = time.monotonic()
    with smtplib.SMTP(host, PORTS["greeting"], timeout=5) as s:
        greeted = time.monotonic() - started
        print("ehlo", s.ehlo()[0])
        body = "Subject: compat\r\n\r\n" + ("line of mail\r\n" * 10000)
        print("send", s.sendmail("a@example.invalid", ["b@example.invalid"], body))
        print("noop", s.noop())
    print(f"greeting after {greeted:.3f} s", file=sys.stderr)


# TCP half-close ------------------------------------------------------------------------------

received_after_eof = {}  # token of a "down" connection: bytes it read after shutting its side


class HalfClose(socketserver.StreamRequestHandler):
    def handle(self):
        mode, _, token = self.rfile.readline().strip().partition(b" ")
        s = self.connection
        if mode == b"up":
            # The client has shut its writing side: read to EOF, then answer on ours.
            got = len(self.rfile.read())
            s.sendall(f"got {got} bytes after your EOF\n".encode())
        elif mode == b"down":
            # We shut our writing side first; the client keeps sending after our EOF.
            s.sendall(b"d" * MIB)
            s.shutdown(socket.SHUT_WR)
            received_after_eof[token] = len(self.rfile.read())
        elif mode == b"ask":
            s.sendall(f"{received_after_eof.get(token)}\n".encode())


def halfclose(host):
    port = PORTS["halfclose"]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"up\n" + b"u" * MIB)
        s.shutdown(socket.SHUT_WR)
        print("client shuts first:", s.makefile("rb").read().decode().strip())
    token = f"{time.time_ns()}"
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"down {token}\n".encode())
        got = len(s.makefile("rb").read())
        s.sendall(b"a" * MIB)
        s.shutdown(socket.SHUT_WR)
        # Our side cannot see when the server has read our EOF: ask it, for a while.
        for _ in range(100):
            with socket.create_connection((host, port), timeout=10) as q:
                q.sendall(f"ask {token}\n".encode())
                sent = q.makefile("rb").read().decode().strip()
            if sent != "None":
                break
            time.sleep(0.05)
    print(f"server shuts first: client got {got} bytes, then sent {sent} bytes after EOF")


# Redis pub/sub -------------------------------------------------------------------------------


def redis_pubsub(host, held="1"):
    """A subscriber held open `held` seconds before a message is published to it."""
    sub = socket.create_connection((host, 6379), timeout=float(held) + 30)
    sub.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
    f = sub.makefile("rb")
    ack = [f.readline().strip() for _ in range(6)]
    time.sleep(float(held))
    with socket.create_connection((host, 6379), timeout=10) as pub:
        pub.sendall(b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\nhello\r\n")
        receivers = pub.makefile("rb").readline().strip()
    message = [f.readline().strip() for _ in range(7)]
    print("pubsub held", held, ack[-1], receivers, message[-1])


# WebSockets ----------------------------------------------------------------------------------


def ws_serve(port):
    from websockets.sync.server import serve

    def echo(conn):
        for message in conn:
            conn.send(message)

    with serve(echo, "0.0.0.0", port, max_size=None) as server:
        server.serve_forever()


def ws(host):
    from websockets.sync.client import connect

    with connect(f"ws://{host}:{PORTS['ws']}/", max_size=None, open_timeout=10) as c:
        texts = 0
        for i in range(100):
            c.send(f"message {i}")
            texts += c.recv(timeout=10) == f"message {i}"
        blob = bytes(range(256)) * 4096
        c.send(blob)
        same = c.recv(timeout=10) == blob
        c.ping().wait(timeout=10)
        print("websocket", texts, "texts echoed, 1 MiB binary", "echoed" if same else "differs", "pong")


# gRPC ----------------------------------------------------------------------------------------

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 32 * MIB),
    ("grpc.max_send_message_length", 32 * MIB),
]


def grpc_serve(port):
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    def unary(request, context):
        return request

    def server_stream(request, context):
        for i in range(int(request)):
            yield str(i).encode()

    def client_stream(requests, context):
        return str(sum(len(r) for r in requests)).encode()

    def bidi(requests, context):
        for r in requests:
            yield r

    def slow(request, context):
        time.sleep(3)
        return request

    rpc = grpc
    handlers = {
        "Unary": rpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": rpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": rpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": rpc.stream_stream_rpc_method_handler(bidi),
        "Slow": rpc.unary_unary_rpc_method_handler(slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("compat.Echo", handlers)])
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    return server


def grpc_client(host):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{PORTS['grpc']}", options=GRPC_OPTIONS) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(50):
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        except grpc.RpcError as e:
            print("unknown service", e.code().name)
        big = bytes(range(256)) * (16 * MIB // 256)
        back = ch.unary_unary("/compat.Echo/Unary")(big, timeout=30)
        print("16 MiB unary", "echoed" if back == big else f"differs ({len(back)} bytes)")
        print("server stream", len(list(ch.unary_stream("/compat.Echo/ServerStream")(b"1000", timeout=10))))
        parts = (b"p" * 1000 for _ in range(1000))
        print("client stream", ch.stream_unary("/compat.Echo/ClientStream")(parts, timeout=10))
        said = [str(i).encode() for i in range(200)]
        heard = list(ch.stream_stream("/compat.Echo/Bidi")(iter(said), timeout=10))
        print("bidi", "echoed" if heard == said else heard[:3])
        try:
            ch.unary_unary("/compat.Echo/Slow")(b"x", timeout=0.5)
        except grpc.RpcError as e:
            print("deadline", e.code().name)


# ---------------------------------------------------------------------------------------------


class Threading(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve():
    servers = [
        http.server.ThreadingHTTPServer(("0.0.0.0", PORTS["http11"]), Http11),
        Threading(("0.0.0.0", PORTS["greeting"]), Greeting),
        Threading(("0.0.0.0", PORTS["halfclose"]), HalfClose),
    ]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    threading.Thread(target=ws_serve, args=(PORTS["ws"],), daemon=True).start()
    grpc_server = grpc_serve(PORTS["grpc"])
    for port in PORTS.values():
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
    print("listening", flush=True)
    grpc_server.wait_for_termination()


CLIENTS = {
    "http11": http11,
    "idle": idle,
    "poll": poll,
    "smtp": smtp,
    "halfclose": halfclose,
    "redis-pubsub": redis_pubsub,
    "ws": ws,
    "grpc": grpc_client,
}

if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        CLIENTS[sys.argv[1]](*sys.argv[2:])
