"""The web console in a real browser: Debian's chromium driven by Playwright, against a real
flowlog-server with API keys. Screenshots go to tests/artifacts/ (gitignored).

What each test checks against is computed apart from the page: gRPC calls through the generated
stubs (the records that exist, the Aggregate answer) or counts over Query results."""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from playwright import sync_api

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import query_pb2
from flowlog.v1 import types_pb2 as t
from tests.e2e.conftest import KEY_A, ROOT, Stubs, start_server
from tests.e2e.console_support import ConsoleServer, start_console_server
from tests.waiting import wait_for

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium() -> str:
    path = os.environ.get("FLOWLOG_CHROMIUM") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail(
            f"{path} is missing: run `scripts/services fetch browser` (apt-get install chromium) "
            "or point FLOWLOG_CHROMIUM at a Chromium binary"
        )
    return path


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    holder = {"cs": start_console_server(tmp_path_factory.mktemp("console"))}
    yield holder
    code = holder["cs"].grpc.stop()
    assert code == 0, holder["cs"].grpc.log_tail()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, console):
    ctx = browser.new_context(
        viewport={"width": 1400, "height": 900}, locale="en-GB", timezone_id="UTC", accept_downloads=True
    )
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    # The key is in the tab's sessionStorage after the first prompt; every test starts logged in
    # except the one that checks the prompt.
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def row_ids(pg, table: str) -> list[str]:
    return pg.eval_on_selector_all(f"table[aria-label='{table}'] tbody tr", "rs => rs.map(r => r.dataset.recordId)")


def record_tail_bodies(pg, bodies: list[bytes]) -> None:
    """Keep the body of every Tail request the page sends (enveloped JSON: bytes)."""

    def keep(r):
        if r.url.endswith(".QueryService/Tail"):
            bodies.append(r.post_data_buffer or b"")

    pg.on("request", keep)


