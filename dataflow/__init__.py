"""dataflow: scheduled, YAML-configured file-ingestion dataflows for loyalty platforms."""

__version__ = "0.1.0"
