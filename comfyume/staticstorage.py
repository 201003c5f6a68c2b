"""The static files' storage in production: whitenoise's compressed manifest storage, which also gives the
ES modules' imports their hashed names.

The dashboard's script is native ES modules (static/comfyume/dashboard/) that import each other by relative
name. Without the rewrite, the hashed main.js would import the unhashed ``./queue.js``, which a browser may
still hold from before a deploy: the new main.js with an old queue.js.
"""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class ModuleManifestStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed static files whose ``import … from "./x.js";`` lines name the hashed files.

    Django rewrites the imports only of a module graph without cycles: a hashed name depends on the hashes of
    what the file imports, so two modules importing each other would never settle (collectstatic fails with
    "Max post-process passes exceeded")."""

    support_js_module_import_aggregation = True
