"""Experiments that compose the package's parts: `transfer`, `replicate`, the PCam MIL proxy (`mil_proxy`) and the
PCam learning study (`pcam_probe`)."""
