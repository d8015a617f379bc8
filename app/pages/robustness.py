"""Robustness (placeholder until the page is written)."""
import streamlit as st

st.title("Robustness")
st.info("Coming soon.")
