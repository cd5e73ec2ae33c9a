"""Catalog import: seed_catalog.py and shop.import_catalog on real files."""

import copy
import html
import json
import os
import re
import subprocess
import sys

import pytest

import shop
from conftest import ADMIN_PASSWORD, HOSTILE, HOSTILE_IMAGES, ROOT, png, write_catalog
from harness import AdminClient


def run_seed(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k not in shop.ENV_VARS}
    env["SHOP_DB"] = str(tmp_path / "shop.db")
    return subprocess.run(
        [sys.executable, str(ROOT / "seed_catalog.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def table_counts(conn):
    return {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("cities", "districts", "products", "stock_units")
    }


def media_files(tmp_path):
    return (
        sorted(p.relative_to(tmp_path) for p in (tmp_path / "media").rglob("*") if p.is_file())
        if (tmp_path / "media").exists()
        else []
    )


def test_hostile_names_import_exactly_and_idempotently(tmp_path, hostile_catalog):
    r = run_seed(tmp_path, str(hostile_catalog))
    assert r.returncode == 0, r.stderr
    assert "units added 6" in r.stdout
    conn = shop.connect(str(tmp_path / "shop.db"))
    assert [r[0] for r in conn.execute("SELECT name FROM cities ORDER BY id")] == [
        "Łódź <Centrum>",
        "Berlin",
        "Empty town",
    ]
    assert [r[0] for r in conn.execute("SELECT name FROM products ORDER BY id")] == [
        "gift_card *25*",
        "Kaffee «Grün» 250g",
        "Плакат A2",
        "Sold-out e-book",
    ]
    assert (
        conn.execute("SELECT price_cents FROM products WHERE name = 'Плакат A2'").fetchone()[0]
        == 950
    )
    assert (
        conn.execute("SELECT content FROM stock_units WHERE content LIKE 'CODE-<%'").fetchone()[0]
        == "CODE-<1>&_*"
    )
    photo = conn.execute("SELECT photo FROM products WHERE name = 'gift_card *25*'").fetchone()[0]
    media = conn.execute("SELECT media FROM stock_units WHERE media IS NOT NULL").fetchone()[0]
    assert (tmp_path / "media" / "public" / photo).read_bytes() == (
        hostile_catalog.parent / "img/gift.png"
    ).read_bytes()
    assert (tmp_path / "media" / "private" / media).read_bytes() == (
        hostile_catalog.parent / "img/locker.png"
    ).read_bytes()
    before, files = table_counts(conn), media_files(tmp_path)

    again = run_seed(tmp_path, str(hostile_catalog))
    assert again.returncode == 0, again.stderr
    assert "units added 0" in again.stdout and "units present 6" in again.stdout
    assert "products updated 0" in again.stdout
    assert table_counts(conn) == before
    assert media_files(tmp_path) == files


def test_a_unit_listed_twice_is_added_once_and_counted(tmp_path, conn):
    data = {
        "cities": [{"name": "Berlin", "districts": ["Mitte"]}],
        "products": [
            {
                "name": "E-book",
                "price": "7.50",
                "stock": [
                    {"city": "Berlin", "district": "Mitte", "content": "https://example.com/dl/1"}
                ]
                * 3,
            }
        ],
    }
    path = write_catalog(tmp_path, data)
    counts = shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, tmp_path / "media")
    assert (counts["units_added"], counts["units_repeated"], counts["units_present"]) == (1, 2, 0)


def test_reimport_updates_products_but_never_re_adds_sold_codes(tmp_path, conn):
    folder = tmp_path / "c"
    folder.mkdir()
    data = {
        "cities": [{"name": "Berlin", "districts": ["Mitte"]}],
        "products": [
            {
                "name": "Gift card",
                "price": "25.00",
                "stock": [{"city": "Berlin", "district": "Mitte", "content": "CODE-1"}],
            }
        ],
    }
    path = write_catalog(folder, data)
    media = tmp_path / "media"
    shop.import_catalog(conn, shop.read_catalog_file(path), folder, media)
    shop.touch_user(conn, {"id": 1, "first_name": "A"})
    shop.adjust_balance(conn, 1, 2500, "test")
    shop.buy_with_balance(conn, 1, [(1, 1, 1)])  # CODE-1 is sold and delivered
    data["products"][0]["price"] = "27.50"
    data["products"][0]["description"] = "New text"
    data["products"][0]["stock"].append(
        {"city": "Berlin", "district": "Mitte", "content": "CODE-2"}
    )
    path = write_catalog(folder, data)
    counts = shop.import_catalog(conn, shop.read_catalog_file(path), folder, media)
    assert (
        counts["products_updated"] == 1
        and counts["units_added"] == 1
        and counts["units_present"] == 1
    )
    assert conn.execute("SELECT price_cents, description FROM products").fetchone()[:] == (
        2750,
        "New text",
    )


@pytest.fixture
def conn(tmp_path):
    c = shop.init_db(str(tmp_path / "shop.db"))
    yield c
    c.close()


def broken(mutate):
    data = copy.deepcopy(HOSTILE)
    mutate(data)
    return data


BAD = {
    "price is negative": (lambda d: d["products"][0].update(price="-5.00"), "products[0].price"),
    "price has 3 decimals": (lambda d: d["products"][2].update(price=9.999), "products[2].price"),
    "price missing": (lambda d: d["products"][1].pop("price"), "products[1].price"),
    "content missing": (
        lambda d: d["products"][0]["stock"][0].pop("content"),
        "products[0].stock[0].content: The content is missing",
    ),
    "price is a word": (lambda d: d["products"][1].update(price="cheap"), "products[1].price"),
    "empty product name": (lambda d: d["products"][3].update(name="  "), "products[3].name"),
    "name too long": (lambda d: d["products"][3].update(name="x" * 65), "products[3].name"),
    "duplicate product": (lambda d: d["products"].append(dict(d["products"][0])), "products[4]"),
    "unknown district": (
        lambda d: d["products"][0]["stock"][1].update(district="Atlantis"),
        "products[0].stock[1].district: 'Atlantis' is not a district",
    ),
    "unknown city": (
        lambda d: d["products"][1]["stock"][0].update(city="Paris"),
        "products[1].stock[0]",
    ),
    "empty content": (
        lambda d: d["products"][0]["stock"][2].update(content=""),
        "products[0].stock[2].content",
    ),
    "missing photo file": (
        lambda d: d["products"][0].update(photo="img/nope.jpg"),
        "products[0].photo",
    ),
    "photo is not an image": (
        lambda d: d["products"][1].update(photo="catalog.json"),
        "products[1].photo",
    ),
    "media not a string": (
        lambda d: d["products"][1]["stock"][0].update(media=5),
        "products[1].stock[0].media",
    ),
    "stock not a list": (
        lambda d: d["products"][2].update(stock={"city": "x"}),
        "products[2].stock",
    ),
    "unknown key": (lambda d: d["products"][0].update(colour="red"), "products[0]"),
    "city without name": (lambda d: d["cities"].append({"districts": []}), "cities[3].name"),
    "districts not a list": (
        lambda d: d["cities"][0].update(districts="Mitte"),
        "cities[0].districts",
    ),
    "control character": (lambda d: d["cities"][1].update(name="Ber\x00lin"), "cities[1].name"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_entry_is_named_and_nothing_is_imported(tmp_path, case):
    mutate, where = BAD[case]
    folder = tmp_path / "catalog"
    folder.mkdir()
    path = write_catalog(folder, broken(mutate), HOSTILE_IMAGES)
    r = run_seed(tmp_path, str(path))
    assert r.returncode == 1, r.stdout
    assert "nothing imported" in r.stderr and where in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    conn = shop.connect(str(tmp_path / "shop.db"))
    assert table_counts(conn) == dict.fromkeys(
        ("cities", "districts", "products", "stock_units"), 0
    )
    assert media_files(tmp_path) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'{"cities": [], "products": [{"name": "x", "price": NaN}]}', "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_garbage_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "garbage.json"
    path.write_bytes(content)
    r = run_seed(tmp_path, str(path))
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_missing_file_is_refused_clearly(tmp_path):
    r = run_seed(tmp_path, str(tmp_path / "nope.json"))
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_the_demo_catalog_loads_with_photos(tmp_path):
    r = run_seed(tmp_path)
    assert r.returncode == 0, r.stderr
    conn = shop.connect(str(tmp_path / "shop.db"))
    assert {r[0] for r in conn.execute("SELECT name FROM cities")} == {"Berlin", "Lisbon", "Kraków"}
    assert conn.execute("SELECT count(*) FROM products WHERE photo IS NOT NULL").fetchone()[0] == 5
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE media IS NOT NULL").fetchone()[0] == 4
    )
    for (name,) in conn.execute("SELECT media FROM stock_units WHERE media IS NOT NULL"):
        assert shop.image_kind((tmp_path / "media" / "private" / name).read_bytes()) == "png"
    assert run_seed(tmp_path).returncode == 0
    assert conn.execute("SELECT count(*) FROM stock_units").fetchone()[0] == 21


def test_an_oversized_image_is_refused(tmp_path, conn):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "big.png").write_bytes(png() + b"\0" * (shop.MAX_IMAGE_BYTES + 1))
    data = {"cities": [], "products": [{"name": "P", "price": "1.00", "photo": "big.png"}]}
    path = folder / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(shop.CatalogError, match="larger than 10 MB"):
        shop.import_catalog(conn, shop.read_catalog_file(path), folder, tmp_path / "media")


# Every problem in one run, each once, where it is, in file order (issue 13, point 2)

# A file with problems of every kind: parts that are not what they must be (a city and a product
# that are not objects, a "stock" that is not a list), names missing (twice, so a check for
# duplicates could say "None is listed twice"), a product listed twice, prices that are not
# amounts, an unknown city and district, a missing photo, a unit without content.
EVERY_KIND = {
    "cities": [
        {"name": "Berlin", "districts": ["Mitte", "Kreuzberg"]},
        "Lisbon",
        {"districts": ["Baixa"]},
        {"districts": []},
    ],
    "products": [
        {
            "name": "Gift card",
            "price": "25.00",
            "stock": [{"city": "Berlin", "district": "Mitte", "content": "GC-1"}],
        },
        ["not", "a", "product"],
        {"price": "5.00"},
        {
            "name": "Corner Café voucher",
            "price": "abc",
            "photo": "img/nope.jpg",
            "stock": [
                {"city": "Paris", "district": "Louvre", "content": "CAFE-1"},
                {"city": "Berlin", "district": "Atlantis", "content": "CAFE-2"},
                {"city": "Berlin", "district": "Mitte"},
            ],
        },
        {"description": "No name, no price"},
        {"name": "Gift card", "price": "1.234,50", "stock": "GC-2"},
    ],
}
CAFE = " (product 'Corner Café voucher')"
EVERY_KIND_PROBLEMS = [
    'cities[1]: must be an object with "name" and "districts"',
    "cities[2].name: The city name is missing",
    "cities[3].name: The city name is missing",
    'products[1]: must be an object with "name", "price" and "stock"',
    "products[2].name: The product name is missing",
    "products[3].price: 'abc' is not an amount in EUR; write it like \"25.00\"" + CAFE,
    "products[3].photo: cannot read img/nope.jpg: No such file or directory" + CAFE,
    "products[3].stock[0].city: unknown city 'Paris'; add it under \"cities\"" + CAFE,
    "products[3].stock[1].district: 'Atlantis' is not a district of 'Berlin': an unknown "
    'district; add it to the city\'s "districts"' + CAFE,
    "products[3].stock[2].content: The content is missing" + CAFE,
    "products[4].name: The product name is missing",
    'products[4].price: the price is missing; write it like "25.00"',
    "products[5]: listed twice, first as products[0] (product 'Gift card')",
    "products[5].price: '1.234,50' has a thousands separator or more than 2 decimals; "
    "write it like \"1234.50\" (product 'Gift card')",
    "products[5].stock: must be a list of units (product 'Gift card')",
]


def test_one_run_lists_every_problem_once_where_it_is_in_file_order(tmp_path):
    path = write_catalog(tmp_path, EVERY_KIND)
    r = run_seed(tmp_path, str(path))
    assert r.returncode == 1, r.stdout
    lines = r.stderr.splitlines()
    assert lines[0] == f"seed_catalog.py: nothing imported; {path} has 15 problems:"
    assert lines[1:] == EVERY_KIND_PROBLEMS
    assert "None" not in r.stderr and "Traceback" not in r.stderr
    conn = shop.connect(str(tmp_path / "shop.db"))
    assert set(table_counts(conn).values()) == {0}


@pytest.fixture
def admin(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    a = AdminClient(s.url, ADMIN_PASSWORD, shop=s)
    assert a.login().status_code == 303
    return a


def test_the_admin_import_lists_the_same_problems(admin):
    upload = json.dumps(EVERY_KIND, ensure_ascii=False).encode()
    r = admin.post("/admin/import", files={"file": ("c.json", upload, "application/json")})
    assert r.status_code == 200 and "nothing was imported" in r.text
    shown = re.search(r'<ul class="errors">(.*?)</ul>', r.text, re.S).group(1)
    assert [html.unescape(e) for e in re.findall(r"<li>(.*?)</li>", shown)] == EVERY_KIND_PROBLEMS


def test_more_than_twenty_problems_are_all_listed(tmp_path):
    data = {"cities": [], "products": [{"name": f"P{i}", "price": "x"} for i in range(25)]}
    r = run_seed(tmp_path, str(write_catalog(tmp_path, data)))
    assert r.returncode == 1
    assert "has 25 problems:" in r.stderr and "... and" not in r.stderr
    assert [line.split(":")[0] for line in r.stderr.splitlines()[1:]] == [
        f"products[{i}].price" for i in range(25)
    ]


def test_a_missing_products_list_is_reported_with_the_other_problems(tmp_path, conn):
    data = {
        "cities": [{"name": "Berlin", "districts": ["Mitte", 5]}],
        "product": [{"name": "Gift card", "price": "25.00"}],
    }
    path = write_catalog(tmp_path, data)
    with pytest.raises(shop.CatalogError) as e:
        shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, tmp_path / "media")
    assert e.value.errors == [
        "catalog: unknown keys ['product'] (expected cities, products)",
        "cities[0].districts[1]: The district name must be text (city 'Berlin')",
        'products: the list of products is missing (write "products": [] for none)',
    ]


def test_problems_come_in_file_order_whatever_the_order_of_its_parts(tmp_path, conn):
    data = {
        "products": [
            {
                "stock": [{"city": "Berlin", "district": "Wedding", "content": "X"}],
                "price": "0",
                "name": "Gift card",
            }
        ],
        "cities": [{"name": "Berlin", "districts": ["Mitte", "Mitte"]}],
    }
    path = write_catalog(tmp_path, data)
    with pytest.raises(shop.CatalogError) as e:
        shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, tmp_path / "media")
    assert e.value.errors == [
        "products[0].stock[0].district: 'Wedding' is not a district of 'Berlin': an unknown "
        "district; add it to the city's \"districts\" (product 'Gift card')",
        "products[0].price: must be at least 0.01 EUR, got '0' (product 'Gift card')",
        "cities[0].districts[1]: district 'Mitte' is listed twice (city 'Berlin')",
    ]


def test_stock_may_name_the_shops_places_and_an_unknown_city_comes_with_the_rest(tmp_path, conn):
    first = {"cities": [{"name": "Kraków", "districts": ["Kazimierz"]}], "products": []}
    media = tmp_path / "media"
    shop.import_catalog(conn, first, tmp_path, media)
    data = {
        "products": [
            {
                "name": "Poster",
                "price": "19",
                "stock": [
                    {"city": "Kraków", "district": "Kazimierz", "content": "P-1"},
                    {"city": "Kraków", "district": "Podgórze", "content": "P-2"},
                    {"city": "Paris", "district": "Louvre", "content": "P-3"},
                ],
            },
            {"name": "Voucher", "price": "ten"},
        ]
    }
    path = write_catalog(tmp_path, data)
    with pytest.raises(shop.CatalogError) as e:
        shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, media)
    assert e.value.errors == [
        "products[0].stock[1].district: 'Podgórze' is not a district of 'Kraków': an unknown "
        "district; add it to the city's \"districts\" (product 'Poster')",
        "products[0].stock[2].city: unknown city 'Paris'; add it under \"cities\" "
        "(product 'Poster')",
        "products[1].price: 'ten' is not an amount in EUR; write it like \"25.00\" "
        "(product 'Voucher')",
    ]
    del data["products"][0]["stock"][1:]
    data["products"][1]["price"] = "10"
    path = write_catalog(tmp_path, data)
    counts = shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, media)
    assert (counts["cities_added"], counts["units_added"]) == (0, 1)


