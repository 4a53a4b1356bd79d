"""`python -m calltime.ingest`: run the ingest service."""

from calltime.ingest.app import create_app
from calltime.settings import get_settings
from calltime.web import serve

if __name__ == "__main__":
    settings = get_settings()
    serve(create_app(settings), settings)
