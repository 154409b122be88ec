"""Code shared by the controller, node and sidecar processes: store plumbing, logging, version."""

__version__ = "0.1.0"
