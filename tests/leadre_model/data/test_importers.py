"""Data importers: the generic CSV format, the Taobao sample and Amazon Toys loaders.

Bad rows must come back as exact ``file:line: reason`` and leave no output behind; the real
data sets must load with the counts their README states."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest

from leadre_model.data.amazon import load_amazon
from leadre_model.data.errors import DataValidationError
from leadre_model.data.importer import import_world
from leadre_model.data.records import Action, AdStatus, Domain
from leadre_model.data.store import iter_records, read_manifest, read_table
from leadre_model.data.taobao import load_taobao, merge_window

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
TAOBAO = DATA / "taobao-ad-sample"
AMAZON = DATA / "amazon-toys"
needs_taobao = pytest.mark.skipif(not TAOBAO.is_dir(), reason="shared Taobao sample not present")
needs_amazon = pytest.mark.skipif(not AMAZON.is_dir(), reason="shared Amazon Toys data not present")

ITEMS = """\
item_id,name,domain,product_type,category_l1,category_l2,attributes,advertiser_id,ecpm,bid,status,spu
ad1,Red running shoes,ad,shoes,sports,running,red|light,adv1,12.5,1.2,active,
ad2,Blue kettle,,,home,,,,,,paused,
c1,How to brew green tea,content,,food,,,,,,,spu9
"""
INTERACTIONS = """\
user,item,timestamp,action,domain
u1,ad1,10,impression,ad
u1,ad1,11,,
u1,c1,12,read,content
u2,ad2,2024-01-02T03:04:05Z,click,ad
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def errors_of(exc: pytest.ExceptionInfo[DataValidationError]) -> list[str]:
    return [str(e) for e in exc.value.errors]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob("**/*.parquet"))
    assert not list(out.parent.glob(".*staging*"))


# ---------------------------------------------------------------- generic import format


def test_generic_import_round_trip(tmp_path):
    items = write(tmp_path / "items.csv", ITEMS)
    inter = write(tmp_path / "inter.csv", INTERACTIONS)
    users = write(
        tmp_path / "users.csv",
        "user_id,age,gender,consumption_level,arpu\nu1,31,female,high,12.5\n",
    )
    out = tmp_path / "world"
    manifest = import_world(items, inter, users, out)

    assert manifest["counts"] == {"ads": 2, "content": 1, "users": 2, "behaviors": 4}
    assert read_manifest(out)["counts"] == manifest["counts"]
    assert manifest["inputs"]["items"] == str(items.resolve())
    ads = {a.ad_id: a for a in iter_records(out, "ads")}
    assert ads["ad1"].attributes == ["red", "light"] and ads["ad1"].category_l2 == "running"
    assert ads["ad1"].ecpm == 12.5 and ads["ad1"].bid == 1.2 and ads["ad1"].product_type == "shoes"
    # documented defaults: advertiser = item id, product type / l2 / ecpm / bid defaults
    ad2 = ads["ad2"]
    assert (
        ad2.advertiser_id,
        ad2.product_type,
        ad2.category_l2,
        ad2.ecpm,
        ad2.bid,
        ad2.status,
    ) == ("ad2", "unknown", "home", 0.0, 0.0, AdStatus.PAUSED)
    [content] = iter_records(out, "content")
    assert (content.content_id, content.title, content.category, content.spu) == (
        "c1",
        "How to brew green tea",
        "food",
        "spu9",
    )
    profiles = {u.user_id: u for u in iter_records(out, "users")}
    assert profiles["u1"].age == 31 and profiles["u1"].arpu == 12.5
    assert profiles["u2"].age is None  # only in interactions: empty profile
    behaviours = list(iter_records(out, "behaviors"))
    assert [(b.user_id, b.item_id, b.ts, b.action, b.domain) for b in behaviours] == [
        ("u1", "ad1", 10, Action.IMPRESSION, Domain.AD),
        ("u1", "ad1", 11, Action.CLICK, Domain.AD),
        ("u1", "c1", 12, Action.READ, Domain.CONTENT),
        ("u2", "ad2", 1704164645, Action.CLICK, Domain.AD),
    ]
    assert not list(tmp_path.glob(".*staging*"))


def test_headerless_interactions_and_minimal_items(tmp_path):
    items = write(tmp_path / "items.csv", "item_id,name\nx1,Thing one\nx2,Thing two\n")
    inter = write(tmp_path / "inter.csv", "a,x1,0\na,x2,1,impression\nb,x2,0,click,ad\n")
    manifest = import_world(items, inter, None, tmp_path / "w")
    assert manifest["counts"]["behaviors"] == 3 and manifest["counts"]["users"] == 2
    ad = next(iter_records(tmp_path / "w", "ads"))
    assert (ad.category_l1, ad.category_l2, ad.advertiser_id, ad.attributes) == (
        "unknown",
        "unknown",
        "x1",
        [],
    )


