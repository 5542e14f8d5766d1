"""The documentation, checked like code: links and anchors resolve, code blocks parse, and the
make targets, paths and settings the docs name exist. Pure: no Docker, no network."""

from __future__ import annotations

import ast
import glob
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", REPO / "SECURITY.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIG_DOC = REPO / "docs" / "configuration.md"
# Where a documented GPUWS_* setting must be read or set (the docs and tests do not count).
SETTING_SOURCES = ["jupyterhub_config.py", "docker-compose.yaml", "spawner", "scripts", "images"]

SHELL_LANGS = {"bash", "sh", "shell", "console"}
KNOWN_LANGS = SHELL_LANGS | {"python", "yaml", "yml", "json", "toml", "dotenv", "text"}

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)(?P<info>[^`]*)$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?(\S+?)>?(?:\s|$)", re.M)
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:scripts|images)/[\w.*-][\w.*/-]*)")
SETTING = re.compile(r"GPUWS_[A-Z_]+")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its file, the line of its opening fence, its language and text."""

    path: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{rel(self.path)}:{self.line}:{self.lang or 'untagged'}"


@dataclass(frozen=True)
class Link:
    """A Markdown link or image in prose, with the file and line it is on."""

    path: Path
    line: int
    target: str
    image: bool

    def __str__(self) -> str:
        return f"{rel(self.path)}:{self.line}:{self.target}"


@dataclass(frozen=True)
class Span:
    """An inline code span in prose."""

    path: Path
    line: int
    text: str


@dataclass
class Doc:
    """One Markdown file split into fenced blocks and prose lines (line number, text)."""

    path: Path
    blocks: list[Block]
    prose: list[tuple[int, str]]


def rel(path: Path) -> str:
    """The path relative to the repository root, for messages and test ids."""
    return path.relative_to(REPO).as_posix()


def parse(path: Path) -> Doc:
    """Split a Markdown file into fenced code blocks and the prose around them."""
    doc = Doc(path=path, blocks=[], prose=[])
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            doc.prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if (
                closing
                and not (closing["lang"] + closing["info"]).strip()
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
            ):
                break
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{rel(path)}:{i + 1}: the code block opened here is never closed")
        doc.blocks.append(Block(path, i + 1, opening["lang"].lower(), "\n".join(body) + "\n"))
        i = j + 1
    return doc


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces
    turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Doc) -> set[str]:
    """Every anchor a file offers: heading slugs (repeats get -1, -2, …) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in doc.prose:
        if m := HEADING.match(line):
            base = slug(m[2])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def paragraphs(doc: Doc) -> list[tuple[int, str]]:
    """A file's prose as paragraphs (first line number, text), so that a code span or a link
    that wraps onto the next line is still seen whole."""
    found: list[tuple[int, str]] = []
    current: list[tuple[int, str]] = []
    for number, line in doc.prose:
        if current and (not line.strip() or number != current[-1][0] + 1):
            found.append((current[0][0], "\n".join(text for _, text in current)))
            current = []
        if line.strip():
            current.append((number, line))
    if current:
        found.append((current[0][0], "\n".join(text for _, text in current)))
    return found


def line_of(start: int, text: str, offset: int) -> int:
    """The file line of a character offset into a paragraph that starts at line `start`."""
    return start + text.count("\n", 0, offset)


def without_code_spans(text: str) -> str:
    """Prose with its code spans blanked (newlines kept), so `[x](y)` in code is no link."""
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)


def links(doc: Doc) -> list[Link]:
    """The links and images of a file's prose, inline or as reference definitions."""
    found: list[Link] = []
    for start, text in paragraphs(doc):
        prose = without_code_spans(text)
        for m in LINK.finditer(prose):
            found.append(Link(doc.path, line_of(start, prose, m.start()), m[2], m[1] == "!"))
        for m in LINK_DEFINITION.finditer(prose):
            found.append(Link(doc.path, line_of(start, prose, m.start()), m[1], image=False))
    return found


def spans(doc: Doc) -> list[Span]:
    """The inline code spans of a file's prose."""
    return [
        Span(doc.path, line_of(start, text, m.start()), " ".join(m[2].split()))
        for start, text in paragraphs(doc)
        for m in CODE_SPAN.finditer(text)
    ]


def console_commands(text: str) -> str:
    """The commands of a console block: `$ ` lines and their `\\` continuations, no output."""
    commands: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued:
            commands.append(line)
        elif line.startswith("$ ") or line == "$":
            commands.append(line[2:])
        else:
            continue
        continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


def shell_text(block: Block) -> str:
    """What a shell block runs: the block itself, or a console block's commands."""
    return console_commands(block.text) if block.lang == "console" else block.text


def make_targets_named(command: str) -> list[str]:
    """The targets of every `make` that a shell command line runs."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unfinished quote: fall back to plain words
        tokens = command.split("#", 1)[0].split()
    targets: list[str] = []
    command_start, in_make, skip_next = True, False, False
    for token in tokens:
        if token and set(token) <= set(";&|()<>"):
            command_start, in_make = True, False
        elif in_make:
            if skip_next:
                skip_next = False
            elif token in ("-C", "-f", "--directory", "--file"):
                skip_next = True
            elif not token.startswith("-") and "=" not in token:
                targets.append(token)
        elif command_start and token == "make":
            in_make, command_start = True, False
        elif command_start and (re.match(r"^[A-Za-z_]\w*=", token) or token in ("sudo", "time")):
            continue
        else:
            command_start = False
    return targets


@cache
def makefile_targets() -> set[str]:
    """The targets the Makefile defines."""
    targets: set[str] = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?![:=])", line):
            targets.update(m[1].split())
    return targets


@cache
def setting_sources_text() -> str:
    """The text of every file where a GPUWS_* setting can be read or set."""
    texts: list[str] = []
    for name in SETTING_SOURCES:
        root = REPO / name
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(texts)


DOCS = [parse(path) for path in DOC_FILES]
BLOCKS = [block for doc in DOCS for block in doc.blocks]
LINKS = [link for doc in DOCS for link in links(doc)]
RELATIVE_LINKS = [link for link in LINKS if not URL_SCHEME.match(link.target)]
SHELL_BLOCKS = [block for block in BLOCKS if block.lang in SHELL_LANGS]
SPANS = [span for doc in DOCS for span in spans(doc)]
MAKE_USES = sorted(
    {
        (f"{rel(span.path)}:{span.line}", target)
        for span in SPANS
        for target in make_targets_named(span.text)
    }
    | {
        (str(block), target)
        for block in SHELL_BLOCKS
        for command in shell_text(block).splitlines()
        for target in make_targets_named(command)
    }
)
PATH_USES = sorted(
    {(str(block), path) for block in BLOCKS for path in REPO_PATH.findall(block.text)}
    | {(f"{rel(s.path)}:{s.line}", path) for s in SPANS for path in REPO_PATH.findall(s.text)}
)
CONFIG_SETTINGS = sorted(
    {name.rstrip("_") for name in SETTING.findall(CONFIG_DOC.read_text(encoding="utf-8"))}
)


def test_the_checks_have_something_to_check() -> None:
    """Each check below sees material, so none passes by having nothing to look at."""
    assert {rel(doc.path) for doc in DOCS} >= {"README.md", "docs/configuration.md"}
    assert RELATIVE_LINKS, "no relative links found"
    assert any("#" in link.target for link in RELATIVE_LINKS), "no anchor links found"
    assert SHELL_BLOCKS, "no shell blocks found"
    assert MAKE_USES and PATH_USES and CONFIG_SETTINGS


@pytest.mark.parametrize("link", RELATIVE_LINKS, ids=str)
def test_relative_link_resolves(link: Link) -> None:
    """A relative link names a file of the repository, and its #anchor a heading there."""
    target, _, anchor = link.target.partition("#")
    path = (link.path.parent / target).resolve() if target else link.path
    assert path.is_relative_to(REPO), f"{link}: points outside the repository"
    if not path.exists():
        pytest.fail(f"{link}: {rel(path)} does not exist")
    if anchor:
        assert path.suffix == ".md", f"{link}: an #anchor into a file that is not Markdown"
        assert link.image is False, f"{link}: an image with an #anchor"
        offered = anchors(parse(path))
        assert anchor in offered, f"{link}: {rel(path)} has no heading for #{anchor}"


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_code_block_is_tagged_with_a_known_language(block: Block) -> None:
    """Every fenced block says what it holds, so the checks below cannot be bypassed."""
    assert block.lang in KNOWN_LANGS, (
        f"{block}: tag the block with one of {sorted(KNOWN_LANGS)} (output is `text`)"
    )


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_shell_block_parses(block: Block) -> None:
    """Shell blocks are valid bash (console blocks: the `$ ` commands, without output)."""
    script = shell_text(block)
    assert script.strip(), f"{block}: no commands (a console block needs `$ ` prompts)"
    result = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, f"{block}: bash -n: {result.stderr.strip()}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=str)
def test_python_block_parses(block: Block) -> None:
    """Python blocks are valid Python."""
    try:
        ast.parse(block.text)
    except SyntaxError as e:
        pytest.fail(f"{block}: line {e.lineno} of the block: {e.msg}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("yaml", "yml")], ids=str)
def test_yaml_block_loads(block: Block) -> None:
    """YAML blocks load."""
    try:
        list(yaml.safe_load_all(block.text))
    except yaml.YAMLError as e:
        pytest.fail(f"{block}: {e}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "json"], ids=str)
def test_json_block_loads(block: Block) -> None:
    """JSON blocks load."""
    try:
        json.loads(block.text)
    except json.JSONDecodeError as e:
        pytest.fail(f"{block}: {e}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "toml"], ids=str)
def test_toml_block_loads(block: Block) -> None:
    """TOML blocks load."""
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as e:
        pytest.fail(f"{block}: {e}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "dotenv"], ids=str)
def test_dotenv_block_is_key_value_lines(block: Block) -> None:
    """Env-file blocks hold only comments and KEY=value lines, as .env needs."""
    for number, line in enumerate(block.text.splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*=\S", line), (
                f"{block}: line {number} of the block is not KEY=value: {line!r}"
            )


@pytest.mark.parametrize(("where", "target"), MAKE_USES, ids=str)
def test_make_target_exists(where: str, target: str) -> None:
    """Every `make X` the docs show is a target of the Makefile."""
    assert target in makefile_targets(), f"{where}: `make {target}`: no such Makefile target"


@pytest.mark.parametrize(("where", "path"), PATH_USES, ids=str)
def test_named_path_exists(where: str, path: str) -> None:
    """Every scripts/… or images/… path named in code exists (globs match something)."""
    path = path.rstrip(".,:;")
    exists = glob.glob(path, root_dir=REPO) if "*" in path else (REPO / path).exists()
    assert exists, f"{where}: {path} does not exist"


@pytest.mark.parametrize("name", CONFIG_SETTINGS)
def test_documented_setting_exists(name: str) -> None:
    """Every GPUWS_* setting in the configuration reference is read or set by the code."""
    pattern = rf"(?<![A-Z0-9_]){re.escape(name)}(?![A-Z0-9])"
    assert re.search(pattern, setting_sources_text()), (
        f"docs/configuration.md documents {name}, but none of {SETTING_SOURCES} names it"
    )


def test_slug_matches_github() -> None:
    """Anchors are computed as GitHub computes them."""
    assert (
        slug("Authentication (and switching to OAuth)") == "authentication-and-switching-to-oauth"
    )
    assert slug("Environment variables read by `jupyterhub_config.py`") == (
        "environment-variables-read-by-jupyterhub_configpy"
    )
    assert slug("Docker 20.10: known limits") == "docker-2010-known-limits"
    assert slug("[Link](x.md) — and more") == "link--and-more"


def test_console_commands_drop_output() -> None:
    """Console blocks count only their `$ ` lines and continuations."""
    block = '$ curl -H x \\\n    https://h/api\n{"a": 1}\n$ echo ok\nok\n'
    assert console_commands(block) == "curl -H x \\\n    https://h/api\necho ok\n"


def test_make_targets_are_found_in_command_position_only() -> None:
    """`make` counts as a command, with its options and variables left out."""
    assert make_targets_named('make test ARGS="-k allocator -x"') == ["test"]
    assert make_targets_named("BASE_IMAGE=x make images  # build") == ["images"]
    assert make_targets_named("cd /srv && make -C . down STOP_SERVERS=1; ls") == ["down"]
    assert make_targets_named("images/base/make-base-image.sh --mirror m") == []
    assert make_targets_named("echo make up") == []


def test_security_table_is_generated_from_the_tests_that_prove_it() -> None:
    import security_claims

    assert security_claims.missing_tests() == [], "rows name tests that do not exist"
    assert all(tests for *_, tests in security_claims.ROWS), "a row names no test"
    block = security_claims.current_block(security_claims.SECURITY_MD.read_text())
    assert block == security_claims.render(), (
        "SECURITY.md's table differs from tests/security_claims.py: run "
        "`python tests/security_claims.py`"
    )
