"""The commands and names that README.md and experiments/README.md document still work.

Read from the documents themselves, so that a moved module or a renamed option fails here instead of in a
reader's shell. Run: every ``python -c`` snippet (all of them only print or plan), ``--help`` of every
``sparsemask`` subcommand, ``python -m`` module and ``python SCRIPT`` shown, the import lines of ``python``
blocks, every dotted ``nni_sparsemask`` name (imports, without a moved-module DeprecationWarning), ``make -n`` of
every make target, ``bash -n`` of every script, ``nnictl --help``, and every repository file the documents name.
Nothing that trains, launches or writes outside a temporary HOME runs.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "experiments/README.md")
BIN = Path(sys.executable).parent
TIMEOUT = 120
# shell lines of the documents that are not ours to run: other machines' tools, placeholders
EXTERNAL = ("ssh ", "sudo ", "ufw ")


def _text(doc: str) -> str:
    return (ROOT / doc).read_text()


def _blocks(doc: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", _text(doc), flags=re.S | re.M)


def _inline(doc: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", _text(doc), flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def _shell_lines(doc: str) -> list[str]:
    """The shell commands of ``doc``: lines of plain / sh blocks (continuations joined, comments cut) and the
    inline code spans that start with a command word."""
    lines = []
    for lang, body in _blocks(doc):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.split(r"\s{2,}#\s|^#", line)[0].strip()
            if line:
                lines.append(line)
    words = ("python ", "sparsemask ", "make ", "bash ", "nnictl ", ".venv/bin/")
    lines += [span for span in _inline(doc) if span.startswith(words)]
    return lines


def _all_shell_lines() -> list[str]:
    return [line for doc in DOCS for line in _shell_lines(doc)]


def _python_c_snippets(line: str) -> list[str]:
    """The code of every ``python -c 'CODE'`` / ``python -c "CODE"`` in a shell line (also inside ``$(...)``)."""
    out = []
    for m in re.finditer(r"\bpython -c ", line):
        quote = line[m.end()]
        assert quote in "'\"", f"unquoted python -c in: {line}"
        end = line.index(quote, m.end() + 1)
        out.append(line[m.end() + 1:end])
    return out


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, f"{shlex.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A HOME with the placeholder ``~/.ssh/id_rsa`` that experiments/remote.yml names (checked for existence)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("placeholder\n")
    return {**os.environ, "HOME": str(home)}


def test_the_documents_are_found():
    lines = _all_shell_lines()
    assert any(line.startswith("sparsemask compare") for line in lines)
    assert sum(len(_python_c_snippets(line)) for line in lines) >= 2


# ------------------------------------------------------------------------------------------------ python -c
def _snippets() -> list[str]:
    return [code for line in _all_shell_lines() for code in _python_c_snippets(line)]


@pytest.mark.parametrize("code", _snippets())
def test_python_c_snippets_run(code, home):
    out = _run([sys.executable, "-c", code], env=home).stdout.strip()
    if "LOOPBACK_JS" in code:  # the NODE_OPTIONS preload: a file that exists
        assert out.endswith("loopback.js") and Path(out).is_file(), out


# ------------------------------------------------------------------------------------------------ --help
def _sparsemask_subcommands() -> list[str]:
    subs = {line.split()[1] for line in _all_shell_lines() if re.match(r"sparsemask [a-z]", line)}
    return sorted(subs)


def test_sparsemask_help_from_the_venv():
    exe = BIN / "sparsemask"
    if not exe.is_file():
        pytest.skip(f"no sparsemask console script beside {sys.executable} (package not installed in this env)")
    assert "usage: sparsemask" in _run([str(exe), "--help"]).stdout


@pytest.mark.parametrize("sub", _sparsemask_subcommands())
def test_every_documented_sparsemask_subcommand_has_help(sub, capsys):
    from nni_sparsemask.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([sub, "--help"])
    assert exit_.value.code == 0 and f"usage: sparsemask {sub}" in capsys.readouterr().out


def _python_m_modules() -> list[str]:
    return sorted({m for line in _all_shell_lines() for m in re.findall(r"\bpython -m ([\w.]+)", line)})


@pytest.mark.parametrize("module", _python_m_modules())
def test_python_m_modules_have_help(module):
    assert "usage:" in _run([sys.executable, "-m", module, "--help"]).stdout


def _python_scripts() -> list[str]:
    return sorted({s for line in _all_shell_lines() for s in re.findall(r"\bpython ([\w/.-]+\.py)\b", line)})


@pytest.mark.parametrize("script", _python_scripts())
def test_python_scripts_have_help(script):
    assert "usage:" in _run([sys.executable, script, "--help"]).stdout


def test_make_targets_and_scripts_exist():
    lines = _all_shell_lines()
    targets = sorted({line.split()[1] for line in lines if line.startswith("make ")})
    scripts = sorted({line.split()[1] for line in lines if line.startswith("bash ")})
    assert targets and scripts
    if shutil.which("make"):
        for target in targets:  # -n: print the recipe, run nothing
            _run(["make", "-n", target])
    for script in scripts:
        _run(["bash", "-n", script])


def test_nnictl_runs_from_the_venv():
    """nni 3.0's nnictl imports pkg_resources: the venv needs a setuptools that still ships it (< 81)."""
    exe = BIN / "nnictl"
    if not exe.is_file():
        pytest.skip(f"nnictl is not installed beside {sys.executable}")
    proc = _run([str(exe), "--help"])
    assert "usage: nnictl" in proc.stdout and "Error" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------------ names
