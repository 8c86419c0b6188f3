"""``edgeclf label DIR``: label the frames ``edgeclf run --collect DIR`` kept, in a local page."""
from edgeclf.label.store import LABELS, LabelError, Store, open_store

__all__ = ["LABELS", "LabelError", "Store", "open_store", "serve_labels"]


def serve_labels(*args, **kwargs):
    from edgeclf.label.server import serve_labels as serve

    return serve(*args, **kwargs)
