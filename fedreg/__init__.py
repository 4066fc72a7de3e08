"""fedreg: a plugin-based registry of federated-learning algorithms for medical imaging research.

Plugins implement the hooks in :mod:`fedreg.hookspecs` with :data:`hookimpl` and register
named components (subclasses of the bases in :mod:`fedreg.components`).
"""

import pluggy

__version__ = "0.1.0"

#: Version of the plugin contract (hook specifications and component base classes).
#: A component may declare ``api_version = N``; fedreg refuses components that need a newer contract.
HOOK_API_VERSION = 6

hookimpl = pluggy.HookimplMarker("fedreg")

__all__ = ["hookimpl", "HOOK_API_VERSION", "__version__"]