def shot(pg, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def login(pg, base: str, hash_: str = "#/flowlogs") -> None:
    pg.goto(f"{base}/{hash_}")
    dialog = pg.get_by_role("dialog")
    sync_api.expect(dialog).to_be_visible()
    pg.get_by_label("API key", exact=True).fill(KEY_A)
    pg.get_by_role("button", name="Use key").click()
    sync_api.expect(dialog).to_be_hidden()


def stubs(cs: ConsoleServer) -> Stubs:
    return Stubs(cs.grpc.address, KEY_A)


def grpc_create(s: Stubs, region: str, name: str, project: str, store: str) -> fl.FlowLog:
    return s.flow_logs.CreateFlowLog(
        fl.CreateFlowLogRequest(
            region=region,
            name=name,
            resource_type=t.RESOURCE_TYPE_EIP,
            resource_id=f"eip-{region}-01",
            network_id=f"vpc-{region}demo",
            traffic_type=t.TRAFFIC_TYPE_ALL,
            new_log_store=fl.NewLogStore(project=project, name=store),
        ),
        metadata=s.md,
        timeout=20,
    )


def ts(dt: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def query_records(
    s: Stubs, region: str, project: str, stores: list[str], start: datetime, end: datetime, flt: str = ""
) -> list:
    out, token = [], ""
    while True:
        req = query_pb2.QueryRequest(
            region=region,
            project=project,
            log_stores=stores,
            start_time=ts(start),
            end_time=ts(end),
            filter=flt,
            limit=1000,
            page_token=token,
        )
        summary = None
        for resp in s.query.Query(req, metadata=s.md, timeout=60):
            out.extend(resp.batch.records)
            if resp.HasField("summary"):
                summary = resp.summary
        if not summary or not summary.more:
            return out
        token = summary.next_page_token


def settled_records(s: Stubs, region, project, stores, start, end, flt=""):
    """The records of a paused flow log once the pipeline has delivered them all: two reads in a
    row that agree (records still in flight only ever add)."""
    last: list = [None]

    def read():
        ids = query_records(s, region, project, stores, start, end, flt)
        same = last[0] is not None and len(ids) == len(last[0]) and len(ids) > 0
        last[0] = ids
        return ids if same else None

    return wait_for(read, "records settle", 60, 1.0)


def pause(s: Stubs, fid: str) -> None:
    s.flow_logs.UpdateFlowLog(
        fl.UpdateFlowLogRequest(
            flow_log=fl.FlowLog(id=fid, state=t.FLOW_LOG_STATE_PAUSED),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        metadata=s.md,
        timeout=20,
    )


# ---------------------------------------------------------------------------------------------


def test_key_prompt_create_through_the_form_field_errors_and_quota(page, console):
    cs = console["cs"]
    s = stubs(cs)
    try:
        # 8 flow logs exist in gz; the form makes the 9th and 10th, and the 11th is refused.
        for i in range(8):
            grpc_create(s, "gz", f"pre{i}", "quota", f"pre{i}")
        login(page, cs.base, "#/flowlogs/new?region=gz")
        sync_api.expect(page.get_by_role("heading", name="Create flow log")).to_be_visible()

        # A bad name and a 201-character description: each error next to its own field.
        page.get_by_label("Name", exact=True).fill("9lives")
        page.get_by_label("Traffic type").select_option("TRAFFIC_TYPE_DENY")
        page.get_by_label("Create new LogStore").check()
        page.get_by_label("Project").fill("web")
        page.get_by_label("LogStore name").fill("gz-frontend")
        page.get_by_label("Description").fill("x" * 201)
        page.get_by_role("button", name="Create", exact=True).click()
        name_err = page.locator("[data-field~='name'] .field-error")
        sync_api.expect(name_err).to_contain_text("start with a letter")
        sync_api.expect(page.locator("[data-field~='description'] .field-error")).to_contain_text("200")
        sync_api.expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
        shot(page, "console-create-errors")

        for n, name in ((9, "web-frontend"), (10, "bastion")):
            if n == 10:
                page.get_by_role("link", name="Create flow log").click()
            page.get_by_label("Name", exact=True).fill(name)
            page.get_by_label("Resource type").select_option("RESOURCE_TYPE_EIP")
            page.get_by_label("Traffic type").select_option("TRAFFIC_TYPE_ALL")
            page.get_by_label("Create new LogStore").check()
            page.get_by_label("Project").fill("web")
            page.get_by_label("LogStore name").fill(f"{name}-store")
            page.get_by_label("Description").fill(f"flow log {n} made in the browser")
            if n == 9:
                shot(page, "console-create")
            page.get_by_role("button", name="Create", exact=True).click()
            sync_api.expect(page.get_by_role("status")).to_contain_text(f"Created flow log {name}")
        made = {
            f.name: f
            for f in s.flow_logs.ListFlowLogs(
                fl.ListFlowLogsRequest(region="gz", page_size=100), metadata=s.md, timeout=20
            ).flow_logs
        }
        assert made["web-frontend"].destination.log_store == "web-frontend-store"
        assert made["bastion"].description == "flow log 10 made in the browser"
        sync_api.expect(page.locator("table[aria-label='Flow logs'] tbody tr")).to_have_count(10)
        shot(page, "console-flow-logs")

        page.get_by_role("link", name="Create flow log").click()
        page.get_by_label("Name", exact=True).fill("eleventh")
        page.get_by_label("Traffic type").select_option("TRAFFIC_TYPE_ALL")
        page.get_by_label("Create new LogStore").check()
        page.get_by_label("Project").fill("web")
        page.get_by_label("LogStore name").fill("eleventh")
        page.get_by_role("button", name="Create", exact=True).click()
        alert = page.locator(".form-error .banner.error")
        sync_api.expect(alert).to_contain_text("RESOURCE_EXHAUSTED")
        sync_api.expect(alert).to_contain_text("Quota")
        shot(page, "console-quota")
        # The refused flow log left no LogStore behind (rule 7), seen through gRPC.
        from flowlog.v1 import log_store_pb2 as ls

        names = [
            x.name
            for x in s.log_stores.ListLogStores(
                ls.ListLogStoresRequest(region="gz", page_size=1000), metadata=s.md, timeout=20
            ).log_stores
        ]
        assert "eleventh" not in names and "bastion-store" in names
    finally:
        s.close()


def test_pause_resume_edit_and_delete_keep_the_log_store(page, console):
    cs = console["cs"]
    s = stubs(cs)
    try:
        f = grpc_create(s, "bj", "edit-me", "ops", "edit-me")
        login(page, cs.base, "#/flowlogs?region=bj")
        row = page.locator(f"tr[data-id='{f.id}']")
        row.get_by_role("button", name="Pause").click()
        sync_api.expect(page.locator(f"tr[data-id='{f.id}'] td.state-PAUSED")).to_be_visible()
        page.locator(f"tr[data-id='{f.id}']").get_by_role("button", name="Resume").click()
        sync_api.expect(page.locator(f"tr[data-id='{f.id}'] td.state-ACTIVE")).to_be_visible()
        page.locator(f"tr[data-id='{f.id}']").get_by_role("link", name="Edit", exact=True).click()
        page.get_by_label("Description").fill("edited in the browser")
        page.get_by_label("Name", exact=True).press("Enter")  # the keyboard submits the form
        sync_api.expect(page.get_by_role("status")).to_contain_text("Saved flow log edit-me")
        got = s.flow_logs.GetFlowLog(fl.GetFlowLogRequest(id=f.id), metadata=s.md, timeout=20)
        assert got.description == "edited in the browser"
        page.locator(f"tr[data-id='{f.id}']").get_by_role("button", name="Delete").click()
        page.get_by_role("button", name="Confirm delete").click()
        sync_api.expect(page.get_by_role("status")).to_contain_text("LogStore ops/edit-me kept")
        from flowlog.v1 import log_store_pb2 as ls

        assert (
            s.log_stores.GetLogStore(
                ls.GetLogStoreRequest(region="bj", project="ops", name="edit-me"), metadata=s.md, timeout=20
            ).name
            == "edit-me"
        )
        with pytest.raises(grpc.RpcError):
            s.flow_logs.GetFlowLog(fl.GetFlowLogRequest(id=f.id), metadata=s.md, timeout=20)
    finally:
        s.close()


@pytest.fixture(scope="module")
def traffic(console):
    """A flow log in bj with records, paused after a while so its records stop changing."""
    cs = console["cs"]
    s = stubs(cs)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    f = grpc_create(s, "bj", "shop", "shop", "edge")
    other = grpc_create(s, "bj", "shop-nat", "shop", "nat")
    wait_for(
        lambda: (
            len(
                {
                    r.log_store
                    for r in query_records(
                        s, "bj", "shop", ["edge", "nat"], start, datetime.now(UTC) + timedelta(minutes=1)
                    )
                }
            )
            == 2
        ),
        "both flow logs have records",
        60,
        0.25,
    )
    yield {"flow_log": f, "other": other, "start": start, "stubs": s}
    s.close()


def test_tail_shows_generated_records_pause_and_resume_from_the_cursor(page, console, traffic):
    cs = console["cs"]
    s = traffic["stubs"]
    login(page, cs.base, "#/tail?region=bj&project=shop&stores=edge&state=live")
    rows = page.locator("table[aria-label='Live records'] tbody tr")
    sync_api.expect(rows.first).to_be_visible()
    sync_api.expect(page.locator("#tail-status")).to_have_attribute("data-state", "live")
    shot(page, "console-tail")
    page.get_by_role("button", name="Pause").click()
    sync_api.expect(page.locator("#tail-status")).to_have_attribute("data-state", "paused")
    assert "cursor=" in page.url and "state=paused" in page.url
    seen = row_ids(page, "Live records")
    # Every record shown is one the server stored for this flow log (seen through gRPC).
    now = datetime.now(UTC) + timedelta(seconds=5)

    def stored_ids() -> set[str] | None:
        recs = query_records(s, "bj", "shop", ["edge"], traffic["start"] - timedelta(minutes=5), now)
        ids = {r.record_id for r in recs}
        return ids if set(seen) <= ids else None

    stored = wait_for(stored_ids, "tailed records are stored", 60, 0.25)
    assert set(seen) <= stored
    bodies: list[bytes] = []
    record_tail_bodies(page, bodies)
    page.get_by_role("button", name="Resume").click()
    wait_for(
        lambda: page.locator("table[aria-label='Live records'] tbody tr").count() > len(seen),
        "new records after resume",
        60,
        0.25,
    )
    assert any(b"resumeCursor" in b for b in bodies), "resume sends the cursor"
    after = row_ids(page, "Live records")
    assert len(after) == len(set(after)), "no record twice after resuming from the cursor"


def test_search_with_a_filter_paging_download_and_a_filter_error(page, console, traffic):
    cs = console["cs"]
    s = traffic["stubs"]
    start = traffic["start"]
    flt = "protocol = tcp AND NOT dst_port = 443"

    def a_settled_match() -> bool:
        # The flow logs may be only seconds old: wait until the range holds a matching record
        # old enough to be inside [start, end) below, or the search would be empty.
        cutoff = datetime.now(UTC) - timedelta(seconds=2)
        rows = query_records(s, "bj", "shop", ["edge", "nat"], start, datetime.now(UTC), flt)
        return any(r.start_time.ToDatetime(tzinfo=UTC) < cutoff for r in rows)

    wait_for(a_settled_match, "a record matching the filter", 60, 1.0)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    want = settled_records(s, "bj", "shop", ["edge", "nat"], start, end, flt)
    login(
        page,
        cs.base,
        f"#/search?region=bj&project=shop&stores=edge,nat&from={start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        f"&to={end.strftime('%Y-%m-%dT%H:%M:%SZ')}&filter={quote(flt)}&limit=10",
    )
    summary = page.locator("#search-summary")
    sync_api.expect(summary).to_contain_text(f"of {len(want):,} matching")
    shown = row_ids(page, "Search results")
    assert len(shown) == min(10, len(want)) and set(shown) <= {r.record_id for r in want}
    protocols = page.eval_on_selector_all(
        "table[aria-label='Search results'] tbody tr td:nth-child(6)", "cs => cs.map(c => c.textContent)"
    )
    assert set(protocols) == {"tcp"}
    shot(page, "console-search")
    if len(want) > 10:
        page.get_by_role("link", name="Next page").click()
        sync_api.expect(page.get_by_role("link", name="Previous page")).to_be_visible()
        second = page.eval_on_selector_all(
            "table[aria-label='Search results'] tbody tr", "rs => rs.map(r => r.dataset.recordId)"
        )
        assert second and not set(second) & set(shown)
        assert set(shown) | set(second) <= {r.record_id for r in want}
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download JSON").click()
    import json

    data = json.loads(Path(dl.value.path()).read_text())
    assert data["records"] and all(r["protocol"] == 6 for r in data["records"])

    # A syntax error is shown under the filter, at its position.
    page.get_by_label("Filter", exact=True).fill("action = REJECT AND (port = 22")
    page.get_by_role("button", name="Search").click()
    err = page.locator("[data-field~='filter'] .field-error")
    sync_api.expect(err).to_contain_text("at position")
    pos = int(re.search(r"at position (\d+)", err.text_content()).group(1))
    caret = page.locator("[data-field~='filter'] .caret").text_content().split("\n")
    assert caret[1].index("^") == pos - 1
    shot(page, "console-search-error")


def test_analysis_chart_numbers_equal_the_api(page, console, traffic):
    cs = console["cs"]
    s = traffic["stubs"]
    start = traffic["start"]
    pause(s, traffic["flow_log"].id)
    pause(s, traffic["other"].id)
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    url = (
        f"#/analysis?region=bj&project=shop&stores=edge,nat&from={start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        f"&to={end.strftime('%Y-%m-%dT%H:%M:%SZ')}&metric=bytes"
    )
    login(page, cs.base, url)
    # Records still in the pipeline when the flow logs were paused may land while the page loads:
    # compare only a page drawn over the same records before and after it (else draw it again).
    for _ in range(5):
        records = settled_records(s, "bj", "shop", ["edge", "nat"], start, end)
        page.reload()
        page.wait_for_selector("main[data-ready='1']")
        chart = page.evaluate("""() => {
            const c = Chart.getChart(document.querySelector('#traffic-over-time canvas'));
            return c.data.datasets.map(d => ({key: d.key, data: d.data}));
        }""")
        if {r.record_id for r in query_records(s, "bj", "shop", ["edge", "nat"], start, end)} == {
            r.record_id for r in records
        }:
            break
    shot(page, "console-analysis")
    # Oracle 1: bytes per action counted over the Query results, independently of Aggregate.
    want = Counter()
    for r in records:
        want[t.Action.Name(r.action)] += r.bytes
    got = {d["key"]: sum(d["data"]) for d in chart}
    # (NODATA/SKIPDATA records have no action and 0 bytes: a zero series may or may not be drawn)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}, (got, want)
    # Oracle 2: the top talkers table equals an Aggregate call through gRPC.
    req = query_pb2.AggregateRequest(
        region="bj",
        project="shop",
        log_stores=["edge", "nat"],
        start_time=ts(start),
        end_time=ts(end),
        group_by=["src_addr"],
        metrics=["sum(bytes)", "count"],
        limit=10,
    )
    agg = s.query.Aggregate(req, metadata=s.md, timeout=60)
    rows = page.eval_on_selector_all(
        "#top-talkers tbody tr",
        """rs => rs.map(r => [...r.cells].map(
        c => c.dataset.value || c.textContent))""",
    )
    assert rows == [[row.keys[0] or "(none)", *map(str, row.values)] for row in agg.rows]
    # Clicking a row narrows the filter to it, in the URL.
    page.locator("#top-talkers tbody tr.click").first.click()
    page.wait_for_url(re.compile(r"filter=src_addr"))
    page.wait_for_selector("main[data-ready='1']")
    first = next(row.keys[0] for row in agg.rows if row.keys[0])
    assert f"src_addr = {first}" in page.get_by_label("Filter", exact=True).input_value()


def test_lost_tail_connection_resumes_from_its_cursor(page, console, traffic, tmp_path):
    """The server goes away under an open tail and comes back: the page reconnects with its cursor."""
    cs = console["cs"]
    s = traffic["stubs"]
    s.flow_logs.UpdateFlowLog(
        fl.UpdateFlowLogRequest(
            flow_log=fl.FlowLog(id=traffic["flow_log"].id, state=t.FLOW_LOG_STATE_ACTIVE),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        metadata=s.md,
        timeout=20,
    )
    login(page, cs.base, "#/tail?region=bj&project=shop&stores=edge&state=live")
    rows = page.locator("table[aria-label='Live records'] tbody tr")
    sync_api.expect(rows.first).to_be_visible()
    bodies: list[bytes] = []
    record_tail_bodies(page, bodies)
    config, data_dir = cs.grpc.config_path, cs.grpc.data_dir
    port = int(cs.grpc.address.rsplit(":", 1)[1])
    assert cs.grpc.stop() == 0
    sync_api.expect(page.locator("#tail-status")).to_have_attribute("data-state", "reconnecting")
    before = rows.count()
    shot(page, "console-tail-reconnecting")
    import yaml

    settings = yaml.safe_load(config.read_text())
    restarted = start_server(tmp_path, settings, data_dir=data_dir, port=port)
    console["cs"] = ConsoleServer(restarted, cs.http_port)
    sync_api.expect(page.locator("#tail-status")).to_have_attribute("data-state", "live", timeout=60_000)
    wait_for(lambda: rows.count() > before, "records after reconnecting", 60, 0.25)
    assert any(b"resumeCursor" in b for b in bodies), "the reconnect carries the cursor"
    ids = row_ids(page, "Live records")
    assert len(ids) == len(set(ids))


def test_screenshots_for_the_readme_are_where_the_readme_says():
    """docs/console-*.png are committed copies of this suite's screenshots."""
    for name in (
        "console-flow-logs",
        "console-tail",
        "console-search",
        "console-search-error",
        "console-quota",
        "console-analysis",
    ):
        assert (ROOT / "docs" / f"{name}.png").is_file(), f"docs/{name}.png: copy it from tests/artifacts/"
