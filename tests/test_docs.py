"""The docs match the code (fast tier: no model, no server, a few imports).

README.md and docs/*.md name ``SEMSEARCH_*`` variables, CLI flags, make targets, bench scripts and test
files; each must exist in the code, and each setting and CLI option must be documented. The names come
from the code itself (the ``Settings`` fields and their aliases, the typer app of ``python -m indexer``,
the argparse parser of ``python -m app``, the Makefile's targets), so a rename in the code without the
docs, or in the docs without the code, fails here with the places to fix.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIG_DOC = REPO / "docs" / "api.md"  # its "## Settings" table documents every setting
PRODUCT_CODE = [
    *sorted(p for pkg in ("semsearch", "indexer", "app") for p in (REPO / pkg).rglob("*.py")),
    REPO / "docker-compose.yml",
    REPO / "Dockerfile",
    *sorted((REPO / "docker").glob("*.sh")),
]
# Flags of other programs that the docs show (docker, uvicorn, ruff, ray, schemathesis, check-jsonschema).
EXTERNAL_FLAGS = {
    "--rm": "docker compose run",
    "--wait": "docker compose up",
    "--no-deps": "docker compose up",
    "--network": "docker run",
    "--mount": "docker run",
    "--factory": "uvicorn",
    "--check": "ruff format",
    "--head": "ray start",
    "--checks": "schemathesis (st run)",
    "--builtin-schema": "check-jsonschema",
}

FLAG_RE = re.compile(r"(?<![\w.:-])(--?[a-zA-Z][a-zA-Z0-9-]*)")  # `--a`/`--b` names both
LONG_FLAG_RE = re.compile(r"(?<![\w.:-])(--[a-z][a-z0-9-]*)")
ENV_RE = re.compile(r"\bSEMSEARCH_[A-Z0-9_]*[A-Z0-9]\b")
ENV_PREFIX_RE = re.compile(r"\bSEMSEARCH_((?:[A-Z0-9]+_)+)\*")  # SEMSEARCH_MAX_*: a family of variables
# where a shell command shown in the docs ends: a code span's backtick, a comment, a chained command, a table cell
COMMAND_END_RE = re.compile(r"`|\s#|;|&&|\s\|\s|\|$")


# ------------------------------------------------------------------------------------------- the docs


@cache
def doc_lines() -> list[tuple[str, int, str]]:
    """(file, line number, logical line) of every doc; backslash continuations are joined."""
    out: list[tuple[str, int, str]] = []
    for path in DOCS:
        pending, start = "", 0
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((path.relative_to(REPO).as_posix(), start, pending + line))
            pending = ""
    return out


def code_block_lines() -> list[tuple[str, int, str]]:
    """The lines inside fenced code blocks (```)."""
    out, inside = [], False
    for name, number, line in doc_lines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            out.append((name, number, line))
    return out


def mentions(pattern: re.Pattern[str], lines: Iterable[tuple[str, int, str]] | None = None) -> dict[str, list[str]]:
    """Each match of ``pattern`` (group 1 if it has one) -> the places ("file:line") that mention it."""
    found: dict[str, list[str]] = defaultdict(list)
    for name, number, line in doc_lines() if lines is None else lines:
        for m in pattern.finditer(line):
            found[m.group(1) if pattern.groups else m.group(0)].append(f"{name}:{number}")
    return found


def report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


def command_tail(line: str, end: int) -> str:
    """The rest of a command that starts at ``end`` of ``line``, up to where the command ends."""
    rest = line[end:]
    stop = COMMAND_END_RE.search(rest)
    return rest[: stop.start()] if stop else rest


# ------------------------------------------------------------------------------------------- the code


def _settings_fields() -> dict[str, object]:
    from app.settings import Settings

    return dict(Settings.model_fields)


def canonical_env(field: str) -> str:
    from app.settings import ENV_PREFIX

    return ENV_PREFIX + field.upper()


@cache
def settings_env_names() -> set[str]:
    """Every variable a ``Settings`` field is read from: SEMSEARCH_<FIELD>, and its aliases if any."""
    names: set[str] = set()
    for name, field in _settings_fields().items():
        names.add(canonical_env(name))
        for alias in (getattr(field, "alias", None), getattr(field, "validation_alias", None)):
            choices = getattr(alias, "choices", [alias])
            names.update(c.upper() for c in choices if isinstance(c, str))
    from app.settings import RENAMED_FIELDS

    names.update(canonical_env(old) for old in RENAMED_FIELDS)  # deprecated names, still read (with a warning)
    return names


@cache
def code_env_names() -> set[str]:
    """Variables the product code names as a whole string (``os.environ.get("SEMSEARCH_X")``, an alias
    table) or interpolates (``${SEMSEARCH_X:-...}`` in docker-compose.yml)."""
    literal = re.compile(r"""["'](SEMSEARCH_[A-Z0-9_]+)["']|\$\{?(SEMSEARCH_[A-Z0-9_]+)""")
    names: set[str] = set()
    for path in PRODUCT_CODE:
        for m in literal.finditer(path.read_text(encoding="utf-8")):
            names.add(m.group(1) or m.group(2))
    return names


def is_group(command: Any) -> bool:
    return hasattr(command, "commands")


@cache
def indexer_commands() -> dict[str, Any]:
    """``python -m indexer``'s commands (typer's click objects) by path ("" the root, "build", "eval beir")."""
    import typer.main

    from indexer.cli import app

    out: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        out[path] = command
        if is_group(command):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return out


def click_options(command: Any, *, hidden: bool = True) -> list[list[str]]:
    """Each option's names (``--x``, ``-x`` and ``--no-x``), hidden ones only if ``hidden``."""
    return [
        [*p.opts, *p.secondary_opts]
        for p in command.params
        if p.param_type_name == "option" and (hidden or not p.hidden)
    ]


def indexer_flags(path: str) -> set[str]:
    return {"--help", *(n for names in click_options(indexer_commands()[path]) for n in names)}


@cache
def app_parser() -> argparse.ArgumentParser:
    from app.__main__ import build_parser

    return build_parser()


def app_options(*, hidden: bool = True) -> list[argparse.Action]:
    return [a for a in app_parser()._actions if a.option_strings and (hidden or a.help is not argparse.SUPPRESS)]


def app_flags() -> set[str]:
    return {s for a in app_options() for s in a.option_strings}


@cache
def keys_flags() -> set[str]:
    """The flags of ``python -m app.keys`` (add, list, remove)."""
    from app.keys import build_parser

    flags: set[str] = set()
    for action in build_parser()._actions:
        for sub in getattr(action, "choices", None) or {}:
            flags |= {f for a in action.choices[sub]._actions for f in a.option_strings}
    return flags


def bench_flags(script: str) -> set[str] | None:
    """Flags a bench script defines (its quoted ``"--x"`` literals and those of ``_common.py``); None if
    there is no such script."""
    path = REPO / "bench" / script
    if not path.is_file():
        return None
    texts = [path.read_text(encoding="utf-8"), (REPO / "bench" / "_common.py").read_text(encoding="utf-8")]
    return {"--help", *(m for t in texts for m in re.findall(r"""["'](--?[a-zA-Z][a-zA-Z0-9-]*)["']""", t))}


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.MULTILINE)) - {".PHONY"}


# ------------------------------------------------------------------------------------------ the checks
# Each returns its problems ("where: what is wrong") for the given doc lines; the tests below run them on
# the real docs and on a made-up stale doc (so that each check is shown to fail when it should).

Lines = list[tuple[str, int, str]]


def variable_problems(lines: Lines) -> list[str]:
    known = settings_env_names() | code_env_names()
    problems = [
        f"{name} ({', '.join(places)}): not SEMSEARCH_<a Settings field>, not a field alias, and no product "
        "code names it as a whole string or ${...}"
        for name, places in sorted(mentions(ENV_RE, lines).items())
        if name not in known
    ]
    for prefix, places in sorted(mentions(ENV_PREFIX_RE, lines).items()):
        if not any(name.startswith(f"SEMSEARCH_{prefix}") for name in known):
            problems.append(f"SEMSEARCH_{prefix}* ({', '.join(places)}): no variable has this prefix")
    return problems


def settings_table(text: str) -> dict[str, tuple[str, str]]:
    """The "## Settings" table of docs/api.md's ``text``: variable -> (its flags cell, "file:line")."""
    start = text.find("\n## Settings\n")
    end = text.find("\n## ", start + 1)
    if start < 0:
        return {}
    first_line = text[:start].count("\n") + 2
    rows: dict[str, tuple[str, str]] = {}
    for offset, line in enumerate(text[start : end if end > 0 else None].splitlines()):
        m = re.match(r"\| `(SEMSEARCH_[A-Z0-9_]+)` \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), f"docs/api.md:{first_line + offset - 1}")
    return rows


def settings_problems(config_doc: str) -> list[str]:
    rows = settings_table(config_doc)
    problems = []
    for name in _settings_fields():
        env = canonical_env(name)
        dashed = name.replace("_", "-")
        action = next(a for a in app_options() if a.dest == name)
        flags = [f for f in action.option_strings if f in (f"--{dashed}", f"--no-{dashed}")]
        if env not in rows:
            problems.append(f"setting {name}: no row for {env} in docs/api.md's Settings table (flags {flags})")
            continue
        cell, place = rows[env]
        missing = [f for f in flags if f not in LONG_FLAG_RE.findall(cell)]
        if missing:
            problems.append(f"setting {name} ({place}): the row does not name the flag(s) {missing}")
    known = settings_env_names() | code_env_names()
    problems += [f"{env} ({place}): a row for a variable the code does not read" for env, (_, place) in rows.items()
                 if env not in known]  # fmt: skip
    return problems


def _parse_invocation(tokens: list[str], explicit: bool) -> tuple[str, list[str]] | None:
    """(command path, the remaining tokens) of a command line's words after "indexer"; None when the
    words are not a command (prose: "the indexer does not ...") unless ``explicit`` (``python -m indexer``)."""
    commands = indexer_commands()
    while tokens and tokens[0] in ("-v", "--verbose"):
        tokens = tokens[1:]
    if not tokens or tokens[0].startswith("-") or tokens[0] in ("...", "…"):
        return ("", tokens) if explicit else None
    if tokens[0] not in commands:
        return (tokens[0], []) if explicit else None  # an unknown command, reported by the caller
    path, tokens = tokens[0], tokens[1:]
    if is_group(commands[path]) and tokens and not tokens[0].startswith("-"):
        if tokens[0] in ("...", "…"):
            return path, tokens[1:]
        subs = [s for s in tokens[0].split("|") if f"{path} {s}" in commands]
        return (f"{path} {subs[0]}" if subs else f"{path} {tokens[0]}"), tokens[1:]
    return path, tokens


INVOCATION_RE = re.compile(r"(-m indexer|semsearch-indexer|\bindexer)(?=\s)")
TABLE_COMMAND_RE = re.compile(r"^\| `(?=[a-z])")  # a table row whose first cell is a command: | `build --input ...` |


def indexer_invocations(lines: Iterable[tuple[str, int, str]] | None = None) -> list[tuple[str, str, str]]:
    """(place, command path, the rest of the command) of every ``python -m indexer ...`` /
    ``semsearch-indexer ...`` shown, of every ``indexer <command> ...``, and of every table row whose
    first cell is ``<command> ...`` (the README's command table)."""
    out = []
    for name, number, line in doc_lines() if lines is None else lines:
        starts = [(m.end(), m.group(1) != "indexer") for m in INVOCATION_RE.finditer(line)]
        table = TABLE_COMMAND_RE.match(line)
        if table:
            starts.append((table.end(), False))
        for end, explicit in starts:
            parsed = _parse_invocation(command_tail(line, end).split(), explicit)
            if parsed is not None:
                out.append((f"{name}:{number}", parsed[0], " ".join(parsed[1])))
    return out


def command_problems(lines: Lines) -> list[str]:
    """Flags shown with ``python -m indexer <command>``, ``python -m app`` and ``bench/<script>.py``
    that the command does not have, unknown commands and missing bench scripts."""
    problems = []
    commands = indexer_commands()
    for place, path, tail in indexer_invocations(lines):
        if path not in commands:
            problems.append(f"{place}: python -m indexer {path}: no such command (commands: {sorted(commands)})")
            continue
        unknown = sorted(set(FLAG_RE.findall(tail)) - indexer_flags(path))
        if unknown:
            problems.append(f"{place}: indexer {path or '(root)'}: no option {unknown}")
    for name, number, line in lines:
        for m in re.finditer(r"-m app(?=\s|`|$)", line):
            unknown = sorted(set(FLAG_RE.findall(command_tail(line, m.end()))) - app_flags() - {"-h", "--help"})
            if unknown:
                problems.append(f"{name}:{number}: python -m app: no option {unknown}")
        for m in re.finditer(r"\bbench/([\w-]+\.(?:py|sh))", line):
            flags = bench_flags(m.group(1))
            if flags is None:
                problems.append(f"{name}:{number}: bench/{m.group(1)} does not exist")
                continue
            if m.group(1).endswith(".py"):
                unknown = sorted(set(FLAG_RE.findall(command_tail(line, m.end()))) - flags)
                if unknown:
                    problems.append(f"{name}:{number}: bench/{m.group(1)}: no option {unknown}")
    return problems


def any_flag_problems(lines: Lines) -> list[str]:
    """Prose names flags without their command (``--backend torch``): each must be some command's."""
    known = set(EXTERNAL_FLAGS) | app_flags() | keys_flags()
    known |= {f for path in indexer_commands() for f in indexer_flags(path)}
    known |= {f for script in (REPO / "bench").glob("*.py") for f in bench_flags(script.name) or ()}
    return [
        f"{flag} ({', '.join(places)}): not an option of python -m indexer, python -m app or a bench script"
        for flag, places in sorted(mentions(LONG_FLAG_RE, lines).items())
        if flag not in known
    ]


def undocumented_options(lines: Lines, config_doc: str) -> list[str]:
    """Every non-hidden option of every indexer command must appear in some doc (by one of its names), and
    every ``python -m app`` option in docs/api.md."""
    documented = set(mentions(FLAG_RE, lines))
    config_flags = set(FLAG_RE.findall(config_doc))
    problems = []
    for path, command in indexer_commands().items():
        for names in click_options(command, hidden=False):
            if not documented.intersection(names):
                problems.append(f"python -m indexer {path or '(root)'}: {'/'.join(names)}")
    for action in app_options(hidden=False):
        names = [s for s in action.option_strings if s not in ("-h", "--help")]
        if names and not config_flags.intersection(names):
            problems.append(f"python -m app: {'/'.join(names)} (expected in docs/api.md)")
    return problems


def make_problems(lines: Lines, code_lines: Lines) -> list[str]:
    targets = makefile_targets()
    found = mentions(re.compile(r"`make ([A-Za-z0-9_.-]+)"), lines)
    for target, places in mentions(re.compile(r"^\s*make ([A-Za-z0-9_.-]+)"), code_lines).items():
        found.setdefault(target, []).extend(places)
    return [
        f"make {t} ({', '.join(places)}): no such Makefile target (targets: {sorted(targets)})"
        for t, places in sorted(found.items())
        if t not in targets
    ]


def credited_file_problems(lines: Lines) -> list[str]:
    return [
        f"{path} ({', '.join(places)}): no such file"
        for path, places in sorted(mentions(re.compile(r"\b(tests/[\w/.-]+\.(?:py|sh))"), lines).items())
        if not (REPO / path).is_file()
    ]


# ------------------------------------------------------------------------------------- on the real docs


def test_every_documented_variable_exists_in_the_code() -> None:
    problems = variable_problems(doc_lines())
    assert not problems, report(problems, "documented SEMSEARCH_* variables the code does not know")


def test_every_setting_is_in_the_configuration_table_with_its_flags() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    assert len(settings_table(text)) >= 10, "docs/api.md: the ## Settings table was not found"
    problems = settings_problems(text)
    assert not problems, report(problems, "settings not documented as they are")


def test_flags_shown_for_each_command_exist_in_that_command() -> None:
    problems = command_problems(doc_lines())
    assert not problems, report(problems, "commands shown with options they do not have")


def test_every_flag_mentioned_anywhere_exists_somewhere() -> None:
    problems = any_flag_problems(doc_lines())
    assert not problems, report(problems, "documented flags that no command has")


def test_every_cli_option_is_documented() -> None:
    problems = undocumented_options(doc_lines(), CONFIG_DOC.read_text(encoding="utf-8"))
    assert not problems, report(problems, "CLI options in no README/docs page")


def test_every_make_target_mentioned_exists() -> None:
    assert mentions(re.compile(r"`make ([A-Za-z0-9_.-]+)")), "no `make X` found in the docs: the pattern is broken"
    problems = make_problems(doc_lines(), code_block_lines())
    assert not problems, report(problems, "make targets the Makefile does not have")


def test_every_test_file_the_docs_credit_exists() -> None:
    problems = credited_file_problems(doc_lines())
    assert not problems, report(problems, "test files the docs name that do not exist")


# ------------------------------------------------------------------------ on a made-up stale doc


STALE: Lines = [
    ("stale.md", 1, "set `SEMSEARCH_NO_SUCH_VARIABLE=1`, or the `SEMSEARCH_NOPE_*` family"),
    ("stale.md", 2, "python -m indexer build --input a.jsonl --output IDX --no-such-flag"),
    ("stale.md", 3, "python -m indexer frobnicate --index IDX"),
    ("stale.md", 4, "python -m app --index IDX --max-k 5 --no-such-setting 3"),
    ("stale.md", 5, "python bench/bench_search.py --sizes 100 --no-such-bench-flag"),
    ("stale.md", 6, "python bench/no_such_bench.py --rows 3"),
    ("stale.md", 7, "in prose, `--totally-unknown` does something"),
    ("stale.md", 8, "run `make no-such-target` first"),
    ("stale.md", 9, "tested in tests/app/test_no_such_file.py"),
]


def test_each_check_fails_on_a_stale_doc_naming_the_place() -> None:
    assert variable_problems(STALE) == [
        "SEMSEARCH_NO_SUCH_VARIABLE (stale.md:1): not SEMSEARCH_<a Settings field>, not a field alias, and no "
        "product code names it as a whole string or ${...}",
        "SEMSEARCH_NOPE_* (stale.md:1): no variable has this prefix",
    ]
    commands = command_problems(STALE)
    assert commands[0] == "stale.md:2: indexer build: no option ['--no-such-flag']"
    assert commands[1].startswith("stale.md:3: python -m indexer frobnicate: no such command (commands: [")
    assert commands[2:] == [
        "stale.md:4: python -m app: no option ['--no-such-setting']",
        "stale.md:5: bench/bench_search.py: no option ['--no-such-bench-flag']",
        "stale.md:6: bench/no_such_bench.py does not exist",
    ]
    unknown = [p.split(" ")[0] for p in any_flag_problems(STALE)]
    assert unknown == ["--no-such-bench-flag", "--no-such-flag", "--no-such-setting", "--totally-unknown"]
    assert make_problems(STALE, []) == [
        f"make no-such-target (stale.md:8): no such Makefile target (targets: {sorted(makefile_targets())})"
    ]
    assert credited_file_problems(STALE) == ["tests/app/test_no_such_file.py (stale.md:9): no such file"]


def test_undocumented_settings_and_options_are_listed() -> None:
    problems = settings_problems("# api\n\n## Settings\n\n| `SEMSEARCH_GONE` | `--gone` | 1 | removed |\n")
    assert "setting max_k: no row for SEMSEARCH_MAX_K in docs/api.md's Settings table (flags ['--max-k'])" in problems
    assert problems[-1] == "SEMSEARCH_GONE (docs/api.md:5): a row for a variable the code does not read"
    assert len(problems) == len(_settings_fields()) + 1
    options = undocumented_options(STALE, "")
    assert "python -m indexer build: --model" in options and "python -m indexer (root): --verbose/-v" in options
    assert not any(
        o.startswith(("python -m indexer build: --input", "python -m indexer build: --output")) for o in options
    )
    assert "python -m indexer search: -k/--k" in options
    assert "python -m app: --index (expected in docs/api.md)" in options


COMMAND_FORMS = [  # (a doc line, the command path found, the rest of the command)
    ("python -m indexer build --input a.jsonl -o IDX  # a comment --nope", "build", "--input a.jsonl -o IDX"),
    ('| `search "q" --index D [--mode dense\\|lexical]` | x', "search", '"q" --index D [--mode dense\\|lexical]'),
    ("docker compose run --rm indexer indexer add --input /x --keep 3", "add", "--input /x --keep 3"),
    ("see `python -m indexer eval beir|sts …` there", "eval beir", "…"),
    ("| `eval ...` | retrieval |", "eval", ""),
    ("`.venv/bin/python -m indexer --help`", "", "--help"),
    ("run `indexer upgrade --index DIR` once", "upgrade", "--index DIR"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "path", "rest"), COMMAND_FORMS)
def test_the_command_finder_reads_the_forms_the_docs_use(line: str, path: str, rest: str) -> None:
    """The checks above only mean something if they find the commands, in every form the docs use."""
    assert [(p, r) for _, p, r in indexer_invocations([("X.md", 1, line)])] == [(path, rest)]


def test_prose_about_the_indexer_is_not_a_command() -> None:
    lines = [("X.md", 1, "the indexer does not import the app; the indexer (`build`, `add`) publishes")]
    assert indexer_invocations(lines) == []
