"""The semsearch HTTP service: thin FastAPI routes over the core.

Run it with ``python -m app --index DIR`` or ``uvicorn --factory app.main:create_app``.
"""
