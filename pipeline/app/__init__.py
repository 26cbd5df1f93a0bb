"""The explorer app: `explorer` holds its logic, `app` draws it with Streamlit (`make app`)."""
