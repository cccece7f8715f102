"""The workflow layer owns the use cases that cross stages, and it alone writes the model card."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from conftest import REPO, copy_run
from cxrcore import runs, workflows

SOURCES = sorted([*(REPO / "cxrcore").rglob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "app.py"])


def _imports_of_model_card(path: Path) -> list[int]:
    """Lines of ``path`` that import the model card module (in any form)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if (node.module or "").endswith("model_card") or (
                "model_card" in names and (node.module or "").endswith("evaluation")
            ):
                found.append(node.lineno)
        elif isinstance(node, ast.Import) and any(a.name.endswith("model_card") for a in node.names):
            found.append(node.lineno)
    return found


def test_only_the_workflow_layer_imports_the_model_card_writer():
    importers = {str(path.relative_to(REPO)): lines for path in SOURCES if (lines := _imports_of_model_card(path))}
    assert importers == {"cxrcore/workflows.py": importers.get("cxrcore/workflows.py")}, importers
    assert importers["cxrcore/workflows.py"]  # and it does


def test_no_stage_or_page_calls_write_on_the_card():
    """``model_card.write`` is called in workflows.write_card and nowhere else."""
    calls = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "write"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "model_card"
            ):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert len(calls) == 1 and calls[0].startswith("cxrcore/workflows.py:"), calls


def test_a_trained_run_is_complete_with_its_audit_and_a_card_that_says_it_succeeded(separable_run, tmp_path):
    run = separable_run.run
    info = run.info()
    assert info["status"] == "succeeded" and info["finish_seconds"] >= 0
    assert run.audit() is not None and run.audit()["images"] == 60  # the training data's audit, recorded
    card = run.model_card()
    assert "Status: succeeded." in card and "- Data audit: " in card
    # evaluating the run again rewrites the card from the recorded facts: the same sections, the same audit
    copy = copy_run(run, tmp_path)
    copy.file(runs.MODEL_CARD).unlink()
    result = workflows.evaluate(copy.path)
    assert result["n"] == 18 and copy.model_card() is not None
    assert copy.model_card().split("## Data", 1)[1] == card.split("## Data", 1)[1]


def test_finish_seconds_runs_from_the_last_epoch_to_the_complete_run(tmp_path, monkeypatch):
    """Loading the best model, finishing, the external sets and the card all count (each stubbed to take a
    known time here: 0.2 + 0.2 + 0.3 + 0.3 s)."""
    run = runs.RunDir(tmp_path / "run")
    run.path.mkdir()
    calls = []

    def takes(seconds, result=None):
        def stub(*args, **kwargs):
            calls.append(seconds)
            time.sleep(seconds)
            return result

        return stub

    monkeypatch.setattr(workflows, "load_model", takes(0.2, "model"))
    monkeypatch.setattr(workflows, "finish_training", takes(0.2, {"inference_ms_per_image": 1.0}))
    monkeypatch.setattr(workflows, "evaluate_external", takes(0.3))
    monkeypatch.setattr(workflows, "write_card", takes(0.3))
    monkeypatch.setattr(runs.RunDir, "config", lambda self: None)
    hooks = workflows.training_hooks()
    assert hooks["finish"](run, None) == {"inference_ms_per_image": 1.0}
    hooks["complete"](run)
    assert calls == [0.2, 0.2, 0.3, 0.3]
    assert 1.0 <= run.info()["finish_seconds"] < 5.0
