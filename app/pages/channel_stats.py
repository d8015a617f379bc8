"""Channel statistics (placeholder until the page is written)."""
import streamlit as st

st.title("Channel statistics")
st.info("Coming soon.")
