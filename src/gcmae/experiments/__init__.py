"""Experiments that compose the package's parts: the PCam learning study (`pcam_probe`)."""
