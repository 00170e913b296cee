"""Admission control's prediction and decision, from LM load reports (the served behaviour is in test_serving)."""

from __future__ import annotations

import grpc
import pytest

from molm3d_services.common.errors import ServiceError
from molm3d_services.gateway.admission import Admission, predict_seconds, step_seconds

# 2 slots, steps of 0.1 s at one sequence and 0.15 s at two, answers of 10 tokens
LOAD = {
    "slots": 2,
    "running": [],
    "waiting": 0,
    "step_s": {1: 0.1, 2: 0.15},
    "prefill_s": 0.05,
    "lengths": [(10, 64)] * 20,  # (tokens, max_new_tokens) of recent answers
}


def test_step_time_is_measured_or_fitted_to_the_measured_batch_sizes():
    assert step_seconds({1: 0.1, 2: 0.15}, 2) == 0.15
    assert step_seconds({1: 0.1, 2: 0.15}, 4) == pytest.approx(0.25)  # the line through both
    assert step_seconds({1: 0.1}, 11) == pytest.approx(0.1 * 2.1 / 1.1)  # one size: the prior slope
    assert step_seconds({4: 0.2, 8: 0.1}, 16) == pytest.approx(0.15)  # noisy, falling: taken as flat


def test_a_new_request_waits_for_the_first_slot_that_frees_up():
    idle = predict_seconds(LOAD, ahead=0, max_new_tokens=64, encode_s=0.2)
    assert idle == pytest.approx(0.2 + 0.05 + 10 * 0.1)  # encode, prefill, a typical answer at batch 1
    # both slots busy, 3 and 9 tokens from their typical ends: it starts after 3 steps, at batch 2
    busy = {**LOAD, "running": [(7, 64), (1, 64)]}
    assert predict_seconds(busy, 0, 64, 0.2) == pytest.approx(0.2 + 0.05 + (max(3, 8) + 10) * 0.15)
    # one more ahead in the queue takes that slot first: this one gets the next (after 9 steps)
    assert predict_seconds(busy, 1, 64, 0.2) == pytest.approx(0.2 + 0.1 + (9 + 10) * 0.15)
    assert predict_seconds({**LOAD, "step_s": {}}, 0, 64, 0.2) is None  # nothing measured yet


def test_overload_is_refused_at_once_with_a_retry_hint_and_the_admitted_are_counted():
    # this gateway's two requests fill both slots
    admission = Admission(margin=0.8, load={**LOAD, "running": [(0, 64), (0, 64)]}, at_lm=2)
    admitted = 0
    with pytest.raises(ServiceError) as caught:
        for _ in range(100):
            admission.check(max_new_tokens=64, timeout_s=5.0)
            admission.before_lm += 1  # as the gateway does for an admitted request
            admitted += 1
    err = caught.value
    assert err.status == grpc.StatusCode.RESOURCE_EXHAUSTED and err.detail.code == "overloaded"
    assert err.detail.retry_after_ms >= 1000 and "retry in" in err.detail.message
    # requests admitted since the last report count as ahead: a burst cannot overfill the queue
    assert 1 <= admitted < 10
    admission.encoded(0.2)  # one leaves the encoder: queued for the LM (not in its report yet), still ahead
    with pytest.raises(ServiceError):
        admission.check(64, 5.0)
    for _ in range(admitted):  # all answered and the LM reports an empty batch: room again
        admission.answered()
    admission.before_lm, admission.load = 0, dict(LOAD)
    admission.check(64, 5.0)


def test_a_deadline_no_idle_stack_could_meet_is_deadline_exceeded_not_overload():
    admission = Admission(load=dict(LOAD))
    admission.check(64, timeout_s=5.0)  # fine when idle
    with pytest.raises(ServiceError) as caught:
        admission.check(64, timeout_s=0.005)
    assert caught.value.status == grpc.StatusCode.DEADLINE_EXCEEDED and not caught.value.detail.retry_after_ms


def test_before_the_first_report_everything_is_admitted():
    Admission().check(512, timeout_s=0.001)


def test_answers_of_another_token_limit_do_not_make_a_request_look_short():
    mixed = {**LOAD, "lengths": [(4, 4)] * 50 + [(10, 64)] * 3}
    # 3 answers of this limit are too few: the limit itself (300 steps) is expected
    assert predict_seconds(mixed, 0, 300, 0.0) == pytest.approx(0.05 + 300 * 0.1)
    assert predict_seconds(mixed, 0, 4, 0.0) == pytest.approx(0.05 + 4 * 0.1)
    # over the LM's own limit: no prediction, so that the LM answers INVALID_ARGUMENT, not a deadline
    assert predict_seconds({**mixed, "max_new_tokens_limit": 512}, 0, 5000, 0.0) is None
