"""recbole-compress: compressed and efficient sequential recommenders as a RecBole plugin."""
import os

__version__ = "0.1.0"


def properties_path(*parts):
    """Path of a file under the plugin's ``properties/`` folder.

    An installed package carries the folder as ``recbole_compress/properties``; a source checkout keeps it at the
    top level of the repository (setup.cfg maps one onto the other).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "properties"), os.path.join(os.path.dirname(here), "properties")):
        if os.path.isdir(root):
            return os.path.join(root, *parts)
    raise FileNotFoundError(
        "recbole_compress/properties is missing: reinstall recbole-compress (pip install -e .)"
    )