def test_prices_are_read_exactly_and_a_decimal_comma_on_purpose(tmp_path, conn):
    prices = ['"25,00"', '"25,5"', '"25.50"', '"€7.50"', "1E+3", "12.900", "7"]
    products = ", ".join(f'{{"name": "P{i}", "price": {p}}}' for i, p in enumerate(prices))
    path = tmp_path / "catalog.json"
    path.write_text(f'{{"cities": [], "products": [{products}]}}', encoding="utf-8")
    shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, tmp_path / "media")
    assert [r[0] for r in conn.execute("SELECT price_cents FROM products ORDER BY id")] == [
        2500,
        2550,
        2550,
        750,
        100000,
        1290,
        700,
    ]


@pytest.mark.parametrize(
    "price, problem",
    [
        ("1.234,50", 'has a thousands separator or more than 2 decimals; write it like "1234.50"'),
        ("1,234.50", 'has a thousands separator or more than 2 decimals; write it like "1234.50"'),
        ("1,234", 'has a thousands separator or more than 2 decimals; write it like "1234.50"'),
        ("25.000", 'has a thousands separator or more than 2 decimals; write it like "1234.50"'),
        ("1 234", 'has a thousands separator or more than 2 decimals; write it like "1234.50"'),
        ("abc", 'is not an amount in EUR; write it like "25.00"'),
        ("25.00 USD", 'is not an amount in EUR; write it like "25.00"'),
    ],
)
def test_a_price_that_could_be_misread_is_refused_saying_how_to_write_it(tmp_path, price, problem):
    data = {"cities": [], "products": [{"name": "Gift card", "price": price}]}
    path = write_catalog(tmp_path, data)
    r = run_seed(tmp_path, str(path))
    assert r.returncode == 1
    assert r.stderr.splitlines()[1:] == [
        f"products[0].price: {price!r} {problem} (product 'Gift card')"
    ]


