"""Overload through the gateway on the real stack: what is admitted answers within its deadline, the
rest is refused at once with RESOURCE_EXHAUSTED and a retry hint, and the stack serves afterwards.
(The test stack's LM decodes 2 sequences at a time; the bench measures the same at scale.)"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from molm3d.v1 import common_pb2, gateway_pb2

from molm3d_services.client import GatewayClient
from molm3d_services.common.errors import error_detail

from .conftest import TOKEN


@pytest.fixture(scope="module")
def client(served):
    c = GatewayClient(served.target, token=TOKEN, timeout_s=120)
    yield c
    c.close()


def caption(client, deadline_s: float) -> tuple[grpc.StatusCode, str]:
    request = gateway_pb2.CaptionRequest(
        molecule=common_pb2.MoleculeInput(text="CCO"), decoding=common_pb2.DecodingOptions(max_new_tokens=300)
    )
    metadata = [*client.metadata, ("molm3d-timeout-ms", str(int(deadline_s * 1000)))]
    try:
        client.stub.Caption(request, metadata=metadata, timeout=60)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), error_detail(err).message


def test_a_burst_beyond_capacity_is_admitted_within_deadlines_or_refused_with_a_retry_hint(client):
    caption(client, 60)  # warm up, and let the LM report measured steps
    took = []
    for _ in range(3):  # the unloaded time: the slowest of three (one sample is too noisy on 2 busy cores)
        start = time.perf_counter()
        assert caption(client, 60)[0] == grpc.StatusCode.OK
        took.append(time.perf_counter() - start)
    deadline_s = 4 * max(took)
    time.sleep(0.5)  # a fresh load report
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: caption(client, deadline_s), range(16)))
    codes = [code for code, _ in results]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, results
    assert codes.count(grpc.StatusCode.OK) >= 2 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 4, results
    # refused by admission control (the test stack's small LM queue may also refuse some: back-pressure)
    refusals = [m for c, m in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert any(m.startswith("busy: ") and "retry in" in m for m in refusals), refusals
    assert caption(client, 60)[0] == grpc.StatusCode.OK  # and it still serves