def test_bad_rows_are_reported_by_file_and_line_and_nothing_is_written(tmp_path):
    items = write(
        tmp_path / "items.csv", "item_id,name,ecpm\nad1,Shoes,1.0\nad2,Kettle,-3\nad3,Tea,2\n"
    )
    inter = write(
        tmp_path / "inter.csv",
        "user,item,ts,action\n"
        "u1,ad1,1,click\n"  # line 2: fine
        "u1,nope,2,click\n"  # line 3: unknown item
        "u1,ad3,3,watch\n"  # line 4: unknown action
        "u2,ad2,4,click\n"  # line 5: item whose own row is bad
        "u2,ad1,-1,click\n",
    )  # line 6: negative ts
    users = write(tmp_path / "users.csv", "user_id,age\nu1,thirty\nu1,30\n")
    out = tmp_path / "runs" / "deep" / "world"  # parents do not exist yet
    with pytest.raises(DataValidationError) as exc:
        import_world(items, inter, users, out)
    reported = errors_of(exc)
    assert reported[0] == f"{items}:3: ecpm: Input should be greater than or equal to 0"
    assert f"{inter}:3: item 'nope' is not in items.csv" in reported
    assert any(r.startswith(f"{inter}:4: action: Input should be") for r in reported)
    assert f"{inter}:5: item 'ad2' has a bad row in items.csv (line 3)" in reported
    assert any(
        r.startswith(f"{inter}:6: ts: Input should be greater than or equal to 0") for r in reported
    )
    assert any(r.startswith(f"{users}:2: age:") for r in reported)
    assert len(reported) == 6 and exc.value.total == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inter.csv", "items.csv", "users.csv"]


