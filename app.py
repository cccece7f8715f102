"""CXR Lab dashboard: `streamlit run app.py`.

Navigation over the five pages and the sidebar they share. Every page is UI only: the
work is done by `cxrcore` (see pages/shared.py for the cached objects they use).
"""

import streamlit as st

from pages.shared import mark_app_started, sidebar

st.set_page_config(page_title="CXR Lab", page_icon=":material/radiology:", layout="wide")

PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/database:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/radiology:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
]

navigation = st.navigation(PAGES)
mark_app_started()
sidebar()
navigation.run()
