"""Every rule of API.md (FlowLogService 1-9, resources, LogStores) through the domain core."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, QuotaExceeded
from server.core.model import LogStore, LogStoreKey, Resource, ResourceType, TrafficType
from server.core.paging import TokenSigner
from server.core.service import CreateFlowLog, ExistingLogStoreSpec, NewLogStoreSpec, Service
from server.demo import demo_resources

A, B = "acct-a", "acct-b"


@pytest.fixture
def svc(metadata_store):  # every metadata backend (tests/unit/conftest.py)
    deleted: list = []
    store = metadata_store
    s = Service(store, TokenSigner(b"k" * 32), on_log_store_deleted=lambda a, k: deleted.append((a, k)))
    s.deleted = deleted
    for acct in (A, B):
        for r in demo_resources():
            s.register_resource(acct, r)
    yield s


def _store_for(name: str) -> str:
    return "store-web-fl" if name == "web-fl" else "s" + hashlib.sha1(name.encode()).hexdigest()[:12]


def req(**kw) -> CreateFlowLog:
    base = dict(
        region="bj",
        name="web-fl",
        resource_type=ResourceType.EIP,
        resource_id="eip-bj-01",
        network_id="vpc-bjdemo",
        traffic_type=TrafficType.ALL,
        destination=NewLogStoreSpec("proj", _store_for(kw.get("name", "web-fl"))),
    )
    base.update(kw)
    return CreateFlowLog(**base)


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


def test_create_and_get(svc):
    fl = svc.create_flow_log(A, req())
    assert fl.id.startswith("fl-") and len(fl.id) == 15
    assert svc.get_flow_log(A, fl.id) == fl
    assert svc.get_log_store(A, LogStoreKey("bj", "proj", "store-web-fl")).retention_days == 7


def test_rule1_quota_per_region_per_account(svc):
    for i in range(10):
        svc.create_flow_log(A, req(name=f"fl{i}"))
    with pytest.raises(QuotaExceeded) as e:
        svc.create_flow_log(A, req(name="fl10"))
    assert "maximum is 10" in e.value.message and "bj" in e.value.subject
    # other region and other account are not affected
    svc.create_flow_log(A, req(name="gz1", region="gz", resource_id="eip-gz-01", network_id="vpc-gzdemo"))
    svc.create_flow_log(B, req(name="b1"))


def test_rule1_quota_exact_under_concurrency(svc):
    def create(i):
        try:
            svc.create_flow_log(A, req(name=f"c{i}"))
            return "ok"
        except QuotaExceeded:
            return "quota"

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(create, range(50)))
    assert results.count("ok") == 10 and results.count("quota") == 40
    assert len(svc.list_flow_logs(A, region="bj", page_size=100).items) == 10


def test_rule2_cross_region_log_store_refused(svc):
    svc.create_log_store(A, LogStore("gz", "proj", "gzstore"))
    with pytest.raises(FailedPrecondition):
        svc.create_flow_log(A, req(destination=ExistingLogStoreSpec("proj", "gzstore", region="gz")))
    with pytest.raises(FailedPrecondition):
        svc.create_flow_log(A, req(destination=NewLogStoreSpec("proj", "x", region="gz")))
    with pytest.raises(NotFound):  # named without a region: looked up in the flow log's region
        svc.create_flow_log(A, req(destination=ExistingLogStoreSpec("proj", "gzstore")))


def test_rule3_description_counts_code_points(svc):
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(A, req(description="x" * 201))
    assert fields(e.value) == {"description"} and "201" in e.value.message
    fl = svc.create_flow_log(A, req(description="流" * 200))  # 600 bytes of UTF-8, 200 characters
    assert len(fl.description) == 200
    with pytest.raises(InvalidArgument):
        svc.create_flow_log(A, req(name="nul", description="a\x00b"))


@pytest.mark.parametrize("name", ["a", "A" * 65, "web_1-2/3.4", "流量日志", "a流量"])
def test_rule4_valid_names(svc, name):
    assert svc.create_flow_log(A, req(name=name)).name == name


@pytest.mark.parametrize("name", ["", "1abc", "-a", "a" * 66, "a b", "a@b", "a\u202eb"])
def test_rule4_invalid_names(svc, name):
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(A, req(name=name, destination=NewLogStoreSpec("p", "s")))
    assert "name" in fields(e.value)


def test_rule4_unique_per_region_and_account(svc):
    svc.create_flow_log(A, req(name="dup"))
    with pytest.raises(AlreadyExists):
        svc.create_flow_log(A, req(name="dup", destination=NewLogStoreSpec("p", "other")))
    svc.create_flow_log(B, req(name="dup"))
    svc.create_flow_log(A, req(name="dup", region="gz", resource_id="eip-gz-01", network_id="vpc-gzdemo"))


def test_rule5_resource_checks(svc):
    with pytest.raises(NotFound):
        svc.create_flow_log(A, req(resource_id="eip-nope"))
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(A, req(resource_type=ResourceType.NAT_GATEWAY))
    assert fields(e.value) == {"resource_type"}
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(A, req(network_id="vpc-other"))
    assert fields(e.value) == {"network_id"}
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(A, req(region="gz"))
    assert "region" in fields(e.value)


def test_rule6_traffic_type_required(svc):
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(A, req(traffic_type=0))
    assert fields(e.value) == {"traffic_type"}
    with pytest.raises(InvalidArgument):
        svc.create_flow_log(A, req(traffic_type=42))


def test_every_bad_field_is_named_at_once(svc):
    with pytest.raises(InvalidArgument) as e:
        svc.create_flow_log(
            A,
            CreateFlowLog(
                region="",
                name="",
                resource_type=0,
                resource_id="",
                network_id="",
                traffic_type=0,
                destination=None,
                description="d" * 300,
            ),
        )
    assert fields(e.value) >= {
        "region",
        "name",
        "resource_type",
        "resource_id",
        "network_id",
        "traffic_type",
        "description",
        "destination_choice",
    }


def test_rule7_refused_flow_log_leaves_no_log_store(svc):
    for i in range(10):
        svc.create_flow_log(A, req(name=f"q{i}"))
    with pytest.raises(QuotaExceeded):
        svc.create_flow_log(A, req(name="over", destination=NewLogStoreSpec("proj", "orphan")))
    with pytest.raises(NotFound):
        svc.get_log_store(A, LogStoreKey("bj", "proj", "orphan"))
    with pytest.raises(NotFound):  # existing LogStore must exist
        svc.create_flow_log(B, req(destination=ExistingLogStoreSpec("proj", "missing")))


def test_rule8_deleting_flow_log_keeps_log_store(svc):
    fl = svc.create_flow_log(A, req())
    svc.delete_flow_log(A, fl.id)
    assert svc.get_log_store(A, LogStoreKey("bj", "proj", "store-web-fl"))
    assert svc.deleted == []
    with pytest.raises(NotFound):
        svc.get_flow_log(A, fl.id)


def test_rule9_client_token(svc):
    first = svc.create_flow_log(A, req(client_token="tok-1"))
    again = svc.create_flow_log(A, req(client_token="tok-1"))
    assert again == first
    with pytest.raises(AlreadyExists):
        svc.create_flow_log(A, req(client_token="tok-1", description="different"))
    # tokens are per account
    assert svc.create_flow_log(B, req(client_token="tok-1")).id != first.id


def test_accounts_are_isolated(svc):
    fl = svc.create_flow_log(A, req())
    with pytest.raises(NotFound):
        svc.get_flow_log(B, fl.id)
    with pytest.raises(NotFound):
        svc.delete_flow_log(B, fl.id)
    with pytest.raises(NotFound):
        svc.get_log_store(B, LogStoreKey("bj", "proj", "store-web-fl"))
    assert [f.id for f in svc.list_flow_logs(B).items] == []


def test_update_flow_log_mask(svc):
    fl = svc.create_flow_log(A, req())
    up = svc.update_flow_log(A, fl.id, {"description": "new", "state": 2, "name": "ignored"}, ["description", "state"])
    assert up.description == "new" and up.state == 2 and up.name == fl.name
    with pytest.raises(InvalidArgument) as e:
        svc.update_flow_log(A, fl.id, {}, ["resource_id"])
    assert fields(e.value) == {"update_mask"}
    with pytest.raises(InvalidArgument):
        svc.update_flow_log(A, fl.id, {}, [])
    with pytest.raises(InvalidArgument):
        svc.update_flow_log(A, fl.id, {"description": "x" * 201}, ["description"])


def test_resource_in_use_and_log_store_in_use(svc):
    fl = svc.create_flow_log(A, req())
    with pytest.raises(FailedPrecondition):
        svc.delete_resource(A, "eip-bj-01")
    with pytest.raises(FailedPrecondition):
        svc.delete_log_store(A, LogStoreKey("bj", "proj", "store-web-fl"))
    svc.delete_flow_log(A, fl.id)
    svc.delete_log_store(A, LogStoreKey("bj", "proj", "store-web-fl"))
    assert svc.deleted == [(A, LogStoreKey("bj", "proj", "store-web-fl"))]
    svc.delete_resource(A, "eip-bj-01")
    with pytest.raises(NotFound):
        svc.get_resource(A, "eip-bj-01")


def test_paging_and_tampered_tokens(svc):
    for i in range(7):
        svc.create_log_store(A, LogStore("bj", "p", f"s{i}"))
    seen, token = [], ""
    while True:
        page = svc.list_log_stores(A, project="p", page_size=3, page_token=token)
        seen += [s.name for s in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"s{i}" for i in range(7)]
    first = svc.list_log_stores(A, project="p", page_size=3)
    bad = first.next_page_token[:-2] + ("AA" if not first.next_page_token.endswith("AA") else "BB")
    for tok in (bad, "garbage", "a.b", "x" * 5000):
        with pytest.raises(InvalidArgument) as e:
            svc.list_log_stores(A, project="p", page_size=3, page_token=tok)
        assert fields(e.value) == {"page_token"}
    with pytest.raises(InvalidArgument):  # another account cannot use it
        svc.list_log_stores(B, project="p", page_size=3, page_token=first.next_page_token)
    with pytest.raises(InvalidArgument):  # nor with other filters
        svc.list_log_stores(A, project="q", page_size=3, page_token=first.next_page_token)
    with pytest.raises(InvalidArgument):
        svc.list_log_stores(A, page_size=-1)


def test_log_store_rules(svc):
    with pytest.raises(InvalidArgument) as e:
        svc.create_log_store(A, LogStore("bj", "p", "s", retention_days=3651))
    assert fields(e.value) == {"log_store.retention_days"}
    assert svc.create_log_store(A, LogStore("bj", "p", "s", retention_days=3650)).retention_days == 3650
    with pytest.raises(AlreadyExists):
        svc.create_log_store(A, LogStore("bj", "p", "s"))
    up = svc.update_log_store(A, LogStore("bj", "p", "s", retention_days=30), ["retention_days"])
    assert up.retention_days == 30
    with pytest.raises(InvalidArgument):
        svc.create_log_store(A, LogStore("bj", "1p", "s"))


def test_register_resource_validation(svc):
    with pytest.raises(InvalidArgument) as e:
        svc.register_resource(A, Resource("", ResourceType.EIP, "bj", "vpc-x", "n", ("10.0.0.1/8", "nope")))
    assert fields(e.value) == {"resource.addresses[0]", "resource.addresses[1]"}
    assert "10.0.0.0/8" in e.value.message
    r = svc.register_resource(A, Resource("", ResourceType.CSN, "bj", "csn-x", "n", ("10.9.0.0/16",)))
    assert r.id.startswith("csn-")
    with pytest.raises(AlreadyExists):
        svc.register_resource(A, Resource("eip-bj-01", ResourceType.EIP, "bj", "vpc-x", "n", ("1.2.3.4",)))
