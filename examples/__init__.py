"""Example applications built on sqlperf: a small shop API for Flask and for FastAPI.

``examples.shop`` holds what both apps share (settings, engines, schema, seeding,
cache, recorder and queries); ``examples.flask_app`` and ``examples.fastapi_app``
are the two web front ends. Each runs with one command, for example
``python examples/fastapi_app.py``.
"""
