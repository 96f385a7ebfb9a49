"""Imported at start-up by every Python process the tests launch (this folder is on PYTHONPATH)."""

from tests.fakes import netguard

netguard.install()
