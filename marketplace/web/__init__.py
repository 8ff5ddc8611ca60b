"""The web catalog served by the daemon: server-rendered HTML pages and one stylesheet.

`catalog.WebCatalog` gathers what the pages show from the daemon's services; `pages` renders
them with the templates of `templates/` (escaping every value, see `render`); the routes are in
`marketplace.daemon.routes.web`. No JavaScript, no CDN: the pages work offline.
"""

from marketplace.web.catalog import WebCatalog
from marketplace.web.pages import (
    catalog_page,
    dashboard_page,
    model_page,
    not_found_page,
)

__all__ = ["WebCatalog", "catalog_page", "dashboard_page", "model_page", "not_found_page"]
