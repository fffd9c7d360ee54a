"""The gRPC upstream of benchmarks.http2: a grpcio (asyncio) server whose one unary method echoes its bytes.

`python -m benchmarks.grpc_upstream --port N` serves `/svc.Echo/Say` (a generic handler, no protobuf: the
request message's bytes are the response's) on 127.0.0.1:N until killed.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

SERVICE = "svc.Echo"
METHOD = "Say"
PATH = f"/{SERVICE}/{METHOD}"


async def _say(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1000)])
    handler = grpc.unary_unary_rpc_method_handler(_say)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