def test_the_admin_import_lists_more_than_fifty_problems_with_their_count(admin):
    data = {"cities": [], "products": [{"name": f"P{i}", "price": "x"} for i in range(60)]}
    upload = json.dumps(data).encode()
    r = admin.post("/admin/import", files={"file": ("c.json", upload, "application/json")})
    assert r.status_code == 200 and "The file has 60 problems; nothing was imported" in r.text
    shown = re.search(r'<ul class="errors">(.*?)</ul>', r.text, re.S).group(1)
    assert len(re.findall(r"<li>", shown)) == 60


# Names and descriptions per language


def per_language_catalog():
    return {
        "cities": [{"name": "Berlin", "districts": ["Mitte"]}],
        "products": [
            {
                "name": {"en": "Gift card", "de": "Geschenkkarte", "pl": "Karta podarunkowa"},
                "description": {"en": "Valid everywhere.", "de": "Überall gültig.\nDrei Jahre."},
                "price": "25.00",
                "stock": [{"city": "Berlin", "district": "Mitte", "content": "CODE-1"}],
            },
            {
                "name": "Poster",
                "price": "19.00",
                "stock": [{"city": "Berlin", "district": "Mitte", "content": "TUBE-1"}],
            },
        ],
    }


def shown(conn, code):
    """What a shopper reading `code` sees of the catalog: {name: description}."""
    with shop.speaking(code):
        district = conn.execute("SELECT id FROM districts").fetchone()[0]
        return {
            p["name"]: shop.get_offer(conn, p["id"], district)["description"]
            for p in shop.list_products(conn, district)
        }


