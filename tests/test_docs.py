"""The documents: every markdown file the repository cites exists, every relative link of the
README and of docs/ resolves, a cited section exists, and the README stays a manual.

A citation is a file name ending in ``.md`` anywhere in the text of a tracked (or new, not ignored)
source or documentation file, e.g. ``docs/method.md §6`` in a docstring or ``[text](docs/x.md)`` in
markdown. It resolves when the file exists, exactly as spelled, relative to the repository root, to
the citing file's folder, or under ``docs/``. Files the pipeline writes and files outside the
repository are not documents; they are allowed below, each with its reason. No network is used.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
THIS = PurePosixPath(Path(__file__).resolve().relative_to(REPO).as_posix())
SCANNED = (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt")
README_MAX_LINES = 200

# A name ending in .md, not part of a URL or of a longer path (e.g. "docs/method.md", "../x/A.md").
CITATION = re.compile(r"(?<![\w./:@-])((?:\.\.?/)*[A-Za-z0-9_][\w./-]*\.md)(?![\w-])")
# The section numbers that follow a citation: "§6", "§2-3", "§2–§4", "§2, §7".
SECTIONS = re.compile(r"\s*(§\s*\d+(?:\s*(?:[-–,]|and)\s*§?\s*\d+)*)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
NUMBERED_HEADING = re.compile(r"^#{1,6}\s*§?\s*(\d+)[.):\s]", re.M)

# (citing file, name): files a test writes for itself, not documents of the repository.
WRITTEN_BY_TESTS = {
    ("tests/test_io.py", "notes.md"):
        "a non-code file the test writes into a temporary package to show the code digest ignores it",
    ("tests/test_io.py", "absld/notes.md"): "the same file, as the stage's file list would name it",
}


def git_files() -> list[PurePosixPath]:
    """The tracked files and the new files git does not ignore, that exist in the working tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the documents are checked in the repository's clone")
    return sorted({PurePosixPath(name) for name in out.split("\0") if name and (REPO / name).is_file()})


@lru_cache(maxsize=1)
def repository() -> frozenset[PurePosixPath]:
    return frozenset(git_files())


@lru_cache(maxsize=1)
def generated_outputs() -> frozenset[PurePosixPath]:
    """The markdown files DVC's stages write (outs of dvc.yaml): results, not documents."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = set()
    for stage in stages.values():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            name = next(iter(out)) if isinstance(out, dict) else out
            if str(name).endswith(".md"):
                outs.add(PurePosixPath(name))
    return frozenset(outs)


def without_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked, line numbers kept (a '# comment' there is no heading)."""
    return FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)


def normal(path: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(path.as_posix()))


def exists(path: PurePosixPath) -> bool:
    """Is this path (relative to the root) a file or folder of the repository, spelled exactly?"""
    files = repository()
    return path in files or any(path in parent.parents for parent in files) or path == PurePosixPath(".")


def resolve(name: str, citing: PurePosixPath) -> PurePosixPath | None:
    """The repository file a bare citation names, or None."""
    for base in (PurePosixPath("."), citing.parent, PurePosixPath("docs")):
        candidate = normal(base / name)
        if not candidate.as_posix().startswith("..") and candidate in repository():
            return candidate
    return None


def not_a_document(name: str, citing: PurePosixPath) -> str | None:
    """Why a citation that names no repository file is allowed, or None when it is not."""
    if normal(citing.parent / name).as_posix().startswith("..") and name.startswith(".."):
        return "outside the repository (e.g. the team's ../shared/ notes); not a document of it"
    outputs = generated_outputs()
    path = normal(PurePosixPath(name))
    if path in outputs or path.parts[:1] == ("results",):
        return "written by the pipeline under results/ (dvc.yaml outs), not a document"
    if len(path.parts) == 1 and path.name in {out.name for out in outputs}:
        return "the file name of a pipeline output (e.g. ANALYSIS_DIR / 'report.md')"
    return WRITTEN_BY_TESTS.get((citing.as_posix(), name))


def scanned_files() -> list[PurePosixPath]:
    return sorted(path for path in repository() if path.suffix in SCANNED and path != THIS)


def markdown_docs() -> list[PurePosixPath]:
    return sorted(path for path in repository() if path.suffix == ".md"
                  and (path == PurePosixPath("README.md") or path.parts[0] == "docs"))


def citations():
    """(citing file, line number, cited name, text after it) for every citation in scanned files."""
    for path in scanned_files():
        try:
            text = (REPO / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for match in CITATION.finditer(line):
                yield path, number, match.group(1), line[match.end():]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: PurePosixPath) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(without_code_blocks((REPO / path).read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def section_numbers(path: PurePosixPath) -> set[int]:
    return {int(n) for n in NUMBERED_HEADING.findall(without_code_blocks((REPO / path).read_text(encoding="utf-8")))}


def test_readme_is_a_manual_of_at_most_200_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): results, pilots and timings go to docs/")


def test_readme_states_the_test_command_ci_runs_and_every_profile():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "./reproduce.sh test" in readme  # .ci/run runs exactly this
    assert "./reproduce.sh test" in (REPO / ".ci" / "run").read_text()
    profiles = sorted(path.stem for path in (REPO / "conf" / "profile").glob("*.yaml"))
    missing = [name for name in profiles if f"| `{name}` |" not in readme]
    assert not missing, f"profiles of conf/profile/ missing from the README's profile table: {missing}"


def test_every_cited_markdown_file_exists():
    dangling = []
    for path, number, name, _ in citations():
        if resolve(name, path) is None and not_a_document(name, path) is None:
            dangling.append(f"{path}:{number}: {name}")
    assert not dangling, "citations of markdown files that are not in the repository:\n" + "\n".join(dangling)


def test_every_cited_section_exists_in_its_document():
    missing = []
    for path, number, name, after in citations():
        target = resolve(name, path)
        cited = SECTIONS.match(after)
        if target is None or cited is None:
            continue
        have = section_numbers(target)
        for section in map(int, re.findall(r"\d+", cited.group(1))):
            if section not in have:
                missing.append(f"{path}:{number}: {name} §{section} (sections of {target}: {sorted(have)})")
    assert not missing, "cited sections that do not exist:\n" + "\n".join(missing)


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for path in markdown_docs():
        text = without_code_blocks((REPO / path).read_text(encoding="utf-8"))
        for number, line in enumerate(text.splitlines(), start=1):
            for target in LINK.findall(line) + REFERENCE_LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                    continue
                file, _, fragment = target.partition("#")
                linked = normal(path.parent / file) if file else path
                if linked.as_posix().startswith("..") or not exists(linked):
                    broken.append(f"{path}:{number}: {target} (no {linked})")
                elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                    broken.append(f"{path}:{number}: {target} (no heading #{fragment} in {linked})")
    assert not broken, "relative links that do not resolve:\n" + "\n".join(broken)


def test_the_reference_pattern_finds_citations_and_skips_urls_and_globs():
    found = [m.group(1) for m in CITATION.finditer(
        "see docs/method.md §6, [x](docs/x.md), ../shared/A.md; https://github.com/o/r/README.md, docs/*.md")]
    assert found == ["docs/method.md", "docs/x.md", "../shared/A.md"]
    assert SECTIONS.match(" §2–§4 and more").group(1).replace(" ", "") == "§2–§4"
    assert slug("6. The layout before the restructuring") == "6-the-layout-before-the-restructuring"
