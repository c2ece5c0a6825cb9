"""examples/page_visibility: no access to a page completes after its revocation returned.

The example's harness (``harness.py``) checks the invariant while the service
runs (a ledger of revocation windows against timestamps the accessors take
inside their read sections); these tests run the checked service with its
real HTTP server and the harness's load generator, and show with a busted
domain that the same check does catch accesses that outlive a commit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

import aiorcu
from aiorcu import testing

from .examples import load_example, run_example

SECONDS = 2.0


def _run_demo(domain: aiorcu.Domain) -> Any:
    harness = load_example("page_visibility", "harness")
    return asyncio.run(harness.run_demo(SECONDS, harness.CheckedPageService(domain)))


def test_invariant_holds_under_load() -> None:
    result = _run_demo(aiorcu.Domain(name="pages-test"))
    stats, load = result.stats, result.load
    invariant = stats["invariant"]
    assert invariant["violations"] == 0, invariant["examples"]
    assert invariant["ledger_errors"] == 0
    assert invariant["held"]
    # Every access was checked, and there was something to check.
    assert invariant["accesses_checked"] == stats["accesses"] > 0
    assert stats["accesses_by_threads"] > 0
    assert stats["accesses_by_tasks"] > 0
    assert stats["denials"] > 0
    assert stats["commits"] > 0
    assert stats["commits_restricting"] > 0
    assert stats["grace_periods"] > 0
    assert stats["grace_period_seconds"]["samples"] > 0
    # The client saw every kind of answer, and only the expected ones.
    assert not load.unexpected
    assert load.statuses[422] == stats["malformed"] > 0
    assert load.statuses[409] == stats["rejected"] > 0
    assert load.statuses[200] == stats["commits"]
    assert load.stats_polls > 0
    assert load.last_stats["commits"] > 0
    assert result.ok


def test_negative_control_busted_domain_shows_violations() -> None:
    """Commits that do not wait let accesses outlive them: the check sees it."""
    domain = aiorcu.Domain(name="pages-busted")
    testing.set_busted(domain)
    result = _run_demo(domain)
    stats = result.stats
    assert stats["commits_restricting"] > 0
    assert stats["invariant"]["violations"] > 0
    assert stats["invariant"]["ledger_errors"] == 0  # the ledger itself is still exact
    assert not stats["invariant"]["held"]
    assert not result.ok
    example = stats["invariant"]["examples"][0]
    assert example["completed_us_after_revoke_returned"] > 0


def test_control_plane_answers() -> None:
    harness = load_example("page_visibility", "harness")
    page_service = harness.CheckedPageService(aiorcu.Domain(name="pages-http"), threads=1, tasks=1)
    everything = list(range(harness.PAGES))

    def client(url: str) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            assert http.get("/pages").json()["accessible"] == everything

            revoke = {"ops": [{"op": "revoke", "start": 0, "count": 2}], "label": "evict"}
            response = http.post("/transactions", json=revoke)
            assert response.status_code == 200
            report = aiorcu.CommitReport.model_validate(response.json())
            assert report.pages_revoked == 2
            assert report.restricted
            assert report.synchronized
            assert report.label == "evict"
            assert http.get("/pages").json()["accessible"] == everything[2:]

            malformed = http.post(
                "/transactions",
                content=b'{"ops": [{"op": "grant", "start": "0", "count": 1}], "x": 1}',
                headers={"content-type": "application/json"},
            )
            assert malformed.status_code == 422
            errors = malformed.json()["errors"]
            assert {error["type"] for error in errors} == {"int_type", "extra_forbidden"}
            assert all("loc" in error and "msg" in error for error in errors)
            not_json = http.post("/transactions", content=b"{")
            assert not_json.status_code == 422
            assert not_json.json()["errors"][0]["type"] == "json_invalid"

            too_far = {
                "ops": [
                    {"op": "grant", "start": 0, "count": 2},
                    {"op": "revoke", "start": harness.PAGES - 1, "count": 2},
                ]
            }
            rejected = http.post("/transactions", json=too_far)
            assert rejected.status_code == 409
            assert rejected.json()["op_index"] == 1
            assert "nothing was applied" in rejected.json()["detail"]
            # The grant of the rejected transaction did not happen.
            assert http.get("/pages").json()["accessible"] == everything[2:]
            stats: dict[str, Any] = http.get("/stats").json()
            return stats

    stats = asyncio.run(harness.serve_while(page_service, client))
    assert stats["commits"] == 1
    assert stats["malformed"] == 2
    assert stats["rejected"] == 1
    assert stats["invariant"]["violations"] == 0
    assert page_service.stats()["invariant"]["held"]


def test_runs_with_one_command() -> None:
    out = run_example("page_visibility", "service", "--demo", "--seconds", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "violations 0, ledger errors 0: held" in out.stdout
    assert "malformed 422: 0" not in out.stdout
    assert "rejected 409: 0," not in out.stdout
