"""The service's metrics for Prometheus: a monitor's token reads them (and nothing else);
roles without the metrics permission are refused; the debt figures are the console's ledger."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Service, leaver_with_tasks


def test_a_monitor_reads_the_metrics_and_nothing_else(service: Service) -> None:
    leaver_with_tasks(service)  # fay still holds erp after her termination
    # a scrape shows the newest ledger and never starts one: a console view computes it
    with service.client(None) as browser:
        browser.cookies.set("provisor_session", service.tokens["root"])
        assert 'data-current="yes"' in browser.get("/console/").text
    answer = service.call("mona", "GET", "/api/v1/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    debt = {s.labels["target"]: s.value for s in families["provisor_debt_items"].samples}
    assert families["provisor_debt_computed_timestamp_seconds"].samples
    assert debt.get("erp", 0) >= 1  # fay still holds erp: owed, as the ledger says
    assert "F1" not in answer.text and "fay" not in answer.text  # counts, never names
    assert service.call("mona", "GET", "/api/v1/identities").status_code == 403
    for who in ("alice", "owen", "rita"):
        assert service.call(who, "GET", "/api/v1/metrics").status_code == 403
    for who in ("root", "olga", "audrey"):
        assert service.call(who, "GET", "/api/v1/metrics").status_code == 200
    assert service.call(None, "GET", "/api/v1/metrics").status_code == 401
