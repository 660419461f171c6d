"""grpcio's Python server alone: ModelInfer answered with a fixed LeNet-shaped answer, no model, no checks.

The ceiling of any server built on grpcio's Python server on this machine, measured in the same run as
tinyserve's gRPC door (benchmarks.grpc_cases): the same server construction (a thread per call in flight,
SO_REUSEPORT, a process per worker), the same load generator. What tinyserve's door reaches of it is what
its own work costs; what it reaches of the typed HTTP route says whether a bar set against that route can be
met with grpcio at all.

    .venv/bin/python -m benchmarks.grpc_bare PORT THREADS WORKERS    # a process a worker, one group
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

ANSWER = pb.ModelInferResponse(model_name="lenet", model_version="1")
ANSWER.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
ANSWER.raw_output_contents.append(np.zeros(10, np.float32).tobytes())


class Bare(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def ModelInfer(self, request: Any, context: Any) -> Any:
        list(request.raw_input_contents)  # the bytes read out of the message, as tinyserve's door reads them
        return ANSWER

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)


def main() -> None:
    port, threads, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for _ in range(workers - 1):  # in this process's group: the group's SIGTERM stops them all
        subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_bare", str(port), str(threads), "1"])
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        maximum_concurrent_rpcs=threads,
        options=[("grpc.so_reuseport", 1)],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Bare(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
