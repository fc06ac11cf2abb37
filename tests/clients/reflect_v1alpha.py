"""A third-party gRPC client of the collector: Python's grpcio-reflection.

It speaks only the v1alpha server reflection protocol, as older grpcurl,
Postman and Evans do. Over mutual TLS it lists the collector's services and
resolves the Specialist service's methods from the descriptors the server
hands out, then prints both as one JSON object.

Usage: reflect_v1alpha.py HOST:PORT CA_PEM CERT_PEM KEY_PEM
"""

import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    address, ca, cert, key = sys.argv[1:5]
    with open(ca, "rb") as f:
        roots = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private_key = f.read()
    credentials = grpc.ssl_channel_credentials(roots, private_key, chain)
    # The collector's certificate names "localhost"; the address is an IP.
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        specialist = DescriptorPool(database).FindServiceByName("vitals.v1.Specialist")
        print(
            json.dumps(
                {
                    "services": services,
                    "specialist_methods": [m.name for m in specialist.methods],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
