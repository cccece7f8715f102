"""What the pages share: the current dataset, cached cxrcore objects, the sidebar, empty states.

Heavy objects are cached with ``st.cache_resource`` keyed by a path (and the file's
modification time, so a retrained model is picked up); data with ``st.cache_data``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import streamlit as st

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrcore import runs as run_files  # noqa: E402  (after the environment is set)
from cxrcore.config import BLANK_POLICIES, UNCERTAIN_POLICIES, VIEWS, FindingsOptions  # noqa: E402
from cxrcore.data.demo import is_synthetic, make_demo_dataset, make_findings_demo  # noqa: E402
from cxrcore.data.index import build_index, cache_dir, labels_of, save_dataset_list, summarize  # noqa: E402
from cxrcore.errors import CXRError  # noqa: E402

_APP_STARTED = False


def mark_app_started() -> None:
    """Called by app.py once its st.navigation is set up."""
    global _APP_STARTED
    _APP_STARTED = True


def require_app() -> None:
    """Every page runs under app.py's navigation. When the first request a fresh server gets
    is a page URL (a bookmark), Streamlit's legacy ``pages/``-folder mode runs that page on
    its own, without app.py; switch it off and rerun through app.py, which keeps the URL's page."""
    if not _APP_STARTED:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
        st.rerun()


def demo_dir() -> Path:
    """Where the built-in demo data lives (``CXRLAB_DEMO_DATA`` moves it)."""
    return Path(os.environ.get("CXRLAB_DEMO_DATA") or REPO / "data" / "demo")


def findings_demo_dir() -> Path:
    """Where the built-in findings demo lives: beside the demo data (``<demo>-findings``)."""
    base = demo_dir()
    return base.with_name(f"{base.name}-findings")


@st.cache_resource(show_spinner="Making the synthetic findings demo (first use only)...")
def findings_demo(path: str) -> str:
    """The built-in findings demo (several drawn findings per image, clearly marked), made on first use."""
    folder = Path(path)
    if not (is_synthetic(folder) and (folder / "manifest.csv").is_file()):
        make_findings_demo(folder)
    return str(folder)


NOTICE = (
    "Research software, not a medical device: its outputs are not a diagnosis and must not be used for patient care."
)


@st.cache_resource(show_spinner="Making the synthetic demo dataset (first start only)...")
def demo_dataset(path: str) -> str:
    """The built-in demo data, generated on first use (synthetic drawings, clearly marked)."""
    folder = Path(path)
    if not (is_synthetic(folder) and any(folder.glob("*/*.png"))):
        make_demo_dataset(folder)
    return str(folder)


def current_dataset() -> str:
    """The dataset the pages work on: the user's choice, else the demo data."""
    return st.session_state.get("dataset") or demo_dataset(str(demo_dir()))


def set_dataset(path: str) -> None:
    st.session_state["dataset"] = str(Path(path).expanduser().resolve())
    remember_dataset(path)


# The dashboard's memory of datasets opened recently (not the library's business): a small
# JSON list in the cache folder, so every browser session and restart offers them.
def _recent_file() -> Path:
    return cache_dir() / "recent.json"


def recent_datasets(limit: int = 8) -> list[str]:
    """Datasets opened recently (newest first) that still exist."""
    try:
        items = json.loads(_recent_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in items if isinstance(p, str) and Path(p).exists()][:limit]


def remember_dataset(path: str | os.PathLike, limit: int = 8) -> list[str]:
    """Put ``path`` first in the recent-datasets list."""
    path = str(Path(path).expanduser().resolve())
    items = [path] + [p for p in recent_datasets(limit * 2) if p != path]
    target = _recent_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(items[:limit]))
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache folder: the list is a convenience, never an error
    return items[:limit]


def reading_options(path: str) -> FindingsOptions:
    """How the Data page reads this dataset's findings (its widgets' choice for this dataset; default
    otherwise): uncertain and blank labels, the findings and views kept."""
    chosen = st.session_state.get("findings_options") or {}
    if chosen.get("path") != path:
        return FindingsOptions()
    return FindingsOptions.from_dict({k: v for k, v in chosen.items() if k != "path"})


def set_reading_options(path: str, options: FindingsOptions) -> None:
    st.session_state["findings_options"] = {"path": path, **options.to_dict()}


