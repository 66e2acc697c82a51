"""dvc.yaml's code deps are true, and the house is cut by stage.

Each stage lists exactly the project modules its command imports (:func:`absld.code.stage_files`,
the same files its resume fingerprint hashes): a missing dep lets DVC skip a stage whose code
changed (stale results), a needless one reruns stages for nothing. And no package imports a later
stage's: an edit of the analysis can never make DVC retrain or re-evaluate anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from absld.code import NO_RESULT_MODULES, closure, imported_modules, stage_digest, stage_files
from tests.conftest import REPO


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if d.startswith(("absld", "pipeline"))]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", list(stages()))
def test_a_stage_lists_exactly_the_code_its_command_imports(name):
    stage = stages()[name]
    command = stage["cmd"].split()[1]  # "absld distill --method ..." -> distill
    needed = set(stage_files(command, REPO))
    deps = code_deps(stage)
    missing = sorted(f for f in needed if not covered(f, deps))
    assert not missing, f"{name}: imported but not a dep: {missing}"
    needless = [d for d in deps if not any(covered(f, [d]) for f in needed)]
    assert not needless, f"{name}: a dep its command does not import: {needless}"
    listed = {str(p.relative_to(REPO)) for d in deps for p in ([REPO / d] if d.endswith(".py") else (REPO / d).rglob("*.py"))}
    assert listed <= needed, f"{name}: a dep folder holds code the command does not import: {sorted(listed - needed)}"


def test_the_import_closure_follows_relative_and_package_imports():
    files = closure("pipeline.check", REPO)
    assert {"pipeline/check.py", "pipeline/common.py", "absld/params/__init__.py", "absld/params/distill.py",
            "absld/models/__init__.py", "absld/models/small_cnn.py"} <= files
    assert "absld/train/loop.py" not in files and "absld/attacks/pgd.py" not in files
    assert not set(NO_RESULT_MODULES) & set(stage_files("check", REPO))


STAGES = ("train", "evaluate", "analyze")
"""The stage packages in the DAG's order (absld/<name>/); everything else under absld/ is the ground floor."""


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "absld" and parts[1] in STAGES else None


def test_no_package_imports_a_later_stage_and_the_ground_floor_imports_none():
    offences = []
    for path in sorted((REPO / "absld").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        own = package_of(module)
        rank = STAGES.index(own) if own else -1
        for imported in imported_modules(path, REPO):
            other = package_of(imported)
            if other and other != own and STAGES.index(other) > rank:
                offences.append(f"{path.relative_to(REPO)} imports {imported}")
    allowed = {"absld/bench.py", "absld/gpu_check.py"}  # no DVC stages: they time training steps and the attacks together
    offences = [o for o in offences if o.split(" ")[0] not in allowed]
    assert not offences, "a package imports a later stage: " + "; ".join(offences)


def test_stage_packages_keep_their_init_free_of_imports():
    """Importing absld.evaluate.records (the analysis does) must not pull in the attacks."""
    for name in STAGES:
        assert not imported_modules(REPO / "absld" / name / "__init__.py", REPO), f"absld/{name}/__init__.py imports"


def test_training_depends_on_no_evaluation_and_analysis_code():
    for command in ("teacher", "distill"):
        files = stage_files(command, REPO)
        assert not [f for f in files if f.startswith(("absld/evaluate/", "absld/analyze/"))], command
    assert not [f for f in stage_files("evaluate", REPO) if f.startswith(("absld/analyze/", "absld/train/"))]


def test_stage_modules_do_not_import_each_other():
    """A stage command imports the library and pipeline/common, never another command."""
    commands = {f"pipeline.{p.stem}" for p in (REPO / "pipeline").glob("*.py")} - {
        "pipeline.__init__", "pipeline.common", "pipeline.cli"}
    for module in sorted(commands):
        imported = imported_modules(REPO / Path(*module.split(".")).with_suffix(".py"), REPO)
        others = {m for m in imported if any(m == s or m.startswith(s + ".") for s in commands - {module})}
        assert not others, f"{module} imports {sorted(others)}"


def test_pipeline_is_click_only():
    """pipeline/ stays thin: at most 600 lines, no command function over 40 lines (its help text included)."""
    import ast

    total = 0
    for path in sorted((REPO / "pipeline").glob("*.py")):
        text = path.read_text()
        total += len(text.splitlines())
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", getattr(d.func, "id", "")) == "command"
                    for d in node.decorator_list):
                start = min(d.lineno for d in node.decorator_list)
                assert node.end_lineno - start + 1 <= 40, f"{path.name}: {node.name} is {node.end_lineno - start + 1} lines"
    assert total <= 600, f"pipeline/ holds {total} lines"


def test_the_fingerprint_hashes_the_stage_closure_only(tmp_path, monkeypatch):
    """An edit of analysis code leaves training's and evaluation's code digest; an edit of the
    evaluation cascade changes the evaluation's and leaves training's (measured on a copy)."""
    import shutil

    import absld.code as code

    root = tmp_path / "repo"
    for package in ("absld", "pipeline"):
        shutil.copytree(REPO / package, root / package)
    monkeypatch.setattr(code, "PROJECT", root)

    def digests() -> dict[str, str]:
        code.stage_digest.cache_clear()
        return {c: stage_digest(c) for c in ("teacher", "distill", "evaluate", "analyze")}

    before = digests()
    with open(root / "absld/analyze/plots.py", "a") as handle:
        handle.write("\n# an analysis-only edit\n")
    after = digests()
    assert {c for c in before if before[c] != after[c]} == {"analyze"}
    with open(root / "absld/evaluate/cascade.py", "a") as handle:
        handle.write("\n# an evaluation-only edit\n")
    again = digests()
    assert {c for c in after if after[c] != again[c]} == {"evaluate"}
    code.stage_digest.cache_clear()
