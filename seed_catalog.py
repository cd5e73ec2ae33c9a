#!/usr/bin/env python3
"""Load the demo catalog, or import a catalog file, into the shop database.

    python seed_catalog.py              # the demo catalog (gift cards, coffee, e-books, posters)
    python seed_catalog.py FILE.json    # a catalog file (format below)
    python seed_catalog.py --db other.db FILE.json

A catalog file:

    {"cities": [{"name": "Berlin", "districts": ["Mitte", "Kreuzberg"]}],
     "products": [{"name": "Gift card 25 EUR", "description": "...", "price": "25.00",
                   "photo": "img/gc.jpg",
                   "stock": [{"city": "Berlin", "district": "Mitte", "content": "CODE-1234",
                              "media": "img/u1.jpg"}]}]}

`photo` (public product photo) and `media` (a private photo delivered with the
unit) are optional paths relative to the file. Importing is idempotent and
atomic: names match existing rows, a unit already there is not added again,
and a file with any problem imports nothing and exits with status 1.
"""

import argparse
import struct
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEMO_IMAGES = ROOT / "static" / "img" / "demo"


def _locker(path, door):
    """Write a small PNG of a wall of parcel lockers with `door` highlighted (the pickup photo)."""
    width, height, cols, rows = 360, 240, 6, 4
    cell_w, cell_h = width // cols, height // rows
    pixels = bytearray()
    for y in range(height):
        pixels.append(0)  # PNG filter: none
        for x in range(width):
            col, row = x // cell_w, y // cell_h
            edge = x % cell_w in (0, 1, cell_w - 1) or y % cell_h in (0, 1, cell_h - 1)
            handle = (
                cell_w - 12 <= x % cell_w <= cell_w - 8
                and cell_h // 2 - 8 <= y % cell_h <= cell_h // 2 + 8
            )
            if edge:
                rgb = (60, 64, 72)
            elif row * cols + col + 1 == door:
                rgb = (40, 40, 40) if handle else (245, 180, 40)
            else:
                rgb = (40, 40, 40) if handle else (170, 178, 190)
            pixels += bytes(rgb)

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(pixels), 9))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)


