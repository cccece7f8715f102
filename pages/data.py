"""Data: pick a dataset; its classes or findings, splits, image formats, samples, augmentation, leakage, shortcuts
and sources."""

import pandas as pd
import streamlit as st

from cxrcore.config import AugmentConfig
from cxrcore.data.findings import FINDING_PREFIX, MIN_POSITIVES, NO_FINDING
from cxrcore.data.findings_summary import findings_summary, positives, split_table
from cxrcore.data.io import prepare_image
from cxrcore.data.pixels import PixelRules
from cxrcore.data.sources import NO_TRANSFER
from cxrcore.evaluation import plots
from pages.shared import (
    CXRError,
    current_dataset,
    dataset_audit,
    dataset_list_builder,
    demo_dir,
    findings_as_chosen,
    findings_demo,
    findings_demo_dir,
    load_index,
    reading_options,
    recent_datasets,
    require_app,
    set_dataset,
    show_error,
    split_preview,
    synthetic_banner,
)

require_app()
st.title("Data")

# -- which dataset ---------------------------------------------------------------------------
with st.expander("Open a dataset", expanded=False):
    st.caption(
        "A local folder in any supported layout: class folders, train/val/test folders, the COVID-19 "
        "Radiography Database, a CSV manifest (path,label[,patient_id][,split]) or a JSON dataset list; or a "
        "findings dataset as distributed: NIH ChestX-ray14 (Data_Entry_2017.csv and its images_0NN folders), "
        "CheXpert (train.csv, valid.csv) or a path,labels manifest (findings separated by |)."
    )
    demo, findings_demo_path = str(demo_dir()), str(findings_demo_dir())
    demos = {demo: "synthetic demo", findings_demo_path: "synthetic findings demo"}
    choices = [demo, findings_demo_path] + [p for p in recent_datasets() if p not in demos]
    recent = st.selectbox(
        "Recently used",
        choices,
        key="data_recent",
        format_func=lambda p: f"{p} ({demos[p]})" if p in demos else p,
    )
    typed = st.text_input("...or a folder / CSV path", key="data_path", placeholder="/data/chest_xray")
    if st.button("Open", key="data_open", type="primary"):
        chosen = typed.strip() or recent
        set_dataset(findings_demo(chosen) if chosen == findings_demo_path else chosen)
        st.rerun()

with st.expander("Combine datasets (a dataset list)", expanded=False):
    saved = dataset_list_builder("data_list")
    if saved:
        set_dataset(saved)
        st.rerun()

path = current_dataset()
try:
    index, info = load_index(path)
except CXRError as exc:  # a missing folder, an empty class, an unreadable image
    st.subheader(path)
    show_error(exc)
    st.stop()

st.subheader(path)
synthetic_banner(path)
findings = info["task"] == "findings"
options = reading_options(path)
if findings:
    st.markdown("**How the findings are read** (the Train page trains on the same choice)")
    options, index, info = findings_as_chosen(path, index, info, "data")

cols = st.columns(5)
cols[0].metric("Images", f"{info['images']:,}")
cols[2].metric("Patients known", f"{info['patients']:,}")
cols[4].metric("Layout", info["layout"])
split = split_preview(path, options=options if findings else None)
if findings:
    cols[1].metric("Findings", len(info["findings"]))
    cols[3].metric(f"{NO_FINDING} (all negative)", f"{info['all_negative_share']:.0%}")
    st.caption(
        f"Read from `{info['csv']}`. Test split: {info['official_split'] or 'none of its own; carved out by patient'}."
    )
    if info["missing"]:
        st.warning(
            f"{info['missing']:,} listed image(s) are not on disk and were skipped (a partial download?), e.g. "
            f"{', '.join(info['missing_examples'])}."
        )
    if info["views_left_out"]:
        st.info(f"{info['views_left_out']:,} film(s) left out by the views chosen ({options.views}).")
    if info["ignored_csvs"]:
        st.info(f"Also found {', '.join(info['ignored_csvs'])}: not read. Open a CSV itself to choose it.")
else:
    cols[1].metric("Classes", len(info["classes"]))
    cols[3].metric("Imbalance (largest / smallest)", f"{info['imbalance_ratio']:.2f}")


def show_findings(split) -> None:
    """Per finding: positives per split and prevalence, the rare ones named; findings per image; co-occurrence."""
    table = positives(split)
    st.plotly_chart(
        plots.findings_positives(table, title="Positive images per finding and split (as training would split)"),
        width="stretch",
    )
    wide = split_table(split)
    if not wide["left out"].any():
        wide = wide.drop(columns="left out")
    st.dataframe(wide, width="stretch", column_config={"prevalence": st.column_config.NumberColumn(format="percent")})
    st.caption(
        "Splits: by patient, each finding kept in validation and test where the data allows, seed 42, 80/10/10 "
        "unless the dataset has its own test split. Prevalence among the images where the finding is labelled."
    )
    summary = findings_summary(split)
    if summary["too_few"]:
        st.warning(
            f"Too few positive images to train or measure (fewer than {MIN_POSITIVES} in a split): "
            + "; ".join(f"{name} ({', '.join(where)})" for name, where in summary["too_few"].items())
        )
    left, right = st.columns(2)
    left.plotly_chart(plots.findings_per_image(summary["findings_per_image"]), width="stretch")
    right.plotly_chart(plots.co_occurrence(pd.DataFrame(summary["co_occurrence"])), width="stretch")


