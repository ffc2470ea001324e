"""The bundled scenarios (``*.yaml``), installed as package data of ``vragent.scenarios``."""
