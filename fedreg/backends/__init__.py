"""Execution backends other than ``local`` (see :mod:`fedreg.clients`), each imported only when a spec
asks for it, so that their dependencies stay optional."""
