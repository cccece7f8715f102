"""Whether a run learned anything, said plainly.

A model that calls every image "Normal" has a confusion matrix, an accuracy and curves
like any other; shown as a result, it misleads. :func:`learned_nothing` looks at what
the run's own files say (its test predictions, its validation accuracy per epoch and its
configuration) and returns a sentence naming what went wrong and the likely causes, or
None when the run learned something.
"""

from __future__ import annotations

import numpy as np

from ..errors import CXRError
from ..runs import RunDir

#: predictions "collapse" when one class takes at least this share of them
COLLAPSE_SHARE = 0.95
#: validation accuracy "never left" the majority rate when its best is at most this far above it
MAJORITY_MARGIN = 0.01
#: epochs a run needs before its validation accuracy is judged
MIN_EPOCHS = 3
#: a findings model "never left" chance when its best mean validation AUC is at most this far above 0.5
CHANCE_MARGIN = 0.02


def _causes(run: RunDir) -> list[str]:
    members = run.members()
    if members:  # an ensemble learns nothing of its own: its members did or did not
        weak = [m.run_id for m in members if learned_nothing(m) is not None]
        return [f"members that learned nothing ({', '.join(weak)})"] if weak else ["members that all call one class"]
    try:
        config = run.config()
    except CXRError:  # a run without a readable config: no causes to name
        return []
    causes = []
    if config.weights == "none" and config.backbone != "simple_cnn":
        causes.append(f"no pretrained weights ({config.backbone} trained from scratch)")
    if config.epochs + config.fine_tune_epochs < 5:
        causes.append(f"too few epochs ({config.epochs} + {config.fine_tune_epochs})")
    if config.learning_rate > 1e-2:
        causes.append(f"a learning rate too high ({config.learning_rate:g})")
    return causes or ["too few epochs, a learning rate too high, or no pretrained weights"]


def learned_nothing(run: RunDir) -> str | None:
    """A plain sentence when the run's test predictions collapse to one class or its validation
    accuracy never left the majority-class rate; None otherwise (or when there is too little to
    judge). A findings run is judged on its mean validation AUC over findings (``val_auc``): it learned
    nothing when that never left chance (0.5). Works on a run still training (history only)."""
    findings = []
    metrics = run.metrics()
    if metrics and len(metrics.get("classes", [])) > 1:
        predicted = np.asarray(metrics["confusion_matrix"]).sum(axis=0)
        top = int(predicted.argmax())
        if predicted.sum() and predicted[top] >= COLLAPSE_SHARE * predicted.sum():
            findings.append(
                f"it calls {predicted[top] / predicted.sum():.0%} of the test images {metrics['classes'][top]}"
            )
    history = run.history()
    if len(history) >= MIN_EPOCHS and "val_accuracy" in history and run.file("split.csv").exists():
        split = run.split()
        val = split.loc[split["split"] == "val", "label"]
        if len(val):
            majority = float(val.value_counts(normalize=True).max())
            best = float(history["val_accuracy"].max())
            if best <= majority + MAJORITY_MARGIN:
                findings.append(
                    f"its validation accuracy never rose above {best:.2f}, the share of the largest class "
                    f"({majority:.2f}) in {len(history)} epochs"
                )
    if len(history) >= MIN_EPOCHS and run.task() == "findings" and "val_auc" in history:
        best = float(history["val_auc"].max())
        if best <= 0.5 + CHANCE_MARGIN:
            findings.append(
                f"its mean validation AUC over findings never rose above {best:.2f} (0.50 is chance) "
                f"in {len(history)} epochs"
            )
    if not findings:
        return None
    ranks = run.task() == "findings"
    guess = "that ranks images at random" if ranks else "that guesses one class"
    return (
        "This run learned nothing: "
        + "; ".join(findings)
        + f". Its metrics are those of a model {guess}, not a result. Likely causes: "
        + "; ".join(_causes(run))
        + "."
    )


def transfer_drop(internal: dict, external: dict) -> str | None:
    """A plain sentence when a metric on external data falls below the internal test split's by
    more than their 95% intervals explain (the intervals do not overlap); None otherwise. Class runs:
    accuracy and macro AUC; findings runs (``task`` ``"findings"``): the mean AUC over the findings each
    evaluation measured."""
    findings = "findings" in (internal.get("task"), external.get("task"))
    drops = []
    for key, name in (
        (("mean_auc", "mean AUC"),) if findings else (("accuracy", "accuracy"), ("macro_auc", "macro AUC"))
    ):
        inside, outside = internal.get("ci", {}).get(key) or {}, external.get("ci", {}).get(key) or {}
        if outside.get("ci_high") is not None and inside.get("ci_low") is not None:
            if outside["ci_high"] < inside["ci_low"]:
                drops.append(
                    f"{name} {external[key]:.3f} (95% CI {outside['ci_low']:.3f}-{outside['ci_high']:.3f}) against "
                    f"{internal[key]:.3f} ({inside['ci_low']:.3f}-{inside['ci_high']:.3f}) inside"
                )
    if not drops:
        return None
    return (
        "On this data the model does worse than on its own test split by more than chance explains: "
        + "; ".join(drops)
        + ". It does not transfer as it is: the images differ from the training data (source, scanner, "
        "processing, population). Trust the external figure, not the internal one, for data like this."
    )
