"""Importers of listening history into ``listening_history`` (``echotune-import``)."""