def _dotted_names() -> tuple[list[str], list[str]]:
    """(names, old names): old names are those written in a paragraph that presents them as deprecated."""
    names, old = set(), set()
    for doc in DOCS:
        for paragraph in re.split(r"\n\s*\n", _text(doc)):
            found = set(re.findall(r"\bnni_sparsemask(?:\.\w+)+", paragraph))
            (old if "DeprecationWarning" in paragraph else names).update(found)
    return sorted(names), sorted(old)


CHECK_NAMES = """
import importlib, json, sys, warnings
names, old = json.loads(sys.argv[1])
bad = {}
for name in names + old:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError as err:
            bad[name] = str(err)
    moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and " moved to " in
             str(w.message)]
    if name in old and not moved:
        bad[name] = "documented as an old path, but imports without the DeprecationWarning"
    elif name not in old and moved:
        bad[name] = moved[0]
print(json.dumps(bad))
"""


def test_documented_module_names_import_at_their_place():
    """Every dotted name imports (a module, or an attribute of one) and none is an old, moved module path --
    except in a paragraph about the old paths (with "DeprecationWarning"), where each must warn."""
    names, old = _dotted_names()
    assert "nni_sparsemask.comparison.trial" in names
    out = _run([sys.executable, "-c", CHECK_NAMES, json.dumps([names, old])]).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {}


def test_python_block_imports_run():
    imports = [line for doc in DOCS for lang, body in _blocks(doc) if lang == "python"
               for line in body.splitlines() if re.match(r"(from \S+ )?import ", line)]
    assert imports
    _run([sys.executable, "-c", "\n".join(imports)])


def _repo_paths(doc: str) -> list[str]:
    spans = _inline(doc) + [line for _, body in _blocks(doc) for line in body.splitlines()]
    found = set()
    for span in spans:
        for word in re.findall(r"[\w./-]+", span):
            if re.match(r"(experiments|benchmarks|baselines|analysis|tests|docs|nni_sparsemask)/[\w./-]*$", word):
                found.add(word.rstrip("/."))
    return sorted(found)


@pytest.mark.parametrize("doc", DOCS)
def test_files_named_in_the_documents_exist(doc):
    paths = _repo_paths(doc)
    assert paths
    assert [p for p in paths if not (ROOT / p).exists()] == []
