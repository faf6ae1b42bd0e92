"""The wire contract in Python: code generated from proto/mevos/v1/*.proto (committed; regenerate
with `python -m mevos.proto.regenerate`, a test checks it is fresh) and `codec`, the encoding of
the frames and label maps the messages carry. Importing the generated modules needs protobuf (and
grpcio for *_pb2_grpc), both in the `serve` extra."""
