"""The documentation cannot name what does not exist (fast: no model, no TensorFlow).

* every ``edgeclf COMMAND [SUBCOMMAND] ... --option`` written in README.md or docs/**/*.md (code blocks and
  inline code) names a command and options of the Click tree;
* every command of ``edgeclf --help`` is in the docs, and the command reference is generated from the tree;
* every results file in benchmarks/results/ (archive/ aside) and every benchmark script has its row in
  benchmarks/README.md, and no recorded command names a run folder that only existed on one machine;
* the public API stated in ``edgeclf.__all__`` resolves, and ``import edgeclf`` needs only the standard library.

``mkdocs build --strict`` (in .ci/run) catches broken links and missing pages.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgeclf.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"

FENCE = re.compile(r"^(```|~~~)")
INLINE = re.compile(r"(`+)(.+?)\1")
MENTION = re.compile(r"(?:^|(?<=[\s`'\"(])|(?<=bin/))edgeclf\s+(?P<rest>.*)")
STOP = re.compile(r"\s#|\s\|\s|;|&&|\|\||$")
OPTION = re.compile(r"-{1,2}[A-Za-z][\w-]*")
# commands that hand the options they do not know to another command: `edgeclf service install EXPORT --source 0
# --serve 8080` checks and writes `edgeclf run`'s options
PASS_THROUGH = {"service install": "run"}


def code_segments(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every line of a fenced block (backslash continuations joined) and every inline
    code span outside blocks."""
    out: list[tuple[int, str]] = []
    in_block = False
    lang = ""
    pending = ""
    start = 0
    for no, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            in_block = not in_block
            lang = line.strip().lstrip("`~").strip().lower() if in_block else ""
            continue
        if in_block and lang in ("python", "py"):
            continue  # `from edgeclf import ...` is not a command line
        if in_block:
            if not pending:
                start = no
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((start, pending + line))
            pending = ""
        else:
            out.extend((no, m.group(2)) for m in INLINE.finditer(line))
    return out


def mentions(text: str) -> list[tuple[int, list[str]]]:
    """(line, words) per ``edgeclf ...`` mention: the words after ``edgeclf`` up to a comment, a pipe, ``;``,
    ``&&`` or the next mention."""
    found = []
    for no, seg in code_segments(text):
        for part in re.split(r"(?=(?:^|(?<=[\s`'\"(])|(?<=bin/))edgeclf\s)", seg):
            m = MENTION.match(part) or MENTION.search(part)
            if not m:
                continue
            rest = m.group("rest")
            rest = rest[:STOP.search(rest).start()]
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            found.append((no, words))
    return found


def command_options(cmd: click.Command) -> set[str]:
    opts = {"--help", "-h"}
    for p in cmd.params:
        if isinstance(p, click.Option):
            opts.update(p.opts)
            opts.update(p.secondary_opts)
    return opts


def resolve(words: list[str]) -> tuple[click.Command | None, list[str], str]:
    """The command the words name, the words after it, and the name as written ('' for the bare group)."""
    cmd: click.Command = main
    name = ""
    rest = list(words)
    while isinstance(cmd, click.Group) and rest and re.fullmatch(r"[a-z][a-z0-9-]*", rest[0]):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            return None, rest, f"{name} {rest[0]}".strip()
        name = f"{name} {rest[0]}".strip()
        cmd, rest = sub, rest[1:]
    return cmd, rest, name


def all_mentions():
    for path in DOC_FILES:
        rel = path.relative_to(ROOT)
        for no, words in mentions(path.read_text(encoding="utf-8")):
            if words and (words[0].isupper() or words[0] in ("...", "…")):
                continue  # a placeholder: edgeclf COMMAND --help
            yield f"{rel}:{no}", words


def test_the_parser_sees_commands_and_options():
    text = ("Run `edgeclf export runs/train/exp --int8 --max-drop=0.5`, then\n```bash\n"
            "edgeclf bench EXP --data DATA \\\n    --remote pi  # --not-this\n"
            "~/env/bin/edgeclf run X --source 0 | tee --append log\n```\n`edgeclf.json` and `edgeclf-env` are files.")
    assert mentions(text) == [(1, ["export", "runs/train/exp", "--int8", "--max-drop=0.5"]),
                              (3, ["bench", "EXP", "--data", "DATA", "--remote", "pi"]),
                              (5, ["run", "X", "--source", "0"])]
    cmd, rest, _ = resolve(["service", "install", "E", "--unit-dir", "-"])
    assert cmd is main.commands["service"].commands["install"] and "--unit-dir" in command_options(cmd)
    assert resolve(["nosuch", "--x"])[0] is None


