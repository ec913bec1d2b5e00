"""`wecom-bot sync` against the sandbox: create, idempotent re-run, repair, recreate."""

from sqlalchemy import select

from bot.config import Store as StoreConfig
from bot.db.models import Store


def ways_by_state(backend, kind):
    ways = backend.contact_ways if kind == "contact" else backend.join_ways
    return {w["state"]: w for w in ways.values()}


def test_sync_creates_clerk_and_group_qr_per_store(harness):
    report = harness.sync()
    assert not report.failed and len(report.changed) == 2
    contact = ways_by_state(harness.backend, "contact")
    assert contact["SZ001"]["type"] == 1 and contact["SZ001"]["user"] == ["zhangsan"]
    assert contact["SZ002"]["type"] == 2 and sorted(contact["SZ002"]["user"]) == ["lisi", "wangwu"]
    join = ways_by_state(harness.backend, "join")
    for code in ("SZ001", "SZ002"):
        assert join[code]["auto_create_room"] == 1 and join[code]["scene"] == 2
        assert set(join[code]["chat_id_list"]) <= set(harness.groups[code]) and len(join[code]["chat_id_list"]) <= 5
    assert join["SZ001"]["room_base_name"] == "深圳科技园店"
    with harness.c.sessions() as s:
        stores = {st.code: st for st in s.scalars(select(Store))}
    assert stores["SZ001"].join_way_qr_code == join["SZ001"]["qr_code"]


def test_second_sync_changes_nothing(harness):
    harness.sync()
    writes = len(harness.backend.writes)
    report = harness.sync()
    assert report.changed == [] and not report.failed
    assert len(harness.backend.writes) == writes


def test_configs_deleted_at_wecom_are_recreated(harness):
    harness.sync()
    harness.backend.join_ways.clear()
    harness.backend.contact_ways.clear()
    report = harness.sync()
    changes = {c for r in report.results for c in r.changes}
    assert changes == {"join way gone at WeCom: recreated", "contact way gone at WeCom: recreated"}
    assert set(ways_by_state(harness.backend, "join")) == {"SZ001", "SZ002"}


def test_full_groups_are_swapped_for_groups_with_room(harness):
    h = harness
    h.sync()
    full = ways_by_state(h.backend, "join")["SZ002"]["chat_id_list"][0]
    h.backend.fill_group(full, 200)
    report = h.sync()
    assert "join way repaired" in report.results[[r.code for r in report.results].index("SZ002")].changes
    assert full not in ways_by_state(h.backend, "join")["SZ002"]["chat_id_list"]


def test_clerk_change_repairs_the_contact_way(harness):
    h = harness
    h.sync()
    h.backend.add_clerk("zhaoliu")
    h.backend.create_group("zhaoliu", "新群")
    h.cfg.stores[1] = StoreConfig(code="SZ002", name="深圳海岸城店", clerks=["lisi", "zhaoliu"])
    report = h.sync()
    assert any("contact way repaired" in r.changes for r in report.results)
    assert sorted(ways_by_state(h.backend, "contact")["SZ002"]["user"]) == ["lisi", "zhaoliu"]


def test_store_whose_clerks_have_no_groups_is_a_clear_error(harness):
    h = harness
    h.backend.add_clerk("newbie")
    report = h.c.provisioner().sync([StoreConfig(code="NEW01", name="新店", clerks=["newbie"])])
    (r,) = report.results
    assert "no customer groups owned by newbie" in r.error


def test_many_stores_report_progress(harness):
    h = harness
    stores = []
    for i in range(120):
        clerk = f"clerk{i}"
        h.backend.add_clerk(clerk)
        h.backend.create_group(clerk, f"店{i}群", members=10)
        stores.append(StoreConfig(code=f"S{i:04d}", name=f"门店{i}", clerks=[clerk]))
    seen = []
    report = h.c.provisioner().sync(stores, concurrency=8, progress=lambda n, t, r: seen.append((n, t)))
    assert not report.failed and len(report.results) == 120
    assert seen[-1] == (120, 120) and [n for n, _ in seen] == list(range(1, 121))
