"""zoo's builtin plugins, registered through the ``zoo`` entry-point group like any other."""