def reading_options_widgets(path: str, available: list[str], prefix: str) -> FindingsOptions:
    """The widgets that choose how a findings dataset is read (uncertain and blank labels, views, the findings
    kept), keyed ``<prefix>_uncertain``... The choice is the dashboard's for this dataset (:func:`reading_options`):
    the Data and Train pages show and change the same one. A change is remembered and the page reruns; returns
    the options in force."""
    options = reading_options(path)
    c = st.columns([1, 1, 1, 3])
    chosen = FindingsOptions(
        uncertain=c[0].selectbox(
            "Uncertain labels (-1)",
            UNCERTAIN_POLICIES,
            index=UNCERTAIN_POLICIES.index(options.uncertain),
            key=f"{prefix}_uncertain",
            help="ignore: left out of the loss and the metrics for that finding; ones: positive; zeros: "
            "negative (the CheXpert paper's U-Ignore, U-Ones, U-Zeros). NIH has no uncertain labels.",
        ),
        blank=c[1].selectbox(
            "Blank labels",
            BLANK_POLICIES,
            index=BLANK_POLICIES.index(options.blank),
            key=f"{prefix}_blank",
            help="CheXpert leaves most labels blank: negative (as most CheXpert work) or ignore.",
        ),
        views=c[2].selectbox(
            "Views", VIEWS, index=VIEWS.index(options.views), key=f"{prefix}_views", help="needs a view column"
        ),
        findings=tuple(
            c[3].multiselect(
                "Findings kept (none chosen: all)",
                available,
                default=[f for f in options.findings if f in available],
                key=f"{prefix}_findings",
            )
        ),
        labels_column=options.labels_column,  # not a widget here: kept as chosen
    )
    if chosen != options:
        set_reading_options(path, chosen)
        st.rerun()
    return options


def findings_as_chosen(
    path: str, index: pd.DataFrame, info: dict, prefix: str
) -> tuple[FindingsOptions, pd.DataFrame, dict]:
    """The reading widgets (:func:`reading_options_widgets`), then ``(options, index, info)`` of the dataset read
    under the options chosen (``index`` and ``info`` as they are for the default ones). An error (``--views`` on
    a dataset without a view column) is shown and the page stops."""
    options = reading_options_widgets(path, info["available_findings"], prefix)
    if options.is_default:
        return options, index, info
    try:
        index, info = load_index(path, options)
    except CXRError as exc:
        show_error(exc)
        st.stop()
    return options, index, info


@st.cache_data(show_spinner="Reading the dataset...", ttl=300, max_entries=16)
def load_index(path: str, options: FindingsOptions | None = None) -> tuple[pd.DataFrame, dict]:
    """The index and its summary (raises CXRError for data that cannot be read)."""
    index = build_index(path, options=options)
    return index, summarize(index)


@st.cache_data(show_spinner=False, ttl=300, max_entries=16)
def dataset_audit(path: str, options: FindingsOptions | None = None) -> dict:
    """The data audit (cxrcore.data.audit; cached on disk per dataset too)."""
    from cxrcore.data.audit import audit

    return audit(path, options=options)


