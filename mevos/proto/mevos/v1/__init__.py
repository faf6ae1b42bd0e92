"""Generated code of the .proto files (see mevos/proto/regenerate.py). Do not edit."""
