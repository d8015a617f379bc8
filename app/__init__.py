"""The CAS Lab Streamlit app (``streamlit run app/main.py``)."""