@st.cache_data(show_spinner=False, ttl=300, max_entries=16)
def split_preview(
    path: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    options: FindingsOptions | None = None,
) -> pd.DataFrame:
    """The split training would use with these settings."""
    from cxrcore.data.splits import assign_splits

    index, _ = load_index(path, options)
    return assign_splits(index, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def _predictor(run_dir: str, model_mtime: float):
    from cxrcore.predict import Predictor

    return Predictor(run_dir)


def predictor(run_dir: str):
    return _predictor(run_dir, _mtime(Path(run_dir) / run_files.MODEL))


@st.cache_resource
def job_store(db_path: str):
    from cxrcore.jobs.store import JobStore

    return JobStore(db_path)


def jobs():
    from cxrcore.jobs.store import default_db

    return job_store(str(default_db()))


def trained_runs() -> list[dict]:
    """Runs that have a model, newest first."""
    return [r for r in run_files.list_runs() if r["has_model"]]


def run_label(run: dict) -> str:
    """A run in a picker: its name, id, backbone and headline (accuracy; a findings run's mean AUC), with the
    headline's 95% interval."""
    findings = run.get("task") == "findings"
    value, ci = (
        (run.get("mean_auc"), run.get("mean_auc_ci")) if findings else (run.get("accuracy"), run.get("accuracy_ci"))
    )
    ci = ci or {}
    shown = (
        ""
        if value is None
        else f" · {'mean AUC' if findings else 'acc'} {value:.3f}"
        + (f" ({ci['ci_low']:.2f}–{ci['ci_high']:.2f})" if ci.get("ci_low") is not None else " (no CI)")
    )
    name = f"{run['name']} · " if run.get("name") else ""
    return f"{name}{run['run_id']} · {run['backbone']}{' · findings' if findings else ''}{shown}"


def pick_run(key: str, label: str = "Model (run)") -> dict | None:
    """A run selector; shows what to do next when there is no trained model yet."""
    runs = trained_runs()
    if not runs:
        no_models()
        return None
    return st.selectbox(label, runs, format_func=run_label, key=key)


def no_models() -> None:
    st.info(
        "No trained model yet. Train one on the **Train** page (a small CNN on the demo data takes "
        "about a minute on a CPU), or point `CXRCORE_MODELS` at a folder of runs."
    )
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")


def show_error(exc: Exception) -> None:
    """A CXRError is the user's to fix: show its message; anything else also gets the type."""
    st.error(str(exc) if isinstance(exc, CXRError) else f"{type(exc).__name__}: {exc}", icon=":material/error:")


def synthetic_banner(path: str) -> None:
    if is_synthetic(path):
        st.warning(
            "**Synthetic demo data**: drawings made by `cxrcore.data.demo` so the app works with nothing "
            "downloaded. They are not radiographs and have no clinical meaning. Open a real dataset "
            "on the Data page.",
            icon=":material/science:",
        )


def sidebar() -> None:
    with st.sidebar:
        path = current_dataset()
        st.caption("Dataset")
        st.markdown(f"`{Path(path).name}`" + (" (synthetic demo)" if is_synthetic(path) else ""))
        try:
            store = jobs()
            running, queued = store.count("running"), store.count("queued")
            if running or queued:
                st.caption(f"Jobs: {running} running, {queued} queued")
        except CXRError as exc:  # a busy or unreadable job database must not take a page down
            st.caption(f"Jobs: unavailable ({exc})")
        st.caption(NOTICE)


__all__ = [
    "require_app",
    "mark_app_started",
    "CXRError",
    "NOTICE",
    "current_dataset",
    "set_dataset",
    "load_index",
    "reading_options",
    "set_reading_options",
    "reading_options_widgets",
    "findings_demo",
    "findings_demo_dir",
    "split_preview",
    "dataset_audit",
    "predictor",
    "jobs",
    "trained_runs",
    "run_label",
    "pick_run",
    "no_models",
    "show_error",
    "synthetic_banner",
    "recent_datasets",
    "demo_dir",
    "analyse",
]


def analyse(
    run_dir: str,
    name: str,
    data: bytes,
    method: str,
    colormap: str,
    alpha: float,
    operating_point: str,
    class_index: int | None = None,
) -> dict:
    """One upload through one run, with the run's Predictor kept for the session (cached by its path):
    :func:`cxrcore.workflows.analyse` (raises ImageDecodeError)."""
    from cxrcore import workflows

    return workflows.analyse(
        predictor(run_dir),
        data,
        name=name,
        method=method,
        operating_point=operating_point,
        colormap=colormap,
        alpha=alpha,
        class_index=class_index,
    )


def dataset_list_builder(key: str) -> str | None:
    """Combine datasets into a dataset list: pick them, name each source, map its labels (or leave a label
    out), weigh it, and save the list as JSON. Returns the saved list's path (once), else None."""
    st.caption(
        "Several datasets trained as one: each image keeps its source (a dataset's own source column, else "
        "the name given here). Map labels to shared class names; a label left out is not used."
    )
    choices = [p for p in recent_datasets(16) if not p.endswith(".json")]
    picked = st.multiselect("Datasets", choices, key=f"{key}_picked", placeholder="recently opened datasets")
    extra = st.text_input("...and another folder / CSV path", key=f"{key}_extra", placeholder="/data/montgomery")
    if extra.strip():
        picked = [*picked, extra.strip()]
    entries = []
    for i, path in enumerate(picked):
        try:
            labels = list_labels(path)
        except CXRError as exc:
            show_error(exc)
            continue
        with st.container(border=True):
            left, right = st.columns([3, 1])
            name = left.text_input("Source name", Path(path).stem, key=f"{key}_name_{i}", help=path)
            weight = right.number_input("Weight", 0.1, 10.0, 1.0, 0.1, key=f"{key}_weight_{i}")
            table = st.data_editor(
                pd.DataFrame({"label": labels, "class": labels, "leave out": [False] * len(labels)}),
                key=f"{key}_labels_{i}",
                hide_index=True,
                disabled=["label"],
                width="stretch",
            )
        mapping = {
            row["label"]: (None if row["leave out"] else str(row["class"]).strip() or row["label"])
            for row in table.to_dict("records")
            if row["leave out"] or (str(row["class"]).strip() or row["label"]) != row["label"]
        }
        entries.append({"path": path, "name": name.strip() or Path(path).stem, "labels": mapping, "weight": weight})
    target = st.text_input("Save the list as", str(demo_dir().parent / "lists" / "datasets.json"), key=f"{key}_save")
    if st.button("Save the list", key=f"{key}_save_go", disabled=not entries):
        try:
            saved = save_dataset_list(target, entries)
        except CXRError as exc:
            show_error(exc)
            return None
        st.success(f"Saved {saved}: {len(entries)} dataset(s).")
        return str(saved)
    return None


@st.cache_data(show_spinner=False, ttl=300, max_entries=32)
def list_labels(path: str) -> list[str]:
    """The labels of a dataset (its layout only, no image read)."""
    return labels_of(path)


def labels_column_input(where, key: str, label: str = "Labels column") -> str:
    """The text box naming a manifest's column of findings (``--labels-column``), stripped; "" reads the
    dataset as a findings dataset of its own. ``where``: ``st`` or a column."""
    return where.text_input(
        label,
        key=key,
        placeholder="e.g. nih_labels",
        help="A manifest's column of findings (separated by |, 'No Finding' for none), when the dataset is not a "
        "findings dataset of its own. Empty: read it as one.",
    ).strip()