def demo_catalog(folder):
    """The demo catalog as a catalog-file dict; writes its pickup photos into `folder`."""
    _locker(Path(folder) / "locker-door-3.png", 3)
    _locker(Path(folder) / "locker-door-17.png", 17)
    img = lambda name: str(DEMO_IMAGES / name)
    return {
        "cities": [
            {"name": "Berlin", "districts": ["Mitte", "Kreuzberg"]},
            {"name": "Lisbon", "districts": ["Baixa", "Alfama"]},
            {"name": "Kraków", "districts": ["Stare Miasto", "Kazimierz"]},
        ],
        "products": [
            {
                "name": "Paper & Ink gift card 25 €",
                "price": "25.00",
                "photo": img("giftcard-books.jpg"),
                "description": "A gift card for Paper & Ink Books, valid in every shop and online "
                "for three years. Redeem the code at the till or at checkout.",
                "stock": [
                    {"city": c, "district": d, "content": code}
                    for c, d, code in [
                        ("Berlin", "Mitte", "PINK-25-7F3K-Q9D2"),
                        ("Berlin", "Mitte", "PINK-25-M2XW-4RTA"),
                        ("Berlin", "Kreuzberg", "PINK-25-H8NC-ZP61"),
                        ("Lisbon", "Baixa", "PINK-25-UV5E-3KDM"),
                        ("Lisbon", "Baixa", "PINK-25-BQ7Y-W0LS"),
                        ("Kraków", "Stare Miasto", "PINK-25-9JHF-C2VE"),
                    ]
                ],
            },
            {
                "name": "Corner Café voucher 10 €",
                "price": "10.00",
                "photo": img("voucher-coffee.jpg"),
                "description": "Coffee, cake or breakfast for 10 € at any Corner Café. Show the code "
                "at the counter.",
                "stock": [
                    {"city": c, "district": d, "content": code}
                    for c, d, code in [
                        ("Berlin", "Kreuzberg", "CAFE-10-QX4T8N"),
                        ("Berlin", "Kreuzberg", "CAFE-10-LM3R7D"),
                        ("Berlin", "Mitte", "CAFE-10-ZK9W2P"),
                        ("Kraków", "Kazimierz", "CAFE-10-HV6J5S"),
                        ("Kraków", "Kazimierz", "CAFE-10-TB1F8G"),
                    ]
                ],
            },
            {
                "name": "Ethiopian Yirgacheffe beans 250 g",
                "price": "12.90",
                "photo": img("coffee-beans.jpg"),
                "description": "Washed Yirgacheffe, light roast: jasmine, lemon and honey. Whole beans, "
                "roasted this week. Collected from a parcel locker near you.",
                "stock": [
                    {
                        "city": "Berlin",
                        "district": "Mitte",
                        "media": str(Path(folder) / "locker-door-3.png"),
                        "content": 'Parcel locker "Mitte 14", Invalidenstraße 112 (next to the bakery).\n'
                        "Door 3 (highlighted in the photo), pickup code 4711-2093.\n"
                        "Please collect within 48 hours.",
                    },
                    {
                        "city": "Berlin",
                        "district": "Mitte",
                        "media": str(Path(folder) / "locker-door-17.png"),
                        "content": 'Parcel locker "Mitte 14", Invalidenstraße 112 (next to the bakery).\n'
                        "Door 17 (highlighted in the photo), pickup code 4711-5528.\n"
                        "Please collect within 48 hours.",
                    },
                    {
                        "city": "Lisbon",
                        "district": "Alfama",
                        "media": str(Path(folder) / "locker-door-3.png"),
                        "content": 'Cacifo "Alfama 2", Rua dos Remédios 41 (inside the pharmacy entrance).\n'
                        "Door 3, pickup code 2026-8814. Please collect within 48 hours.",
                    },
                ],
            },
            {
                "name": "E-book: The Little Sourdough Handbook",
                "price": "7.50",
                "photo": img("ebook-sourdough.jpg"),
                "description": "From starter to first loaf in a weekend. EPUB and PDF, 142 pages, "
                "no DRM.",
                "stock": [
                    {
                        "city": c,
                        "district": d,
                        "content": f"Download your copy (EPUB + PDF): "
                        f"https://example.com/dl/sourdough/{key}\n"
                        "The link works for 30 days.",
                    }
                    for c, d, key in [
                        ("Berlin", "Mitte", "8f3a1c72"),
                        ("Berlin", "Kreuzberg", "b41e09d5"),
                        ("Lisbon", "Baixa", "2c7d6e18"),
                        ("Kraków", "Stare Miasto", "e95f3a40"),
                        ("Kraków", "Kazimierz", "71ab2c6f"),
                    ]
                ],
            },
            {
                "name": "Poster: Lisbon Tram 28 (A2)",
                "price": "19.00",
                "photo": img("poster-tram.jpg"),
                "description": "Screen-printed A2 poster of the yellow tram 28 on heavy matte paper, "
                "rolled in a tube.",
                "stock": [
                    {
                        "city": "Lisbon",
                        "district": "Baixa",
                        "media": str(Path(folder) / "locker-door-17.png"),
                        "content": 'Cacifo "Baixa 7", Rua Augusta 210 (arcade, left side).\n'
                        "Door 17, pickup code 2026-3391. Please collect within 48 hours.",
                    },
                    {
                        "city": "Lisbon",
                        "district": "Alfama",
                        "content": "Pickup at the Alfama kiosk, Largo das Portas do Sol, 10:00-18:00.\n"
                        "Say order word TRAM-28-LUA.",
                    },
                ],
            },
        ],
    }


def load_demo(conn, media_dir, importer=None):
    """Import the demo catalog with shop.import_catalog (or `importer`); returns the import counts."""
    if importer is None:
        import shop

        importer = shop.import_catalog
    with tempfile.TemporaryDirectory() as folder:
        return importer(conn, demo_catalog(folder), folder, media_dir)


def main(argv=None):
    import shop

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The database is SHOP_DB (or --db), as for shop.py.",
    )
    parser.add_argument("file", nargs="?", help="catalog JSON file; without it, the demo catalog")
    parser.add_argument("--db", help="SQLite database file (overrides SHOP_DB)")
    parser.add_argument(
        "--env-file", default=".env", help="file with VAR=value lines (default .env)"
    )
    args = parser.parse_args(argv)
    try:
        config = shop.load_config(env_file=args.env_file, overrides={"SHOP_DB": args.db})
        conn = shop.init_db(config.shop_db)
    except (shop.ConfigError, shop.DatabaseError) as e:
        print(f"seed_catalog.py: {e}", file=sys.stderr)
        return 2
    try:
        if args.file:
            data = shop.read_catalog_file(args.file)
            counts = shop.import_catalog(
                conn, data, Path(args.file).resolve().parent, config.media_dir
            )
        else:
            counts = load_demo(conn, config.media_dir)
    except shop.CatalogError as e:
        print(
            f"seed_catalog.py: nothing imported; {args.file or 'the demo catalog'} has problems:\n{e}",
            file=sys.stderr,
        )
        return 1
    finally:
        conn.close()
    print(
        f"Imported into {config.shop_db}: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