def test_names_and_descriptions_per_language_are_imported_and_shoppers_read_their_own(
    tmp_path, conn, languages
):
    data = per_language_catalog()
    path = write_catalog(tmp_path, data)
    media = tmp_path / "media"
    counts = shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, media)
    assert counts["products_added"] == 2
    rows = conn.execute("SELECT name, description, translations FROM products ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (
            "Gift card",  # the default language's, the key a re-import matches
            "Valid everywhere.",
            '{"de": {"name": "Geschenkkarte", "description": "Überall gültig.\\nDrei Jahre."}, '
            '"pl": {"name": "Karta podarunkowa"}}',
        ),
        ("Poster", "", None),
    ]
    assert shown(conn, "de") == {"Geschenkkarte": "Überall gültig.\nDrei Jahre.", "Poster": ""}
    assert shown(conn, "pl") == {"Karta podarunkowa": "Valid everywhere.", "Poster": ""}
    assert shown(conn, "pt") == {"Gift card": "Valid everywhere.", "Poster": ""}  # none in pt
    assert shown(conn, "en") == {"Gift card": "Valid everywhere.", "Poster": ""}

    again = shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, media)
    assert (again["products_added"], again["products_updated"]) == (0, 0)

    data["products"][0]["name"] = {"en": "Gift card", "de": "Gutschein"}  # pl's name dropped
    data["products"][1]["name"] = {"en": "Poster", "pt": "Cartaz"}
    counts = shop.import_catalog(conn, data, tmp_path, media)
    assert (counts["products_added"], counts["products_updated"]) == (0, 2)  # matched by name
    assert shown(conn, "de") == {"Gutschein": "Überall gültig.\nDrei Jahre.", "Poster": ""}
    assert shown(conn, "pl") == {"Gift card": "Valid everywhere.", "Poster": ""}
    assert shown(conn, "pt") == {"Gift card": "Valid everywhere.", "Cartaz": ""}

    data["products"][0]["name"] = "Gift card"  # plain: its texts in other languages stay
    data["products"][0]["description"] = "Valid in every shop."
    shop.import_catalog(conn, data, tmp_path, media)
    assert shown(conn, "de") == {"Gutschein": "Überall gültig.\nDrei Jahre.", "Poster": ""}
    assert shown(conn, "en") == {"Gift card": "Valid in every shop.", "Poster": ""}
    assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 2


