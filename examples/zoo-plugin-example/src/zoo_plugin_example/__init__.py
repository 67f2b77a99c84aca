"""zoo-plugin-example: one model, loss, dataset and training hook for zoo.

Importing this package is cheap: torch is only imported by the modules that
``plugin.py`` names in import strings, when zoo builds one of them.
"""

__version__ = "0.1.0"