def test_every_command_and_option_the_docs_name_exists():
    problems = []
    seen = 0
    for where, words in all_mentions():
        cmd, rest, name = resolve(words)
        if cmd is None:
            problems.append(f"{where}: `edgeclf {name}` is not a command")
            continue
        known = command_options(cmd) | ({"--version"} if cmd is main else set())
        if name in PASS_THROUGH:
            assert cmd.context_settings.get("ignore_unknown_options"), f"{name} no longer passes options through"
            known |= command_options(main.commands[PASS_THROUGH[name]])
        for w in rest:
            if not w.startswith("-") or w in ("-", "--"):
                continue
            opt = w.split("=", 1)[0]
            if not OPTION.fullmatch(opt):
                continue
            seen += 1
            if opt not in known:
                problems.append(f"{where}: `edgeclf {name}` has no option {opt}")
    assert seen > 100, f"only {seen} options found in the docs: is the parser broken?"
    assert not problems, "\n".join(problems)


def test_every_option_named_alone_exists():
    """An option written alone in inline code (`--max-drop 0.5`) is an option of some edgeclf command (or of
    scripts/arm-device.sh, which the bench page documents)."""
    known = set(re.findall(r"--[a-z][\w-]*", (ROOT / "scripts" / "arm-device.sh").read_text(encoding="utf-8")))
    for _, cmd in walk(main):
        known |= command_options(cmd)
    known |= command_options(main) | {"--version"}
    problems, seen = [], 0
    for path in DOC_FILES:
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in INLINE.finditer(line):
                first = m.group(2).split()[0] if m.group(2).split() else ""
                opt = first.split("=", 1)[0]
                if not opt.startswith("--") or not OPTION.fullmatch(opt):
                    continue
                seen += 1
                if opt not in known:
                    problems.append(f"{path.relative_to(ROOT)}:{no}: no edgeclf command has {opt}")
    assert seen > 150, f"only {seen} lone options found: is the parser broken?"
    assert not problems, "\n".join(problems)


def walk(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield f"{prefix}{name}", cmd
        if isinstance(cmd, click.Group):
            yield from walk(cmd, f"{prefix}{name} ")


def test_every_command_is_documented_and_the_reference_is_generated():
    named = {" ".join(resolve(w)[2].split()) for _, w in all_mentions()}
    missing = [name for name, _ in walk(main) if name not in named]
    assert not missing, f"commands no page names: {missing}"
    ref = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert "::: mkdocs-click" in ref and ":module: edgeclf.cli" in ref and ":command: main" in ref
    mk = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "mkdocs-click" in mk and "mkdocstrings" in mk and "font: false" in mk


def bench_readme() -> str:
    return (BENCH / "README.md").read_text(encoding="utf-8")


def test_every_results_file_has_its_row():
    text = bench_readme()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    files = sorted(p for p in RESULTS.iterdir() if p.is_file())
    assert files
    missing = [p.name for p in files if not any(f"`{p.name}`" in r or f"results/{p.name}" in r for r in rows)]
    assert not missing, f"results files without a row in benchmarks/README.md: {missing}"


def test_every_script_has_its_row():
    text = bench_readme()
    missing = [p.name for p in sorted(BENCH.glob("*.py")) if f"{p.stem}.py" not in text]
    assert not missing, f"benchmark scripts benchmarks/README.md does not name: {missing}"


def test_recorded_commands_run_on_a_fresh_clone():
    """No command in the index names a folder outside the checkout but ../shared (one machine's run folders)."""
    bad = sorted(set(re.findall(r"\.\./(?!shared\b)[\w.-]+/[\w./-]*", bench_readme())))
    assert not bad, f"benchmarks/README.md names folders a fresh clone does not have: {bad}"


def test_the_readmes_links_resolve():
    """README.md and benchmarks/README.md are read on the repository, outside the site: their relative links
    (and images) name files that exist."""
    problems = []
    for readme in (ROOT / "README.md", BENCH / "README.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", readme.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (readme.parent / target.split("#")[0]).exists():
                problems.append(f"{readme.relative_to(ROOT)}: {target}")
    assert not problems, problems


def test_the_public_api_resolves():
    import edgeclf
    import edgeclf.runtime

    for name in edgeclf.__all__:
        assert getattr(edgeclf, name) is not None, name
    for name in edgeclf.runtime.__all__:
        assert getattr(edgeclf.runtime, name) is not None, name


def test_import_edgeclf_needs_only_the_standard_library():
    code = ("import sys, edgeclf; "
            "bad = [m for m in ('numpy', 'click', 'yaml', 'tensorflow', 'cv2') if m in sys.modules]; "
            "sys.exit(repr(bad) if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr or proc.stdout


@pytest.mark.parametrize("page", ["getting-started", "train", "export", "bench", "run", "field-loop", "sweep",
                                  "report", "deploy", "figures", "development", "reference/cli", "reference/python"])
def test_the_pages_exist_and_are_in_the_nav(page):
    assert (ROOT / "docs" / f"{page}.md").is_file()
    assert f"{page}.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