# -- classes (or findings) and splits --------------------------------------------------------
if findings:
    show_findings(split)
else:
    left, right = st.columns([3, 2])
    left.plotly_chart(
        plots.class_distribution(split, title="Images per class and split (as training would split)"), width="stretch"
    )
    table = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    table["total"] = table.sum(axis=1)
    right.dataframe(table, width="stretch")
    right.caption(
        "Splits: stratified per class, seed 42, 80/10/10 unless the layout has its own; grouped by "
        "patient where patient ids are known."
    )

left, right = st.columns(2)
left.plotly_chart(plots.image_sizes(index), width="stretch")
right.plotly_chart(plots.image_modes(index), width="stretch")

# -- sample grid -----------------------------------------------------------------------------
st.subheader("Samples")
per_page = 12
c1, c2 = st.columns([2, 1])
if findings:
    shown = c1.selectbox("Finding", [*info["findings"], NO_FINDING], key="data_finding")
    held = index["label"] == NO_FINDING if shown == NO_FINDING else index[FINDING_PREFIX + shown] > 0.5
    paths = index.loc[held, "path"].tolist()
    sets = dict(zip(index["path"], index["label"]))
else:
    label = c1.selectbox("Class", sorted(index["label"].unique()), key="data_class")
    paths = index.loc[index["label"] == label, "path"].tolist()
    sets = {}
pages = max(1, (len(paths) + per_page - 1) // per_page)
page = c2.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key="data_page")
grid = st.columns(6)
for i, image_path in enumerate(paths[(page - 1) * per_page : page * per_page]):
    try:
        name = image_path.rsplit("/", 1)[-1]
        caption = f"{name}: {sets[image_path]}" if sets else name
        grid[i % 6].image(prepare_image(image_path, 160), caption=caption, width="stretch")
    except CXRError as exc:
        grid[i % 6].error(str(exc))

# -- augmentation preview --------------------------------------------------------------------
st.subheader("What the model sees: pixel rules and augmentation")
st.caption(
    "What training-time augmentation does to one image. X-rays are not left-right symmetric "
    "(the heart is on the left), so a flip is a choice, not a default."
)
a = st.columns(5)
augment = AugmentConfig(
    flip=a[0].checkbox("Flip", key="data_aug_flip"),
    rotation=a[1].slider("Rotation (deg)", 0, 30, 10, key="data_aug_rot"),
    zoom=a[2].slider("Zoom", 0.0, 0.3, 0.1, key="data_aug_zoom"),
    contrast=a[3].slider("Contrast", 0.0, 0.5, 0.1, key="data_aug_contrast"),
    brightness=a[4].slider("Brightness", 0.0, 0.5, 0.1, key="data_aug_bright"),
)
b = st.columns([1, 1, 1, 1, 2])
pixels = PixelRules(
    crop_border=b[0].slider("Crop border (per side)", 0.0, 0.35, 0.0, 0.05, key="data_pix_crop"),
    equalize=b[1].checkbox("Equalise histogram", key="data_pix_equalize"),
    lung_crop=b[2].checkbox("Crop to the lungs", key="data_pix_lung_crop"),
    lung_mask=b[3].checkbox("Black out outside the lungs", key="data_pix_lung_mask"),
)
b[4].caption(
    "Pixel rules (Train page; `--crop-border`, `--equalize`, `--lung-crop`, `--lung-mask`) apply to every "
    "image a run's model sees, in training and after; augmentation applies in training only."
)
if paths:
    from cxrcore.training.pipeline import augment_preview

    versions = augment_preview(
        paths[0], 192, augment, n=5, seed=int(st.session_state.get("data_aug_seed", 0)), pixels=pixels
    )
    row = st.columns(len(versions))
    first = "as the model sees it" if pixels.is_default else f"with pixel rules ({pixels.describe()})"
    for i, (col, image) in enumerate(zip(row, versions)):
        col.image(image, caption=first if i == 0 else f"augmented {i}", width="stretch")
    if st.button("New random draw", key="data_aug_redraw"):
        st.session_state["data_aug_seed"] = int(st.session_state.get("data_aug_seed", 0)) + 1
        st.rerun()

# -- leakage ---------------------------------------------------------------------------------
st.subheader("Leakage checks")
st.caption("A patient, or an identical file, on both sides of the train/test line inflates every metric.")
from cxrcore.data.splits import duplicate_report, leakage_report  # noqa: E402

leaks = leakage_report(split)
if info["patients"] == 0:
    st.info(
        "No patient ids in this dataset (no manifest column, no known file-name pattern): patient "
        "leakage cannot be checked."
    )
elif leaks.empty:
    unknown = int((index["patient_id"] == "").sum())
    st.success(
        f"No patient appears in more than one split ({info['patients']:,} patients with known ids checked"
        + (f"; {unknown:,} images have no patient id and cannot be checked)." if unknown else ").")
    )