def test_a_failed_import_leaves_an_existing_world_untouched(tmp_path):
    items = write(tmp_path / "items.csv", "item_id,name\nx1,Thing\n")
    good = write(tmp_path / "good.csv", "u,x1,0\n")
    out = tmp_path / "world"
    import_world(items, good, None, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write(tmp_path / "bad.csv", "u,x1,0\nu,x1\n")
    with pytest.raises(DataValidationError, match=r"bad\.csv:2: expected 3 to 5 cells"):
        import_world(items, bad, None, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("items_text", "expected"),
    [
        ("", "items.csv:1: empty file"),
        ("item_id,title\nx,y\n", "items.csv:1: unknown column 'title'"),
        ("item_id,name\nx,y,z\n", "items.csv:2: expected 2 cells"),
        ("item_id,name\nx,y\nx,z\n", "items.csv:3: duplicate item_id 'x' (first on line 2)"),
        ("item_id,name\nbad id!,y\n", "items.csv:2: item_id: String should match pattern"),
        (
            "item_id,name,domain,ecpm\nc,y,content,3\n",
            "items.csv:2: column(s) ecpm apply only to ads",
        ),
        (
            "item_id,name,status\nx,y,gone\n",
            "items.csv:2: status: Input should be 'active' or 'paused'",
        ),
    ],
)
def test_items_file_problems(tmp_path, items_text, expected):
    items = write(tmp_path / "items.csv", items_text)
    inter = write(tmp_path / "inter.csv", "u,x,0\n")
    with pytest.raises(DataValidationError) as exc:
        import_world(items, inter, None, tmp_path / "w")
    assert any(r.startswith(f"{tmp_path}/{expected}") for r in errors_of(exc)), errors_of(exc)
    assert_nothing_written(tmp_path / "w")


def test_interaction_domain_must_match_the_item(tmp_path):
    items = write(tmp_path / "items.csv", "item_id,name,domain\nc1,Article,content\n")
    inter = write(tmp_path / "inter.csv", "u,c1,0,play,content\nu,c1,1,click,ad\nu,c1,2,play,ad\n")
    with pytest.raises(DataValidationError) as exc:
        import_world(items, inter, None, tmp_path / "w")
    reported = errors_of(exc)
    assert reported[0] == f"{inter}:2: item 'c1' is a content item in items.csv, not ad"
    assert reported[1].startswith(
        f"{inter}:3: row: Value error, action 'play' is not valid in the ad domain"
    )


# ---------------------------------------------------------------- Taobao sample


def test_merge_window_appends_only_the_new_tail():
    assert merge_window([], [1, 2, 3]) == ([1, 2, 3], True)
    assert merge_window([1, 2, 3, 4], [3, 4, 5, 6]) == ([5, 6], True)
    assert merge_window([1, 2, 3], [1, 2, 3]) == ([], True)
    assert merge_window([1, 2], [7, 8]) == ([7, 8], False)


@needs_taobao
def test_taobao_sample_loads_with_the_readme_counts(tmp_path):
    out = tmp_path / "taobao"
    manifest = load_taobao(TAOBAO, out)
    assert manifest["counts"] == {"ads": 297, "content": 4140, "users": 230, "behaviors": 13027}
    assert manifest["advertisers"] == 289
    assert manifest["conflicts"] == {"users": 0, "ads": 0}
    ads = read_table(out, "ads")
    assert len(set(ads["category_l1"].to_pylist())) == 137
    assert len(set(ads["advertiser_id"].to_pylist())) == 289
    beh = read_table(out, "behaviors")
    ad_beh = beh.filter(pc.equal(beh["domain"], "ad"))
    assert pc.sum(pc.equal(ad_beh["action"], "impression")).as_py() == 500  # one per row
    assert pc.sum(pc.equal(ad_beh["action"], "click")).as_py() == 210  # label 1

    # first row: user 1000043 saw ad 328301 (not clicked) after 50 shopping behaviours
    u = beh.filter(pc.equal(beh["user_id"], "u1000043")).to_pylist()
    assert [r["ts"] for r in u] == list(range(len(u)))
    assert all(r["domain"] == "content" for r in u[:50])
    assert u[0]["item_id"] == "c8998_b211122" and u[0]["action"] == "read"
    assert u[50] == {
        "user_id": "u1000043",
        "ts": 50,
        "domain": "ad",
        "action": "impression",
        "item_id": "ad328301",
    }
    ad = next(a for a in iter_records(out, "ads") if a.ad_id == "ad328301")
    assert (ad.category_l1, ad.advertiser_id, ad.attributes) == (
        "cate_6410",
        "adv206117",
        ["campaign_233148", "brand_121422"],
    )
    assert ad.ecpm == ad.bid == pytest.approx(0.98971260954681)
    user = next(p for p in iter_records(out, "users") if p.user_id == "u1000043")
    assert (
        user.gender,
        user.education,
        user.consumption_level,
        user.residence,
        user.occupation,
    ) == ("female", "age_level_4", "pvalue_1;shopping_2", "city_level_4", "other")


@needs_taobao
def test_taobao_corrupted_copy_reports_file_and_line(tmp_path):
    bad = tmp_path / "alimama_sampled_train.txt"
    lines = (TAOBAO / "alimama_sampled_train.txt").read_text().splitlines(keepends=True)
    lines[6] = ",".join(lines[6].split(",")[:100]) + "\n"  # line 7 truncated
    lines[9] = lines[9].replace(",", ",x", 1)  # line 10: a non-integer in column 1
    bad.write_text("".join(lines))
    out = tmp_path / "w"
    with pytest.raises(DataValidationError) as exc:
        load_taobao(tmp_path, out)
    assert errors_of(exc) == [
        f"{bad}:7: expected 267 comma-separated columns, got 100",
        f"{bad}:10: column 1: 'x1' is not an integer",
    ]
    assert_nothing_written(out)


# ---------------------------------------------------------------- Amazon Toys


@needs_amazon
def test_amazon_toys_loads_with_the_readme_counts_and_order(tmp_path):
    out = tmp_path / "amazon"
    manifest = load_amazon(AMAZON, out)
    assert manifest["counts"] == {"ads": 11924, "content": 0, "users": 19412, "behaviors": 167597}
    beh = read_table(out, "behaviors")
    assert set(beh["domain"].to_pylist()) == {"ad"} and set(beh["action"].to_pylist()) == {"click"}
    first = (AMAZON / "sequences.txt").read_text().split("\n", 1)[0].split()
    rows = beh.filter(pc.equal(beh["user_id"], first[0])).to_pylist()
    assert [r["item_id"] for r in rows] == first[1:]
    assert [r["ts"] for r in rows] == list(range(len(first) - 1))
    # attribute ids: brand first, then categories below the shared root
    ad = next(a for a in iter_records(out, "ads") if a.ad_id == "B009NFFYWM")
    assert (ad.name, ad.category_l1, ad.category_l2, ad.attributes, ad.advertiser_id) == (
        "thomas wooden railway battery operated th",
        "cat_12",
        "cat_128",
        ["cat_203"],
        "brand_63",
    )
    assert manifest["category_root_dropped"] == "cat_2"


@needs_amazon
def test_amazon_missing_item_and_bad_json_are_reported(tmp_path):
    src = tmp_path / "amazon"
    src.mkdir()
    for name in ("item_text.txt", "item_attributes.json"):
        shutil.copy(AMAZON / name, src / name)
    seqs = (AMAZON / "sequences.txt").read_text().splitlines(keepends=True)[:5]
    seqs[3] = seqs[3].rstrip("\n") + " B0NOTANITEM\n"
    (src / "sequences.txt").write_text("".join(seqs))
    with pytest.raises(DataValidationError) as exc:
        load_amazon(src, tmp_path / "w")
    assert errors_of(exc) == [
        f"{src / 'sequences.txt'}:4: item(s) not in item_text.txt: B0NOTANITEM"
    ]

    (src / "item_attributes.json").write_text('{"A": [1, 2],\n "B": [1, 2,]}')
    with pytest.raises(DataValidationError, match=r"item_attributes\.json:2: invalid JSON"):
        load_amazon(src, tmp_path / "w")
    (src / "item_attributes.json").write_text('{"A": [1, 2],\n "B": "x"}')
    with pytest.raises(
        DataValidationError, match=r"item_attributes\.json:2: item 'B': attributes must"
    ):
        load_amazon(src, tmp_path / "w")
    assert_nothing_written(tmp_path / "w")
