"""Every language's catalog is current and complete, so a missing translation fails CI.

Current: the template (locales/messages.pot) holds exactly the texts pybabel extracts from
shop.py and the Mini App's scripts today, and every catalog holds exactly those. Complete: every
message is translated (no empty or fuzzy entry), with every plural form the language has, the
same {placeholders} and the same HTML tags as the English text. Babel's own checks cover neither
brace placeholders nor empty plural slots (reference i18n.md, section 4), so they are checked here.
"""

import ast
import collections
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

import shop
from throwaway_catalogs import EXTRACT  # the README's command

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "locales"
TEMPLATE = LOCALES / "messages.pot"
LANGUAGES = ("de", "pl", "pt", "es", "uk", "ru")  # the ones the shop is made for
# every catalog there is (a language added later is checked alike)
CATALOGS = sorted(p.parent.parent.name for p in LOCALES.glob("*/LC_MESSAGES/messages.po"))
PLACEHOLDER = re.compile(r"\{[^{}]*\}")
TAG = re.compile(r"</?[a-zA-Z][^<>]*>")


def pybabel(*args):
    return subprocess.run(
        [sys.executable, "-m", "babel.messages.frontend", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def read(path, locale=None):
    with open(path, "rb") as f:
        return read_po(f, locale=locale)


def keys(catalog):
    return {(m.context, m.id if isinstance(m.id, str) else m.id[0]) for m in catalog if m.id}


def problems(catalog, template):
    """What is wrong with a language's catalog against the template, one line each."""
    found = []
    expected, have = keys(template), keys(catalog)
    found += [f"missing: {msgid!r}" for _, msgid in sorted(expected - have, key=str)]
    found += [
        f"not in the code any more: {msgid!r}" for _, msgid in sorted(have - expected, key=str)
    ]
    for message in catalog:
        if not message.id:
            continue
        source = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        name = repr(source[0][:60])
        if message.fuzzy:
            found.append(f"fuzzy (check it, then drop the flag): {name}")
        if isinstance(message.id, tuple) and len(strings) != catalog.num_plurals:
            found.append(
                f"{len(strings)} plural forms, the language has {catalog.num_plurals}: {name}"
            )
        for i, text in enumerate(strings):
            if not text:
                found.append(f"not translated (form {i}): {name}")
                continue
            english = source[min(i, len(source) - 1)] if len(source) > 1 else source[0]
            if set(PLACEHOLDER.findall(text)) != set(PLACEHOLDER.findall(english)):
                found.append(f"placeholders differ in {name}: {PLACEHOLDER.findall(text)}")
            if collections.Counter(TAG.findall(text)) != collections.Counter(TAG.findall(english)):
                found.append(f"HTML tags differ in {name}: {TAG.findall(text)}")
    return found


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    out = tmp_path_factory.mktemp("pot") / "messages.pot"
    run = pybabel(*EXTRACT, "-o", str(out), ".")
    assert run.returncode == 0, run.stderr
    return read(out)


def test_the_template_holds_every_text_the_code_has(extracted):
    template = read(TEMPLATE)
    missing, gone = keys(extracted) - keys(template), keys(template) - keys(extracted)
    assert not missing and not gone, (
        "locales/messages.pot is out of date; run the extract and update commands of the "
        f"README's Languages section. New: {sorted(missing, key=str)[:10]}; gone: "
        f"{sorted(gone, key=str)[:10]}"
    )


def test_the_issues_languages_are_there():
    assert set(LANGUAGES) <= set(shop.available_languages())
    assert shop.available_languages()[0] == "en"


@pytest.mark.parametrize("code", CATALOGS)
def test_every_message_is_translated_with_its_placeholders_and_plurals(code):
    catalog = read(LOCALES / code / "LC_MESSAGES" / "messages.po", locale=code)
    found = problems(catalog, read(TEMPLATE))
    assert not found, f"{code}: {len(found)} problems:\n" + "\n".join(found[:40])


@pytest.mark.parametrize("code", CATALOGS)
def test_the_plural_rule_is_cldrs(code):
    """The header's Plural-Forms is the one Babel writes for the language (pl/uk/ru: 3 forms)."""
    catalog = read(LOCALES / code / "LC_MESSAGES" / "messages.po", locale=code)
    assert catalog.plural_forms == Catalog(locale=code).plural_forms


def test_the_checks_catch_each_kind_of_mistake():
    template = Catalog()
    template.add("Hello {name}")
    template.add("<b>Paid</b>")
    template.add(("{n} item", "{n} items"))
    template.add("Gone soon")
    bad = Catalog(locale="pl")
    bad.add("Hello {name}", "Cześć {imię}")  # a translated placeholder
    bad.add("<b>Paid</b>", "Zapłacono")  # a lost tag
    bad.add(("{n} item", "{n} items"), ("{n} sztuka", "{n} sztuki", ""))  # an empty plural slot
    bad.add("Extra", "Dodatkowy", flags=["fuzzy"])  # fuzzy and not in the code
    found = "\n".join(problems(bad, template))
    assert "missing: 'Gone soon'" in found
    assert "not in the code any more: 'Extra'" in found
    assert "fuzzy" in found
    assert "placeholders differ in 'Hello {name}'" in found
    assert "HTML tags differ in '<b>Paid</b>'" in found
    assert "not translated (form 2): '{n} item'" in found


@pytest.mark.parametrize(
    ("code", "forms"),
    [
        ("pl", {1: 0, 2: 1, 5: 2, 12: 2, 21: 2, 22: 1, 0: 2}),
        ("uk", {1: 0, 2: 1, 5: 2, 12: 2, 21: 0, 22: 1, 0: 2}),
        ("ru", {1: 0, 2: 1, 5: 2, 12: 2, 21: 0, 22: 1, 0: 2}),
        ("de", {1: 0, 2: 1, 5: 1, 0: 1}),
        ("pt", {1: 0, 2: 1, 0: 1}),
    ],
)
def test_counts_take_the_languages_plural_form(code, forms):
    """A counted text in the shop's catalogs picks CLDR's form for each number."""
    catalog = read(LOCALES / code / "LC_MESSAGES" / "messages.po", locale=code)
    message = catalog.get(("{n} item", "{n} items"))
    assert message is not None and len(message.string) == catalog.num_plurals
    if catalog.num_plurals == 3:  # pl, uk, ru: three different words (1 sztuka, 2 sztuki, 5 sztuk)
        assert len(set(message.string)) == 3, message.string
    with shop.speaking(code):
        for n, form in forms.items():
            assert shop.ntr("{n} item", "{n} items", n) == message.string[form].format(n=n)


def _texts_of(node):
    """The literal texts an expression may be: "..." or N_("..."), through `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "N_" and node.args:
        return _texts_of(node.args[0])
    if isinstance(node, ast.IfExp):
        return _texts_of(node.body) + _texts_of(node.orelse)
    if isinstance(node, ast.Dict):
        return [t for value in node.values for t in _texts_of(value)]
    return []


def _named(text):
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_every_text_is_given_exactly_its_placeholders():
    """A tr()/ntr()/ptr() (or a tell() of an N_ text) whose text names a {placeholder} it is not
    given would fail in the shopper's face; one given a value it does not name drops it."""
    problems = []
    tree = ast.parse((ROOT / "shop.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        name = getattr(getattr(node, "func", None), "id", None)
        if not isinstance(node, ast.Call) or name not in ("tr", "ntr", "ptr", "tell"):
            continue
        if name == "tell":
            if len(node.args) < 4 or not isinstance(node.args[3], ast.Dict):
                continue
            if not all(isinstance(k, ast.Constant) for k in node.args[3].keys):
                continue
            given = {k.value for k in node.args[3].keys}
            texts = _texts_of(node.args[2])
        else:
            given = {k.arg for k in node.keywords}
            if None in given:  # **values
                continue
            texts = [
                t
                for arg in (node.args[1:2] if name == "ptr" else node.args[:2])
                for t in _texts_of(arg)
            ]
        for text in texts:
            named = _named(text) - ({"n"} if name == "ntr" else set())
            if name != "tell" and not node.keywords and not _named(text):
                continue
            if named != given and not (name == "tell" and named <= given):
                problems.append(f"line {node.lineno}: {text[:60]!r} names {named}, given {given}")
    assert not problems, "\n".join(problems)