else:
    st.error(f"{len(leaks)} patient(s) have images in more than one split.")
    st.dataframe(leaks, width="stretch")
if st.button("Look for duplicate files (reads every image)", key="data_dups"):
    bar = st.progress(0.0, text="hashing images...")
    dups = duplicate_report(split, progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total}"))
    bar.empty()
    if dups.empty:
        st.success("No byte-identical duplicates.")
    else:
        cross = int(dups.loc[dups["cross_split"], "hash"].nunique())
        (st.error if cross else st.warning)(
            f"{dups['hash'].nunique()} groups of identical files; {cross} of them span more than one split."
        )
        st.dataframe(dups, width="stretch")

# -- shortcut check --------------------------------------------------------------------------
st.subheader("Shortcut check")
st.caption(
    "Can the labels be told apart without looking at the lungs? A small classifier sees only statistics "
    "of each image that carry no anatomy (intensity histogram and percentiles, the border band, size, pixel "
    "format); its accuracy, cross-validated by patient, is compared with chance (the largest class's share). "
    "Well above chance, the classes differ by how their images were made, and a model can learn that instead "
    "of the disease. The second check sees only the pixels outside the lung fields (found by the built-in lung "
    "model): whether the frame alone predicts the label. Computed once per dataset, then cached."
)


def show_shortcut(shortcut: dict) -> None:
    if shortcut["accuracy"] is None:
        st.info(f"No shortcut check: {shortcut['message']}.")
        return
    outside = shortcut.get("outside_lungs") or {}
    checks = (
        ("Whole image", "Accuracy from image statistics alone", shortcut),
        ("Outside the lungs only", "Accuracy from outside the lungs alone", outside),
    )
    for title, label, check in checks:
        if check.get("accuracy") is None:
            continue
        st.markdown(f"**{title}**")
        cols = st.columns(3)
        cols[0].metric(label, f"{check['accuracy']:.2f}")
        cols[0].caption(f"95% CI {check['ci_low']:.2f}–{check['ci_high']:.2f} ({check['folds']}-fold, by patient)")
        cols[1].metric("Chance", f"{check['chance']:.2f}")
        cols[2].metric("Above chance", f"{check['accuracy'] - check['chance']:+.2f}")
        (st.error if check["flagged"] else st.success)(check["message"])
    if outside.get("lungs_not_found"):
        st.caption(
            f"The lung model did not find two lungs in {outside['lungs_not_found']} of {outside['images']} images; "
            "for those, only what it found (or nothing) was left out."
        )


def show_sources(result: dict) -> None:
    st.subheader("Per source")
    st.caption(
        "Where each class comes from (a manifest's source, source_repo, hospital or site column). When a class "
        "comes from a source of its own, a model can learn the source (its scanner, exposure, markers) instead "
        "of the finding, and will not transfer to another hospital. The source check asks, within each class, "
        "whether the image statistics tell the sources apart (cross-validated by patient, on the shortcut "
        "check's sample)."
    )
    table = result.get("sources")
    if table:
        rows = []
        for row in table:
            line = {"source": row["source"], "images": row["images"]}
            for label, n in row["counts"].items():
                line[label] = n
                line[f"{label} share"] = f"{row['prevalence'][label]:.0%}"
            rows.append({**line, "single class": "yes" if row["single_class"] else ""})
        st.dataframe(pd.DataFrame(rows).set_index("source"), width="stretch")
    auc = result.get("source_only_auc")
    check = result.get("source_check")
    if auc is not None:
        st.metric("Source-only AUC (the source alone predicting the label)", f"{auc:.2f}")
        st.caption("1.00: each class comes from sources of its own; 0.50: every source holds the same class mix.")
    if check:
        st.markdown("**Source check: can the source be read off the image, within each class?**")
        checked = [c for c in check["classes"] if c["checked"]]
        if checked:
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "class": c["class"],
                            "sources": ", ".join(f"{s} ({n})" for s, n in c["sources"].items()),
                            "balanced accuracy": round(c["balanced_accuracy"], 2),
                            "95% CI": f"{c['ci_low']:.2f}–{c['ci_high']:.2f}",
                            "chance": round(c["chance"], 2),
                            "flagged": "yes" if c["flagged"] else "",
                        }
                        for c in checked
                    ]
                ).set_index("class"),
                width="stretch",
            )
        (st.warning if check["flagged"] else st.info)(check["message"])
        st.caption(f"Features: {check['features']}.")
    for sentence in result.get("verdict") or []:
        if check and sentence in check["message"]:
            continue  # the source check's finding, shown above
        (st.warning if NO_TRANSFER in sentence else st.info)(sentence)


@st.fragment
def shortcut_section() -> None:
    try:
        with st.spinner("Checking for shortcuts: reads every image once (about 10 s per 1,000 images)..."):
            result = dataset_audit(path, options if findings else None)
    except CXRError as exc:
        show_error(exc)
        return
    show_shortcut(result["shortcut"])
    show_sources(result)


shortcut_section()
