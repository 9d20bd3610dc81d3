"""A real gRPC server (grpcio) for tests/grpc.rs: raw-bytes methods of service test.Svc,
insecure HTTP/2 on 127.0.0.1, port printed on stdout. Counts the calls that reached it
(`Calls`, asked directly, not through jwtgate)."""
import sys
import threading
import time
from concurrent import futures

import grpc

calls = 0
lock = threading.Lock()


def reached():
    global calls
    with lock:
        calls += 1


def echo(request, context):
    reached()
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-echo-trailer", "kept"),))
    user = md.get("x-user", "-")
    payload = "yes" if "x-jwt-payload" in md else "no"
    return request + ("|user=%s|payload=%s" % (user, payload)).encode()


def stream(request, context):
    reached()
    for i in range(3):
        yield request + (b"-%d" % i)
    context.set_trailing_metadata((("x-stream-trailer", "done"),))


def slow(request, context):
    reached()
    time.sleep(3)
    return request


def count(request, context):
    with lock:
        return str(calls).encode()


handlers = {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Calls": grpc.unary_unary_rpc_method_handler(count),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()  # runs until the test closes our stdin
server.stop(0)
