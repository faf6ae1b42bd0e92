"""Serve tracking sessions over gRPC (mevos.v1.Tracking, plus grpc.health.v1 and reflection).

Listens on loopback unless --host says otherwise. Prometheus metrics are served on their own
HTTP port. SIGTERM (or Ctrl-C) drains: new sessions are refused, open ones get --grace seconds
to finish (then end with UNAVAILABLE), and the server exits 0; a second SIGTERM or Ctrl-C exits at
once (code 1). Start-up errors (port in use, unreadable or mismatched TLS files) are one line on
stderr and exit code 2.

examples:
  mevos serve --model runs/small/last.pt --port 50051
  MEVOS_TOKEN=s3cret mevos serve --host 0.0.0.0 --tls-cert server.pem --tls-key server.key
  grpcurl -plaintext 127.0.0.1:50051 mevos.v1.Tracking/GetServerInfo
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mevos.errors import require

    for module, package in (("grpc", "grpcio"), ("google.protobuf", "protobuf"), ("grpc_health", "grpcio-health-checking"),
                            ("grpc_reflection", "grpcio-reflection"), ("prometheus_client", "prometheus-client")):
        require(module, "serve", "mevos serve", package=package)
    from mevos.runtime.options import add_model_arguments, add_tracker_arguments
    from mevos.server.limits import Limits

    d = Limits()
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    net.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 = any free port)")
    net.add_argument("--port-file", default=None, metavar="PATH",
                     help="write the bound gRPC port to this file once serving (useful with --port 0)")
    net.add_argument("--metrics-port", type=int, default=9464,
                     help="Prometheus metrics HTTP port on the same host (default 9464; 0 = any free port)")
    net.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    sec = parser.add_argument_group("security")
    sec.add_argument("--tls-cert", default=None, metavar="PEM", help="TLS certificate chain (enables TLS with --tls-key)")
    sec.add_argument("--tls-key", default=None, metavar="PEM", help="TLS private key")
    sec.add_argument("--token-file", default=None, metavar="PATH",
                     help="require 'authorization: Bearer <token>' with the token in this file "
                          "(default: $MEVOS_TOKEN if set, else no auth)")
    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-sessions", type=int, default=d.max_sessions,
                     help=f"concurrent sessions; more get RESOURCE_EXHAUSTED (default {d.max_sessions})")
    lim.add_argument("--max-frame-side", type=int, default=d.max_frame_side,
                     help=f"largest frame width/height in pixels (default {d.max_frame_side})")
    lim.add_argument("--max-objects", type=int, default=d.max_objects,
                     help=f"objects per session (default {d.max_objects})")
    lim.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / 2**20,
                     help=f"largest request message in MiB (default {d.max_message_bytes / 2**20:g})")
    lim.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                     help=f"seconds a session may wait for its next frame, and a response for the client to take "
                          f"it, before the session is ended (default {d.idle_timeout_s:g})")
    lim.add_argument("--max-session-memory-mb", type=float, default=d.max_session_memory_bytes / 2**20,
                     help="estimated memory one session may need (memory bank + one frame's activations, from "
                          "the working size, mem_frames and objects), checked before anything is allocated; "
                          f"over it: RESOURCE_EXHAUSTED (default {d.max_session_memory_bytes / 2**20:g})")
    lim.add_argument("--max-batch", type=int, default=None,
                     help=f"session calls batched into one model call (1 = no batching; default: {d.max_batch} on "
                          "CUDA, 1 on the CPU, where batching measured slower: benchmarks/results/server_load.json)")
    lim.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                     help=f"longest wait for a batch to fill, ms (default {d.batch_wait_ms:g})")
    lim.add_argument("--grace", type=float, default=10.0,
                     help="seconds open sessions get to finish on SIGTERM (default 10)")
    parser.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines (default json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads per calling thread (default: 1 on the CPU, where sessions "
                             "and the scheduler already run in parallel threads and more oversubscribes the cores; "
                             "torch's choice on CUDA)")
    add_model_arguments(parser)
    add_tracker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from mevos.runtime.backend import create_backend
    from mevos.runtime.options import tracker_config_from_args, use_fast_tracker
    from mevos.model.weights import describe_weights
    from mevos.server import logs
    from mevos.server.app import ServerConfig, create_server, preflight
    from mevos.env import load_token
    from mevos.server.limits import Limits

    logs.configure(args.log_format)
    threads = args.threads or (None if str(args.device).startswith("cuda") else 1)
    if threads:
        torch.set_num_threads(threads)
    limits = Limits(
        max_sessions=args.max_sessions, max_frame_side=args.max_frame_side, max_objects=args.max_objects,
        max_message_bytes=int(args.max_message_mb * 2**20), idle_timeout_s=args.idle_timeout,
        max_batch=args.max_batch or (Limits().max_batch if str(args.device).startswith("cuda") else 1),
        batch_wait_ms=args.batch_wait_ms, max_session_memory_bytes=int(args.max_session_memory_mb * 2**20),
    )
    config = ServerConfig(
        host=args.host, port=args.port, limits=limits, defaults=tracker_config_from_args(args),
        token=load_token(args.token_file), tls_cert=args.tls_cert, tls_key=args.tls_key,
        metrics_port=None if args.no_metrics else args.metrics_port,
        # The file name only: ServerInfo is public, the server's folders are not.
        model_description=describe_weights(Path(args.checkpoint).name if args.checkpoint else None),
        fast=use_fast_tracker(args.device, args.backend, args.fast),
    )
    preflight(config)  # port and TLS files, before the model loads
    backend = create_backend(args.backend, args.checkpoint, device=args.device, precision=args.precision)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # the second one: do not wait for the drain
            print(f"mevos serve: {signal.Signals(signum).name} again: exiting without draining", file=sys.stderr,
                  flush=True)
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server, port = create_server(backend, config)
    if args.port_file:
        tmp = Path(args.port_file).with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(args.port_file)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(args.grace)
    print(f"mevos serve: stopped (port {port})", file=sys.stderr)
    return 0
