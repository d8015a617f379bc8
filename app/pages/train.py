"""Train (placeholder until the page is written)."""
import streamlit as st

st.title("Train")
st.info("Coming soon.")