def test_with_another_default_language_its_texts_are_the_products_own(tmp_path, conn, languages):
    shop.save_settings(conn, {"default_language": "de"})
    data = per_language_catalog()
    shop.import_catalog(conn, data, tmp_path, tmp_path / "media")
    row = conn.execute("SELECT name, description, translations FROM products").fetchone()
    assert tuple(row) == (
        "Geschenkkarte",
        "Überall gültig.\nDrei Jahre.",
        '{"en": {"name": "Gift card", "description": "Valid everywhere."}, '
        '"pl": {"name": "Karta podarunkowa"}}',
    )
    assert "Gift card" in shown(conn, "en") and "Geschenkkarte" in shown(conn, "pt")
    del data["products"][0]["name"]["de"]
    with pytest.raises(shop.CatalogError) as e:
        shop.import_catalog(conn, data, tmp_path, tmp_path / "media")
    assert e.value.errors == [
        "products[0].name: The product name in German (de), the shop's default language, is "
        "missing: write it as \"de\": ... in the object (product 'Gift card')"
    ]


def test_a_name_per_language_is_checked_as_a_plain_one_with_the_files_other_problems(
    tmp_path, languages
):
    data = per_language_catalog()
    data["products"][0]["name"] = {"de": "Geschenkkarte", "pl": "Karta podarunkowa"}
    data["products"][0]["price"] = "cheap"
    data["products"][1]["name"] = {"en": "Poster", "xx": "Plakat", "de": "P" * 65}
    data["products"][1]["description"] = {"en": "Rolled.", "pl": "Zwinięty\x07", "de": 5}
    data["products"].append(
        {"name": {"en": "", "de": "Leer"}, "price": "1.00", "stock": []},
    )
    path = write_catalog(tmp_path, data)
    r = run_seed(tmp_path, str(path))
    assert r.returncode == 1
    assert r.stderr.splitlines()[1:] == [
        "products[0].name: The product name in English (en), the shop's default language, is "
        "missing: write it as \"en\": ... in the object (product 'Geschenkkarte')",
        "products[0].price: 'cheap' is not an amount in EUR; write it like \"25.00\" "
        "(product 'Geschenkkarte')",
        'products[1].name.xx: "xx" is not a language code; write them as the shop\'s languages '
        'are written, like "de", "pl" or "pt_BR" (product \'Poster\')',
        "products[1].name.de: The product name in German (de) is longer than 64 characters "
        "(product 'Poster')",
        "products[1].description.pl: The description in Polish (pl) contains control characters "
        "(product 'Poster')",
        "products[1].description.de: The description in German (de) must be text "
        "(product 'Poster')",
        "products[2].name.en: The product name in English (en) is empty (product 'Leer')",
    ]
    conn = shop.connect(str(tmp_path / "shop.db"))
    assert table_counts(conn) == dict.fromkeys(
        ("cities", "districts", "products", "stock_units"), 0
    )
    conn.close()


