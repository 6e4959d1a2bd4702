"""The Starlette stack: Starlette on uvicorn (`rtbench serve --stack starlette`, the default)."""
