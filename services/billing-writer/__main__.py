"""`python -m calltime.billing_writer`: run the billing-writer service."""

from calltime.billing_writer.app import create_app
from calltime.settings import get_settings
from calltime.web import serve

if __name__ == "__main__":
    settings = get_settings()
    serve(create_app(settings), settings)
