"""shop.py's shape, read with `ast`: the rule in its docstring holds, and ruff is clean.

The rule: a section uses only sections above it; services take `conn` and never the running shop,
bottle, telebot or requests; adapters (web handlers, bot handlers, scheduler jobs) hold no SQL and
no transaction(); only the runtime builds the long-lived objects; no function is longer than 80
lines, few are nested, and no name is defined twice."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "shop.py").read_text(encoding="utf-8")
TREE = ast.parse(SOURCE)
BANNER = re.compile(r"^# (.+?) #{4,}$")

# The long-lived objects (threads, servers, connections to the outside) and where they may be built.
BUILT_BY_RUNTIME = {
    "Shop",
    "PaymentDesk",
    "ShopBot",
    "OutboxSender",
    "PollingBot",
    "BackgroundScheduler",
    "create_server",
    "Bottle",
}
NOT_IN_SERVICES = {"shop", "Shop", "bottle", "telebot", "tg", "apihelper", "requests", "waitress"}
SQL_CALLS = {"execute", "executemany", "executescript", "transaction"}
SQL_TEXT = re.compile(
    r"^\s*(SELECT\b.*\bFROM\b|INSERT INTO\b|UPDATE \w+ SET\b|DELETE FROM\b|PRAGMA \w+)", re.S
)


def sections():
    """[(name, first line)] in file order, from the banner comments."""
    found = []
    for number, line in enumerate(SOURCE.splitlines(), 1):
        match = BANNER.match(line)
        if match:
            found.append((match.group(1), number))
    return found


SECTIONS = sections()


def section_of(line):
    index = -1
    for i, (_, first) in enumerate(SECTIONS):
        if first <= line:
            index = i
    return index


def defined_names(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = []
        for target in targets:
            names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
        return names
    return []


TOP = [node for node in TREE.body if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr))]
HOME = {}  # module-level name -> section index
for node in TOP:
    for name in defined_names(node):
        HOME.setdefault(name, section_of(node.lineno))


def uses(node):
    """The names a definition reads, less those it binds itself (arguments, local variables)."""
    local = {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)
    }
    local |= {
        a.arg
        for n in ast.walk(node)
        if isinstance(n, ast.arguments)
        for a in ast.walk(n)
        if isinstance(a, ast.arg)
    }
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        local = set()
    return {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    } - local


def kind(index):
    name = SECTIONS[index][0] if index >= 0 else ""
    if name.startswith("Services"):
        return "service"
    if name.startswith(("Web", "Bot", "Scheduler")):
        return "adapter"
    return name.lower()


def functions(node):
    return [n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_docstring_lists_the_sections_in_order():
    doc = ast.get_docstring(TREE)
    listed = re.findall(r"^\s+(\d+)\. (.+?)(?: -- |$)", doc, re.M)
    assert [name.strip() for _, name in listed] == [name for name, _ in SECTIONS]
    assert [int(n) for n, _ in listed] == list(range(1, len(SECTIONS) + 1))


def test_a_section_uses_only_sections_above_it():
    problems = []
    for node in TOP:
        here = section_of(node.lineno)
        if isinstance(node, ast.If):  # if __name__ == "__main__"
            continue
        for name in sorted(uses(node)):
            if HOME.get(name, -1) > here:
                problems.append(
                    f"{defined_names(node) or node.lineno} in {SECTIONS[here][0]!r} uses {name} "
                    f"from {SECTIONS[HOME[name]][0]!r} below it"
                )
    assert not problems, "\n".join(problems)


def test_services_take_conn_never_the_shop_or_the_outside():
    problems = []
    for node in TOP:
        if kind(section_of(node.lineno)) != "service":
            continue
        bad = uses(node) & NOT_IN_SERVICES
        for fn in functions(node):
            bad |= {a.arg for a in fn.args.args + fn.args.kwonlyargs} & {"shop"}
        if bad:
            problems.append(f"{defined_names(node)} uses {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_adapters_hold_no_sql_and_no_transactions():
    problems = []
    for node in TOP:
        if kind(section_of(node.lineno)) != "adapter":
            continue
        for n in ast.walk(node):
            called = getattr(getattr(n, "func", None), "attr", None) or getattr(
                getattr(n, "func", None), "id", None
            )
            if isinstance(n, ast.Call) and called in SQL_CALLS:
                problems.append(f"{defined_names(node)} line {n.lineno}: {called}()")
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and SQL_TEXT.match(n.value):
                problems.append(f"{defined_names(node)} line {n.lineno}: SQL {n.value[:40]!r}")
    assert not problems, "\n".join(problems)


def test_only_the_runtime_builds_the_long_lived_objects():
    runtime = {i for i, (name, _) in enumerate(SECTIONS) if name in ("Runtime", "Command line")}
    problems = []
    for node in TOP:
        if section_of(node.lineno) in runtime:
            continue
        for n in ast.walk(node):
            if isinstance(n, ast.Call):
                f = n.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called in BUILT_BY_RUNTIME:
                    problems.append(f"{defined_names(node)} line {n.lineno} builds {called}")
    assert not problems, "\n".join(problems)


def test_functions_are_short_flat_and_named_once():
    long, nested = [], []
    for node in TREE.body:
        for fn in functions(node):
            size = fn.end_lineno - fn.lineno + 1
            if size > 80:
                long.append(f"{fn.name} ({size} lines)")
        outer = [node] if isinstance(node, ast.FunctionDef) else functions(node)
        for f in outer:
            nested += [n.name for n in functions(f) if n is not f]
    nested = sorted(set(nested))
    assert not long, long
    assert len(nested) <= 10, nested
    twice = []
    for scope in [TREE] + [n for n in ast.walk(TREE) if isinstance(n, ast.ClassDef)]:
        names = [name for node in scope.body for name in defined_names(node)]
        twice += [
            f"{getattr(scope, 'name', 'module')}.{name}" for name in names if names.count(name) > 1
        ]
    assert not twice, sorted(set(twice))


def test_the_payment_providers_are_registered():
    sys.path.insert(0, str(ROOT))
    import shop

    assert set(shop.PAYMENT_PROVIDERS) >= {"nowpayments", "sandbox"}
    for name, cls in shop.PAYMENT_PROVIDERS.items():
        assert issubclass(cls, shop.PaymentProvider) and cls.name == name


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
