"""`python -m calltime.drafts`: run the drafts service."""

from calltime.drafts.app import create_app
from calltime.settings import get_settings
from calltime.web import serve

if __name__ == "__main__":
    settings = get_settings()
    serve(create_app(settings), settings)
