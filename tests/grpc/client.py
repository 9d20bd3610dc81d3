"""One gRPC call for tests/grpc.rs: client.py TARGET unary|stream METHOD TOKEN|- [TIMEOUT_S].
Prints one JSON object: the status code name, details, responses and trailing metadata."""
import json
import sys

import grpc

target, kind, method, token = sys.argv[1:5]
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
metadata = [] if token == "-" else [("authorization", "Bearer " + token)]
channel = grpc.insecure_channel(target)
out = {}
try:
    if kind == "unary":
        response, call = channel.unary_unary(method).with_call(
            b"hello", metadata=metadata, timeout=timeout
        )
        responses, status = [response.decode()], call
    else:
        status = channel.unary_stream(method)(b"hello", metadata=metadata, timeout=timeout)
        responses = [r.decode() for r in status]
    out = {
        "code": status.code().name,
        "details": status.details(),
        "responses": responses,
        "trailing": dict(status.trailing_metadata() or []),
    }
except grpc.RpcError as e:
    out = {
        "code": e.code().name,
        "details": e.details(),
        "responses": [],
        "trailing": dict(e.trailing_metadata() or []),
    }
print(json.dumps(out))
