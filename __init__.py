"""dagwright: declarative AI workflows executed durably on Temporal."""

__version__ = "0.1.0"
