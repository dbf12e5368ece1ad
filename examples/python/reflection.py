"""Calling Flash with no stubs and no proto files: the server's reflection describes every
message, and the request is built from JSON. Every call, the reflection's included, sends
the bearer token in FLASH_TOKEN (the one `make run` printed, or `flash clients add`'s).

    export FLASH_TOKEN="$(cat .flash/admin-token)"
    target/py-venv/bin/python examples/python/reflection.py localhost:50051
"""

import os
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bearer import Bearer


token = os.environ.get("FLASH_TOKEN")
if not token:
    sys.exit("set FLASH_TOKEN to a client's bearer token (`make run` keeps one in "
             ".flash/admin-token; `flash clients add` prints one)")
channel = grpc.intercept_channel(
    grpc.insecure_channel(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"),
    Bearer(token))
database = ProtoReflectionDescriptorDatabase(channel)
print("services:", ", ".join(sorted(database.get_services())))
pool = descriptor_pool.DescriptorPool(database)
method = pool.FindServiceByName("flash.loyalty.v1.Programs").FindMethodByName("GetProgram")
request_class = message_factory.GetMessageClass(method.input_type)
response_class = message_factory.GetMessageClass(method.output_type)
call = channel.unary_unary(
    "/flash.loyalty.v1.Programs/GetProgram",
    request_serializer=request_class.SerializeToString,
    response_deserializer=response_class.FromString,
)
response = call(json_format.Parse('{"program_id": "demo"}', request_class()))
print(json_format.MessageToJson(response))
