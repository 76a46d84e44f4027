"""The gRPC entrypoint: the only package that imports grpc. Translates messages to core calls
and domain errors to status codes with rich details."""