ISSUE_LANGUAGES = ("en", "de", "pl", "pt", "es", "uk", "ru")


def test_the_demo_catalog_names_its_products_in_each_language(tmp_path, conn, languages):
    shop.load_demo(conn, tmp_path / "media")
    names = {code: sorted(shown(conn, code)) for code in ("en", "de", "pl", "pt")}
    assert "Paper & Ink gift card 25 €" in names["en"]
    assert "Paper & Ink Geschenkkarte" in names["de"]
    assert "Karta podarunkowa Paper & Ink" in names["pl"]
    assert "Cartão-oferta Paper & Ink" in names["pt"]
    for code in ("de", "pl", "pt"):  # every product has its own name in each
        assert not set(names[code]) & set(names["en"]) - {"E-book: The Little Sourdough Handbook"}
    for product in shop.DEMO_CATALOG["products"]:  # seven languages, names without prices
        assert set(product["name"]) == set(product["description"]) == set(ISSUE_LANGUAGES)
        for code, name in product["name"].items():
            assert code == "en" or not re.search(r"\d+(,\d\d)? ?€", name), name
    other = shop.init_db(str(tmp_path / "pl.db"))  # a new shop in Polish
    shop.save_settings(other, {"default_language": "pl"})
    shop.load_demo(other, tmp_path / "media")
    assert "Karta podarunkowa Paper & Ink" in {
        r[0] for r in other.execute("SELECT name FROM products")
    }
    other.close()
