"""Confining pyiceberg's IO to the service's configuration (private FileIO and location hooks).

pyiceberg lets a table's own properties reach its storage layer:

* ``Catalog._load_file_io`` builds each table's ``FileIO`` from the catalog's properties
  merged with the table's (``{**catalog, **table}``), so a table carrying ``py-io-impl``
  makes the process import and call any name (``sys.exit`` stopped the server,
  ``builtins.print`` printed the merged properties, secrets included), and ``s3.endpoint``
  or ``s3.secret-access-key`` redirect the server's reads and writes;
* ``load_location_provider`` imports the class named by ``write.py-location-provider.impl``
  and honours ``write.data.path`` / ``write.metadata.path``, so a table could have the
  service write anywhere it may write.

Clients cannot set those keys (see ``lakehouse.domain.table_properties``), but a table
registered from a crafted metadata file, or created before that check, carries whatever its
metadata says. So the service builds every ``FileIO`` from its own configuration only and
every location provider from the table's location only, whatever the table's properties.

Both hooks are private or module-level pyiceberg names; the contract tests in
``tests/hardening/test_table_properties.py`` fail loudly when an upgrade moves them.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.table import TableProperties
from pyiceberg.table import locations as _locations
from pyiceberg.table.locations import LocationProvider
from pyiceberg.typedef import EMPTY_DICT, Properties

#: Table properties a location provider must never see: they name a class to import, or a
#: path outside the table's own folder.
LOCATION_KEYS = frozenset(
    {
        TableProperties.WRITE_PY_LOCATION_PROVIDER_IMPL,
        TableProperties.WRITE_DATA_PATH,
        TableProperties.WRITE_METADATA_PATH,
    }
)

#: The pyiceberg modules that bind ``load_location_provider`` by name (``from ... import``)
#: and call it with a table's properties. The contract test checks this list is complete.
LOCATION_PROVIDER_MODULES = (
    "pyiceberg.catalog",
    "pyiceberg.catalog.sql",
    "pyiceberg.io.pyarrow",
    "pyiceberg.table",
)

log = logging.getLogger(__name__)


_original_load_location_provider = _locations.load_location_provider
_install_lock = threading.Lock()


def confined_location_provider(
    table_location: str, table_properties: Properties
) -> LocationProvider:
    """Pyiceberg's location provider for the table, ignoring the keys in ``LOCATION_KEYS``.

    ``write.object-storage.*`` still choose between the simple and the object-storage layout:
    both keep every file under ``<table location>/data`` and ``<table location>/metadata``.
    """
    safe = {k: v for k, v in table_properties.items() if k not in LOCATION_KEYS}
    return _original_load_location_provider(table_location, safe)


def confine_location_providers() -> None:
    """Makes every pyiceberg location provider ignore a table's path and class keys.

    Idempotent and process-wide: no table of any catalog in this process may choose.

    Raises:
        RuntimeError: A module in ``LOCATION_PROVIDER_MODULES`` no longer binds
            ``load_location_provider`` (pyiceberg changed; update this module).
    """
    with _install_lock:
        for name in LOCATION_PROVIDER_MODULES:
            module = importlib.import_module(name)
            bound = getattr(module, "load_location_provider", None)
            if bound is confined_location_provider:
                continue
            if bound is not _original_load_location_provider:
                raise RuntimeError(
                    f"{name}.load_location_provider is not pyiceberg's: "
                    "lakehouse.adapters.pyiceberg_private needs updating"
                )
            module.load_location_provider = confined_location_provider  # type: ignore[attr-defined]


def service_file_io(catalog_properties: Mapping[str, str], location: str | None) -> FileIO:
    """A ``FileIO`` for ``location`` built from the service's catalog properties only."""
    return load_file_io(dict(catalog_properties), location)


def confine_catalog_io(catalog: Catalog) -> Catalog:
    """Makes ``catalog`` build every table's ``FileIO`` from its own properties only.

    pyiceberg's catalogs call ``self._load_file_io(table_properties, location)`` when they
    load, create, register or commit a table; this instance's version drops the table's
    properties. A REST catalog's vended per-table config is dropped with them: the service
    reaches storage with the credentials it was configured with.

    Returns:
        The same catalog, for chaining.
    """

    def _load_file_io(properties: Properties = EMPTY_DICT, location: str | None = None) -> FileIO:
        del properties  # the table's: never trusted with the storage layer
        merged: dict[str, Any] = dict(catalog.properties)
        auth_manager = getattr(catalog, "_auth_manager", None)
        if auth_manager is not None:  # what RestCatalog._load_file_io adds for signing
            merged["auth.manager"] = auth_manager
        return load_file_io(merged, location)

    # An instance attribute shadows the method for this catalog only.
    catalog._load_file_io = _load_file_io  # type: ignore[method-assign]
    confine_location_providers()
    return catalog
