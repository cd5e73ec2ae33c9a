#!/usr/bin/env python3
"""Load the demo catalog, or import a catalog file, into the shop database.

    python seed_catalog.py              # the demo catalog (gift cards, coffee, e-books, posters,
                                        # named in English, German, Polish, Portuguese, Spanish,
                                        # Ukrainian and Russian)
    python seed_catalog.py FILE.json    # a catalog file (format below)
    python seed_catalog.py --db other.db FILE.json

A catalog file:

    {"cities": [{"name": "Berlin", "districts": ["Mitte", "Kreuzberg"]}],
     "products": [{"name": "Gift card 25 EUR", "description": "...", "price": "25.00",
                   "photo": "img/gc.jpg", "kind": "digital", "methods": ["stars"],
                   "stars_price": 1250,
                   "stock": [{"city": "Berlin", "district": "Mitte", "content": "CODE-1234",
                              "media": "img/u1.jpg"}]}]}

`photo` (public product photo) and `media` (a private photo delivered with the
unit) are optional paths relative to the file. `kind` ("digital" or "physical"),
`methods` (any of "stars", "crypto", "balance") and `stars_price` (whole Telegram
Stars) are optional too; see the README's "Telegram Stars". `name` and `description` may
be given per language, {"en": "Gift card", "de": "Geschenkkarte"}, the shop's default
language's required (see the README's "Languages"). A price is EUR, "25.00" or 25.00
("25,00" reads as 25.00; no thousands separators). Importing is idempotent and
atomic: names match existing rows, a unit already there is not added again,
and a file with any problem imports nothing, lists every problem (each with its
place in the file, in file order) and exits with status 1.
"""

import argparse
import sys
from pathlib import Path

import shop


def main(argv=None):
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
            counts = shop.load_demo(conn, config.media_dir)
    except shop.CatalogError as e:
        count = f"{len(e.errors)} problem" + ("s" if len(e.errors) != 1 else "")
        print(
            f"seed_catalog.py: nothing imported; {args.file or 'the demo catalog'} has {count}:",
            *e.errors,  # every one (str(e) shows the first 20)
            sep="\n",
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
